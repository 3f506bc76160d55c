"""Deterministic stand-ins for the trainer, run inside real worker processes.

``CurveRunner`` replaces ``hpo.worker.TrainerRunner``: no torch, no data, a loss curve computed from the
learning rate. Run by ``orchestrators.Orchestrator``, it waits after each eval until the orchestrator has
judged it (``Verdicts``), so pruning is deterministic. ``train_oom_above`` is a training function for
``TrainerRunner(train_fn=...)`` that runs out of memory above a micro-batch. ``CloseTogether`` is a runner
whose workers can only exit once all of them have been told to close. They live in their own module
so spawned workers can import them by name.
"""

from __future__ import annotations

import atexit
import math
import os
import time
from pathlib import Path
from typing import Any

from hpo.protocol import TrialResult
from hpo.worker import mp_context
from trainers.base import NonFiniteLoss


class Verdicts:
    """Which evals the orchestrator has judged, in memory shared with the worker processes.

    The test's channel, not the product's: a real trainer never waits for a verdict (a prune lands at most
    one step late), but a double that trains in microseconds would finish before any prune arrived.
    ``armed`` is set by ``orchestrators.Orchestrator``; a runner under any other orchestrator never waits.
    """

    SLOTS = 1024  # trial numbers modulo this: far more than a test has running at once

    def __init__(self) -> None:
        ctx = mp_context()
        self._trial = ctx.RawArray("q", [-1] * self.SLOTS)
        self._step = ctx.RawArray("q", [-1] * self.SLOTS)
        self._armed = ctx.RawValue("b", 0)

    def arm(self) -> None:
        self._armed.value = 1

    @property
    def armed(self) -> bool:
        return bool(self._armed.value)

    def judged(self, trial: int, step: int) -> None:
        slot = trial % self.SLOTS
        self._step[slot] = step  # the step before the trial: a reader that sees the trial sees its step
        self._trial[slot] = trial

    def decided(self, trial: int, step: int) -> bool:
        slot = trial % self.SLOTS
        return bool(self._trial[slot] == trial and self._step[slot] >= step)


def final_loss(lr: float) -> float:
    """Best at lr = 1e-3; a unit of log10(lr) away costs 1."""
    return 1.0 + (math.log10(lr) + 3.0) ** 2


def seed_offset(seed: int) -> float:
    """A fixed pseudo-random offset in [-0.5, 0.5) per seed."""
    return ((seed * 7919) % 101) / 101 - 0.5


def curve(lr: float, step: int) -> float:
    return final_loss(lr) + 5.0 / step


