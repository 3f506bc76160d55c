"""The worker side of population-based training: train one member for one interval.

A ``PbtRunner`` is the runner PBT workers call per command (``hpo.worker``): the command's run dict holds
the member's resolved run configuration (``run``, its hyperparameter schedule included) and the interval
(``segment``: the member's checkpoint folder, the step to stop at, the checkpoint cadence). Training
resumes from the member's newest checkpoint (after an exploit, the parent's copy) and stops at the
interval's end with a checkpoint there. Imported by every worker at start: no torch, no Optuna at the top.
"""

from __future__ import annotations

from typing import Any

from hpo.protocol import TrialResult
from hpo.worker import TrainerRunner
from trainers.base import Reporter

INTERVAL_STOP = "pbt-interval"  # the trainer's stop reason at an interval boundary


class IntervalReporter(Reporter):
    """Passes everything on to the worker's reporter, and stops the run once it reached ``until``."""

    def __init__(self, inner: Reporter, until: int) -> None:
        self.inner = inner
        self.until = until
        self.step = 0

    def on_start(self, step: int, total_steps: int) -> None:
        self.step = step
        self.inner.on_start(step, total_steps)

    def on_step(self, step: int) -> None:
        self.step = step
        self.inner.on_step(step)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_log(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_eval(step, metrics)

    def stop_reason(self) -> str | None:
        outer = self.inner.stop_reason()  # pruned / interrupted by the orchestrator first
        if outer is not None:
            return outer
        return INTERVAL_STOP if self.step >= self.until else None


class PbtRunner(TrainerRunner):
    """Runs one interval of one member per command: ``{"run": RunConfig dict, "segment": {...}}``."""

    def __call__(self, payload: dict[str, Any], reporter: Any) -> TrialResult:
        from trainers.config import RunConfig
        from trainers.loop import train

        run = RunConfig.model_validate(payload["run"])
        segment = payload["segment"]
        done = train(
            run,
            IntervalReporter(reporter, int(segment["until"])),
            self.cache_dir,
            data=self._prepare(run),
            checkpoint_dir=segment["dir"],
            save_every=int(segment["every"]),
            keep_checkpoints=1,
            resume=True,
        )
        return TrialResult.from_train(done)
