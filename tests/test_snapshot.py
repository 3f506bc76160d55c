"""hpo.snapshot reads a study with plain SQL; it must give exactly the FrozenTrials Optuna's storage gives,
on SQLite and PostgreSQL, and give up (None) wherever it could be wrong."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages._rdb import models as rdb_models
from optuna.trial import FrozenTrial, TrialState

from hpo import snapshot
from hpo.storage import open_storage

DISTS = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "batch": CategoricalDistribution([8, 16, 32]),
    "name": CategoricalDistribution(["a", "b", None]),
    "layers": IntDistribution(1, 8, step=1),
    "p": FloatDistribution(0.0, 0.3, step=0.1),
}
# (state, values, intermediate values, params): every kind of value Optuna stores as NULL plus a type.
TRIALS: list[tuple[TrialState, list[float] | None, dict[int, float], dict[str, Any]]] = [
    (TrialState.COMPLETE, [1.5], {50: 3.0, 100: 2.0}, {"lr": 1e-3, "batch": 16, "name": "a", "layers": 2, "p": 0.1}),
    (TrialState.COMPLETE, [math.inf], {50: math.inf}, {"lr": 2e-4, "batch": 8, "name": None, "layers": 8, "p": 0.0}),
    (TrialState.COMPLETE, [-math.inf], {}, {"lr": 1e-2, "batch": 32, "name": "b", "layers": 1, "p": 0.3}),
    (TrialState.PRUNED, None, {50: math.nan, 100: -math.inf}, {"lr": 5e-5, "batch": 8}),
    (TrialState.FAIL, None, {}, {"lr": 1e-5}),
    (TrialState.RUNNING, None, {50: 4.0}, {"lr": 3e-3, "batch": 32}),
    (TrialState.WAITING, None, {}, {}),
]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path}/study.db"


def _add(study: optuna.Study) -> None:
    """The trials of TRIALS with the exact parameters (``create_trial`` + ``add_trial``), as Optuna stores them."""
    study.set_user_attr("hpo:n_trials", 7)
    study.set_user_attr("nested", {"a": [1, 2.5, None], "b": "é"})
    for i, (state, values, steps, params) in enumerate(TRIALS):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                values=values,
                params=params,
                distributions={k: DISTS[k] for k in params},
                intermediate_values=steps,
                user_attrs={"steps": 100 + i, "reason": None if i else "ok"},
                system_attrs={"grid_id": i},
            )
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _as_dict(t: FrozenTrial) -> dict[str, Any]:
    return {k: getattr(t, k) for k in ("number", "state", "values", "datetime_start", "datetime_complete",
            "params", "distributions", "user_attrs", "system_attrs", "intermediate_values", "_trial_id")}  # fmt: skip


@pytest.mark.parametrize("directions", [["minimize"], ["maximize", "minimize"]])
def test_snapshot_gives_the_trials_optunas_storage_gives(url: str, directions: list[str]) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True), directions=directions)
    other = optuna.create_study(study_name="other", storage=study._storage)  # must not leak into "s"
    if len(directions) == 1:
        _add(study)
    else:
        for values in ([0.5, math.inf], [0.25, -1.0]):  # two values per trial, in objective order
            study.add_trial(
                optuna.trial.create_trial(
                    values=values, params={"lr": 1e-3}, distributions={"lr": DISTS["lr"]}, user_attrs={"x": 1}
                )
            )
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={}))
    other.add_trial(optuna.trial.create_trial(value=9.0, params={}, distributions={}))

    snap = snapshot.snapshot(url, "s")

    assert snap is not None
    assert snap.directions == study.directions
    assert snap.user_attrs == study.user_attrs
    expected = study.get_trials(deepcopy=False)
    assert [t.number for t in snap.get_trials()] == [t.number for t in expected]
    for got, want in zip(snap.get_trials(), expected, strict=True):
        assert _same(_as_dict(got), _as_dict(want)), (got, want)


def test_snapshot_reads_a_running_study_as_it_is(url: str) -> None:
    """ask/report/tell as the orchestrator does it, with a trial still running."""
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    done = study.ask({"lr": DISTS["lr"]})
    done.report(2.0, 50)
    study.tell(done, 1.0)
    running = study.ask({"batch": DISTS["batch"]})
    running.report(3.0, 50)

    snap = snapshot.snapshot(url, "s")

    assert snap is not None
    got = {t.number: t for t in snap.trials}
    assert got[0].state == TrialState.COMPLETE and got[0].value == 1.0 and got[0].intermediate_values == {50: 2.0}
    assert got[1].state == TrialState.RUNNING and got[1].datetime_complete is None
    assert got[1].datetime_start == study.trials[1].datetime_start


@pytest.mark.parametrize("case", ["no file", "no study", "not optuna", "older schema", "other revision"])
def test_snapshot_gives_up_where_optuna_must_answer(tmp_path: Path, case: str) -> None:
    path = tmp_path / "study.db"
    url = f"sqlite:///{path}"
    if case != "no file":
        if case == "not optuna":
            with sqlite3.connect(path) as con:
                con.execute("CREATE TABLE notes (x TEXT)")
        else:
            optuna.create_study(study_name="s", storage=open_storage(url, create=True))
            with sqlite3.connect(path) as con:
                if case == "older schema":
                    con.execute("UPDATE version_info SET schema_version = 11")
                if case == "other revision":
                    con.execute("UPDATE alembic_version SET version_num = 'v9.9.9'")
    before = sorted(p.name for p in tmp_path.iterdir())

    assert snapshot.snapshot(url, "missing" if case == "no study" else "s") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def test_the_schema_it_knows_is_the_installed_optunas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    optuna.create_study(storage=open_storage(url, create=True))
    with sqlite3.connect(tmp_path / "a.db") as con:
        revision = con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert snapshot.SCHEMA_VERSION == rdb_models.SCHEMA_VERSION
    assert snapshot.ALEMBIC_REVISION == revision
