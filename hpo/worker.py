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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.config import RunConfig

# Codes in the shared stop array.
STOP_NONE, STOP_PRUNE, STOP_INTERRUPT = 0, 1, 2
STOP_REASONS = {STOP_PRUNE: "pruned", STOP_INTERRUPT: "interrupted"}


@dataclass
class WorkerSpec:
    """How to start one worker: its id, threads and environment (CUDA_VISIBLE_DEVICES, ...)."""

    worker_id: int
    threads: int
    env: dict[str, str]
    device_label: str  # for display: "cpu", "cuda:0", "cuda:0,1"
    processes: int = 1  # > 1: each trial runs as this many data-parallel ranks


class QueueReporter:
    """The trainer's reporter inside a worker: events go to the orchestrator, stops come from shared memory."""

    def __init__(self, worker_id: int, trial: int, results: Any, stop: Any) -> None:
        self.worker_id = worker_id
        self.trial = trial
        self.results = results
        self.stop = stop  # mp.Array('q', 4): [trial to stop, reason code, trial decided, step decided]

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.results.put(("log", self.worker_id, self.trial, step, metrics))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.results.put(("eval", self.worker_id, self.trial, step, metrics))

    def decided(self, step: int) -> bool:
        """Whether the orchestrator has handled this trial's eval at ``step`` (for deterministic doubles)."""
        return bool(self.stop[2] == self.trial and self.stop[3] >= step)

    def stop_reason(self) -> str | None:
        # Lock-free read: two aligned int64 loads; a torn read only delays the stop by one step.
        if self.stop[0] == self.trial:
            return STOP_REASONS.get(int(self.stop[1]), "stopped")
        return None


class TrainerRunner:
    """Runs trials with the real trainer (``trainers.loop.train``); what a worker calls per trial.

    ``setup`` runs once per worker process: imports, thread count, and the study's tokenised data (and
    pretrained weights) loaded into memory before the first trial arrives.
    """

    def __init__(self, cache_dir: str, warm_run: RunConfig | None = None, oom: dict[str, Any] | None = None) -> None:
        self.cache_dir = cache_dir
        self.warm_run = warm_run
        self.oom = oom or {"policy": "retry", "retries": 3}
        self._data: dict[str, Any] = {}

    def setup(self, spec: WorkerSpec) -> None:
        self._processes = spec.processes
        self._cpu = spec.device_label == "cpu"
        import torch

        torch.set_num_threads(spec.threads)
        from trainers.base import quiet_libraries

        quiet_libraries()
        import trainers.loop  # noqa: F401 - import accelerate & co now, not in the first trial

        if self.warm_run is not None:
            from trainers.models import build_model

            # Tokenise (or load the cache), and build the model once: this imports its modeling code and
            # keeps pretrained weights in memory, all while the orchestrator opens the storage.
            build_model(self.warm_run, self._prepare(self.warm_run))

    def _key(self, run: Any) -> str:
        from trainers.data import cache_key

        return cache_key(run)

    def _prepare(self, run: Any) -> Any:
        from trainers.data import prepare

        key = self._key(run)
        if key not in self._data:
            self._data[key] = prepare(run, self.cache_dir)
        return self._data[key]

    def __call__(self, run_dict: dict[str, Any], reporter: Any) -> dict[str, Any]:
        import torch

        from trainers.config import RunConfig
        from trainers.loop import train

        run = RunConfig.model_validate(run_dict)
        data = self._prepare(run)
        if getattr(self, "_processes", 1) > 1:
            from hpo.rank import launch

            return launch(run.model_dump(mode="json"), self.cache_dir, self._processes, reporter, self._cpu)
        retries = 0
        while True:
            try:
                _inject_oom(run)
                result = train(run, reporter, self.cache_dir, data=data).to_dict()
                result["oom_retries"] = retries
                if retries:
                    t = run.training
                    result["micro_batch"] = [t.per_device_train_batch_size, t.gradient_accumulation_steps]
                return result
            except torch.OutOfMemoryError as e:
                _free_memory()
                t = run.training
                can_split = t.per_device_train_batch_size > 1 and retries < int(self.oom["retries"])
                if self.oom["policy"] != "retry" or not can_split:
                    raise TrialOutOfMemory(self.oom["policy"], retries, t.per_device_train_batch_size) from e
                # Same effective batch, half the activations.
                retries += 1
                half = t.per_device_train_batch_size // 2
                run = run.model_copy(
                    update={
                        "training": t.model_copy(
                            update={
                                "per_device_train_batch_size": half,
                                "gradient_accumulation_steps": t.gradient_accumulation_steps * 2,
                            }
                        )
                    }
                )


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of accelerator memory and the OOM policy gives up on it."""

    def __init__(self, policy: str, retries: int, micro_batch: int) -> None:
        self.policy = policy
        super().__init__(f"out of memory at micro-batch {micro_batch} after {retries} retries")


def _inject_oom(run: Any) -> None:
    """Test hook: HPO_TEST_OOM_ABOVE_BATCH=N makes micro-batches above N raise an out-of-memory error."""
    limit = os.environ.get("HPO_TEST_OOM_ABOVE_BATCH")
    if limit and run.training.per_device_train_batch_size > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"injected: micro-batch {run.training.per_device_train_batch_size} > {limit}")


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the orchestrator dies (even by kill -9), so no worker trains on, orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc: workers exit on a closed queue
        pass


def worker_main(spec: WorkerSpec, runner: Any, tasks: Any, results: Any, stop: Any) -> None:
    """Entry point of a worker process."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group, and SLURM's scancel sends SIGTERM to every process of the job:
    # the orchestrator decides, and tells workers via `stop`. A worker still dies with its orchestrator
    # (SIGKILL through `_die_with_parent`), and `close` ends it with SIGKILL if it does not exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(spec.env)  # before torch is imported: thread pools and visible GPUs are read then
    from trainers.base import ConfigError, NonFiniteLoss

    try:
        runner.setup(spec)
    except BaseException as e:
        tb = traceback.format_exc(limit=-12)
        if isinstance(e, ConfigError):  # a setting of the study file: reported as FILE: key: message
            results.put(("fatal", spec.worker_id, None, e.message.splitlines()[0], e.key, tb))
        else:
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            results.put(("fatal", spec.worker_id, None, f"worker {spec.worker_id} failed to start: {msg}", None, tb))
        return
    results.put(("ready", spec.worker_id, os.getpid()))
    while True:
        msg = tasks.get()
        if msg is None:
            return
        trial, run_dict = msg
        reporter = QueueReporter(spec.worker_id, trial, results, stop)
        try:
            results.put(("done", spec.worker_id, trial, runner(run_dict, reporter)))
        except NonFiniteLoss as e:
            results.put(("nonfinite", spec.worker_id, trial, str(e)))
        except TrialOutOfMemory as e:
            results.put(("oom", spec.worker_id, trial, str(e), e.policy))
        except ConfigError as e:
            tb = traceback.format_exc(limit=-8)
            results.put(("error", spec.worker_id, trial, e.message.splitlines()[0], tb, e.key))
        except BaseException as e:
            tb = traceback.format_exc(limit=-8)
            results.put(("error", spec.worker_id, trial, f"{type(e).__name__}: {e}".splitlines()[0], tb))


