"""A prototype of the orchestrator/storage changes the benchmarks propose, measured with ``--prototype``.

Not used by hpo. ``PrototypeOrchestrator`` subclasses hpo's Orchestrator and ``PrototypeStorage`` subclasses
hpo's RetryingRDBStorage; each change is a small override, so the effect of each is visible in the
benchmarks (``storage_cost.py --prototype``, ``scaling.py --prototype``):

1. ``budget_left`` and ``_not_needed`` count trials with one SQL ``COUNT`` each (and, for the grid
   sampler, one ``EXISTS``) instead of reading every trial through ``study.get_trials`` and calling
   ``counted()`` on each in Python: the database still visits the study's rows, but in C.
2. The ~13 user attributes hpo writes per trial (4 at launch, ~9 at the end) go in one transaction each
   time (``set_trial_user_attrs``) instead of one transaction per attribute.
3. ``_update_best`` compares the value just told with the best shown, and asks the storage for the best
   trial (an O(n) ``ORDER BY`` in SQL) at most every 5 s, for results of other processes.
4. No ``pool_pre_ping`` on PostgreSQL: SQLAlchemy pings the server at every connection checkout, i.e. at
   every Optuna storage call (~30 a trial). hpo's storage already retries a call that fails on a dropped
   connection (``_with_retry``), and a failed connection is invalidated, so the ping buys nothing.
5. The median/percentile pruner reads the COMPLETE trials at most once a second (a study proxy with a
   1 s snapshot) instead of at every ``should_prune``. Each ``study.get_trials`` call makes Optuna's
   ``_CachedStorage`` re-read every RUNNING trial from the database and rebuild it (with 8 workers, ~8
   trials with their params, attributes and intermediate values), whatever ``states`` asks for; the
   pruner made ~3 of the ~6 such calls per trial.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState
from sqlalchemy import and_, exists, func, not_, select

from hpo.orchestrator import (
    A_DISCARDED,
    A_HOST,
    A_PID,
    A_REASON,
    A_REQUEUED,
    HOSTNAME,
    Orchestrator,
    Running,
    RunSummary,
)
from hpo.storage import RetryingRDBStorage, _with_retry


class PrototypeStorage(RetryingRDBStorage):
    """hpo's storage with change 2 (``set_trial_user_attrs``)."""

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        with _create_scoped_session(self.scoped_session, True) as session:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


PrototypeStorage.set_trial_user_attrs = _with_retry(  # type: ignore[method-assign]
    "set_trial_user_attrs", PrototypeStorage.set_trial_user_attrs
)


def as_prototype(storage: Any) -> Any:
    """The same storage object, with the prototype's methods (it holds no other state)."""
    if isinstance(storage, RetryingRDBStorage):
        storage.__class__ = PrototypeStorage
        storage.engine.pool._pre_ping = False  # change 4
    return storage


def _counted_clause(study_id: int) -> Any:
    """SQL for ``hpo.orchestrator.counted``: not WAITING, and not a FAIL marked re-queued or discarded."""
    T, A = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    marked = exists().where(
        A.c.trial_id == T.c.trial_id, A.c.key.in_([A_REQUEUED, A_DISCARDED]), A.c.value_json == "true"
    )
    return and_(
        T.c.study_id == study_id, T.c.state != TrialState.WAITING, not_(and_(T.c.state == TrialState.FAIL, marked))
    )


class _CompletedSnapshot:
    """A study, except that ``get_trials(states=(COMPLETE,))`` is re-read at most once a second."""

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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _SnapshotPruner(optuna.pruners.BasePruner):
    """Runs a percentile/median pruner against a ``_CompletedSnapshot`` of the study."""

    def __init__(self, inner: optuna.pruners.BasePruner, study: optuna.Study) -> None:
        self._inner = inner
        self._snapshot = _CompletedSnapshot(study)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self._inner.prune(self._snapshot, trial)  # type: ignore[arg-type]


