"""The SQL forms of "which trials count towards n_trials" agree with the trial record's rule
(``hpo.record.counts``), on SQLite and PostgreSQL, for every state a trial can be in; batched attribute
writes land like single ones."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.accounting import count_counted, grid_point_taken, rdb_backend
from hpo.record import A_DISCARDED, A_REQUEUED, TrialRecord, counted
from hpo.storage import RetryingRDBStorage, open_storage


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> RetryingRDBStorage:
    url = str(request.getfixturevalue("postgres_url")) if request.param == "postgres" else f"sqlite:///{tmp_path}/a.db"
    s = open_storage(url, create=True)
    assert isinstance(s, RetryingRDBStorage)
    return s


def _mixed_study(storage: RetryingRDBStorage) -> optuna.Study:
    """One trial of each kind: complete, pruned, running, waiting, genuine fail, re-queued fail,
    discarded fail, and fails whose markers are not JSON ``true`` (False, 1, "yes": they count)."""
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study.tell(study.ask(dist), 1.0)
    study.tell(study.ask(dist), state=TrialState.PRUNED)
    study.ask(dist)  # left RUNNING
    for attrs in (
        {},
        {A_REQUEUED: True},
        {A_DISCARDED: True},
        {A_REQUEUED: False},
        {A_REQUEUED: 1},
        {A_DISCARDED: "yes"},
    ):
        t = study.ask(dist)
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})  # WAITING
    return study


def test_sql_count_matches_python_rule(storage: RetryingRDBStorage) -> None:
    study = _mixed_study(storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10
    expected = sum(1 for t in trials if counted(t))
    assert expected == 7  # complete, pruned, running, genuine fail, the fails with markers not `true`
    assert expected == sum(1 for t in trials if TrialRecord.from_trial(t).counted)
    assert storage.count_counted(study._study_id) == expected
    for before in range(len(trials) + 1):
        want = sum(1 for t in trials if t.number < before and counted(t))
        assert storage.count_counted(study._study_id, before=before) == want, before


def test_count_is_per_study(storage: RetryingRDBStorage) -> None:
    a = _mixed_study(storage)
    b = optuna.create_study(storage=storage)
    b.tell(b.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)}), 0.0)
    assert count_counted(storage, a._study_id) == 7
    assert count_counted(storage, b._study_id) == 1


def test_grid_point_taken_ignores_uncounted_trials(storage: RetryingRDBStorage) -> None:
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.GridSampler({"x": [0.0, 1.0, 2.0]}, seed=0))
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 2.0)}
    first = study.ask(dist)
    gid = storage.get_trial_system_attrs(first._trial_id)["grid_id"]
    assert not grid_point_taken(storage, study._study_id, gid, first._trial_id)  # only itself holds it
    second = study.ask(dist)
    assert grid_point_taken(storage, study._study_id, gid, second._trial_id)  # `first` holds it (RUNNING)
    first.set_user_attr(A_REQUEUED, True)
    study.tell(first, state=TrialState.FAIL)
    assert not grid_point_taken(storage, study._study_id, gid, second._trial_id)  # a re-queued failure frees it


def test_batched_user_attrs_are_written_and_checked(storage: RetryingRDBStorage) -> None:
    study = optuna.create_study(storage=storage)
    t = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    storage.set_trial_user_attrs(t._trial_id, {"a": 1, "b": [1, 2], "c": {"k": "v"}})
    storage.set_trial_user_attrs(t._trial_id, {"a": 2})  # overwrite
    assert storage.get_trial(t._trial_id).user_attrs == {"a": 2, "b": [1, 2], "c": {"k": "v"}}
    study.tell(t, 0.0)
    with pytest.raises(RuntimeError):  # a finished trial is read-only, as with set_user_attr
        storage.set_trial_user_attrs(t._trial_id, {"a": 3})


def test_rdb_backend_unwraps_optunas_cache(storage: RetryingRDBStorage) -> None:
    study = optuna.create_study(storage=storage)
    assert rdb_backend(study._storage) is storage
    assert rdb_backend(optuna.storages.InMemoryStorage()) is None
