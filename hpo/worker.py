"""Worker processes: import the libraries once, keep data and base weights in memory, run trial after trial.

The orchestrator sends ``(trial_number, run_config_dict)`` on a worker's task queue; the worker trains and
sends events back on the shared result queue. Prune and interrupt decisions come back through a small
shared array the trainer polls between optimizer steps, so a worker never waits for the storage: reporting
is asynchronous and the decision lands at most one step later.

This module is imported by every worker at start: keep its top level free of torch and Optuna.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from dataclasses import dataclass
from typing import Any

# Codes in the shared stop array.
STOP_NONE, STOP_PRUNE, STOP_INTERRUPT = 0, 1, 2
STOP_REASONS = {STOP_PRUNE: "pruned", STOP_INTERRUPT: "interrupted"}


@dataclass
class WorkerSpec:
    """How to start one worker: its id, threads and environment (CUDA_VISIBLE_DEVICES, ...)."""

    worker_id: int
    threads: int
    env: dict[str, str]
    device_label: str  # for display: "cpu", "cuda:0"


class QueueReporter:
    """The trainer's reporter inside a worker: events go to the orchestrator, stops come from shared memory."""

    def __init__(self, worker_id: int, trial: int, results: Any, stop: Any) -> None:
        self.worker_id = worker_id
        self.trial = trial
        self.results = results
        self.stop = stop  # mp.Array('q', 2): [trial number to stop, reason code]

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.results.put(("log", self.worker_id, self.trial, step, metrics))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.results.put(("eval", self.worker_id, self.trial, step, metrics))

    def stop_reason(self) -> str | None:
        # Lock-free read: two aligned int64 loads; a torn read only delays the stop by one step.
        if self.stop[0] == self.trial:
            return STOP_REASONS.get(int(self.stop[1]), "stopped")
        return None


def _quiet() -> None:
    """Silence per-trial library noise that says nothing about the user's study."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def worker_main(spec: WorkerSpec, cache_dir: str, tasks: Any, results: Any, stop: Any) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group: the orchestrator decides, and tells workers via `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(spec.env)  # before torch is imported: thread pools and visible GPUs are read then
    try:
        import torch

        torch.set_num_threads(spec.threads)
        _quiet()
        from trainers.base import NonFiniteLoss
        from trainers.config import RunConfig
        from trainers.data import PreparedData, cache_key, prepare
        from trainers.loop import train
    except BaseException as e:  # noqa: BLE001 - report any start-up failure, then exit
        results.put(("fatal", spec.worker_id, None, f"worker failed to start: {type(e).__name__}: {e}"))
        return
    results.put(("ready", spec.worker_id, os.getpid()))
    data: dict[str, PreparedData] = {}  # tokenised data stays in memory across trials
    while True:
        msg = tasks.get()
        if msg is None:
            return
        trial, run_dict = msg
        reporter = QueueReporter(spec.worker_id, trial, results, stop)
        try:
            run = RunConfig.model_validate(run_dict)
            key = cache_key(run)
            if key not in data:
                data[key] = prepare(run, cache_dir)
            result = train(run, reporter, cache_dir, data=data[key])
            results.put(("done", spec.worker_id, trial, result.to_dict()))
        except NonFiniteLoss as e:
            results.put(("nonfinite", spec.worker_id, trial, str(e)))
        except BaseException as e:  # noqa: BLE001 - a trial's crash must not end the worker
            tb = traceback.format_exc(limit=-8)
            results.put(("error", spec.worker_id, trial, f"{type(e).__name__}: {e}".splitlines()[0], tb))


class WorkerHandle:
    """The orchestrator's side of one worker process."""

    def __init__(self, spec: WorkerSpec, cache_dir: str, results: Any, ctx: Any) -> None:
        self.spec = spec
        self.tasks = ctx.Queue()
        self.stop = ctx.Array("q", [-1, STOP_NONE], lock=False)
        self.process = ctx.Process(
            target=worker_main,
            args=(spec, cache_dir, self.tasks, results, self.stop),
            name=f"hpo-worker-{spec.worker_id}",
            daemon=True,
        )
        self.process.start()
        self.ready = False
        self.trial: int | None = None  # trial number being run

    def send(self, trial: int, run: dict[str, Any]) -> None:
        self.trial = trial
        self.tasks.put((trial, run))

    def request_stop(self, trial: int, code: int) -> None:
        self.stop[1] = code
        self.stop[0] = trial

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            try:
                self.tasks.put(None)
            except (OSError, ValueError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)


def mp_context() -> Any:
    # spawn, not fork: a forked child of a process holding SQLite connections or CUDA state is unsafe.
    return mp.get_context("spawn")
