"""The trial ledger: which trials count towards the study's total, and what happens to those that do not run.

The orchestrator's loop launches, judges and finishes trials; the ledger keeps the study's books, over
every process that shares the study: trials counted towards ``n_trials`` (or the grid's size), a just-asked
trial that is not needed (the total was reached, or its grid point taken, by another process), failures
re-queued with the same parameters, and orphans (RUNNING trials of a dead or silent process) failed and
re-queued once. It works through the storage adapter (``hpo.store``), so the same rules hold on an
in-memory study and on a database shared by several machines.

Why a trial stopped is a ``Reason``: a kind the code can branch on, and the sentence stored in the trial's
``reason`` attribute (what ``hpo status``, reports and dashboard notes show).
"""

from __future__ import annotations

import enum
import math
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudyConfig
from hpo.record import TrialAttrs
from hpo.store import GRACE_PERIOD, StudyStore, TrialRef

HOSTNAME = socket.gethostname()


class ReasonKind(str, enum.Enum):
    """Why a trial stopped before completing (or did not run at all)."""

    PRUNED = "pruned"
    NON_FINITE = "non-finite"  # a NaN/inf or diverged loss or metric
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: re-queued
    ORPHANED = "orphaned"  # its hpo process died or went silent: re-queued by another process
    WORKER_DIED = "worker died"  # the worker process was killed (OOM killer, segfault, kill -9)
    ERROR = "error"  # the trainer raised
    OOM = "oom"  # out of memory at every micro-batch size tried
    INVALID_CONFIG = "invalid configuration"  # the sampled parameters make no valid run
    NO_METRIC = "no metric"  # the run finished without the objective's metric
    N_TRIALS_REACHED = "n_trials reached"  # not run: other processes filled the total
    GRID_POINT_TAKEN = "grid point taken"  # not run: another process holds its grid point


@dataclass(frozen=True)
class Reason:
    """A kind, and the sentence stored as the trial's ``reason`` user attribute."""

    kind: ReasonKind
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def not_run(self) -> bool:
        """A discarded trial: asked, then not needed."""
        return self.kind in (ReasonKind.N_TRIALS_REACHED, ReasonKind.GRID_POINT_TAKEN)

    @classmethod
    def pruned(
        cls, pruner: str | None = None, step: int | str = 0, metric: str = "", value: float = math.nan
    ) -> Reason:
        if pruner is None:
            return cls(ReasonKind.PRUNED, "pruned")
        return cls(ReasonKind.PRUNED, f"pruned by {pruner} pruner at step {step} ({metric}={value:.4g})")

    @classmethod
    def non_finite(cls, text: str) -> Reason:
        """``text``: the worker's words, or the orchestrator's for a non-finite metric."""
        return cls(ReasonKind.NON_FINITE, text)

    @classmethod
    def interrupted(cls) -> Reason:
        return cls(ReasonKind.INTERRUPTED, "interrupted")

    @classmethod
    def orphaned(cls, process_died: bool) -> Reason:
        return cls(ReasonKind.ORPHANED, "orphaned: " + ("its hpo process died" if process_died else "no heartbeat"))

    @classmethod
    def unclaimed(cls) -> Reason:
        return cls(ReasonKind.ORPHANED, "orphaned: no process recorded running it")

    @classmethod
    def worker_died(cls, exit_code: int | None, requeued: bool) -> Reason:
        text = f"worker process died (exit code {exit_code})" + ("; re-queued" if requeued else "")
        return cls(ReasonKind.WORKER_DIED, text)

    @classmethod
    def error(cls, message: str, key: str | None = None) -> Reason:
        """``key``: the study-file setting the trainer named (a ``ConfigError``)."""
        return cls(ReasonKind.ERROR, f"error: {key + ': ' if key else ''}{message}")

    @classmethod
    def oom(cls) -> Reason:
        return cls(ReasonKind.OOM, "oom")

    @classmethod
    def invalid_config(cls, message: str) -> Reason:
        return cls(ReasonKind.INVALID_CONFIG, f"invalid configuration: {message}")

    @classmethod
    def no_metric(cls, metric: str) -> Reason:
        return cls(ReasonKind.NO_METRIC, f"no {metric} reported")

    @classmethod
    def n_trials_reached(cls) -> Reason:
        return cls(ReasonKind.N_TRIALS_REACHED, "not run: n_trials reached by other processes")

    @classmethod
    def grid_point_taken(cls) -> Reason:
        return cls(ReasonKind.GRID_POINT_TAKEN, "not run: grid point taken by another process")


def grid_points(cfg: StudyConfig) -> int | None:
    """The number of points of a grid search; None for other samplers."""
    if cfg.sampler.name != "grid":
        return None
    grid = cfg.grid()
    assert grid is not None  # validation guarantees it
    return math.prod(len(v) for v in grid.values())


