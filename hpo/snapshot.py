"""A read-only snapshot of one study in an SQL storage, read with a few SELECTs on Optuna's tables.

Why: `hpo status` is the command users run in a loop while a study runs. Opening the study through Optuna's
``RDBStorage`` imports alembic and checks the schema version (about a third of the command's CPU), maps every
trial through the ORM, and, through ``hpo.store``, imports Optuna's ORM models. The snapshot reads the same
rows with SQLAlchemy Core and builds Optuna's own ``FrozenTrial`` from them, exactly as
``RDBStorage._build_frozen_trial_from_trial_model`` does (tests/test_snapshot.py compares the two on studies
with every kind of value).

It answers only what it is sure of: a database whose schema is not the one this module knows (another
Optuna schema version), a study that is not there, or any database error gives ``None``, and the caller
opens the study through Optuna as before (which names the fault, retries a lost connection, or says the
study does not exist). Like ``hpo.store``, this module knows Optuna's private table layout: the
``optuna>=5.0,<6`` pin covers it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# The schema these SELECTs were written for: Optuna's ``version_info.schema_version`` (12 since Optuna 3.0;
# tests/test_snapshot.py checks it against the installed Optuna's) and its alembic revision.
SCHEMA_VERSION = 12
ALEMBIC_REVISION = "v3.2.0.a"

_meta = sa.MetaData()


def _table(name: str, **columns: Any) -> sa.Table:
    """The columns of one of Optuna's tables that the snapshot reads (name=type)."""
    return sa.Table(name, _meta, *(sa.Column(k, t) for k, t in columns.items()))


INT, STR, TEXT, FLOAT, TIME = sa.Integer, sa.String, sa.Text, sa.Float, sa.DateTime
_studies = _table("studies", study_id=INT, study_name=STR)
_directions = _table("study_directions", study_id=INT, direction=STR, objective=INT)
_study_attrs = _table("study_user_attributes", study_id=INT, key=STR, value_json=TEXT)
_trials = _table(
    "trials", trial_id=INT, number=INT, study_id=INT, state=STR, datetime_start=TIME, datetime_complete=TIME
)
_params = _table("trial_params", trial_id=INT, param_id=INT, param_name=STR, param_value=FLOAT, distribution_json=TEXT)
_values = _table("trial_values", trial_id=INT, objective=INT, value=FLOAT, value_type=STR)
_intermediate = _table(
    "trial_intermediate_values", trial_id=INT, step=INT, intermediate_value=FLOAT, intermediate_value_type=STR
)
_user_attrs = _table("trial_user_attributes", trial_id=INT, key=STR, value_json=TEXT)
_system_attrs = _table("trial_system_attributes", trial_id=INT, key=STR, value_json=TEXT)
_version = _table("version_info", schema_version=INT)
_alembic = _table("alembic_version", version_num=STR)

# Optuna stores infinities (and NaN intermediate values) as NULL plus a type; FINITE carries the number.
_SPECIAL = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}


@dataclass(frozen=True)
class StudySnapshot:
    """What the readers of a finished or running study need, as Optuna's public types."""

    directions: list[StudyDirection]
    user_attrs: dict[str, Any]
    trials: list[FrozenTrial] = field(default_factory=list)  # by number

    def get_trials(self, deepcopy: bool = False) -> list[FrozenTrial]:
        """The trials by number, like ``optuna.Study.get_trials(deepcopy=False)`` (never copied: frozen)."""
        return self.trials


def _float(value: float | None, kind: str) -> float:
    return _SPECIAL[kind] if kind in _SPECIAL else float(value)  # type: ignore[arg-type]


def _local(utc: dt.datetime | None) -> dt.datetime | None:
    # Optuna stores naive UTC and gives naive local time back (optuna/storages/_rdb/models.py).
    return None if utc is None else utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


def _by_trial(conn: sa.Connection, table: sa.Table, trial_ids: sa.Select[Any], *order: Any) -> dict[int, list[Any]]:
    rows: dict[int, list[Any]] = defaultdict(list)
    for row in conn.execute(sa.select(table).where(table.c.trial_id.in_(trial_ids)).order_by(*order)):
        rows[row.trial_id].append(row)
    return rows


def read(conn: sa.Connection, study_name: str) -> StudySnapshot | None:
    """The study ``study_name`` through an open connection; None where Optuna must answer (see the module)."""
    if conn.execute(sa.select(_version.c.schema_version)).scalar() != SCHEMA_VERSION:
        return None
    if conn.execute(sa.select(_alembic.c.version_num)).scalar() != ALEMBIC_REVISION:
        return None
    study_id = conn.execute(sa.select(_studies.c.study_id).where(_studies.c.study_name == study_name)).scalar()
    if study_id is None:
        return None
    directions = [
        StudyDirection[d]
        for d in conn.execute(
            sa.select(_directions.c.direction)
            .where(_directions.c.study_id == study_id)
            .order_by(_directions.c.objective)
        ).scalars()
    ]
    attrs = {
        r.key: json.loads(r.value_json)
        for r in conn.execute(sa.select(_study_attrs).where(_study_attrs.c.study_id == study_id))
    }
    ids = sa.select(_trials.c.trial_id).where(_trials.c.study_id == study_id)
    params = _by_trial(conn, _params, ids, _params.c.param_id)
    values = _by_trial(conn, _values, ids, _values.c.objective)
    steps = _by_trial(conn, _intermediate, ids, _intermediate.c.step)
    user = _by_trial(conn, _user_attrs, ids)
    system = _by_trial(conn, _system_attrs, ids)
    trials = []
    for t in conn.execute(sa.select(_trials).where(_trials.c.study_id == study_id).order_by(_trials.c.number)):
        dists = {p.param_name: json_to_distribution(p.distribution_json) for p in params[t.trial_id]}
        vals = [_float(v.value, v.value_type) for v in values[t.trial_id]]
        trials.append(
            FrozenTrial(
                number=t.number,
                state=TrialState[t.state],
                value=None,
                values=vals or None,
                datetime_start=_local(t.datetime_start),
                datetime_complete=_local(t.datetime_complete),
                params={p.param_name: dists[p.param_name].to_external_repr(p.param_value) for p in params[t.trial_id]},
                distributions=dists,
                user_attrs={a.key: json.loads(a.value_json) for a in user[t.trial_id]},
                system_attrs={a.key: json.loads(a.value_json) for a in system[t.trial_id]},
                intermediate_values={
                    s.step: _float(s.intermediate_value, s.intermediate_value_type) for s in steps[t.trial_id]
                },
                trial_id=t.trial_id,
            )
        )
    return StudySnapshot(directions=directions, user_attrs=attrs, trials=trials)


def snapshot(url: str, study_name: str) -> StudySnapshot | None:
    """The study ``study_name`` of the SQL storage at ``url``, opened read-only where the database can be
    (nothing is created: a missing file is left to Optuna's path); None where Optuna must answer."""
    from hpo.urls import reader_url, sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None  # Optuna's path says where it looked
    # The URL read-only commands read through: an SQLite file that cannot be written is opened read-only.
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if path is not None else {}  # a writer's lock
    try:
        engine = sa.create_engine(reader_url(url), poolclass=sa.pool.NullPool, **kwargs)
    except Exception:  # a driver that is not installed, a URL SQLAlchemy cannot read: Optuna says which
        return None
    try:
        with engine.connect() as conn:
            return read(conn, study_name)
    except (sa.exc.SQLAlchemyError, KeyError, ValueError, TypeError):
        return None  # not an Optuna database, a schema it does not know, a lost connection: Optuna's path
    finally:
        engine.dispose()
