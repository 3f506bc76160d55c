"""`hpo train`: one full training run of an exported configuration, with the trainer the trials use.

No pruning; a progress bar; periodic eval; checkpoints under ``OUTDIR/checkpoints`` it resumes from after
an interruption (rerun the same command); at the end, ``save_pretrained`` of the model and tokenizer into
``OUTDIR``, ``metrics.json`` (final and periodic eval metrics, timings, provenance) and the config it ran
(``train_config.yaml``). Under ``accelerate launch``, every process trains and the main one writes.
With ``model.peft``, the saved model is the adapter (``adapter_config.json``, ``adapter_model.safetensors``)
and, with ``merge``, the base model with the adapter merged in, under ``OUTDIR/merged`` (plain
``from_pretrained`` loads it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hpo import yamlio
from hpo.errors import HpoError, StudyFileError
from hpo.export import TrainFile, load_train_file
from trainers.base import CheckpointMismatch, CheckpointWriteError, ConfigError, NonFiniteLoss, Reporter, TrainResult

OUT_CONFIG = "train_config.yaml"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
MERGED = "merged"  # --merge: the adapter merged into the base model, with the tokenizer
MANIFEST = ".hpo-train.json"  # the files this run put in OUTDIR, written before it puts them there
STAGING = ".hpo-saving"  # the final save is written here, then moved into OUTDIR
# What a final save writes into OUTDIR (save_pretrained of a model and tokenizer, and hpo's own files);
# checked before training. Names beyond these (weight shards) are checked again before anything is moved.
SAVED_NAMES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "adapter_config.json",
    "adapter_model.safetensors",
    MERGED,
    OUT_CONFIG,
    METRICS,
)


def default_out_dir(config_path: str | Path) -> Path:
    """``best/train.yaml`` trains into ``best/model``."""
    return Path(config_path).parent / "model"


def is_main() -> bool:
    # Set by `accelerate launch` / torchrun; absent in a plain single-process run.
    return os.environ.get("RANK", "0") == "0"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class ProgressReporter(Reporter):
    """A rich progress bar over the run's steps, eval lines above it, and Ctrl-C as a graceful stop."""

    def __init__(self, console: Console | None = None, show: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.show = show
        self.interrupted = False
        self.signum: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)
        self._progress: Progress | None = None
        self._flag: Any = None
        self._task: Any = None
        self._last = ""

    def on_start(self, step: int, total: int) -> None:
        if not self.show:
            return
        if step:
            self.console.print(f"resuming from the checkpoint at step {step}/{total}", highlight=False)
        self._progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=step, info="")
        self._progress.start()

    def on_step(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self._progress is not None:
            self._last = f"loss {_fmt(metrics['train_loss'])}  lr {metrics['learning_rate']:.3g}"
            self._progress.update(self._task, info=self._last)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.show:
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
            self.console.print(f"step {step}: {shown}", highlight=False)

    def stop_reason(self) -> str | None:
        return "interrupted" if self._agreed(self.interrupted) else None

    def _agreed(self, mine: bool) -> bool:
        """Under ``accelerate launch``, whether any process was interrupted: all of them stop on the same
        step (each gets the signal at its own moment; ranks that stopped apart would wait for each other
        forever in the next collective, and write no checkpoint). One tiny all-reduce per step."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return mine
        import torch
        from accelerate import PartialState

        if self._flag is None:
            self._flag = torch.zeros(1, dtype=torch.int32, device=PartialState().device)
        self._flag.fill_(int(mine))
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return bool(self._flag.item())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextlib.contextmanager
def _graceful_sigint(reporter: ProgressReporter) -> Iterator[None]:
    """First Ctrl-C or SIGTERM (a batch scheduler's stop): stop at the next step and checkpoint. Second: abort."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if reporter.interrupted:
            raise KeyboardInterrupt
        reporter.interrupted = True
        reporter.signum = signum
        if reporter.show:
            what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            reporter.console.print(
                f"[yellow]{what}: stopping after this step and saving a checkpoint ({what} again to abort)[/]"
            )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class TrainOutcome:
    out_dir: Path
    result: TrainResult
    config: TrainFile
    interrupted: bool
    files: list[str] = field(default_factory=list)
    provenance: dict[str, Any] | None = None
    signum: int | None = None  # the signal that interrupted it, if one did


def _ours(out: Path, tf: TrainFile) -> set[str]:
    """Files in ``out`` that an earlier, unfinished save of this same run put there (see ``MANIFEST``)."""
    from trainers.checkpoints import run_digest

    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("digest") != run_digest(tf.run_config()):
        return set()
    return {f for f in manifest.get("files", []) if isinstance(f, str)}


def _conflicts(out: Path, names: Any, ours: set[str]) -> tuple[list[str], list[str]]:
    """Of ``names`` in ``out``: symbolic links, and files this run did not write."""
    links = [n for n in names if (out / n).is_symlink()]
    foreign = [n for n in names if n not in links and n not in ours and (out / n).exists()]
    return links, foreign


def _refusal(out: Path, links: list[str], foreign: list[str]) -> HpoError:
    if links:
        return HpoError(
            f"{out / links[0]} is a symbolic link; hpo train does not write through links: "
            "use --force to replace the link itself, or -o another directory"
        )
    return HpoError(
        f"{out} already holds {foreign[0]}, which hpo train did not write; use --force to overwrite it, "
        "or -o another directory"
    )


def _check_out_dir(out: Path, tf: TrainFile, force: bool) -> list[Path]:
    """What --force would remove; raise when ``out`` holds something this run must not overwrite."""
    from trainers.checkpoints import latest, read_state, run_digest

    if out.exists() and not out.is_dir():
        raise HpoError(f"{out} exists and is not a directory; give -o a directory")
    to_remove: list[Path] = []
    metrics = out / METRICS
    if metrics.exists() and not metrics.is_symlink():
        if not force:
            raise HpoError(
                f"{out} already holds the results of a training run ({METRICS}); "
                "use --force to overwrite them, or -o another directory"
            )
        try:
            written = json.loads(metrics.read_text()).get("files", [])
        except (OSError, ValueError):
            written = []
        to_remove += [out / f for f in written if "/" not in f and f not in ("", ".", "..")]
    links, foreign = _conflicts(out, SAVED_NAMES, _ours(out, tf))
    if (links or foreign) and not force:
        raise _refusal(out, links, foreign)
    to_remove += [out / n for n in (*links, *foreign)]
    if (out / CHECKPOINTS).is_symlink():
        raise HpoError(
            f"{out / CHECKPOINTS} is a symbolic link; hpo train does not write through links: "
            "remove it, or -o another directory"
        )
    ckpt = latest(out / CHECKPOINTS)
    if ckpt is not None:
        if force:
            to_remove.append(out / CHECKPOINTS)
        elif read_state(ckpt).get("digest") != run_digest(tf.run_config(), int(read_state(ckpt)["step"])):
            raise HpoError(
                f"{out / CHECKPOINTS} holds checkpoints of a different configuration; "
                "use --force to start over, or -o another directory"
            )
    return to_remove


def train_file(
    config_path: str | Path,
    out_dir: str | Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    keep_checkpoints: bool = False,
    console: Console | None = None,
    merge: bool = False,
) -> TrainOutcome:
    """Run the training a config file describes; resume from ``OUTDIR/checkpoints`` when they are there."""
    from transformers import AutoTokenizer

    from hpo.api import cache_dir
    from trainers.data import CacheDamaged, prepare
    from trainers.loop import train

    tf = load_train_file(config_path)  # a bad file stops here: nothing written
    if merge and tf.model.peft is None:
        raise StudyFileError(str(config_path), [("model.peft", "--merge merges a LoRA adapter, but none is set")])
    if merge and tf.model.peft is not None and tf.model.peft.quantize is not None:
        raise StudyFileError(
            str(config_path),
            [("model.peft.quantize", "--merge needs full-precision base weights: a quantised base cannot be merged")],
        )
    out = Path(out_dir) if out_dir is not None else default_out_dir(config_path)
    to_remove = _check_out_dir(out, tf, force)
    run = tf.run_config()
    main = is_main()
    try:
        data = prepare(run, cache_dir())
        # Now, not after hours of training: the tokenizer the saved model ships with must load.
        tokenizer = AutoTokenizer.from_pretrained(str(data.tokenizer_dir), trust_remote_code=tf.model.trust_remote_code)
    except ConfigError as e:  # a dirty row, a model folder that does not load: name the setting
        raise StudyFileError(str(config_path), [(e.key, e.message)]) from None
    except (CacheDamaged, OSError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise HpoError(f"cannot load the data for {config_path}: {first}") from None
    if force and main:
        for p in to_remove:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    if force:
        _wait_for_everyone()  # no process may find the old checkpoints while the main one removes them

    own = ProgressReporter(console, show=main) if reporter is None else None
    import torch

    threads = torch.get_num_threads()
    if tf.threads is not None:
        torch.set_num_threads(tf.threads)
    try:
        with _graceful_sigint(own) if own is not None else contextlib.nullcontext():
            result = train(
                run,
                reporter or own,  # type: ignore[arg-type]
                cache_dir(),
                data=data,
                checkpoint_dir=out / CHECKPOINTS,
                save_every=tf.checkpoints.save_steps,
                keep_checkpoints=tf.checkpoints.save_total_limit,
            )
    except CheckpointMismatch as e:
        raise HpoError(f"cannot resume: {e}; use --force to start over") from None
    except ConfigError as e:  # a mistake only training shows (a dirty row): name the setting, like `hpo run`
        raise StudyFileError(str(config_path), [(e.key, e.message)]) from None
    except NonFiniteLoss as e:  # NaN or diverged: the run cannot go on
        raise HpoError(f"training stopped: {e}; try a lower training.learning_rate") from None
    except CheckpointWriteError as e:
        raise HpoError(f"{e}; free space (or fix the cause) and run the same command again: it resumes") from None
    finally:
        torch.set_num_threads(threads)
        if own is not None:
            own.close()

    # The outcome goes back to the caller without the model: only the save below needs it.
    model, result = result.model, replace(result, model=None)
    outcome = TrainOutcome(out, result, tf, interrupted=result.stopped is not None, provenance=tf.provenance)
    outcome.signum = own.signum if own is not None else None
    if outcome.interrupted:
        return outcome
    if main:
        outcome.files = _save(out, tf, result, model, tokenizer, keep_checkpoints, force, merge)
    _wait_for_everyone()
    return outcome


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        PartialState().wait_for_everyone()


def _save(
    out: Path,
    tf: TrainFile,
    result: TrainResult,
    model: Any,
    tokenizer: Any,
    keep_checkpoints: bool,
    force: bool,
    merge: bool = False,
) -> list[str]:
    """save_pretrained of the model and tokenizer, the config it ran, and metrics.json; the files written.

    Everything is written to ``OUTDIR/.hpo-saving`` first and moved in afterwards (``os.replace``: a link in
    OUTDIR is replaced, never written through); ``metrics.json``, the mark of a finished run, comes last.
    The final checkpoint stays until then: a save that fails (disk full) is redone by the same command,
    without training again.
    """
    from trainers.checkpoints import run_digest

    staging = out / STAGING
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove(staging)
        staging.mkdir()
        if tf.generation is not None and hasattr(model, "generation_config"):
            # The searched decoding goes with the model: a plain `generate()` after from_pretrained uses it.
            for k, v in tf.generation.generate_kwargs().items():
                setattr(model.generation_config, k, v)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if tf.model.peft is not None:
            (staging / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
            if tf.generation is not None and hasattr(model, "generation_config"):
                # PeftModel.save_pretrained writes the adapter only: the searched decoding goes next to it.
                model.generation_config.save_pretrained(staging)
            if merge:  # after the adapter is saved: merging changes the model in place
                merged = model.merge_and_unload()
                merged.save_pretrained(staging / MERGED)
                tokenizer.save_pretrained(staging / MERGED)
        header = "# The configuration `hpo train` ran to produce this folder; `hpo train` accepts it as it is.\n"
        (staging / OUT_CONFIG).write_text(header + yamlio.dumps(tf.model_dump(mode="json")), encoding="utf-8")
        written = sorted({p.name for p in staging.iterdir()} | {METRICS})
        links, foreign = _conflicts(out, written, _ours(out, tf))
        if (links or foreign) and not force:
            raise _refusal(out, links, foreign)
        prov = tf.provenance or {}
        metrics = {
            "metrics": result.metrics,
            "steps": result.steps,
            "eval_batches": tf.eval_batches,
            "evals": [{"step": s, **m} for s, m in result.evals],
            "train_time": round(result.train_time, 3),
            "eval_time": round(result.eval_time, 3),
            "setup_time": round(result.setup_time, 3),
            "tokens": result.tokens,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "peak_memory_mb": result.peak_memory_mb,
            "teacher_time": result.teacher_time,  # distillation: seconds in teacher forward passes
            "device": result.device,
            "precision": result.precision,
            "resumed_from": result.resumed_from,
            **({"examples": result.examples} if result.examples else {}),
            "config": OUT_CONFIG,
            "trial": {k: prov.get(k) for k in ("study", "trial", "objective", "value", "trial_steps")}
            if prov
            else None,
            "provenance": tf.provenance,
            "files": written,
        }
        (staging / METRICS).write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        # Recorded before the first file moves: a rerun after a crash in between knows these are its own.
        (staging / MANIFEST).write_text(json.dumps({"digest": run_digest(tf.run_config()), "files": written}))
        os.replace(staging / MANIFEST, out / MANIFEST)
        for name in [*(n for n in written if n != METRICS), METRICS]:
            os.replace(staging / name, out / name)
    except HpoError:
        _remove(staging)
        raise
    except Exception as e:
        _remove(staging)  # give the space back: the rerun needs it
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise HpoError(
            f"could not save the trained model to {out}: {first}; the finished run is kept in "
            f"{out / CHECKPOINTS}: free space (or fix the cause) and run the same command again: it only saves"
        ) from None
    _remove(staging)
    (out / MANIFEST).unlink(missing_ok=True)  # metrics.json lists the files from now on
    if not keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return written


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
