"""The trial ledger and the storage adapter under it, without processes: which trials count towards
n_trials (the SQL forms agree with the Python rule), grid points taken, re-queues that keep parameters,
orphans re-queued once, discards, and the reasons stored. Every test runs on an in-memory study, SQLite
and PostgreSQL (skipped where no server can be started), in milliseconds."""

from __future__ import annotations

import inspect
import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.ledger import HOSTNAME, Reason, ReasonKind, TrialLedger
from hpo.record import A_DISCARDED, A_HOST, A_PID, A_REASON, A_REQUEUED, A_RETRY_OF, counted
from hpo.storage import open_storage
from hpo.store import GRACE_PERIOD, InMemoryStudyStore, RDBStudyStore, RetryingRDBStorage, StudyStore, study_store

DIST = {"x": optuna.distributions.FloatDistribution(0.0, 2.0)}


@pytest.fixture(scope="module")
def opened() -> dict[str, optuna.storages.BaseStorage]:
    return {}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage(
    request: pytest.FixtureRequest, opened: dict[str, optuna.storages.BaseStorage], tmp_path: Path
) -> optuna.storages.BaseStorage:
    """One storage of each kind for the whole module (creating Optuna's tables takes a second); every test
    makes its own study in it, and everything here is counted per study."""
    if request.param not in opened:
        if request.param == "postgres":
            url = str(request.getfixturevalue("postgres_url"))
        else:
            url = "memory" if request.param == "memory" else f"sqlite:///{tmp_path}/a.db"
        opened[request.param] = open_storage(url, create=True)
    return opened[request.param]


