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
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from hpo.display import fmt_counts, fmt_value, plural
from hpo.errors import HpoError, HpoWarning, StudyFileError, Terminated

if TYPE_CHECKING:
    from hpo.status import TrialRow

# Imports here are what `hpo --help` pays for (see tests/test_cli_imports.py): Optuna, SQLAlchemy, torch
# and transformers are imported inside the commands that need them.

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


def _api() -> ModuleType:
    """hpo.api, imported when a command needs it (it brings Optuna and SQLAlchemy, ~0.3 s)."""
    import optuna

    from hpo import api

    # Optuna's INFO lines ("A new study created ...") repeat what hpo's own display says.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return api


@app.command()
@_errors
def validate(study_file: StudyFile) -> None:
    """Check a study file without running anything."""
    from hpo.references import validate_file
    from hpo.space import param_name

    cfg = validate_file(study_file)  # api.validate's own call; hpo.api would bring Optuna and SQLAlchemy
    names = [param_name(p, s) for p, s in cfg.search_space.items()]
    out.print(
        f"[green]ok[/] {study_file}: study {cfg.study.name!r}, task {cfg.task}, "
        f"{len(cfg.search_space)} parameters ({', '.join(names)}), "
        f"sampler {cfg.sampler.name}, pruner {cfg.pruner.name}, n_trials {cfg.study.n_trials}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@_errors
def run(
    study_file: StudyFile,
    enqueue: Annotated[
        Path | None, typer.Option("--enqueue", help="YAML list of configurations to run first (once per study).")
    ] = None,
) -> None:
    """Run the study, or resume it up to its n_trials total."""
    _run(study_file, join_only=False, enqueue=enqueue)


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


def _run(study_file: Path, join_only: bool, enqueue: Path | None = None) -> None:
    api = _api()
    with _sigterm_as_ctrl_c() as terms:
        summary = api.run(study_file, join_only=join_only, enqueue=enqueue)
    status = api.status(study_file)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items())) or "no trials"
    verb = "interrupted after" if summary.interrupted else "ran"
    counts = fmt_counts(summary.counted, summary.n_trials, summary.grid_points)
    out.print(f"\n{verb} {plural(summary.ran, 'trial')} in {summary.wall_time:.0f}s ({states}); {counts} in the study")
    pareto = api.front(study_file) if status.best is None and summary.states.get("COMPLETE") else None
    if pareto is not None:
        out.print(f"Pareto front: {plural(len(pareto[1]), 'trial')} (`hpo best {study_file}` lists them)")
    elif status.best is None:
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


def _print_best(metric: str, row: TrialRow) -> None:
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
    import optuna
    from rich import box
    from rich.table import Table

    from hpo.status import status as study_status  # not hpo.api: this command runs in loops, keep it light

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = study_status(study_file)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    **st.__dict__,
                    "rows": [r.__dict__ for r in st.rows],
                    "best": st.best.__dict__ if st.best else None,
                    "by_model": [g.__dict__ for g in st.by_model],
                },
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
    if st.data_clean:
        from trainers.clean import summary as clean_summary

        out.print(f"data.clean removed: {clean_summary(st.data_clean)}", highlight=False)
    if not wide:
        for r in st.rows:
            if r.reason:
                out.print(f"  #{r.number} {r.state.lower()}: {escape(r.reason)}", highlight=False)
    if st.by_model:
        _print_by_model(st.metric, st.by_model)
    if st.best is not None:
        _print_best(st.metric, st.best)


