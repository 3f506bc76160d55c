"""The orchestrator: owns the Optuna study, is the only writer to storage, and feeds worker processes.

Workers run the trials (``hpo.worker``); the orchestrator asks the sampler for parameters, sends resolved
run configs, turns each eval into ``trial.report`` + a pruning decision, and tells the study the outcome.
Every way a trial can end is recorded: COMPLETE, PRUNED (pruner, non-finite loss), FAIL with the reason
(a ``hpo.ledger.Reason``: crash, worker died, interrupted). Trials a dead or interrupted run leaves behind
are re-queued with the same parameters, so a study always resumes to its ``n_trials`` total. What counts
towards that total, and what is re-queued or discarded, is the ledger's (``hpo.ledger.TrialLedger``); the
storage is reached through its adapter (``hpo.store``). This module is the loop: launch, judge, finish.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.budget import TrialLength
from hpo.conditional import ask
from hpo.config import StudyConfig
from hpo.curves import CurveStore
from hpo.display import RunDisplay
from hpo.errors import HpoWarning, Terminated, WorkerSetupError
from hpo.genstudy import pruning_value, uses_proxy
from hpo.ledger import HOSTNAME, Reason, ReasonKind, TrialLedger
from hpo.objectives import ProxyPruner, trial_values
from hpo.protocol import TRIAL_ENDS, Done, Error, Eval, Event, Fatal, Log, NonFinite, Oom, Ready, Stop, TrialResult
from hpo.record import A_REASON, ATTR_DATA_CLEAN, ATTR_TOKENIZER_NOTE, TrialAttrs, better
from hpo.saved_models import A_MODEL_DIR, keeper_of
from hpo.space import to_distributions
from hpo.store import HEARTBEAT_INTERVAL, RETRY_FOR, StudyStore, study_store
from hpo.tail import Busy, lend_idle_cores
from hpo.worker import WorkerHandle, WorkerSpec, close_all, idle_death, mp_context

BEST_REFRESH = 5.0  # seconds between reads of the study's best trial (other processes' results)

# A main loop silent this long is stuck, not waiting on storage (busy timeout 60 s, then up to RETRY_FOR of
# retries): its heartbeats stop, so other processes re-queue its trials.
STALL = RETRY_FOR + 120.0
_log = logging.getLogger("hpo.orchestrator")


@dataclass
class Running:
    trial: optuna.Trial
    worker: WorkerHandle
    params: dict[str, Any]
    started: float
    step: int = 0
    last_eval_step: int = -1
    reason: Reason | None = None  # prune reason once decided
    stop_sent: Stop = Stop.NONE
    length: TrialLength | None = None  # steps, and the pruner's step of an eval (hpo/budget.py)
    curve: dict[str, float] = field(default_factory=dict)  # multi-objective: first objective per step (hpo keeps it)


@dataclass
class RunSummary:
    study: optuna.Study
    created: bool
    ran: int = 0
    states: dict[str, int] = field(default_factory=dict)
    wall_time: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str | None, str]] = field(default_factory=list)  # (study-file key, message) of errors
    compute_time: float = 0.0  # worker seconds in train + eval steps
    worker_seconds: float = 0.0  # workers x their lifetime
    # The study's counts after the run (all processes), for the final line: see ``display.fmt_counts``.
    counted: int = 0
    n_trials: int = 0
    grid_points: int | None = None


class _CompletedSnapshot:
    """A study whose COMPLETE trials are re-read at most every ``ttl`` seconds; everything else passes through.

    Optuna's cached storage re-reads every RUNNING trial (params, attributes, intermediate values) on each
    ``get_trials``, whatever ``states`` asks for; the median/percentile pruner calls it at every eval. A
    snapshot a second old changes no decision that matters and removes most of the orchestrator's reads.
    The orchestrator invalidates it whenever it completes a trial itself, so a single process judges with
    every result; only other processes' results can be up to ``ttl`` late.
    """

    def __init__(self, study: optuna.Study, ttl: float = 1.0) -> None:
        self._study = study
        self._ttl = ttl
        self._at = -math.inf
        self._trials: list[optuna.trial.FrozenTrial] = []

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[optuna.trial.FrozenTrial]:
        if not deepcopy and states is not None and tuple(states) == (TrialState.COMPLETE,):
            now = time.monotonic()
            if now - self._at > self._ttl:
                self._trials = self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                self._at = now
            return self._trials
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def invalidate(self) -> None:
        self._at = -math.inf

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _SnapshotPruner(optuna.pruners.BasePruner):
    """A median/percentile pruner that judges against a ``_CompletedSnapshot`` of the study."""

    def __init__(self, inner: optuna.pruners.BasePruner, study: optuna.Study) -> None:
        self._inner = inner
        self.snapshot = _CompletedSnapshot(study)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self._inner.prune(self.snapshot, trial)  # type: ignore[arg-type]


class _Heartbeat:
    """Records the heartbeats of this process's running trials from a thread.

    The main loop can wait on the storage for minutes (SQLite's busy timeout, ``RETRY_FOR`` of retries on a
    lost connection); beating from that loop would let other processes' orphan checks (no heartbeat for
    ``GRACE_PERIOD`` s) fail live trials meanwhile. Optuna's ``Study.optimize`` beats from a thread for the
    same reason. A main loop that has not come round for ``stall`` seconds is stuck for good: the thread then
    stops beating, so other processes can re-queue its trials.
    """

    def __init__(self, store: StudyStore, trial_ids: Callable[[], list[int]], interval: float, stall: float) -> None:
        self._store = store
        self._trial_ids = trial_ids
        self._interval = interval
        self._stall = stall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop_at = self.last_ok = time.monotonic()

    def tick(self) -> None:
        """The main loop is alive."""
        self.loop_at = time.monotonic()

    def beat(self, ids: list[int]) -> None:
        self._store.record_heartbeat(ids)
        self.last_ok = time.monotonic()

    def start(self) -> None:
        if self._store.heartbeat_interval is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if time.monotonic() - self.loop_at > self._stall:
                continue
            try:
                self.beat(self._trial_ids())
            except Exception as e:  # the main loop meets the same storage and reports it
                _log.debug("heartbeat failed: %s", e)


class Orchestrator:
    def __init__(
        self,
        cfg: StudyConfig,
        study: optuna.Study,
        specs: Sequence[WorkerSpec],
        runner: Any,
        display: RunDisplay,
        workers: list[WorkerHandle] | None = None,
        results: Any = None,
        curves: CurveStore | None = None,
    ) -> None:
        if not specs:
            raise ValueError("`specs` must name at least one worker.")
        self.cfg = cfg
        self.study = study
        self.display = display
        self.runner = runner  # what workers call per trial (TrainerRunner, or a test double)
        self.metric = cfg.metric
        self.distributions = to_distributions(cfg.search_space)
        self._ctx = mp_context()
        self.results = results if results is not None else self._ctx.Queue()
        self.specs = list(specs)
        self.workers = workers if workers is not None else [self._start(s) for s in specs]
        self.running: dict[int, Running] = {}
        self.curves = curves if curves is not None else CurveStore(None, study.study_name)
        self.max_retries = cfg.resources.max_retries
        self.store = study_store(study)
        self.ledger = TrialLedger.for_study(cfg, study, self.store)  # counting, re-queues, orphans
        interval = self.store.heartbeat_interval or HEARTBEAT_INTERVAL
        self._beat = _Heartbeat(self.store, self._running_ids, interval / 2, STALL)
        self._last_orphan_check = 0.0
        self._last_best_read = -math.inf
        # Several objectives: Optuna cannot prune them; the pruner judges the first one (hpo.objectives).
        self.proxy = ProxyPruner(study, cfg.pruner.build(), cfg.direction) if cfg.multi_objective else None
        if self.proxy is None and isinstance(study.pruner, optuna.pruners.PercentilePruner):  # Median is one too
            study.pruner = _SnapshotPruner(study.pruner, study)
        self.keeper = keeper_of(cfg)  # fidelity.save_models: which trials keep their weights

    # ------------------------------------------------------------------------------------------ workers
    def _start(self, spec: WorkerSpec) -> WorkerHandle:
        return WorkerHandle(spec, self.runner, self.results, self._ctx)

    def _running_ids(self) -> list[int]:
        return [self.store.trial_id(r.trial) for r in tuple(self.running.values())]

    def close(self) -> None:
        self._beat.stop()
        close_all(self.workers)
        self.curves.flush()

    def _idle(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.ready and w.trial is None and w.alive()]

    def run(self, timeout: float | None = None, should_stop: Callable[[], bool] | None = None) -> RunSummary:
        """Run trials until n_trials is reached (counting earlier runs), the timeout passes, or Ctrl-C."""
        t0 = time.monotonic()
        summary = RunSummary(self.study, created=False)
        deadline = t0 + timeout if timeout else None
        self._beat.start()
        try:
            self._loop(summary, deadline, should_stop)
        except KeyboardInterrupt as e:
            summary.interrupted = True
            what, again = ("SIGTERM", "a second signal") if isinstance(e, Terminated) else ("Ctrl-C", "Ctrl-C again")
            self.display.message(f"[yellow]interrupted ({what}): stopping running trials ({again} to force)[/]")
            try:
                self._drain(Stop.INTERRUPT, summary, wait=60.0)
            except KeyboardInterrupt:
                self._drain(Stop.INTERRUPT, summary, wait=0.0)
        finally:
            self._beat.stop()
            summary.wall_time = time.monotonic() - t0
        summary.worker_seconds = summary.wall_time * len(self.workers)
        self._update_best(force=True)  # the final word includes other processes' results
        return summary

    def _loop(self, summary: RunSummary, deadline: float | None, should_stop: Callable[[], bool] | None) -> None:
        self.ledger.recover_orphans(self._running_ids())
        while True:
            accepting = not (deadline is not None and time.monotonic() >= deadline) and not (
                should_stop is not None and should_stop()
            )
            if accepting:
                idle = self._idle()
                if idle:
                    left = self.ledger.budget_left()
                    for w in idle[:left]:
                        self._launch(w)
                    if left < len(idle):  # nothing left to start for some: the tail
                        self._lend_idle_cores()
            if not self.running:
                if not accepting:
                    return
                if self.ledger.budget_left() == 0 and not self._foreign_running():
                    return
                # Otherwise: workers are still starting, or other processes' trials are still running
                # (they may turn out orphaned and be re-queued here).
            self._housekeeping()
            try:
                msg = self.results.get(timeout=0.5)
            except queue.Empty:
                self._check_workers(summary)
                continue
            self._handle(msg, summary)

    def _lend_idle_cores(self) -> None:
        """The tail: CPU workers with nothing left to run lend their threads to the running trials."""
        idle = [w for w in self._idle() if w.spec.device_label == "cpu" and w.spec.processes == 1]
        if not idle or not self.running:
            return
        busy = []
        for r in self.running.values():
            spec = r.worker.spec
            if spec.device_label == "cpu" and spec.processes == 1:
                steps = r.length.max_steps if r.length is not None else r.step
                busy.append(Busy(spec.worker_id, spec.threads, steps - r.step))
        plan = lend_idle_cores(busy, sum(w.spec.threads for w in idle))
        for w in self.workers:
            if w.spec.worker_id in plan and hasattr(w, "threads"):
                w.threads.value = plan[w.spec.worker_id]

    def _foreign_running(self) -> bool:
        """RUNNING trials of other processes: wait for them (or for them to be found orphaned)."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return bool(running)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        self.store.check_file()  # a deleted or replaced SQLite file: stop before results go into it
        self._beat.tick()  # heartbeats come from the `_Heartbeat` thread while this loop keeps coming round
        if now - self._last_orphan_check > 15.0:
            self._last_orphan_check = now
            if self._foreign_running():
                self.ledger.recover_orphans(self._running_ids())

    # ---------------------------------------------------------------------------------------- trials
    def _launch(self, worker: WorkerHandle) -> None:
        for _ in range(20):
            with warnings.catch_warnings():
                # hpo drives heartbeats itself (ask/tell); Optuna's hint that they are for Study.optimize is noise.
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = ask(self.study, self.cfg.search_space)  # define-by-run when the space is conditional
            why = self.ledger.not_needed(trial)
            if why is None:
                break
            self.ledger.discard(trial, why)
            if why.kind is ReasonKind.N_TRIALS_REACHED:
                return
        else:
            return  # could not get a fresh grid point: other processes are taking them all
        params = dict(trial.params)
        try:
            run = self.cfg.trial_run(params)
        except Exception as e:
            trial.set_user_attr(A_REASON, str(Reason.invalid_config(str(e).splitlines()[0])))
            self.study.tell(trial, state=TrialState.FAIL)
            self.display.trial_finished(trial.number, "FAIL", None, 0, "invalid configuration")
            return
        # Send first, bookkeeping after: the worker trains while these storage writes happen.
        length = self.cfg.fidelity.length(run)
        self.running[trial.number] = Running(trial, worker, params, time.monotonic(), length=length)
        worker.send(trial.number, run.model_dump(mode="json"))
        self.display.trial_started(trial.number, params, worker.spec.device_label, length.max_steps)
        self._mark_launched(trial, worker)
        self._beat.beat([self.store.trial_id(trial)])

    def _mark_launched(self, trial: optuna.Trial, worker: WorkerHandle) -> None:
        """Where the trial runs: host, orchestrator and worker process, device (orphan checks read these)."""
        spec = worker.spec
        where = TrialAttrs(
            device=spec.device_label,
            worker=spec.worker_id,
            host=HOSTNAME,
            orchestrator_pid=os.getpid(),
            worker_pid=worker.pid,
        )
        self._set_attrs(trial, where.to_user_attrs())

    def _set_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        self.ledger.set_attrs(trial, attrs)

    def _handle(self, event: Event, summary: RunSummary) -> None:
        match event:
            case Ready(worker=wid, pid=pid):
                self.workers[wid].ready, self.workers[wid].pid = True, pid
                self.display.workers_ready(sum(w.ready for w in self.workers), len(self.workers))
                return
            case Fatal(worker=wid, error=error):
                message = error.line if error.key else f"worker {wid} failed to start: {error.line}"
                raise WorkerSetupError(message, error.key, error.traceback)
        r = self.running.get(event.trial)
        if r is None:
            return  # a late message of a trial already closed (e.g. after its worker was replaced)
        match event:
            case Log(step=step, metrics=metrics):
                r.step = step
                self.curves.add(r.trial.number, step, "train", metrics)
                self.display.trial_step(r.trial.number, step)
            case Eval(step=step, metrics=metrics):
                self.curves.add(r.trial.number, step, "eval", metrics)
                self._judge(r, step, metrics)
            case Done(result=result):
                self._on_done(r, result, summary)
            case NonFinite(message=message):
                # A diverged run is informative for the sampler (this region is bad): PRUNED, not FAIL.
                self._finish(r, TrialState.PRUNED, summary, reason=Reason.non_finite(message))
            case Oom(message=message, policy=policy):
                state = TrialState.PRUNED if policy == "prune" else TrialState.FAIL
                self._finish(r, state, summary, reason=Reason.oom(), attrs={"oom_detail": message})
            case Error(error=error):
                attrs = {"traceback": error.traceback[-4000:]}
                if r.stop_sent == Stop.INTERRUPT:
                    # Interrupted, and the trial broke while stopping: e.g. a multi-process trial whose ranks
                    # got the scheduler's SIGTERM too. Its parameters deserve another run like any interrupted one.
                    attrs["error"] = error.line
                    self._finish(r, TrialState.FAIL, summary, reason=Reason.interrupted(), attrs=attrs, requeue=True)
                else:
                    # A study-file setting the trainer named (ConfigError) is reported as `key: message`.
                    self._finish(r, TrialState.FAIL, summary, reason=Reason.error(error.line, error.key), attrs=attrs)
                    summary.failures.append((error.key, error.line))

    def _judge(self, r: Running, step: int, metrics: dict[str, float]) -> None:
        # A generation objective is judged on its proxy at every eval (hpo.genstudy: one quantity per study).
        judged = pruning_value(self.metric, self.cfg.direction, metrics)
        r.step = step
        if judged is None or step <= r.last_eval_step or r.stop_sent:
            return
        name, value = judged
        r.last_eval_step = step
        if not math.isfinite(value):
            r.reason = Reason.non_finite(f"non-finite {name} at step {step}")
            self._stop(r, Stop.PRUNE)
            return
        length = r.length or self.cfg.fidelity.length(self.cfg.trial_run(r.params))
        seen = length.report_step(step)  # the pruner compares trials at equal data seen
        try:
            if self.proxy is not None:  # Optuna keeps no intermediate values here: hpo does
                r.curve[str(step)] = value
                self._set_attrs(r.trial, TrialAttrs(objective_curve=dict(r.curve)).to_user_attrs())
            else:
                r.trial.report(value, seen)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another process closed the trial (it found no heartbeat): its result will be dropped, so
            # there is no point training on; `_finish` says so when the worker returns.
            self._stop(r, Stop.PRUNE)
            return
        self.display.trial_eval(r.trial.number, step, value)
        if seen >= length.budget:
            return
        if self.proxy.should_prune(r.trial.number, seen, value) if self.proxy is not None else r.trial.should_prune():
            at = str(step) if length.unit == "steps" else f"{step} ({seen} {length.unit})"
            r.reason = Reason.pruned(self.cfg.pruner.name, at, name, value)
            self._stop(r, Stop.PRUNE)

    def _stop(self, r: Running, code: Stop) -> None:
        r.stop_sent = code
        r.worker.request_stop(r.trial.number, code)

    def _on_done(self, r: Running, result: TrialResult, summary: RunSummary) -> None:
        summary.compute_time += result.train_time + result.eval_time
        multi, oom = result.processes > 1, bool(result.oom_retries)
        attrs = TrialAttrs(
            metrics=result.metrics,
            steps=result.steps,
            train_time=round(result.train_time, 3),
            eval_time=round(result.eval_time, 3),
            setup_time=round(result.setup_time, 3),
            tokens_per_s=round(result.tokens_per_s, 1),
            precision=result.precision,
            trainable_params=result.trainable_params,
            total_params=result.total_params,
            peak_memory_mb=result.peak_memory_mb,
            latency_ms=result.latency_ms,
            teacher_time=None if result.teacher_time is None else round(result.teacher_time, 3),
            processes=result.processes if multi else None,
            rank_steps=tuple(result.rank_steps) if multi else None,
            oom_retries=result.oom_retries if oom else None,
            micro_batch=tuple(result.micro_batch) if oom and result.micro_batch else None,  # [batch, accumulation]
            examples=tuple(result.examples) if result.examples else None,
        ).to_user_attrs()
        if result.data_clean and self.study.user_attrs.get(ATTR_DATA_CLEAN) != result.data_clean:
            self.study.set_user_attr(ATTR_DATA_CLEAN, result.data_clean)  # what data.clean removed: once per study
        if result.tokenizer_note and self.study.user_attrs.get(ATTR_TOKENIZER_NOTE) != result.tokenizer_note:
            self.study.set_user_attr(ATTR_TOKENIZER_NOTE, result.tokenizer_note)
            warnings.warn(result.tokenizer_note, HpoWarning, stacklevel=1)  # once per study, not per trial
        stopped = result.stopped
        if stopped == Stop.INTERRUPT.reason or r.stop_sent == Stop.INTERRUPT:
            self._finish(r, TrialState.FAIL, summary, reason=Reason.interrupted(), attrs=attrs, requeue=True)
        elif stopped == Stop.PRUNE.reason or r.stop_sent == Stop.PRUNE:
            self._finish(r, TrialState.PRUNED, summary, reason=r.reason or Reason.pruned(), attrs=attrs)
        elif self.proxy is not None:  # several objectives: the metric first, then the costs the worker measured
            values, missing = trial_values(self.cfg, result)
            if values is None:
                self._finish(r, TrialState.FAIL, summary, reason=Reason.no_metric(str(missing)), attrs=attrs)
            else:
                self._finish(r, TrialState.COMPLETE, summary, value=values, attrs=attrs)
        elif self.metric not in result.metrics:
            self._finish(r, TrialState.FAIL, summary, reason=Reason.no_metric(self.metric), attrs=attrs)
        else:
            value = result.metrics[self.metric]
            if (
                result.model_dir is not None
                and self.keeper is not None
                and self.keeper.admit(self.study, r.trial.number, value)
            ):
                attrs[A_MODEL_DIR] = result.model_dir  # referenced only once it is whole and among the best K
            self._finish(r, TrialState.COMPLETE, summary, value=value, attrs=attrs)
        if result.model_dir is not None and self.keeper is not None:
            self.keeper.prune(self.study)  # the trials out of the best K (this one too, if so) lose their weights

    def _finish(
        self,
        r: Running,
        state: TrialState,
        summary: RunSummary,
        value: float | list[float] | None = None,
        reason: Reason | None = None,
        attrs: dict[str, Any] | None = None,
        requeue: bool = False,
    ) -> None:
        trial = r.trial
        del self.running[trial.number]
        r.worker.trial = None
        end = TrialAttrs(
            duration=round(time.monotonic() - r.started, 3), reason=str(reason) if reason else None, requeued=requeue
        )
        attrs = {**(attrs or {}), **end.to_user_attrs()}
        try:
            self._set_attrs(trial, attrs)
            if state == TrialState.COMPLETE:
                self.study.tell(trial, value)
                if isinstance(self.study.pruner, _SnapshotPruner):
                    self.study.pruner.snapshot.invalidate()
            else:
                self.study.tell(trial, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not self._closed_elsewhere(r, value):
                raise
            summary.states["DROPPED"] = summary.states.get("DROPPED", 0) + 1
            return
        first = value[0] if isinstance(value, list) else value
        if self.proxy is not None:
            self.proxy.finish(trial.number, state, first)
        if requeue:
            self.ledger.requeue(trial.number, r.params, trial.user_attrs if hasattr(trial, "user_attrs") else {})
        self.curves.flush()
        summary.ran += 1
        summary.states[state.name] = summary.states.get(state.name, 0) + 1
        frozen = self.store.trial(trial)
        shown = first if first is not None else (frozen.value if len(frozen.values or ()) == 1 else None)
        if first is None and uses_proxy(self.metric):
            shown = None  # the last value reported was the pruning proxy, not the objective (hpo.genstudy)
        self.display.trial_finished(trial.number, state.name, shown, int(attrs.get("steps", r.step)), str(reason or ""))
        if state == TrialState.COMPLETE and isinstance(value, float | int):  # one objective: a best to show
            best = self.display.best
            if best is None or better(value, best[1], self.cfg.direction):
                self.display.set_best(trial.number, value)
        self._update_best()

    def _closed_elsewhere(self, r: Running, value: float | list[float] | None) -> bool:
        """Whether another process already finished this trial; if so, say that its result is dropped.

        That happens when this process was paused (SIGSTOP, a suspended VM) or cut off from the storage for
        longer than the heartbeat grace: another process's orphan check failed and re-queued the trial, so
        its parameters run again and nothing is lost by dropping this late result.
        """
        frozen = self.store.trial(r.trial)
        if not frozen.state.is_finished():
            return False
        silent = time.monotonic() - self._beat.last_ok
        why = frozen.user_attrs.get(A_REASON) or frozen.state.name
        first = value[0] if isinstance(value, list) else value
        got = f" ({self.metric}={first:.6g})" if first is not None else ""
        self.display.message(
            f"[yellow]result of trial {r.trial.number}{got} dropped: another process had already closed it "
            f"({why}; no heartbeat from here for {silent:.0f}s)[/]"
        )
        self.display.running.pop(r.trial.number, None)
        return True

    def _update_best(self, force: bool = False) -> None:
        """The study's best, read from storage at most every few seconds: it may come from another process.

        (An ``ORDER BY`` over all trials per result is O(trials); this process's own results are compared
        as they arrive, in ``_finish``.)
        """
        now = time.monotonic()
        if not force and now - self._last_best_read < BEST_REFRESH:
            return
        self._last_best_read = now
        try:
            best = self.study.best_trial
        except (ValueError, RuntimeError):  # none complete yet; or several objectives: a front, no one best
            return
        assert best.value is not None
        self.display.set_best(best.number, best.value)

    def _check_workers(self, summary: RunSummary) -> None:
        """A worker that died (OOM-killed, segfault, kill -9) is replaced; its trial, if it had one, is handed
        to ``_worker_died``."""
        for i, w in enumerate(self.workers):
            if w.alive():
                continue
            code = w.process.exitcode
            number = w.trial
            self.workers[i] = self._start(w.spec)
            if number is None or number not in self.running:
                self.display.message(idle_death(w.spec, code))
            else:
                self._worker_died(self.running[number], code, summary)

    def _worker_died(self, r: Running, code: int | None, summary: RunSummary) -> None:
        """The trial fails, and is re-queued with the same parameters (up to ``max_retries``)."""
        retries = int(r.trial.user_attrs.get("retries", 0)) if hasattr(r.trial, "user_attrs") else 0
        again = retries < self.max_retries
        self._finish(r, TrialState.FAIL, summary, reason=Reason.worker_died(code, again), requeue=again)

    def _drain(self, code: Stop, summary: RunSummary, wait: float) -> None:
        """Ask running trials to stop, wait for their results, and record every one of them (in ``summary``)."""
        for r in self.running.values():
            self._stop(r, code)
        end = time.monotonic() + wait
        while self.running and time.monotonic() < end:
            self._beat.tick()
            try:
                msg = self.results.get(timeout=0.5)
            except queue.Empty:
                self._check_workers(summary)
                continue
            if isinstance(msg, TRIAL_ENDS):
                self._handle(msg, summary)
        for r in list(self.running.values()):
            self._finish(r, TrialState.FAIL, summary, reason=Reason.interrupted(), requeue=True)
