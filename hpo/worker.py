"""Worker processes: import the libraries once, keep data and base weights in memory, run trial after trial.

The orchestrator sends ``RunTrial`` commands on a worker's task queue; the worker trains and sends events
back on the shared result queue (the messages are ``hpo.protocol``'s). Prune and interrupt decisions come
back through a small shared array the trainer polls between optimizer steps, so a worker never waits for
the storage: reporting is asynchronous and the decision lands at most one step later.

This module is imported by every worker at start: keep its top level free of torch and Optuna.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.config import RunConfig

from hpo.protocol import (
    Close,
    Done,
    Error,
    ErrorInfo,
    Eval,
    Fatal,
    Log,
    NonFinite,
    Oom,
    Ready,
    RunTrial,
    Stop,
    TrialEnded,
    TrialResult,
)
from trainers.base import Reporter


@dataclass
class WorkerSpec:
    """How to start one worker: its id, threads and environment (CUDA_VISIBLE_DEVICES, ...)."""

    worker_id: int
    threads: int
    env: dict[str, str]
    device_label: str  # for display: "cpu", "cuda:0", "cuda:0,1"
    processes: int = 1  # > 1: each trial runs as this many data-parallel ranks


class QueueReporter(Reporter):
    """The trainer's reporter inside a worker: events go to the orchestrator, stops come from shared memory."""

    def __init__(self, worker_id: int, trial: int, results: Any, stop: Any, threads: Any = None) -> None:
        self.worker_id = worker_id
        self.trial = trial
        self.results = results
        self.stop = stop  # mp.Array('q', 2): [trial to stop, Stop code]
        self.threads = threads  # mp.Value('i'): torch threads the orchestrator wants now (hpo/tail.py)
        self._threads_now = -1

    def on_start(self, step: int, total_steps: int) -> None:
        self._apply_threads()

    def on_step(self, step: int) -> None:
        self._apply_threads()

    def _apply_threads(self) -> None:
        # A lock-free int read per step; torch is the trainer's (a test double may not import it).
        n = self.threads.value if self.threads is not None else -1
        torch = sys.modules.get("torch")
        if n > 0 and n != self._threads_now and torch is not None:
            torch.set_num_threads(n)
            self._threads_now = n

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.results.put(Log(self.worker_id, self.trial, step, metrics))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.results.put(Eval(self.worker_id, self.trial, step, metrics))

    def stop_reason(self) -> str | None:
        # Lock-free read: two aligned int64 loads; a torn read only delays the stop by one step.
        if self.stop[0] == self.trial:
            return Stop(int(self.stop[1])).reason or "stopped"
        return None


TrainFn = Callable[..., Any]  # trainers.loop.train's signature: (run, reporter, cache_dir, data=...) -> TrainResult