class CurveRunner:
    """A trainer double. Behaviours are keyed on the learning rate so tests choose them with params.

    - ``fail_above``: raise RuntimeError when lr is above it (a crashing trial).
    - ``nan_above``: raise NonFiniteLoss when lr is above it (a diverging trial).
    - ``die_above`` + ``marker_dir``: the worker process kills itself the first time such params run.
    - ``die_in_setup`` + ``marker_dir``: the first worker process to start kills itself before it is ready
      (a worker that dies with no trial: nothing to fail).
    - ``block``: after the first eval, wait (up to 30 s) until told to stop — for interrupt tests.
    - ``close_elsewhere`` = (storage URL, study name, trial number): before that trial's first eval, this
      worker process does what another process's orphan check does to a trial without heartbeat (FAIL,
      re-queued), as if its orchestrator had been paused past the heartbeat grace.
    - ``params_from_lr``: report ``total_params`` = ``trainable_params`` = lr x 1e6 (a cost that grows with
      the learning rate, against a loss best at 1e-3: a Pareto front for multi-objective tests).
    - ``seed_noise``: add ``seed_noise * seed_offset(training.seed)`` to every value (seed-to-seed noise).
    """

    def __init__(
        self,
        fail_above: float | None = None,
        nan_above: float | None = None,
        die_above: float | None = None,
        marker_dir: str | None = None,
        block: bool = False,
        step_sleep: float = 0.0,
        close_elsewhere: tuple[str, str, int] | None = None,
        seed_noise: float = 0.0,
        params_from_lr: bool = False,
        die_in_setup: bool = False,
    ) -> None:
        self.die_in_setup = die_in_setup
        self.fail_above = fail_above
        self.nan_above = nan_above
        self.die_above = die_above
        self.marker_dir = marker_dir
        self.block = block
        self.step_sleep = step_sleep
        self.close_elsewhere = close_elsewhere
        self.seed_noise = seed_noise
        self.params_from_lr = params_from_lr
        self.verdicts = Verdicts()

    def setup(self, spec: Any) -> None:
        if self.die_in_setup:
            assert self.marker_dir is not None
            try:  # O_EXCL: one worker alone dies, however many start together
                os.close(os.open(Path(self.marker_dir) / "died-in-setup", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(9)

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        lr = float(run["training"]["learning_rate"])
        noise = self.seed_noise * seed_offset(int(run["training"]["seed"]))
        steps = int(run["training"]["max_steps"])
        every = int(run["training"]["eval_steps"])
        if self.fail_above is not None and lr > self.fail_above:
            raise RuntimeError(f"simulated crash at lr={lr:.3g}")
        if self.die_above is not None and lr > self.die_above:
            assert self.marker_dir is not None
            marker = Path(self.marker_dir) / f"died-{lr!r}"
            if not marker.exists():
                marker.write_text("1")
                os._exit(9)  # like kill -9: no cleanup, no message to the orchestrator
        done = 0
        metrics: dict[str, float] = {}
        stopped = None
        for step in range(1, steps + 1):
            stopped = reporter.stop_reason()
            if stopped is not None:
                break
            done = step
            if self.step_sleep:
                time.sleep(self.step_sleep)
            if self.nan_above is not None and lr > self.nan_above and step == every:
                raise NonFiniteLoss(step, float("nan"))
            if step % every == 0 or step == steps:
                if step == every and self.close_elsewhere and self.close_elsewhere[2] == reporter.trial:
                    _fail_and_requeue(*self.close_elsewhere)
                v = curve(lr, step) + noise
                metrics = {"eval_loss": v, "perplexity": math.exp(v)}
                reporter.on_eval(step, metrics)
                if self.verdicts.armed:
                    _wait(lambda s=step: self.verdicts.decided(reporter.trial, s))  # type: ignore[misc]
                if self.block:
                    _wait(lambda: reporter.stop_reason() is not None, timeout=30.0)
        return TrialResult(
            metrics=metrics,
            steps=done,
            train_time=0.001 * done,
            eval_time=0.0,
            setup_time=0.0,
            tokens=done,
            tokens_per_s=1000.0,
            device="cpu",
            precision="no",
            stopped=stopped if stopped is not None else reporter.stop_reason(),
            total_params=int(lr * 1e6) if self.params_from_lr else None,
            trainable_params=int(lr * 1e6) if self.params_from_lr else None,
        )


def train_oom_above(limit: int, run: Any, reporter: Any, cache_dir: str, data: Any = None) -> Any:
    """``trainers.loop.train``, except that micro-batches above ``limit`` run out of memory (on CPU too).

    For ``TrainerRunner(train_fn=functools.partial(train_oom_above, N))``.
    """
    import torch

    from trainers.loop import train

    batch = run.training.per_device_train_batch_size
    if batch > limit:
        raise torch.OutOfMemoryError(f"injected: micro-batch {batch} > {limit}")
    return train(run, reporter, cache_dir, data=data)


def _fail_and_requeue(url: str, study_name: str, number: int) -> None:
    """What an orphan check in another process does to a RUNNING trial whose heartbeat stopped."""
    import optuna

    from hpo.ledger import Reason, TrialLedger
    from hpo.storage import open_storage
    from hpo.store import study_store

    study = optuna.load_study(study_name=study_name, storage=open_storage(url, create=False))
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    ledger = TrialLedger(study, study_store(study), n_trials=0, grid_points=None)
    assert ledger.fail_and_requeue(trial, Reason.orphaned(process_died=False))


def _wait(cond: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.001)


def run_orchestrator(url: str, study: dict[str, Any], workers: int) -> None:
    """Entry point of a separate process running its own orchestrator on a shared storage."""
    import io

    from orchestrators import Orchestrator
    from rich.console import Console

    from hpo.config import validate_study
    from hpo.display import RunDisplay
    from hpo.storage import create_or_resume, open_storage
    from hpo.worker import WorkerSpec

    cfg = validate_study(study)
    study_obj, _ = create_or_resume(cfg, open_storage(url, create=True))
    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, study_obj, [WorkerSpec(i, 1, {}, "cpu") for i in range(workers)], CurveRunner(), display)
    try:
        orch.run()
    finally:
        orch.close()


class CloseTogether:
    """A runner whose worker, on its way out, waits until every worker of its group has been told to close.

    Each worker, once its loop has taken ``Close`` (its interpreter is exiting), drops a marker file and
    waits for the markers of all ``group`` workers. Closing them in parallel (every ``Close`` sent before the
    first worker is waited for) lets them all exit 0; closing them one after another leaves the first one
    waiting for markers that never come until ``close`` kills it. No timing is measured.
    """

    def __init__(self, folder: str, group: int, wait: float = 30.0) -> None:
        self.folder = folder
        self.group = group
        self.wait = wait  # longer than ``close``'s timeout: a serial close kills the first worker

    def setup(self, spec: Any) -> None:
        atexit.register(self._barrier, spec.worker_id)  # spawn's children run atexit after the target

    def _barrier(self, worker_id: int) -> None:
        folder = Path(self.folder)
        (folder / f"closing-{worker_id}").write_text("1")
        deadline = time.monotonic() + self.wait
        while len(list(folder.glob("closing-*"))) < self.group:
            if time.monotonic() > deadline:
                os._exit(3)  # not all were told: a non-zero exit the test sees
            time.sleep(0.01)

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        raise AssertionError("CloseTogether runs no trials")


def run_orchestrators(url: str, study: dict[str, Any], processes: int, workers: int) -> None:
    """Run ``processes`` separate orchestrator processes (``run_orchestrator``) on one storage to the end;
    each must exit cleanly (several `hpo worker`s, or a SLURM array's tasks, on one study)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_orchestrator, args=(url, study, workers)) for _ in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * processes


def run_confirmation(
    path: str,
    top: int,
    seeds: int,
    workers: int = 2,
    seed_noise: float = 0.0,
    step_sleep: float = 0.0,
    fail_above: float | None = None,
) -> Any:
    """What `hpo confirm` does, with ``CurveRunner`` workers: plan, enqueue, run, summarize (and store when
    complete). Returns the ``hpo.confirm.Confirmation``. Also the entry point of a process a test kills."""
    import io

    from orchestrators import Orchestrator
    from rich.console import Console

    from hpo import confirm
    from hpo.display import RunDisplay
    from hpo.storage import open_storage
    from hpo.worker import WorkerSpec

    plan = confirm.plan(path, top, seeds)
    cfg, study, todo = confirm.prepare(plan, open_storage(plan.source.storage_url, create=False))
    if todo:
        display = RunDisplay(console=Console(file=io.StringIO()), live=False)
        specs = [WorkerSpec(i, 1, {}, "cpu") for i in range(workers)]
        orch = Orchestrator(
            cfg, study, specs, CurveRunner(seed_noise=seed_noise, step_sleep=step_sleep, fail_above=fail_above), display
        )
        try:
            orch.run()
        finally:
            orch.close()
    conf = confirm.confirmation(plan, study.get_trials(deepcopy=False))
    if conf.complete:
        confirm.store_summary(study, conf)
    return conf
