"""The ``hpo`` command line. Thin: parse, one library call, render."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import optuna
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpo import api
from hpo.display import fmt_counts, fmt_value, plural
from hpo.errors import HpoError, HpoWarning, StudyFileError, Terminated

app = typer.Typer(
    help="Hyperparameter search for fine-tuning transformer models: Optuna studies from a YAML file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])

StudyFile = Annotated[Path, typer.Argument(help="Study file (YAML), e.g. studies/quickstart.yaml.", show_default=False)]


def _errors(fn: F) -> F:
    """One-line errors and exit 1; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", HpoWarning)
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
                return fn(*args, **kwargs)
        except HpoError as e:
            if _state["debug"]:
                if e.worker_traceback:  # where it happened: the worker process, not the orchestrator
                    sys.stderr.write(f"worker traceback:\n{e.worker_traceback}\n")
                raise
            for line in str(e).splitlines():
                err.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(_exit_code(e)) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(
    python_way: Callable[..., None], message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> None:
    """hpo's own warnings as one line on stderr; any other warning as Python shows it."""
    if issubclass(category, HpoWarning):
        err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        python_way(message, category, *args, **kwargs)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    # Optuna's INFO lines ("A new study created ...") repeat what hpo's own display says.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@app.command()
@_errors
def validate(study_file: StudyFile) -> None:
    """Check a study file without running anything."""
    cfg = api.validate(study_file)
    out.print(
        f"[green]ok[/] {study_file}: study {cfg.study.name!r}, task {cfg.task}, "
        f"{len(cfg.search_space)} parameters ({', '.join(api.to_param_names(cfg))}), "
        f"sampler {cfg.sampler.name}, pruner {cfg.pruner.name}, n_trials {cfg.study.n_trials}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@_errors
def run(study_file: StudyFile) -> None:
    """Run the study, or resume it up to its n_trials total."""
    _run(study_file, join_only=False)


@app.command()
@_errors
def worker(study_file: StudyFile) -> None:
    """Join a study that `hpo run` created (another shell or machine on the same storage) and run trials."""
    _run(study_file, join_only=True)


def _exit_code(e: BaseException | None) -> int:
    """130 after Ctrl-C, 143 after SIGTERM: the shell's 128 + signal number."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[list[Terminated]]:
    """SIGTERM (SLURM's scancel and time limit, Kubernetes, systemd) takes Ctrl-C's path: running trials
    stop at their next step and are recorded interrupted and re-queued. Python's default is to die at once,
    leaving trials RUNNING until another run's orphan check. Yields the signals received."""
    got: list[Terminated] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, frame: Any) -> None:
        got.append(Terminated())
        raise got[-1]

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(study_file: Path, join_only: bool) -> None:
    with _sigterm_as_ctrl_c() as terms:
        summary = api.run(study_file, join_only=join_only)
    status = api.status(study_file)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items())) or "no trials"
    verb = "interrupted after" if summary.interrupted else "ran"
    counts = fmt_counts(summary.counted, summary.n_trials, summary.grid_points)
    out.print(f"\n{verb} {plural(summary.ran, 'trial')} in {summary.wall_time:.0f}s ({states}); {counts} in the study")
    if status.best is None:
        out.print("no complete trial yet")
    else:
        _print_best(status.metric, status.best)
        from hpo.pbt_run import winner_lines  # a PBT member: its schedule and lineage

        for line in winner_lines(study_file, status.best.number):
            out.print(line, highlight=False)
    out.print("\nlook further:", highlight=False)
    for cmd, what in (
        (f"hpo status {study_file}", "every trial, with prune/fail reasons"),
        (f"hpo report {study_file} -o report.html", "plots: history, importances, curves, pruning savings"),
        (f"hpo dashboard {study_file}", "optuna-dashboard on this study's database"),
        (f"hpo export {study_file} -o best/", "the best trial as a full training config"),
    ):
        out.print(f"  {cmd:<58} # {what}", highlight=False, soft_wrap=True)
    if summary.interrupted:
        out.print(f"resume with: hpo run {study_file}")
        raise typer.Exit(_exit_code(terms[0] if terms else None))
    _all_failed(study_file, summary)


