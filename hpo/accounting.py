"""Which trials count towards a study's ``n_trials``, in Python and in SQL.

Several orchestrators (other machines) may share one study, so the study's total is counted in the
storage, not in any one process. A trial counts when it is finished or running, unless it is a failure
that was re-queued (its parameters run again as a new trial) or discarded (asked, then found not needed):
the rule is ``hpo.record.counts``, and this module is its SQL form.

The SQL forms answer the same questions with one ``COUNT``/``EXISTS`` each: the orchestrator asks them
before every launch, and reading every trial back through Optuna instead costs O(trials) Python work
per launch (and re-reads every RUNNING trial of every process).
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import and_, exists, func, not_, select

# The attribute names and the Python form of the rule are the trial record's (re-exported here for the
# modules that import them from here); the SQL below must agree with ``hpo.record.counts``.
from hpo.record import A_DISCARDED, A_REASON, A_REQUEUED, A_RETRY_OF, counted  # noqa: F401


def rdb_backend(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's cache wrapper, or None (in-memory, journal)."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _counted_clause(study_id: int) -> Any:
    """SQL for ``counted``: not WAITING, and not a FAIL marked re-queued or discarded."""
    T, A = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    # user attrs are stored as JSON text: ``true`` is how ``set_user_attr(k, True)`` lands.
    marked = exists().where(
        A.c.trial_id == T.c.trial_id, A.c.key.in_([A_REQUEUED, A_DISCARDED]), A.c.value_json == json.dumps(True)
    )
    return and_(
        T.c.study_id == study_id, T.c.state != TrialState.WAITING, not_(and_(T.c.state == TrialState.FAIL, marked))
    )


def count_counted(storage: optuna.storages.RDBStorage, study_id: int, before: int | None = None) -> int:
    """How many trials of the study count (only those numbered below ``before``, if given)."""
    T = models.TrialModel.__table__
    where = _counted_clause(study_id)
    if before is not None:
        where = and_(where, T.c.number < before)
    with storage.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(T).where(where)).scalar_one())


def grid_point_taken(storage: optuna.storages.RDBStorage, study_id: int, grid_id: Any, trial_id: int) -> bool:
    """Whether a counted trial other than ``trial_id`` holds the grid point ``grid_id``."""
    T, S = models.TrialModel.__table__, models.TrialSystemAttributeModel.__table__
    query = (
        select(S.c.trial_id)
        .select_from(S.join(T, S.c.trial_id == T.c.trial_id))
        .where(_counted_clause(study_id), S.c.key == "grid_id", S.c.value_json == json.dumps(grid_id))
        .where(T.c.trial_id != trial_id)
        .limit(1)
    )
    with storage.engine.connect() as conn:
        return conn.execute(query).first() is not None