class TrainerRunner:
    """Runs trials with the real trainer (``trainers.loop.train``); what a worker calls per trial.

    ``setup`` runs once per worker process: imports, thread count, and the study's tokenised data (and
    pretrained weights) loaded into memory before the first trial arrives. ``train_fn`` replaces the
    training function of one-process trials (same signature as ``trainers.loop.train``; it travels to the
    worker process, so a module-level function or a ``functools.partial`` of one).
    """

    def __init__(
        self,
        cache_dir: str,
        warm_run: RunConfig | None = None,
        oom: dict[str, Any] | None = None,
        train_fn: TrainFn | None = None,
        save_models: Any = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.save_models = save_models  # hpo.saved_models.SaveSpec: keep finished trials' weights
        self.warm_run = warm_run
        self.oom = oom or {"policy": "retry", "retries": 3}
        self.train_fn = train_fn
        self._data: dict[str, Any] = {}
        self._processes = 1  # set by `setup` from the worker's spec
        self._cpu = True

    def setup(self, spec: WorkerSpec) -> None:
        self._processes = spec.processes
        self._cpu = spec.device_label == "cpu"
        import torch

        torch.set_num_threads(spec.threads)
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

    def __call__(self, run_dict: dict[str, Any], reporter: Any) -> TrialResult:
        import torch

        from trainers.config import RunConfig
        from trainers.loop import train

        run = RunConfig.model_validate(run_dict)
        data = self._prepare(run)
        if self._processes > 1:
            from hpo.rank import launch

            return launch(run.model_dump(mode="json"), self.cache_dir, self._processes, reporter, self._cpu)
        train_fn = self.train_fn or train
        retries = 0
        while True:
            try:
                done = train_fn(run, reporter, self.cache_dir, data=data)
                t = run.training
                micro_batch = [t.per_device_train_batch_size, t.gradient_accumulation_steps] if retries else None
                saved = self._save(done, run, data, reporter)
                return TrialResult.from_train(done, oom_retries=retries, micro_batch=micro_batch, model_dir=saved)
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

    def _save(self, done: Any, run: RunConfig, data: Any, reporter: Any) -> str | None:
        """fidelity.save_models: write the weights of a trial that ran to its end (the orchestrator keeps the best)."""
        if self.save_models is None or done.stopped is not None or done.model is None or not done.metrics:
            return None
        from hpo.saved_models import save_trial_model

        try:
            return save_trial_model(
                self.save_models,
                reporter.trial,
                done.model,
                data.tokenizer_dir,
                run.model_dump(mode="json"),
                done.metrics,
            )
        except OSError:  # disk full, say: the trial's result still counts, only its weights are not kept
            return None


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of accelerator memory and the OOM policy gives up on it."""

    def __init__(self, policy: str, retries: int, micro_batch: int) -> None:
        self.policy = policy
        super().__init__(f"out of memory at micro-batch {micro_batch} after {retries} retries")


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


def worker_main(spec: WorkerSpec, runner: Any, tasks: Any, results: Any, stop: Any, threads: Any = None) -> None:
    """Entry point of a worker process."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group, and SLURM's scancel sends SIGTERM to every process of the job:
    # the orchestrator decides, and tells workers via `stop`. A worker still dies with its orchestrator
    # (SIGKILL through `_die_with_parent`), and `close` ends it with SIGKILL if it does not exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(spec.env)  # before torch is imported: thread pools and visible GPUs are read then
    from trainers.base import NonFiniteLoss, quiet_libraries

    quiet_libraries()  # this process's own settings: it is the entry point
    try:
        runner.setup(spec)
    except BaseException as e:
        results.put(Fatal(spec.worker_id, ErrorInfo.from_exception(e, limit=-12)))
        return
    results.put(Ready(spec.worker_id, os.getpid()))
    while True:
        command = tasks.get()
        if isinstance(command, Close):
            return
        assert isinstance(command, RunTrial)
        trial = command.trial
        reporter = QueueReporter(spec.worker_id, trial, results, stop, threads)
        try:
            results.put(Done(spec.worker_id, trial, runner(command.run, reporter)))
        except TrialEnded as e:  # the ranks of a multi-process trial said how it ended
            results.put(replace(e.event, worker=spec.worker_id, trial=trial))
        except NonFiniteLoss as e:
            results.put(NonFinite(spec.worker_id, trial, str(e)))
        except TrialOutOfMemory as e:
            results.put(Oom(spec.worker_id, trial, str(e), e.policy))
        except BaseException as e:
            results.put(Error(spec.worker_id, trial, ErrorInfo.from_exception(e)))


def idle_death(spec: WorkerSpec, code: int | None) -> str:
    """The console line for a worker that died with no trial (while starting, or between trials): nothing to
    fail or re-run, but an OOM killer or a segfault there is still worth knowing of."""
    return (
        f"[yellow]worker {spec.worker_id} ({spec.device_label}) died with no trial running "
        f"(exit code {code}); a new one takes its place[/]"
    )


class WorkerHandle:
    """The orchestrator's side of one worker process."""

    def __init__(self, spec: WorkerSpec, runner: Any, results: Any, ctx: Any) -> None:
        self.spec = spec
        self.runner = runner
        self.tasks = ctx.Queue()
        self.stop = ctx.Array("q", [-1, Stop.NONE], lock=False)
        self.threads = ctx.Value("i", spec.threads, lock=False)  # raised in a study's tail: hpo/tail.py
        self.process = ctx.Process(
            target=worker_main,
            args=(spec, runner, self.tasks, results, self.stop, self.threads),
            name=f"hpo-worker-{spec.worker_id}",
            daemon=True,
        )
        self.process.start()
        self.ready = False
        self.pid: int | None = None  # as the worker announced it when ready
        self.trial: int | None = None  # trial number being run
        self._closing = False

    def send(self, trial: int, run: dict[str, Any]) -> None:
        self.trial = trial
        self.threads.value = self.spec.threads  # a new trial starts on the worker's own threads
        self.tasks.put(RunTrial(trial, run))

    def request_stop(self, trial: int, code: Stop) -> None:
        self.stop[1] = code  # the code before the trial: a reader that sees the trial sees its code
        self.stop[0] = trial

    def alive(self) -> bool:
        return self.process.is_alive()

    def request_close(self) -> None:
        """Tell the worker to exit after its current task; returns at once (see ``close_all``)."""
        if self._closing or not self.process.is_alive():
            return
        self._closing = True
        try:
            self.tasks.put(Close())
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