def _study(storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(storage=storage, sampler=sampler or optuna.samplers.RandomSampler(seed=0))


def _queued(study: optuna.Study) -> list[tuple[dict[str, object], dict[str, object]]]:
    """The parameters and attributes the queued trials run with (asked here, as the next launches would)."""
    out = []
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        t = study.ask(DIST)
        out.append((t.params, t.user_attrs))
    return out


def _ledger(study: optuna.Study, n_trials: int = 10, grid_points: int | None = None) -> TrialLedger:
    return TrialLedger(study, study_store(study), n_trials, grid_points)


# How each kind of trial is counted: (state it ends in, user attributes it carries, counts towards n_trials).
COUNTING = [
    pytest.param(TrialState.COMPLETE, {}, True, id="complete"),
    pytest.param(TrialState.PRUNED, {}, True, id="pruned"),
    pytest.param(TrialState.RUNNING, {}, True, id="running"),
    pytest.param(TrialState.WAITING, {}, False, id="waiting"),
    pytest.param(TrialState.FAIL, {}, True, id="genuine-fail"),
    pytest.param(TrialState.FAIL, {A_REQUEUED: True}, False, id="requeued-fail"),
    pytest.param(TrialState.FAIL, {A_DISCARDED: True}, False, id="discarded-fail"),
    pytest.param(TrialState.FAIL, {A_REQUEUED: False}, True, id="fail-marked-false"),
    # Only JSON `true` is a marker, in SQL and in Python alike (a truthy 1 or "yes" once split them).
    pytest.param(TrialState.FAIL, {A_REQUEUED: 1}, True, id="fail-marked-1"),
    pytest.param(TrialState.FAIL, {A_DISCARDED: "yes"}, True, id="fail-marked-yes"),
]


def _add(study: optuna.Study, state: TrialState, attrs: dict[str, object]) -> None:
    if state == TrialState.WAITING:
        study.enqueue_trial({"x": 0.5})
        return
    t = study.ask(DIST)
    for k, v in attrs.items():
        t.set_user_attr(k, v)
    if state == TrialState.COMPLETE:
        study.tell(t, 1.0)
    elif state != TrialState.RUNNING:
        study.tell(t, state=state)


@pytest.mark.parametrize(("state", "attrs", "counts"), COUNTING)
def test_each_kind_of_trial_is_counted_by_the_rule(
    storage: optuna.storages.BaseStorage, state: TrialState, attrs: dict[str, object], counts: bool
) -> None:
    study = _study(storage)
    study.tell(study.ask(DIST), 0.0)  # one counted trial before it
    _add(study, state, attrs)
    store = study_store(study)
    assert [counted(t) for t in study.get_trials(deepcopy=False)] == [True, counts]
    assert store.count_counted() == 1 + counts
    assert store.count_counted(before=1) == 1
    assert _ledger(study, n_trials=2).budget_left() == (0 if counts else 1)


def test_counting_before_a_trial_matches_the_rule(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage)
    for state, attrs, _ in (p.values for p in COUNTING):
        _add(study, state, attrs)  # type: ignore[arg-type]
    trials = study.get_trials(deepcopy=False)
    store = study_store(study)
    assert store.count_counted() == sum(1 for t in trials if counted(t)) == sum(1 for p in COUNTING if p.values[2])
    for before in range(len(trials) + 1):
        assert store.count_counted(before=before) == sum(1 for t in trials if t.number < before and counted(t))


def test_count_is_per_study(storage: optuna.storages.BaseStorage) -> None:
    a, b = _study(storage), _study(storage)
    for _ in range(3):
        a.tell(a.ask(DIST), 0.0)
    b.tell(b.ask(DIST), 0.0)
    assert (study_store(a).count_counted(), study_store(b).count_counted()) == (3, 1)


def test_the_adapter_fits_the_storage(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage)
    store = study_store(study)
    if isinstance(storage, optuna.storages.InMemoryStorage):
        assert type(store) is InMemoryStudyStore and store.heartbeat_interval is None
    else:
        assert type(store) is RDBStudyStore and store.heartbeat_interval == 10
    t = study.ask(DIST)
    assert store.trial(t).number == t.number == study.get_trials()[0].number
    assert store.stale_trial_ids() == set()  # its heartbeat (if any) is young


def test_batched_user_attrs_are_written_and_checked(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage)
    t = study.ask(DIST)
    store = study_store(study)
    store.set_trial_attrs(t, {"a": 1, "b": [1, 2], "c": {"k": "v"}})
    store.set_trial_attrs(StudyStore.trial_id(t), {"a": 2})  # overwrite, by id
    assert store.trial(t).user_attrs == {"a": 2, "b": [1, 2], "c": {"k": "v"}}
    study.tell(t, 0.0)
    with pytest.raises(RuntimeError):  # a finished trial is read-only, as with set_user_attr
        store.set_trial_attrs(StudyStore.trial_id(t), {"a": 3})


def test_study_attrs_are_written_together(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage)
    study_store(study).set_study_attrs({"k": 1, "l": {"m": [2]}})
    study_store(study).set_study_attrs({"k": 3})
    assert optuna.load_study(study_name=study.study_name, storage=storage).user_attrs == {"k": 3, "l": {"m": [2]}}


# ------------------------------------------------------------------------------------------ the ledger
@pytest.mark.parametrize(
    ("n_trials", "before", "expected"),
    [(3, 0, None), (3, 2, None), (3, 3, ReasonKind.N_TRIALS_REACHED), (3, 5, ReasonKind.N_TRIALS_REACHED)],
)
def test_a_trial_runs_only_below_the_total(
    storage: optuna.storages.BaseStorage, n_trials: int, before: int, expected: ReasonKind | None
) -> None:
    study = _study(storage)
    for _ in range(before):
        study.tell(study.ask(DIST), 0.0)
    why = _ledger(study, n_trials).not_needed(study.ask(DIST))
    assert (why.kind if why else None) == expected


def test_a_grid_point_held_by_a_counted_trial_is_taken(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage, optuna.samplers.GridSampler({"x": [0.0, 1.0, 2.0]}, seed=0))
    ledger = _ledger(study, n_trials=10, grid_points=3)
    assert ledger.total() == 3  # the grid is smaller than n_trials
    first = study.ask(DIST)
    store = study_store(study)
    assert ledger.not_needed(first) is None and not store.grid_point_taken(first)  # only itself holds it
    # A second trial given the same point (as when another process's sampler picks it at the same moment):
    second = study.ask(DIST)
    store.storage.set_trial_system_attr(store.trial_id(second), "grid_id", store.grid_id(first))
    assert ledger.not_needed(second) == Reason.grid_point_taken()  # `first` holds it (RUNNING)
    first.set_user_attr(A_REQUEUED, True)
    study.tell(first, state=TrialState.FAIL)
    assert ledger.not_needed(second) is None  # a re-queued failure frees it


def test_a_discarded_trial_does_not_count_and_gives_back_a_requeued_point(
    storage: optuna.storages.BaseStorage,
) -> None:
    study = _study(storage)
    ledger = _ledger(study, n_trials=1)
    study.tell(study.ask(DIST), 0.0)
    study.enqueue_trial({"x": 1.5}, user_attrs={A_RETRY_OF: 7, "retries": 1})
    popped = study.ask(DIST)  # a re-queued trial, found not needed
    why = ledger.not_needed(popped)
    assert why is not None and why.not_run
    ledger.discard(popped, why)
    closed = study_store(study).trial(popped)
    assert closed.state == TrialState.FAIL and closed.user_attrs[A_DISCARDED] is True
    assert closed.user_attrs[A_REASON] == "not run: n_trials reached by other processes"
    assert ledger.counted() == 1
    assert _queued(study) == [({"x": 1.5}, {A_RETRY_OF: 7, "retries": 1})]


def test_requeue_keeps_the_parameters_and_the_first_trial_number(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage)
    ledger = _ledger(study)
    t = study.ask(DIST)
    ledger.requeue(t.number, t.params, {})
    ledger.requeue(5, t.params, {A_RETRY_OF: 2, "retries": 1})  # a retry of a retry names the first
    assert ledger.counted() == 1  # queued trials do not count until they run
    assert _queued(study) == [
        (t.params, {A_RETRY_OF: t.number, "retries": 1}),
        (t.params, {A_RETRY_OF: 2, "retries": 2}),
    ]


def test_an_orphan_of_a_dead_process_is_requeued_once(storage: optuna.storages.BaseStorage) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    study = _study(storage)
    ledger = _ledger(study)
    orphan, live, mine = study.ask(DIST), study.ask(DIST), study.ask(DIST)
    for t, pid in ((orphan, dead.pid), (live, os.getpid()), (mine, dead.pid)):
        t.set_user_attr(A_HOST, HOSTNAME)
        t.set_user_attr(A_PID, pid)
    store = study_store(study)
    assert ledger.recover_orphans(mine=[store.trial_id(mine)]) == 1
    assert ledger.recover_orphans(mine=[store.trial_id(mine)]) == 0  # already closed: not re-queued again
    closed = store.trial(orphan)
    assert closed.state == TrialState.FAIL
    assert closed.user_attrs[A_REASON] == "orphaned: its hpo process died" and closed.user_attrs[A_REQUEUED] is True
    assert store.trial(live).state == TrialState.RUNNING and store.trial(mine).state == TrialState.RUNNING
    assert ledger.counted() == 2  # the re-queued failure no longer counts; its re-run will
    assert _queued(study) == [(orphan.params, {A_RETRY_OF: orphan.number, "retries": 1})]


def test_a_trial_closed_elsewhere_is_not_requeued_twice(storage: optuna.storages.BaseStorage) -> None:
    study = _study(storage)
    ledger = _ledger(study)
    t = study.ask(DIST)
    frozen = study_store(study).trial(t)
    assert ledger.fail_and_requeue(frozen, Reason.orphaned(process_died=False))
    assert not ledger.fail_and_requeue(frozen, Reason.orphaned(process_died=False))  # another process, later
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert study_store(study).trial(t).user_attrs[A_REASON] == "orphaned: no heartbeat"


# The sentences stored in the `reason` attribute (status, reports and notes show them) and their kinds.
@pytest.mark.parametrize(
    ("reason", "kind", "text"),
    [
        (
            Reason.pruned("median", 20, "eval_loss", 1.23456),
            ReasonKind.PRUNED,
            "pruned by median pruner at step 20 (eval_loss=1.235)",
        ),
        (Reason.pruned(), ReasonKind.PRUNED, "pruned"),
        (Reason.non_finite("non-finite eval_loss at step 5"), ReasonKind.NON_FINITE, "non-finite eval_loss at step 5"),
        (Reason.interrupted(), ReasonKind.INTERRUPTED, "interrupted"),
        (Reason.orphaned(process_died=True), ReasonKind.ORPHANED, "orphaned: its hpo process died"),
        (Reason.orphaned(process_died=False), ReasonKind.ORPHANED, "orphaned: no heartbeat"),
        (Reason.worker_died(9, requeued=True), ReasonKind.WORKER_DIED, "worker process died (exit code 9); re-queued"),
        (Reason.worker_died(-11, requeued=False), ReasonKind.WORKER_DIED, "worker process died (exit code -11)"),
        (Reason.error("RuntimeError: x"), ReasonKind.ERROR, "error: RuntimeError: x"),
        (Reason.error("bad", "training.lr"), ReasonKind.ERROR, "error: training.lr: bad"),
        (Reason.oom(), ReasonKind.OOM, "oom"),
        (Reason.invalid_config("bad"), ReasonKind.INVALID_CONFIG, "invalid configuration: bad"),
        (Reason.no_metric("eval_loss"), ReasonKind.NO_METRIC, "no eval_loss reported"),
        (Reason.n_trials_reached(), ReasonKind.N_TRIALS_REACHED, "not run: n_trials reached by other processes"),
        (Reason.grid_point_taken(), ReasonKind.GRID_POINT_TAKEN, "not run: grid point taken by another process"),
    ],
)
def test_reasons_keep_their_stored_sentences(reason: Reason, kind: ReasonKind, text: str) -> None:
    assert (reason.kind, str(reason), reason.not_run) == (kind, text, text.startswith("not run"))


# Storage calls that do no I/O (or, for schema upgrades, are run by hand): no retry policy needed.
NO_IO = {
    "check_trial_is_updatable",
    "get_failed_trial_callback",
    "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback",
    "remove_session",
    "upgrade",
    "get_current_version",
    "get_head_version",
    "get_all_versions",
}


def test_every_storage_call_has_its_retry_policy() -> None:
    # The policies are listed, not applied by rewriting methods at import time: a call a new Optuna adds
    # must be listed too, or it would go unretried without anyone noticing.
    public = {n for n, f in inspect.getmembers(optuna.storages.RDBStorage, inspect.isfunction) if n[0] != "_"}
    listed = set(RetryingRDBStorage.__dict__)
    assert public - NO_IO <= listed, sorted(public - NO_IO - listed)
    for name in ("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids"):
        assert name in listed, name  # the private calls Optuna's cached storage and the ledger make


def test_a_trial_no_process_ever_claimed_is_requeued_after_the_grace_period(
    storage: optuna.storages.BaseStorage,
) -> None:
    # What a process killed between `ask` and recording where the trial runs leaves behind (or an ask
    # retried over a lost connection whose first insert was committed): RUNNING, no host, no heartbeat.
    study = _study(storage)
    ledger = _ledger(study)
    long_ago = datetime.now() - timedelta(seconds=GRACE_PERIOD + 5)
    study.add_trial(
        optuna.trial.FrozenTrial(
            number=0,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=long_ago,
            datetime_complete=None,
            params={"x": 0.5},
            distributions=DIST,
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=0,
        )
    )
    fresh = study.ask(DIST)  # just asked: its orchestrator is about to record itself on it
    assert ledger.recover_orphans() == 1
    assert ledger.recover_orphans() == 0
    unclaimed = study.get_trials(deepcopy=False)[0]
    assert unclaimed.state == TrialState.FAIL
    assert unclaimed.user_attrs[A_REASON] == "orphaned: no process recorded running it"
    assert study_store(study).trial(fresh).state == TrialState.RUNNING
    assert _queued(study) == [({"x": 0.5}, {A_RETRY_OF: 0, "retries": 1})]