def _all_of(n: int) -> str:
    return "the only trial" if n == 1 else f"all {n} trials"


def _all_failed(study_file: Path, summary: Any) -> None:
    """A run in which every trial failed is an error: exit 1 naming the most common reason."""
    failed = summary.states.get("FAIL", 0)
    if not summary.ran or failed != summary.ran:
        return
    if not summary.failures:
        raise HpoError(f"{study_file}: {_all_of(failed)} of this run failed; see `hpo status {study_file}`")
    (key, message), n = Counter(summary.failures).most_common(1)[0]
    share = f"{_all_of(failed)} of this run failed" + ("" if n == failed else f", {n} of them so")
    if key:
        raise StudyFileError(str(study_file), [(key, f"{message} ({share})")])
    raise HpoError(f"{study_file}: {share}: {message}")


_SHORT = {"learning_rate": "lr", "per_device_train_batch_size": "batch", "weight_decay": "wd", "warmup_ratio": "warmup"}


def _cell(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else escape(str(v))


def _print_best(metric: str, row: api.TrialRow) -> None:
    out.print(f"[bold]best trial {row.number}[/]: {metric} = {fmt_value(row.value)}", highlight=False)
    for k, v in row.params.items():
        out.print(f"  {k}: {v!r}", highlight=False)


@app.command()
@_errors
def status(
    study_file: StudyFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show every trial: state, parameters, value, steps, duration, and why it was pruned or failed."""
    st = api.status(study_file)
    if as_json:
        out.print_json(
            json.dumps(
                {**st.__dict__, "rows": [r.__dict__ for r in st.rows], "best": st.best.__dict__ if st.best else None},
                default=str,
            )
        )
        return
    table = Table(
        title=f"{st.name} — {st.counted}/{st.n_trials} trials — {st.storage}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    wide = out.width >= 140  # narrow terminals: short headers, and the reasons as a list under the table
    names = list(dict.fromkeys(k for r in st.rows for k in r.params))
    table.add_column("#", no_wrap=True)
    table.add_column("state", no_wrap=True, min_width=8)
    for col in (st.metric, "steps", "time"):
        table.add_column(col, overflow="fold")
    for name in names:
        table.add_column(name if wide else _SHORT.get(name, name), overflow="fold")
    if wide:
        table.add_column("reason", overflow="fold")
    best = st.best.number if st.best else None
    for r in st.rows:
        style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}.get(r.state, "")
        mark = "*" if r.number == best else ""
        table.add_row(
            f"{r.number}{mark}",
            f"[{style}]{r.state}[/]" if style else r.state,
            fmt_value(r.value),
            "-" if r.steps is None else str(r.steps),
            "-" if r.duration is None else f"{r.duration:.1f}s",
            *(_cell(r.params.get(n, "")) for n in names),
            *([escape(r.reason or "")] if wide else []),
        )
    out.print(table)
    if not wide:
        for r in st.rows:
            if r.reason:
                out.print(f"  #{r.number} {r.state.lower()}: {escape(r.reason)}", highlight=False)
    if st.best is not None:
        _print_best(st.metric, st.best)


@app.command()
@_errors
def best(
    study_file: StudyFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the best complete trial: value, parameters and metrics."""
    cfg, t = api.best(study_file)
    if as_json:
        out.print_json(
            json.dumps(
                {"number": t.number, "value": t.value, "params": t.params, "user_attrs": t.to_user_attrs()},
                default=str,
            )
        )
        return
    out.print(
        f"[bold]best trial {t.number}[/] of study {cfg.study.name!r}: "
        f"{cfg.objective.metric} = {fmt_value(t.value)} ({cfg.direction})",
        highlight=False,
    )
    for k, v in t.params.items():
        out.print(f"  {k}: {v!r}", highlight=False)
    from hpo.pbt_run import member_lines  # a PBT member: its schedule and lineage

    for line in member_lines(t.to_user_attrs()):
        out.print(line, highlight=False)
    a = t.attrs
    if a.metrics:
        out.print("  metrics: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in a.metrics.items()), highlight=False)
    for key, v in (
        ("steps", a.steps),
        ("train_time", a.train_time),
        ("tokens_per_s", a.tokens_per_s),
        ("device", a.device),
    ):
        if v is not None:
            out.print(f"  {key}: {v}", highlight=False)


@app.command()
@_errors
def curves(
    study_file: StudyFile,
    trial: Annotated[int, typer.Option("--trial", "-t", help="Trial number (see `hpo status`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON points instead of a table.")] = False,
) -> None:
    """Show a trial's learning curves: train loss, learning rate, throughput and eval metrics per step."""
    points = api.curves(study_file, trial)
    if as_json:
        out.print_json(json.dumps([p.__dict__ for p in points]))
        return
    names = list(dict.fromkeys(p.name for p in points))
    rows: dict[int, dict[str, float]] = {}
    for p in points:
        rows.setdefault(p.step, {})[p.name] = p.value
    table = Table(title=f"trial {trial}", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("step")
    for n in names:
        table.add_column(n)
    for step in sorted(rows):
        table.add_row(str(step), *(fmt_value(rows[step].get(n)) for n in names))
    out.print(table)


@app.command()
@_errors
def devices() -> None:
    """Show the accelerators and CPU cores workers can use."""
    info = api.devices()
    out.print(f"CPU cores: {info['cpu_cores']}")
    if not info["gpus"]:
        out.print("CUDA GPUs: none (trials run on CPU)")
    for g in info["gpus"]:
        out.print(f"cuda:{g['index']}  {g['name']}  {g['memory_mib']} MiB")


@app.command()
@_errors
def export(
    study_file: StudyFile,
    trial: Annotated[int | None, typer.Option("--trial", "-t", help="Export this trial (default: the best).")] = None,
    top: Annotated[
        int | None, typer.Option("--top", help="Export the K best complete trials, into DIR/trial-<N>/.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default: runs/<study>-export).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Full run of N optimizer steps.")] = None,
    trial_length: Annotated[
        bool, typer.Option("--trial-length", help="The trial's own length, eval cadence and eval batches.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an earlier export in DIR.")] = False,
) -> None:
    """Write the best trial's resolved training config, TrainingArguments JSON, provenance and launch script."""
    from hpo.export import export as do_export

    for e in do_export(study_file, out_dir, trial, top, steps, trial_length, force):
        out.print(
            f"[bold]trial {e.trial}[/] ({fmt_value(e.value) if not isinstance(e.value, list) else e.value}) "
            f"-> {escape(str(e.dir))}/  length: {escape(e.length)}",
            highlight=False,
            soft_wrap=True,
        )
        for f in e.files:
            out.print(f"  {escape(str(f))}", highlight=False, soft_wrap=True)
        out.print(f"next: hpo train {escape(str(e.files[0]))}", highlight=False, soft_wrap=True)


@app.command()
@_errors
def train(
    config: Annotated[Path, typer.Argument(help="Training config written by `hpo export`.", show_default=False)],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default: model/ next to CONFIG).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite earlier results in OUTDIR.")] = False,
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep OUTDIR/checkpoints after a finished run.")
    ] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="With model.peft: also save the merged model in OUTDIR/merged.")
    ] = False,
) -> None:
    """Train a full run of an exported config: progress, periodic eval, resumable checkpoints, saved model."""
    from hpo.train import METRICS, is_main, train_file
    from trainers.base import quiet_libraries

    quiet_libraries()  # this command's process trains: transformers' and accelerate's chatter is noise here

    res = train_file(config, out_dir, force=force, keep_checkpoints=keep_checkpoints, console=err, merge=merge)
    r = res.result
    if not is_main():
        if res.interrupted:
            raise typer.Exit(128 + (res.signum or signal.SIGINT))
        return  # the main process of a multi-process run reports
    if res.interrupted:
        out.print(
            f"interrupted at step {r.steps}; checkpoint in {escape(str(res.out_dir / 'checkpoints'))}\n"
            f"resume with: hpo train {escape(str(config))}" + (f" -o {escape(str(out_dir))}" if out_dir else ""),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + (res.signum or signal.SIGINT))
    shown = ", ".join(f"{k} = {fmt_value(v)}" for k, v in r.metrics.items())
    out.print(f"[bold]trained {r.steps} steps[/] in {r.train_time + r.eval_time:.0f}s: {shown}", highlight=False)
    prov = res.provenance or {}
    if prov.get("trial") is not None:
        out.print(
            f"  trial {prov['trial']} of study {prov.get('study')!r}: {prov.get('objective')} = "
            f"{fmt_value(prov.get('value'))} after {prov.get('trial_steps')} steps",
            highlight=False,
        )
    where = escape(str(res.out_dir))
    saved = "model"
    if res.config.model.peft is not None:
        saved = "LoRA adapter" + (" and merged model (merged/)" if merge else "")
    out.print(f"saved {saved}, tokenizer, {METRICS} and the config to {where}/", highlight=False, soft_wrap=True)