class PrototypeOrchestrator(Orchestrator):
    """hpo's Orchestrator with changes 1-3 (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        backend = getattr(self.study._storage, "_backend", self.study._storage)
        self._rdb = backend if isinstance(backend, optuna.storages.RDBStorage) else None
        self._last_best_read = 0.0
        if isinstance(self.study.pruner, optuna.pruners.PercentilePruner):  # MedianPruner too (change 5)
            self.study.pruner = _SnapshotPruner(self.study.pruner, self.study)

    # -- change 1
    def _total(self) -> int:
        total = self.cfg.study.n_trials
        return total if self._grid_size is None else min(total, self._grid_size)

    def budget_left(self) -> int:
        if self._rdb is None:
            return super().budget_left()
        T = models.TrialModel.__table__
        with self._rdb.engine.connect() as conn:
            n = conn.execute(
                select(func.count()).select_from(T).where(_counted_clause(self.study._study_id))
            ).scalar_one()
        return max(0, self._total() - int(n))

    def _not_needed(self, trial: optuna.Trial) -> str | None:
        if self._rdb is None:
            return super()._not_needed(trial)
        T, S = models.TrialModel.__table__, models.TrialSystemAttributeModel.__table__
        counted = _counted_clause(self.study._study_id)
        with self._rdb.engine.connect() as conn:
            before = conn.execute(
                select(func.count()).select_from(T).where(counted, T.c.number < trial.number)
            ).scalar_one()
            if before >= self._total():
                return "n_trials reached by other processes"
            if self._grid_size is not None:
                gid = self.study._storage.get_trial_system_attrs(trial._trial_id).get("grid_id")
                taken = conn.execute(
                    select(S.c.trial_id)
                    .select_from(S.join(T, S.c.trial_id == T.c.trial_id))
                    .where(counted, S.c.key == "grid_id", S.c.value_json == json.dumps(gid))
                    .where(T.c.trial_id != trial._trial_id)
                    .limit(1)
                ).first()
                if taken is not None:
                    return "grid point taken by another process"
        return None

    # -- change 2
    def _set_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        backend = getattr(self.study._storage, "_backend", None)
        if hasattr(backend, "set_trial_user_attrs"):
            backend.set_trial_user_attrs(trial._trial_id, attrs)  # type: ignore[union-attr]
        else:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)

    def _launch(self, worker: Any) -> None:  # hpo's _launch, attributes in one write
        for _ in range(20):
            trial = self.study.ask(self.distributions)
            why = self._not_needed(trial)
            if why is None:
                break
            self._discard(trial, why)
            if why.startswith("n_trials"):
                return
        else:
            return
        params = dict(trial.params)
        try:
            run = self.cfg.trial_run(params)
        except Exception as e:
            trial.set_user_attr(A_REASON, f"invalid configuration: {str(e).splitlines()[0]}")
            self.study.tell(trial, state=TrialState.FAIL)
            self.display.trial_finished(trial.number, "FAIL", None, 0, "invalid configuration")
            return
        self.running[trial.number] = Running(trial, worker, params, time.monotonic())
        worker.send(trial.number, run.model_dump(mode="json"))
        self.display.trial_started(trial.number, params, worker.spec.device_label, self.cfg.fidelity.max_steps)
        self._set_attrs(
            trial,
            {
                "device": worker.spec.device_label,
                "worker": worker.spec.worker_id,
                A_HOST: HOSTNAME,
                A_PID: os.getpid(),
            },
        )
        if hasattr(self.study._storage, "record_heartbeat"):
            self.study._storage.record_heartbeat(trial._trial_id)

    def _finish(
        self,
        r: Running,
        state: TrialState,
        summary: RunSummary,
        value: float | None = None,
        reason: str | None = None,
        attrs: dict[str, Any] | None = None,
        requeue: bool = False,
    ) -> None:  # hpo's _finish, attributes in one write, best trial without a query (change 3)
        trial = r.trial
        del self.running[trial.number]
        r.worker.trial = None
        attrs = dict(attrs or {})
        attrs["duration"] = round(time.monotonic() - r.started, 3)
        if reason:
            attrs[A_REASON] = reason
        if requeue:
            attrs[A_REQUEUED] = True
        self._set_attrs(trial, attrs)
        if state == TrialState.COMPLETE:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)
        if requeue:
            self._requeue(trial.number, r.params, trial.user_attrs if hasattr(trial, "user_attrs") else {})
        self.curves.flush()
        summary.ran += 1
        summary.states[state.name] = summary.states.get(state.name, 0) + 1
        frozen = self.study._storage.get_trial(trial._trial_id)
        shown = value if value is not None else (frozen.value if frozen.value is not None else None)
        self.display.trial_finished(trial.number, state.name, shown, int(attrs.get("steps", r.step)), reason or "")
        if state == TrialState.COMPLETE and value is not None:
            best = self.display.best
            better = best is None or (value < best[1] if self.cfg.direction == "minimize" else value > best[1])
            if better:
                self.display.set_best(trial.number, value)
        self._update_best()

    # -- change 3
    def _update_best(self) -> None:
        now = time.monotonic()
        if now - self._last_best_read < 5.0:
            return
        self._last_best_read = now
        super()._update_best()