def _print_by_model(metric: str, groups: list[Any]) -> None:
    """Results per model, for a study that chooses its model (``hpo.modelchoice.group_by_model``)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"by model ({metric})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "trials", "complete", "pruned", "failed", "best", "best trial", "median"):
        table.add_column(col, no_wrap=True)
    for g in groups:
        table.add_row(
            escape(g.model), str(g.trials), str(g.complete), str(g.pruned), str(g.failed),
            fmt_value(g.best_value), "-" if g.best_trial is None else str(g.best_trial), fmt_value(g.median),
        )  # fmt: skip
    out.print(table)


@app.command()
@_errors
def suggest(
    study_file: StudyFile,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="The new study file (default: STUDY-suggested.yaml).")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Narrow around the N best trials.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The new study's name (default: NAME-suggested).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file.")] = False,
) -> None:
    """Write a study file whose ranges are narrowed around the best trials, with the old best enqueued."""
    from hpo.suggest import suggest as write_suggestion

    dest, s = write_suggestion(study_file, output, top=top, name=name, force=force)
    out.print(f"narrowed around the top {s.top} of {s.complete} complete trials (best: trial {s.best_number}):")
    for line in s.notes:
        out.print(f"  {escape(line)}", highlight=False)
    out.print(f"wrote {dest} (the old best enqueued first); run it with: hpo run {dest}", highlight=False)


@app.command()
@_errors
def best(
    study_file: StudyFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the best complete trial (the confirmed winner after `hpo confirm`): value, parameters, metrics."""
    from hpo.confirm import confirmed_best, describe

    api = _api()
    pareto = api.front(study_file)
    if pareto is not None:  # several objectives: no single best, the front of trials none beats on all
        front_cfg, front_trials = pareto
        _print_front(study_file, front_cfg, front_trials, as_json)
        return
    cfg, t = api.best(study_file)
    confirmed = confirmed_best(study_file)  # `hpo confirm` re-trained the top trials: its winner is preferred
    if confirmed is not None:
        t = confirmed[0]
    if as_json:
        body = {"number": t.number, "value": t.value, "params": t.params, "user_attrs": t.to_user_attrs()}
        if confirmed is not None:
            body["confirmation"] = confirmed[1].to_json()
        out.print_json(json.dumps(body, default=str))
        return
    if confirmed is not None:
        out.print(describe(confirmed[1]), highlight=False, soft_wrap=True)
    out.print(
        f"[bold]{'confirmed best' if confirmed else 'best'} trial {t.number}[/] of study {cfg.study.name!r}: "
        f"{cfg.metric} = {fmt_value(t.value)} ({cfg.direction})",
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
def confirm(
    study_file: StudyFile,
    top: Annotated[int, typer.Option("--top", help="Re-train the K best complete trials.")] = 3,
    seeds: Annotated[int, typer.Option("--seeds", help="Fresh seeds per configuration (at least 2).")] = 3,
    steps: Annotated[int | None, typer.Option("--steps", help="Steps per run (default: the trials' own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Re-train the best trials on fresh seeds: mean, std, 95% CI and P(best) per configuration (resumable)."""
    from rich import box
    from rich.table import Table

    from hpo.confirm import confirm as do_confirm
    from hpo.confirm import describe

    with _sigterm_as_ctrl_c() as terms:
        res = do_confirm(study_file, top, seeds, steps)
    conf = res.confirmation
    if as_json:
        out.print_json(json.dumps(conf.to_json()))
    else:
        table = Table(
            title=f"{conf.study}: {conf.metric} over seeds {conf.seeds}, {conf.steps} steps per run",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        for col in ("trial", "search", "mean", "std", "95% CI", "P(best)", "runs"):
            table.add_column(col)
        for c in conf.configs:
            ci = "-" if c.ci_low != c.ci_low else f"{c.ci_low:.4g} – {c.ci_high:.4g}"
            mark = "*" if c.trial == conf.winner else ""
            table.add_row(
                f"{c.trial}{mark}",
                fmt_value(c.search_value),
                fmt_value(c.mean if c.mean == c.mean else None),
                fmt_value(c.std if c.std == c.std else None),
                ci,
                f"{c.p_best:.2f}",
                str(len(c.values)),
            )
        out.print(table)
        if conf.complete:
            out.print(describe(conf), highlight=False, soft_wrap=True)
    if res.interrupted or not conf.complete:
        missing = plural(len(conf.missing), "run")
        out.print(f"{missing} without a result; run them with: hpo confirm {study_file}", highlight=False)
        if res.interrupted:
            raise typer.Exit(_exit_code(terms[0] if terms else None))
        raise typer.Exit(1)


def _count_or_value(v: float) -> str:
    """A count (params) in full, with thousands separators; other values as everywhere else."""
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 1000 else fmt_value(v)


def _print_front(study_file: Path, cfg: Any, trials: list[Any], as_json: bool) -> None:
    from rich import box
    from rich.table import Table

    names = [o.metric for o in cfg.objectives]
    if as_json:
        rows = [
            {"number": t.number, "values": dict(zip(names, t.values, strict=True)), "params": t.params} for t in trials
        ]
        out.print_json(json.dumps({"objectives": names, "directions": cfg.directions, "front": rows}, default=str))
        return
    what = ", ".join(f"{n} ({d})" for n, d in zip(names, cfg.directions, strict=True))
    out.print(
        f"[bold]Pareto front[/] of study {cfg.study.name!r}: {plural(len(trials), 'trial')}; {what}", highlight=False
    )
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("#")
    for n in names:
        table.add_column(n)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    for p in params:
        table.add_column(_SHORT.get(p, p))
    for t in trials:
        table.add_row(
            str(t.number), *(_count_or_value(v) for v in t.values), *(_cell(t.params.get(p, "")) for p in params)
        )
    out.print(table)
    out.print(f"export any of them: hpo export {study_file} --trial N", highlight=False)


@app.command()
@_errors
def curves(
    study_file: StudyFile,
    trial: Annotated[int, typer.Option("--trial", "-t", help="Trial number (see `hpo status`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON points instead of a table.")] = False,
) -> None:
    """Show a trial's learning curves: train loss, learning rate, throughput and eval metrics per step."""
    from rich import box
    from rich.table import Table

    points = _api().curves(study_file, trial)
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
    info = _api().devices()
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
        if e.note:
            out.print(escape(e.note), highlight=False, soft_wrap=True)
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
    warnings.simplefilter("always", HpoWarning)  # hpo's own notices are not chatter: still shown

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
    if r.tokenizer_note:  # e.g. a pad token hpo set: said once, before the result
        warnings.warn(r.tokenizer_note, HpoWarning, stacklevel=1)
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


@app.command()
@_errors
def ensemble(
    study_file: StudyFile,
    top: Annotated[int, typer.Option("--top", "-k", help="Fuse the K best complete trials.")] = 3,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Write the chosen fusion here.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="auto (by the selection half), ensemble or soup.")] = "auto",
    average: Annotated[str, typer.Option("--average", help="probs (default) or logits (classification).")] = "probs",
    max_examples: Annotated[
        int | None, typer.Option("--max-examples", help="Use at most N eval rows (half select, half report).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory.")] = False,
) -> None:
    """Fuse the best trials: prediction ensemble (greedy selection) and model soups, measured on held-out rows."""
    from hpo.ensemble import ensemble as build
    from hpo.ensemble import render
    from trainers.base import quiet_libraries

    quiet_libraries()
    _no_progress_bars()

    def say(line: str) -> None:
        err.print(escape(line), highlight=False, soft_wrap=True)

    r = build(study_file, top, out_dir, kind, average, max_examples, force=force, say=say)  # type: ignore[arg-type]
    for line in render(r):
        out.print(escape(line), highlight=False, soft_wrap=True)


@app.command()
@_errors
def compress(
    model_dir: Annotated[Path, typer.Argument(help="A model folder hpo wrote (hpo train, save_models, ensemble).")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Write the chosen variant here.")] = None,
    max_drop: Annotated[
        str, typer.Option("--max-drop", help="Largest quality drop allowed, relative: 1% or 0.01.")
    ] = "1%",
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Evaluate on at most N eval rows.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory.")] = False,
) -> None:
    """Quantize (dynamic int8) and prune the model; keep the smallest variant within --max-drop of its quality."""
    from hpo.compress import compress as run_compress
    from hpo.compress import render
    from trainers.base import quiet_libraries

    quiet_libraries()
    _no_progress_bars()

    r = run_compress(model_dir, out_dir, max_drop, max_examples, force=force)
    for line in render(r):
        out.print(escape(line), highlight=False, soft_wrap=True)


def _no_progress_bars() -> None:
    """transformers' loading/saving bars: noise between the lines of a table (this command's process only)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def entrypoint() -> None:  # pragma: no cover - console script
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
