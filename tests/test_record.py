"""The trial record (hpo.record): stored names and types, the round trip over every state and attribute
combination (and studies written by older versions), the counting rule and every reader of it, and
direction-aware best trials."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from dash_fixtures import sqlite_study_file
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from typer.testing import CliRunner

from dashboards import data as D
from dashboards.notes import trial_note
from hpo import api, record
from hpo.cli import app
from hpo.config import load_study_file
from hpo.export import ranked_trials
from hpo.record import ATTR_KEYS, TrialAttrs, TrialRecord, best_of, counted, rank_trials, running_best
from hpo.storage import load_existing, open_storage
from hpo.store import RDBStudyStore, study_store

DIST = {"x": FloatDistribution(0.0, 1.0)}

# The stored names are the format of existing studies (the dashboard shows them, benchmarks read them):
# renaming a field is a format change, and must fail here.
STORED_NAMES = {
    "device", "worker", "host", "orchestrator_pid",
    "worker_pid",  # added to find the process of a trial (a stuck one, a test's kill -9)
    "metrics", "steps", "train_time", "eval_time", "setup_time", "tokens_per_s", "precision",
    "trainable_params", "total_params", "peak_memory_mb",  # added with model.peft (issue 17)
    "latency_ms", "objective_curve",  # added with multi-objective studies (issue 12)
    "teacher_time",  # added with distillation (issue 11)
    "processes", "rank_steps", "oom_retries", "micro_batch",
    "duration", "reason", "requeued", "discarded", "oom_detail", "traceback", "error",
    "retry_of", "retries",
    "examples",  # generation tasks (issue 10)
}  # fmt: skip


def test_the_record_owns_the_stored_names() -> None:
    assert ATTR_KEYS == STORED_NAMES
    constants = {v for k, v in vars(record).items() if k.startswith("A_")}
    assert constants and constants <= ATTR_KEYS


# ------------------------------------------------------------------------------------- attribute sets
# What each writer of the orchestrator stores, and what older versions or other tools left behind.

LAUNCH = TrialAttrs(device="cpu", worker=1, host="node-1", orchestrator_pid=4242, worker_pid=4243)
RESULT = TrialAttrs(
    metrics={"eval_loss": 2.3, "perplexity": 10.0},
    steps=100,
    train_time=1.5,
    eval_time=0.25,
    setup_time=0.125,
    tokens_per_s=1000.5,
    precision="bf16",
)


def merged(*parts: TrialAttrs | dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        out.update(p.to_user_attrs() if isinstance(p, TrialAttrs) else p)
    return out


ATTR_SETS: dict[str, dict[str, Any]] = {
    "none (a plain Optuna trial)": {},
    "launched": merged(LAUNCH),
    "complete": merged(LAUNCH, RESULT, TrialAttrs(duration=2.0)),
    "multi-gpu": merged(LAUNCH, RESULT, TrialAttrs(processes=2, rank_steps=(60, 58), duration=3.0)),
    "after oom retries": merged(LAUNCH, RESULT, TrialAttrs(oom_retries=2, micro_batch=(4, 4), duration=3.0)),
    "pruned": merged(LAUNCH, RESULT, TrialAttrs(duration=1.0, reason="pruned by median pruner at step 50")),
    "non-finite": merged(LAUNCH, TrialAttrs(duration=0.5, reason="non-finite training loss (nan) at step 5")),
    "oom": merged(LAUNCH, TrialAttrs(duration=0.5, reason="oom", oom_detail="out of memory at micro-batch 8")),
    "error": merged(LAUNCH, TrialAttrs(duration=0.5, reason="error: boom", traceback="Traceback...\nValueError: x")),
    "interrupted": merged(
        LAUNCH, RESULT, TrialAttrs(duration=1.0, reason="interrupted", requeued=True, error="KeyboardInterrupt")
    ),
    "orphaned": merged(LAUNCH, TrialAttrs(reason="orphaned: no heartbeat", requeued=True)),
    "discarded": merged(TrialAttrs(reason="not run: n_trials reached by other processes", discarded=True)),
    "discarded re-run": merged(TrialAttrs(retry_of=3, retries=1, reason="not run: grid point taken", discarded=True)),
    "re-run": merged(TrialAttrs(retry_of=3, retries=2), LAUNCH, RESULT, TrialAttrs(duration=2.0)),
    "invalid configuration": {"reason": "invalid configuration: batch too large"},
    # Older versions: no host/pid, no setup_time or precision, no duration; ints where floats are now.
    "old version": {"device": "cuda:0", "worker": 0, "steps": 40, "train_time": 3, "metrics": {"accuracy": 1}},
    "old version, steps only reported": {"device": "cpu"},
    # Other tools (or a user) on the same trial: kept as they are, never trusted as hpo's.
    "foreign keys and types": {"note": "mine", "steps": "many", "worker": True, "metrics": {"a": "b"}, "x": [1]},
    "marker False": {"requeued": False, "discarded": False},
    "marker not exactly true": {"requeued": 1, "discarded": "yes"},
    "non-finite numbers": {"tokens_per_s": math.inf, "metrics": {"perplexity": math.nan}},
}
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
VALUES = {TrialState.COMPLETE: 1.5, TrialState.PRUNED: 7.0}  # a pruned trial: its last reported value


def trial(state: TrialState, attrs: dict[str, Any], number: int = 0, value: float | None = None) -> FrozenTrial:
    t = create_trial(
        state=state,
        value=value if value is not None else VALUES.get(state),
        params={"x": 0.5},
        distributions=DIST,
        user_attrs=attrs,
        intermediate_values={10: 9.0, 20: 8.0} if state != TrialState.WAITING else {},
    )
    t.number = number
    return t


@pytest.mark.parametrize(("state", "name"), list(itertools.product(STATES, ATTR_SETS)))
def test_round_trip_over_every_state_and_attribute_set(state: TrialState, name: str) -> None:
    attrs = ATTR_SETS[name]
    t = trial(state, attrs)
    r = TrialRecord.from_trial(t)
    assert r.to_user_attrs() == t.user_attrs  # nothing lost, nothing invented (json: NaN-safe comparison)
    assert json.dumps(r.to_user_attrs(), sort_keys=True) == json.dumps(t.user_attrs, sort_keys=True)
    assert (r.number, r.state, r.params, r.intermediate) == (t.number, state, t.params, t.intermediate_values)
    assert r.value == VALUES.get(state)
    assert r.counted == counted(t)
    # Typed form -> stored form -> typed form is the identity.
    assert TrialAttrs.from_user_attrs(r.attrs.to_user_attrs()) == r.attrs
    # Every field is of its declared type (or not set); values of another type are only in ``extra``.
    for f in dataclasses.fields(TrialAttrs):
        v = getattr(r.attrs, f.name)
        if v is not None and f.name in attrs:
            assert f.metadata["parse"](attrs[f.name]) == v or v is False


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none (a plain Optuna trial)", {"steps": 20, "reason": None, "device": None}),
        ("complete", {"steps": 100, "duration": 2.0, "device": "cpu", "worker": 1, "precision": "bf16"}),
        ("multi-gpu", {"processes": 2, "rank_steps": (60, 58)}),
        ("after oom retries", {"oom_retries": 2, "micro_batch": (4, 4)}),
        ("interrupted", {"requeued": True, "discarded": False, "error": "KeyboardInterrupt"}),
        ("discarded re-run", {"discarded": True, "retry_of": 3, "retries": 1, "steps": 20}),
        ("old version", {"steps": 40, "train_time": 3, "host": None, "setup_time": None, "metrics": {"accuracy": 1}}),
        ("old version, steps only reported", {"steps": 20, "device": "cpu"}),
        ("foreign keys and types", {"steps": 20, "worker": None, "metrics": None, "extra_keys": {"note", "x"}}),
        ("marker False", {"requeued": False, "discarded": False}),
        ("marker not exactly true", {"requeued": False, "discarded": False}),
    ],
)
def test_typed_fields(name: str, expected: dict[str, Any]) -> None:
    r = TrialRecord.from_trial(trial(TrialState.COMPLETE, ATTR_SETS[name]))
    for key, want in expected.items():
        if key == "extra_keys":
            assert want <= set(r.extra), r.extra
        elif key in ("steps", "duration"):
            assert getattr(r, key) == want, key  # the record's fallbacks (intermediate steps, Optuna's times)
        else:
            assert getattr(r.attrs, key) == want, key


def test_a_missing_duration_comes_from_optunas_times() -> None:
    r = TrialRecord.from_trial(trial(TrialState.COMPLETE, {}))
    assert r.duration is not None and r.duration >= 0.0
    assert TrialRecord.from_trial(trial(TrialState.WAITING, {})).duration is None


def test_stored_form_survives_the_database(tmp_path: Path) -> None:
    """Written through a real SQLite storage (JSON text), every set reads back as the same record."""
    storage = open_storage(f"sqlite:///{tmp_path}/r.db", create=True)
    study = optuna.create_study(storage=storage)
    for name, attrs in ATTR_SETS.items():
        study.add_trial(trial(TrialState.FAIL, attrs))
        stored = study.get_trials(deepcopy=False)[-1]
        r = TrialRecord.from_trial(stored)
        assert repr(r.attrs) == repr(TrialAttrs.from_user_attrs(attrs)), name  # repr: NaN equals itself
        assert json.dumps(r.to_user_attrs(), sort_keys=True) == json.dumps(attrs, sort_keys=True), name


# ------------------------------------------------------------------------------------------ counting

REQUEUED, DISCARDED = {"requeued": True}, {"discarded": True}


@pytest.mark.parametrize(
    ("state", "attrs", "counts"),
    [
        (TrialState.COMPLETE, {}, True),
        (TrialState.PRUNED, {}, True),
        (TrialState.RUNNING, {}, True),
        (TrialState.WAITING, {}, False),
        (TrialState.WAITING, {"retry_of": 2, "retries": 1}, False),
        (TrialState.FAIL, {}, True),  # a genuine failure used up its trial
        (TrialState.FAIL, REQUEUED, False),  # its parameters run again as another trial
        (TrialState.FAIL, DISCARDED, False),  # asked, then not needed: never ran
        (TrialState.FAIL, {**REQUEUED, **DISCARDED}, False),
        (TrialState.FAIL, {"requeued": False}, True),
        (TrialState.FAIL, {"requeued": 1}, True),  # only JSON ``true`` marks, as in the SQL form
        (TrialState.COMPLETE, REQUEUED, True),  # markers only matter on a FAIL
        (TrialState.PRUNED, DISCARDED, True),
    ],
)
def test_counting_rule(state: TrialState, attrs: dict[str, Any], counts: bool) -> None:
    t = trial(state, attrs)
    assert counted(t) is counts
    assert TrialRecord.from_trial(t).counted is counts
    assert record.counts(state, attrs.get("requeued") is True, attrs.get("discarded") is True) is counts


def test_every_reader_counts_alike(tmp_path: Path) -> None:
    """`hpo status` (API and --json), the dashboards' data and the SQL count agree with the rule on a study
    with a trial of every kind, discarded and re-queued failures included."""
    path = sqlite_study_file(tmp_path, curves=False)  # 5 trials, all counting: 3 complete, 1 pruned, 1 fail
    cfg = load_study_file(path)
    study = load_existing(cfg)
    extra = [
        (TrialState.FAIL, ATTR_SETS["discarded"]),
        (TrialState.FAIL, ATTR_SETS["discarded re-run"]),
        (TrialState.FAIL, ATTR_SETS["orphaned"]),
        (TrialState.FAIL, ATTR_SETS["interrupted"]),
        (TrialState.FAIL, {"requeued": False}),  # counts
        (TrialState.RUNNING, ATTR_SETS["launched"]),  # counts
    ]
    for state, attrs in extra:
        study.add_trial(create_trial(state=state, params={}, distributions={}, user_attrs=attrs))
    study.enqueue_trial({}, user_attrs={"retry_of": 5, "retries": 1})  # WAITING: does not count
    want = 5 + 2
    trials = study.get_trials(deepcopy=False)
    assert sum(counted(t) for t in trials) == want
    assert api.status(path).counted == want
    shown = CliRunner().invoke(app, ["status", str(path), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["counted"] == want, shown.output
    sd = D.collect(study, importances=False)
    assert sum(t.counted for t in sd.trials) == want
    assert [t.counted for t in sd.trials] == [counted(t) for t in trials]
    store = study_store(study)
    assert isinstance(store, RDBStudyStore) and store.count_counted() == want  # the SQL form


def test_a_discarded_trial_says_so_in_its_note() -> None:
    r = TrialRecord.from_trial(trial(TrialState.FAIL, ATTR_SETS["discarded"], number=7))
    note = trial_note(r, "perplexity")
    assert "not run: n_trials reached by other processes" in note
    assert "does not count towards n_trials" in note and "Re-queued" not in note


# ---------------------------------------------------------------------------------------------- best


def _trials(rows: list[tuple[TrialState, float | None]]) -> list[FrozenTrial]:
    return [trial(state, {}, number=i, value=v) for i, (state, v) in enumerate(rows)]


def _info(number: int, state: str, value: float | None) -> D.TrialInfo:
    return D.TrialInfo(number, state, value, {}, {}, None, None, None, None, None, None, None)


C, P, F, R = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING


@pytest.mark.parametrize(
    ("direction", "rows", "order"),
    [
        ("minimize", [(C, 3.0), (C, 1.0), (C, 2.0)], [1, 2, 0]),
        ("maximize", [(C, 3.0), (C, 1.0), (C, 2.0)], [0, 2, 1]),
        ("minimize", [(C, 2.0), (C, 1.0), (C, 1.0)], [1, 2, 0]),  # a tie: the earlier trial first
        ("maximize", [(C, 1.0), (C, 2.0), (C, 2.0)], [1, 2, 0]),
        ("minimize", [(P, 0.1), (C, 5.0), (F, None), (R, None)], [1]),  # a pruned value is not a result
        ("maximize", [(P, 9.0), (C, 5.0)], [1]),
        ("minimize", [(P, 1.0), (F, None)], []),
        ("minimize", [(C, -math.inf), (C, 0.0)], [0, 1]),
        (optuna.study.StudyDirection.MAXIMIZE, [(C, 1.0), (C, 2.0)], [1, 0]),
    ],
)
def test_rank_trials(direction: Any, rows: list[tuple[TrialState, float | None]], order: list[int]) -> None:
    trials = _trials(rows)
    assert [t.number for t in rank_trials(trials, direction)] == order
    best = best_of(trials, direction)
    assert (best.number if best else None) == (order[0] if order else None)
    # The same answer for the record and for the dashboards' plain rows (state as text, value None if NaN).
    recs = [TrialRecord.from_trial(t) for t in trials]
    assert [t.number for t in rank_trials(recs, direction)] == order
    infos = [_info(t.number, t.state.name, t.value) for t in trials]
    assert [t.number for t in rank_trials(infos, direction)] == order


def test_rank_skips_nan_and_refuses_an_unknown_direction() -> None:
    infos = [_info(0, "COMPLETE", math.nan), _info(1, "COMPLETE", 2.0)]
    assert [t.number for t in rank_trials(infos, "minimize")] == [1]
    with pytest.raises(ValueError, match="direction must be minimize or maximize"):
        rank_trials(infos, "smallest")


@pytest.mark.parametrize(
    ("direction", "values", "best"),
    [
        ("minimize", [3.0, 4.0, 1.0, 1.0, 2.0], [3.0, 3.0, 1.0, 1.0, 1.0]),
        ("maximize", [3.0, 4.0, 1.0, 5.0], [3.0, 4.0, 4.0, 5.0]),
        ("minimize", [], []),
    ],
)
def test_running_best(direction: str, values: list[float], best: list[float]) -> None:
    assert running_best(values, direction) == best


def test_status_best_and_export_agree_on_ties_and_ignore_pruned(tmp_path: Path) -> None:
    """`hpo status`, `hpo best` and `hpo export`'s first rank name the same trial: the earlier of two equal
    best values, never a pruned trial whose last reported value looks better."""
    path = sqlite_study_file(tmp_path, curves=False)  # minimize; trial 2 is best with 5.0
    study = load_existing(load_study_file(path))
    params = study.get_trials(deepcopy=False)[2]
    for state, value in ((TrialState.COMPLETE, 5.0), (TrialState.PRUNED, 0.5)):
        study.add_trial(
            create_trial(state=state, value=value, params=params.params, distributions=params.distributions)
        )
    assert api.status(path).best.number == 2  # type: ignore[union-attr]
    assert api.best(path)[1].number == 2
    assert [t.number for t in ranked_trials(study)][:2] == [2, 5]
    out = CliRunner().invoke(app, ["best", str(path), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["number"] == 2, out.output
    assert json.loads(out.output)["user_attrs"] == study.get_trials(deepcopy=False)[2].user_attrs