@app.command()
@_errors
def dashboard(
    study_file: StudyFile,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface, no login!).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    notes: Annotated[
        bool, typer.Option(help="Write the study note and trial notes (--no-notes: nothing is written).")
    ] = True,
    allow_edits: Annotated[
        bool,
        typer.Option(help="Let the web page change the study (notes, tell, delete); read-only without it."),
    ] = False,
) -> None:
    """Open optuna-dashboard on the study's own database (works while `hpo run` writes). Ctrl-C stops it."""
    from dashboards.launch import start

    d = start(study_file, host=host, port=port, notes=notes, allow_edits=allow_edits)
    out.print(f"optuna-dashboard: study {d.study.study_name!r} in {escape(d.storage)}", highlight=False, soft_wrap=True)
    if notes:
        more = f" ({d.notes.pending} more in the background)" if d.notes.pending else ""
        out.print(f"  notes written: {d.notes.trials} trials{more}" + (", study note" if d.notes.study else ""))
    out.print(f"  {d.study_url}", highlight=False, soft_wrap=True)
    out.print("  edits allowed (--allow-edits)" if allow_edits else "  read-only (edits: --allow-edits)")
    if d.public:
        err.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach this port sees the study")
    out.print("Ctrl-C to stop", highlight=False)
    d.serve()


@app.command()
@_errors
def report(
    study_files: Annotated[
        list[Path], typer.Argument(help="One study file, or several to compare.", show_default=False)
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: runs/<study>-report.html).")
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write each figure as PNG into DIR (kaleido + Chromium).")
    ] = None,
) -> None:
    """Write one self-contained HTML report (offline): history, importances, curves, pruning, timeline."""
    from dashboards.report import write

    r = write(study_files, output, png)
    for name, lines in r.facts.items():
        out.print(f"[bold]{escape(name)}[/]", highlight=False)
        for line in lines:
            out.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    if r.pngs:
        out.print(f"{len(r.pngs)} PNGs in {escape(str(r.pngs[0].parent))}/", highlight=False, soft_wrap=True)
    out.print(
        f"wrote {escape(str(r.path))} ({r.size / 1e6:.1f} MB, {r.n_figures} figures, works offline)",
        highlight=False,
        soft_wrap=True,
    )


def entrypoint() -> None:  # pragma: no cover - console script
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