def _older_than(t: FrozenTrial, seconds: float) -> bool:
    # Optuna stamps datetime_start with the local clock (naive), as ``datetime.now()`` reads it.
    return t.datetime_start is not None and (datetime.now() - t.datetime_start).total_seconds() > seconds


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrialLedger:
    """The study's trial books, shared by every process on the study (see the module docstring)."""

    def __init__(self, study: optuna.Study, store: StudyStore, n_trials: int, grid_points: int | None) -> None:
        self.study = study
        self.store = store
        self.n_trials = n_trials
        self.grid_points = grid_points  # None unless the grid sampler

    @classmethod
    def for_study(cls, cfg: StudyConfig, study: optuna.Study, store: StudyStore) -> TrialLedger:
        return cls(study, store, cfg.study.n_trials, grid_points(cfg))

    # ------------------------------------------------------------------------------------------ counts
    def total(self) -> int:
        """The study's trial total: n_trials, or the grid's size when that is smaller."""
        n = self.n_trials
        return n if self.grid_points is None else min(n, self.grid_points)

    def counted(self) -> int:
        """Trials that count towards n_trials (all processes on this study)."""
        return self.store.count_counted()

    def budget_left(self) -> int:
        """Trials still to start: n_trials (or the grid's size) minus counted trials."""
        return max(0, self.total() - self.counted())

    def not_needed(self, trial: optuna.Trial) -> Reason | None:
        """Why a just-asked trial must not run: the study's total is reached, or its grid point is taken.

        Other processes (other machines) ask concurrently; the storage numbers trials atomically, so a
        trial runs only if fewer than n_trials counted trials come before it.
        """
        if self.store.count_counted(before=trial.number) >= self.total():
            return Reason.n_trials_reached()
        if self.grid_points is not None and self.store.grid_point_taken(trial):
            return Reason.grid_point_taken()
        return None

    # ------------------------------------------------------------------------------------------ writes
    def set_attrs(self, trial: TrialRef, attrs: dict[str, Any]) -> None:
        """Several user attributes in one storage write where the storage can (one commit, not one each)."""
        self.store.set_trial_attrs(trial, attrs)

    def discard(self, trial: optuna.Trial, why: Reason) -> None:
        """Close a just-asked trial that is not needed; it does not count. A re-queued trial's parameters
        go back in the queue."""
        self.set_attrs(trial, TrialAttrs(reason=str(why), discarded=True).to_user_attrs())
        a = TrialAttrs.from_user_attrs(trial.user_attrs)
        self.study.tell(trial, state=TrialState.FAIL)
        if a.retry_of is not None:  # a re-queued trial popped here: put its parameters back in the queue
            self.study.enqueue_trial(
                trial.params, user_attrs=TrialAttrs(retry_of=a.retry_of, retries=a.retries).to_user_attrs()
            )

    def requeue(self, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Run trial ``number``'s parameters again as a new trial (its failure no longer counts)."""
        a = TrialAttrs.from_user_attrs(attrs)
        line = TrialAttrs(retry_of=number if a.retry_of is None else a.retry_of, retries=(a.retries or 0) + 1)
        self.study.enqueue_trial(params, user_attrs=line.to_user_attrs())

    def fail_and_requeue(self, t: FrozenTrial, reason: Reason) -> bool:
        """Fail another process's RUNNING trial and re-queue it; False when someone else closed it first."""
        if not self.store.fail(t, TrialAttrs(reason=str(reason), requeued=True).to_user_attrs()):
            return False
        self.requeue(t.number, t.params, t.user_attrs)
        return True

    def recover_orphans(self, mine: Iterable[int] = ()) -> int:
        """Fail and re-queue RUNNING trials whose process is gone (same host, dead pid) or went silent.

        ``mine``: the storage ids of this process's running trials (alive by definition).
        """
        stale = self.store.stale_trial_ids()
        mine = set(mine)
        n = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tid = self.store.trial_id(t)
            if tid in mine:
                continue
            a = TrialAttrs.from_user_attrs(t.user_attrs)
            pid = a.orchestrator_pid
            dead_here = a.host == HOSTNAME and pid is not None and not pid_alive(pid)
            if tid in stale or dead_here:
                if self.fail_and_requeue(t, Reason.orphaned(process_died=dead_here)):
                    n += 1
            elif a.host is None and _older_than(t, GRACE_PERIOD):
                # An orchestrator records where a trial runs right after asking for it; a trial without that
                # record after the grace period was asked by a process that stopped in between, or created
                # twice by an ask retried over a lost connection. It has no heartbeat, so nothing else would
                # ever close it (and every process would wait for it at the end).
                if self.fail_and_requeue(t, Reason.unclaimed()):
                    n += 1
        return n