class WorkerHandle:
    """The orchestrator's side of one worker process."""

    def __init__(self, spec: WorkerSpec, runner: Any, results: Any, ctx: Any) -> None:
        self.spec = spec
        self.runner = runner
        self.tasks = ctx.Queue()
        self.stop = ctx.Array("q", [-1, STOP_NONE, -1, -1], lock=False)
        self.process = ctx.Process(
            target=worker_main,
            args=(spec, runner, self.tasks, results, self.stop),
            name=f"hpo-worker-{spec.worker_id}",
            daemon=True,
        )
        self.process.start()
        self.ready = False
        self.trial: int | None = None  # trial number being run
        self._closing = False

    def send(self, trial: int, run: dict[str, Any]) -> None:
        self.trial = trial
        self.tasks.put((trial, run))

    def request_stop(self, trial: int, code: int) -> None:
        self.stop[1] = code
        self.stop[0] = trial

    def ack(self, trial: int, step: int) -> None:
        """Record that the eval of ``trial`` at ``step`` has been reported and judged."""
        self.stop[3] = step
        self.stop[2] = trial

    def alive(self) -> bool:
        return self.process.is_alive()

    def request_close(self) -> None:
        """Tell the worker to exit after its current task; returns at once (see ``close_all``)."""
        if self._closing or not self.process.is_alive():
            return
        self._closing = True
        try:
            self.tasks.put(None)
        except (OSError, ValueError):
            pass

    def close(self, timeout: float = 5.0) -> None:
        self.request_close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)


def close_all(workers: list[WorkerHandle], timeout: float = 5.0) -> None:
    """Close workers in parallel: each interpreter's exit (torch teardown, ~1-2 s) overlaps the others'."""
    for w in workers:
        w.request_close()
    for w in workers:
        w.close(timeout)


def mp_context() -> Any:
    # spawn, not fork: a forked child of a process holding SQLite connections or CUDA state is unsafe.
    return mp.get_context("spawn")
