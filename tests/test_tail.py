"""The tail of a study: idle CPU workers' cores go to the trials still running (hpo/tail.py)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from orchestrators import Orchestrator
from rich.console import Console

import studies
from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.protocol import TrialResult
from hpo.storage import create_or_resume, open_storage
from hpo.tail import Busy, lend_idle_cores
from hpo.worker import WorkerSpec


@pytest.mark.parametrize(
    ("running", "idle", "plan"),
    [
        ([Busy(0, 1, 100)], 1, {0: 2}),  # 2 workers x 1 thread, one idle: the running trial gets both cores
        ([Busy(0, 1, 100)], 3, {0: 4}),
        ([Busy(0, 1, 100), Busy(1, 1, 30)], 1, {0: 2, 1: 1}),  # the longest trial first
        ([Busy(0, 1, 100), Busy(1, 1, 90)], 2, {0: 2, 1: 2}),  # then the most steps left per thread
        ([Busy(0, 2, 100), Busy(1, 1, 60)], 1, {0: 2, 1: 2}),  # 100/2 < 60/1
        ([Busy(0, 1, 0)], 1, {0: 1}),  # a trial at its end gains nothing
        ([], 2, {}),
        ([Busy(0, 1, 100)], 0, {0: 1}),  # no idle worker: every trial on its own threads
    ],
)
def test_lend_idle_cores(running: list[Busy], idle: int, plan: dict[int, int]) -> None:
    assert lend_idle_cores(running, idle) == plan


class ThreadsRunner:
    """A trial that steps like the trainer (on_start, on_step) and records the torch threads it ran with."""

    def setup(self, spec: Any) -> None:
        import torch

        torch.set_num_threads(spec.threads)

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        import torch

        steps = int(run["training"]["max_steps"])
        reporter.on_start(0, steps)
        seen = []
        for step in range(1, steps + 1):
            time.sleep(0.05)
            reporter.on_step(step)
            seen.append(torch.get_num_threads())
        metrics = {"eval_loss": 1.0, "perplexity": 2.718, "threads_first": seen[0], "threads_max": max(seen)}
        reporter.on_eval(steps, metrics)
        return TrialResult(
            metrics=metrics,
            steps=steps,
            train_time=0.05 * steps,
            eval_time=0.0,
            setup_time=0.0,
            tokens=steps,
            tokens_per_s=20.0,
            device="cpu",
            precision="no",
        )


@pytest.mark.slow
def test_last_trial_runs_on_the_idle_workers_cores_too(tmp_path: Path) -> None:
    # 3 trials on 2 workers of 1 thread: the third runs alone (the first two end together), so the
    # idle worker's core goes to it; the first two ran on 1 thread each.
    d = studies.curve(n_trials=3, fidelity={"max_steps": 40, "eval_every": 40})
    cfg = validate_study(d, "s.yaml")
    study, _ = create_or_resume(cfg, open_storage(f"sqlite:///{tmp_path}/s.db", create=True))
    display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
    specs = [WorkerSpec(i, 1, {}, "cpu") for i in range(2)]
    orch = Orchestrator(cfg, study, specs, ThreadsRunner(), display)
    try:
        orch.run()
    finally:
        orch.close()
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.datetime_start)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    threads = [(t.user_attrs["metrics"]["threads_first"], t.user_attrs["metrics"]["threads_max"]) for t in trials]
    assert threads[0] == (1, 1) and threads[1] == (1, 1)
    # Ends on 2 threads: raised once the other worker went idle, or started with 2 when that worker was
    # already idle at its start (which of the two depends on the machine's timing).
    assert threads[2][1] == 2 and threads[2][0] in (1, 2)
