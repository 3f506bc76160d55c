"""The storage adapter: every storage call hpo makes beyond ``optuna.Study``, behind one interface.

``study_store(study)`` gives a ``StudyStore`` for a study: ``RDBStudyStore`` (SQLite, PostgreSQL, MySQL)
answers in SQL and batches writes into one transaction; ``InMemoryStudyStore`` (and any other Optuna
storage) answers the same questions through Optuna's public API. The orchestrator, the ledger, the API,
the dashboards and the benchmarks call the adapter; none of them asks "is this an RDB storage" or reaches
into Optuna's private attributes.

This module owns:
- every private Optuna name hpo uses (``study._storage``, ``trial._trial_id``, ``study._study_id``, the
  RDB models and session helper, ``_get_stale_trial_ids``): Optuna has no public form of them, hence the
  ``optuna>=5.0,<6`` pin in pyproject.toml;
- all SQL hpo runs on Optuna's tables (which trials count towards ``n_trials``, grid points taken);
- all retries: ``RetryingRDBStorage`` waits out a lost connection, names a fault of the storage itself
  (disk full, read-only, damaged file) at once, notices a deleted or replaced SQLite file, and retries
  the table-creation race of processes opening a new database together.

Stale trials: Optuna's public ``fail_stale_trials`` (with ``RetryHeartbeatStaleTrialCallback``) commits
FAIL first and only then calls back; a finished trial's attributes are read-only, so the ``requeued``
mark that keeps a re-queued trial out of the ``n_trials`` count could not be written with it, and the
callback's retry copies every user attribute (that mark included) into the new trial. hpo therefore lists
stale trials here (``stale_trial_ids``) and fails them itself (``TrialLedger.recover_orphans``), mark first.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import and_, exists, func, not_, select

from hpo.errors import StorageError
from hpo.record import A_DISCARDED, A_REQUEUED, counted
from hpo.urls import where

HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
GRACE_PERIOD = 40  # a RUNNING trial without heartbeat for this long belonged to a dead process

# How long a storage call keeps retrying while the database is unreachable (e.g. PostgreSQL restarting).
RETRY_FOR = 120.0

# Tables every Optuna RDB storage has: their absence means the file is not a study database.
OPTUNA_TABLES = {"studies", "trials", "version_info"}
ANY_OPTUNA_TABLE = set(rdb_models.BaseModel.metadata.tables) | {"alembic_version"}

_log = logging.getLogger("hpo.storage")
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------- naming, faults
# SQLite results (``sqlite_errorname`` prefixes) that describe the file or the disk, not a passing
# condition: retrying cannot help, so they end the command at once with the cause.
SQLITE_FAULTS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the database is read-only (a read-only file, folder or file system)",
    "SQLITE_CANTOPEN": "cannot open the database file (missing or read-only folder, or no permission)",
    "SQLITE_CORRUPT": "the database file is damaged (database disk image is malformed)",
    "SQLITE_NOTADB": "the file is not an SQLite database",
    "SQLITE_IOERR": "disk I/O error (the file was removed, or the disk or file system failed)",
    "SQLITE_PERM": "no permission to access the database file",
}
# PostgreSQL SQLSTATEs of the same kind: disk full, read-only transaction, I/O errors, corrupt data.
_PG_FAULTS = {
    "53100": "the database server's disk is full",
    "25006": "the database is read-only",
    "58030": "the database server has an I/O error",
    "XX001": "the database reports corrupt data",
    "XX002": "the database reports a corrupt index",
}


def storage_fault(e: BaseException) -> str | None:
    """The cause, when ``e`` is a fault of the storage itself (disk full, read-only, damaged file)."""
    cause: BaseException | None = e
    while cause is not None:
        orig = getattr(cause, "orig", None)
        for err in (cause, orig):
            name = getattr(err, "sqlite_errorname", None)
            if isinstance(name, str):
                for prefix, why in SQLITE_FAULTS.items():
                    if name.startswith(prefix):
                        return why
            state = getattr(err, "sqlstate", None)
            if isinstance(state, str) and state in _PG_FAULTS:
                return _PG_FAULTS[state]
        cause = cause.__cause__ or cause.__context__
    return None


def _transient(e: BaseException) -> bool:
    """A lost or refused connection, as opposed to a logical error (a finished trial, a missing study) or a
    fault of the storage itself (``storage_fault``)."""
    if storage_fault(e) is not None:
        return False
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
        cause = cause.__cause__
    return False


_DB_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def call_with_retry(url: str, fn: Callable[[], _T]) -> _T:
    """``fn()``, run again with backoff while the database is unreachable (up to ``RETRY_FOR`` s).

    Transactions roll back on failure, so a retried call starts clean. A fault of the storage itself is
    not retried: it raises ``StorageError`` naming the file and the cause.
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return fn()
        except _DB_ERRORS as e:
            _raise_if_fault(url, e)
            if not _transient(e) or waited >= RETRY_FOR:
                raise
            _log.warning("storage unreachable (%s); retrying in %.1fs", type(e).__name__, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10.0)


def call_naming_faults(url: str, fn: Callable[[], _T]) -> _T:
    """``fn()``, with a storage fault raised as ``StorageError`` naming the file and the cause (no retry)."""
    try:
        return fn()
    except _DB_ERRORS as e:
        _raise_if_fault(url, e)
        raise


def _raise_if_fault(url: str, e: BaseException) -> None:
    """A fault of the storage itself (disk full, read-only, damaged) as one line naming the file."""
    fault = storage_fault(e)
    if fault is not None:
        raise StorageError(f"{where(url)}: {fault}") from e


def _retried(fn: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(fn)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> _T:
        return call_with_retry(self.url, lambda: fn(self, *args, **kwargs))

    return call


def _faults_named(fn: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(fn)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> _T:
        return call_naming_faults(self.url, lambda: fn(self, *args, **kwargs))

    return call


# ------------------------------------------------------------------------------------- RDB storage
class RetryingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls wait out a briefly unreachable database (retries with backoff) instead of
    failing the run. A fault of the storage itself (disk full, read-only, damaged file) is not retried: it
    raises ``StorageError`` naming the file and the cause.

    Every storage call is listed here, each with its policy (a subclass, not methods rewritten at import
    time): the public calls and the private reads and trial creation of Optuna's cached storage are retried
    (see the comment at ``_create_new_trial``); a private parameter write only has its faults named. Calls
    that do no I/O are inherited as they are.
    """

    # (device, inode) of the SQLite file when it was opened: a file deleted or replaced during a run would
    # otherwise take every later result with it (the open connections keep writing to the unlinked file).
    file_identity: tuple[str, tuple[int, int]] | None = None

    @classmethod
    def connect(
        cls, url: str, engine_kwargs: dict[str, Any], readonly: bool, heartbeat: tuple[int, int] | None = None
    ) -> RetryingRDBStorage:
        """Open ``url`` with heartbeats (interval, grace; default ``HEARTBEAT_INTERVAL``, ``GRACE_PERIOD``).

        Processes starting together on a new database (a SLURM array) race to create Optuna's tables and
        version rows; the loser sees "already exists" or a duplicate row, and simply opens again.
        """
        interval, grace = heartbeat or (HEARTBEAT_INTERVAL, GRACE_PERIOD)
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat args
                    return cls(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=interval,
                        grace_period=grace,
                        skip_table_creation=readonly,
                    )
            except (
                sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.ProgrammingError,
            ) as e:
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if not racing or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def check_file(self) -> None:
        """Raise ``StorageError`` when the SQLite file was deleted or replaced since it was opened."""
        if self.file_identity is None:
            return
        path, identity = self.file_identity
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise StorageError(f"{path}: the study database was deleted during the run; stopping") from None
        except OSError as e:
            raise StorageError(f"{path}: cannot check the study database: {e.strerror}") from None
        if (st.st_dev, st.st_ino) != identity:
            raise StorageError(f"{path}: the study database was replaced during the run; stopping")

    # Studies.
    create_new_study = _retried(optuna.storages.RDBStorage.create_new_study)
    delete_study = _retried(optuna.storages.RDBStorage.delete_study)
    set_study_user_attr = _retried(optuna.storages.RDBStorage.set_study_user_attr)
    set_study_system_attr = _retried(optuna.storages.RDBStorage.set_study_system_attr)
    get_study_id_from_name = _retried(optuna.storages.RDBStorage.get_study_id_from_name)
    get_study_name_from_id = _retried(optuna.storages.RDBStorage.get_study_name_from_id)
    get_study_directions = _retried(optuna.storages.RDBStorage.get_study_directions)
    get_study_user_attrs = _retried(optuna.storages.RDBStorage.get_study_user_attrs)
    get_study_system_attrs = _retried(optuna.storages.RDBStorage.get_study_system_attrs)
    get_all_studies = _retried(optuna.storages.RDBStorage.get_all_studies)
    # Trials.
    create_new_trial = _retried(optuna.storages.RDBStorage.create_new_trial)
    set_trial_param = _retried(optuna.storages.RDBStorage.set_trial_param)
    get_trial_param = _retried(optuna.storages.RDBStorage.get_trial_param)
    set_trial_state_values = _retried(optuna.storages.RDBStorage.set_trial_state_values)
    set_trial_intermediate_value = _retried(optuna.storages.RDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _retried(optuna.storages.RDBStorage.set_trial_user_attr)
    set_trial_system_attr = _retried(optuna.storages.RDBStorage.set_trial_system_attr)
    get_trial_id_from_study_id_trial_number = _retried(
        optuna.storages.RDBStorage.get_trial_id_from_study_id_trial_number
    )
    get_trial_number_from_id = _retried(optuna.storages.RDBStorage.get_trial_number_from_id)
    get_trial_params = _retried(optuna.storages.RDBStorage.get_trial_params)
    get_trial_user_attrs = _retried(optuna.storages.RDBStorage.get_trial_user_attrs)
    get_trial_system_attrs = _retried(optuna.storages.RDBStorage.get_trial_system_attrs)
    get_trial = _retried(optuna.storages.RDBStorage.get_trial)
    get_all_trials = _retried(optuna.storages.RDBStorage.get_all_trials)
    get_n_trials = _retried(optuna.storages.RDBStorage.get_n_trials)
    get_best_trial = _retried(optuna.storages.RDBStorage.get_best_trial)
    # Heartbeats.
    record_heartbeat = _retried(optuna.storages.RDBStorage.record_heartbeat)
    _get_stale_trial_ids = _retried(optuna.storages.RDBStorage._get_stale_trial_ids)
    # Private calls of Optuna's cached storage. Reads are retried like the public ones. Creating a trial is
    # retried too, so an ask survives a restarting server: if the lost answer hid a committed insert, the
    # extra trial stays RUNNING with no process recorded on it, and the ledger re-queues it after the grace
    # period (``TrialLedger.recover_orphans``). A parameter write is not retried (a second insert of the
    # same row would fail on its unique key): its faults are named.
    _create_new_trial = _retried(optuna.storages.RDBStorage._create_new_trial)
    _set_trial_param = _faults_named(optuna.storages.RDBStorage._set_trial_param)
    _get_best_trial_id = _retried(optuna.storages.RDBStorage._get_best_trial_id)
    _get_trials = _retried(optuna.storages.RDBStorage._get_trials)


def rdb_backend(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's cache wrapper, or None (in-memory, journal)."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def dispose(storage: optuna.storages.BaseStorage) -> None:
    """Close an RDB storage's pooled connections (before its SQLite file is removed); others: nothing."""
    backend = rdb_backend(storage)
    if backend is not None:
        backend.engine.dispose()


# ------------------------------------------------------------------------------------- counting rule (SQL)
def _counted_clause(study_id: int) -> Any:
    """SQL for ``counted``: not WAITING, and not a FAIL marked re-queued or discarded."""
    T, A = rdb_models.TrialModel.__table__, rdb_models.TrialUserAttributeModel.__table__
    # user attrs are stored as JSON text: ``true`` is how ``set_user_attr(k, True)`` lands.
    marked = exists().where(
        A.c.trial_id == T.c.trial_id, A.c.key.in_([A_REQUEUED, A_DISCARDED]), A.c.value_json == json.dumps(True)
    )
    return and_(
        T.c.study_id == study_id, T.c.state != TrialState.WAITING, not_(and_(T.c.state == TrialState.FAIL, marked))
    )


# ------------------------------------------------------------------------------------- the adapter
TrialRef = optuna.Trial | FrozenTrial | int


class StudyStore:
    """One study's storage, as the orchestrator, the ledger and the readers use it.

    Trials are named by their ``optuna.Trial``, ``FrozenTrial`` or storage id (``trial_id``).
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.storage: optuna.storages.BaseStorage = study._storage
        self.study_id: int = study._study_id

    @staticmethod
    def trial_id(trial: TrialRef) -> int:
        """The storage's id of a trial (Optuna keeps it private; hpo needs it for every storage call)."""
        return trial if isinstance(trial, int) else trial._trial_id

    def trial(self, trial: TrialRef) -> FrozenTrial:
        """The trial as stored now (not the ``optuna.Trial``'s cached view)."""
        return self.storage.get_trial(self.trial_id(trial))

    def grid_id(self, trial: TrialRef) -> Any:
        """The grid point the grid sampler gave the trial (None for other samplers)."""
        return self.storage.get_trial_system_attrs(self.trial_id(trial)).get("grid_id")

    def handle(self, study: optuna.Study, trial: TrialRef) -> optuna.Trial:
        """An ``optuna.Trial`` of ``study`` (on this storage) for a stored trial, e.g. to save a note on it."""
        return optuna.Trial(study, self.trial_id(trial))

    # Heartbeats and stale trials: only storages with heartbeats have them.
    @property
    def heartbeat_interval(self) -> float | None:
        """Seconds between heartbeats, or None when the storage keeps none."""
        return None

    def record_heartbeat(self, trials: list[int]) -> None:
        """Record that these (running) trials are alive."""

    def stale_trial_ids(self) -> set[int]:
        """RUNNING trials of the study whose heartbeat stopped longer than the grace period ago."""
        return set()

    def check_file(self) -> None:
        """Raise ``StorageError`` when the study's database file was deleted or replaced during the run."""

    # Attributes.
    def set_trial_attrs(self, trial: TrialRef, attrs: dict[str, Any]) -> None:
        """Several user attributes of a running trial (one transaction where the storage has them)."""
        if isinstance(trial, optuna.Trial):
            for k, v in attrs.items():
                trial.set_user_attr(k, v)  # keeps the Trial's own view of its attributes current
        else:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(self.trial_id(trial), k, v)

    def set_study_attrs(self, attrs: dict[str, Any]) -> None:
        """Several study user attributes (one transaction where the storage has them)."""
        for k, v in attrs.items():
            self.study.set_user_attr(k, v)

    def study_system_attrs(self) -> dict[str, Any]:
        return self.storage.get_study_system_attrs(self.study_id)

    def set_study_system_attr(self, key: str, value: Any) -> None:
        self.storage.set_study_system_attr(self.study_id, key, value)

    def fail(self, trial: TrialRef, attrs: dict[str, Any]) -> bool:
        """Write ``attrs`` on a RUNNING trial, then make it FAIL. False when it was already finished (another
        process closed it first). The attributes come first: a process that dies in between leaves a
        RUNNING trial, which the next orphan check finds again."""
        tid = self.trial_id(trial)
        try:
            self.set_trial_attrs(tid, attrs)
            self.storage.set_trial_state_values(tid, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False
        return True

    # The counting rule, answered over all processes' trials.
    def count_counted(self, before: int | None = None) -> int:
        """How many trials of the study count towards ``n_trials`` (only those numbered below ``before``)."""
        trials = self.study.get_trials(deepcopy=False)
        return sum(1 for t in trials if counted(t) and (before is None or t.number < before))

    def grid_point_taken(self, trial: TrialRef) -> bool:
        """Whether a counted trial other than ``trial`` holds ``trial``'s grid point."""
        tid, gid = self.trial_id(trial), self.grid_id(trial)
        return any(
            t.system_attrs.get("grid_id") == gid and counted(t)
            for t in self.study.get_trials(deepcopy=False)
            if self.trial_id(t) != tid
        )

    def dispose(self) -> None:
        """Close pooled connections (before the storage's file is removed)."""


class InMemoryStudyStore(StudyStore):
    """An in-memory study (and any storage without SQL): Optuna's public API, counting in Python."""


class RDBStudyStore(StudyStore):
    """A study in an RDB storage: the counting rule in SQL (one ``COUNT``/``EXISTS`` instead of reading every
    trial back, and every RUNNING trial of every process with it), batched attribute writes, heartbeats,
    stale trials, and the deleted-file check. Every call is retried like ``RetryingRDBStorage``'s."""

    def __init__(self, study: optuna.Study, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(study)
        self.backend = backend

    def _retry(self, fn: Callable[[], _T]) -> _T:
        return call_with_retry(self.backend.url, fn)

    @property
    def heartbeat_interval(self) -> float | None:
        return self.backend.get_heartbeat_interval()

    def record_heartbeat(self, trials: list[int]) -> None:
        if self.backend.get_heartbeat_interval() is None:
            return
        for tid in trials:
            self.backend.record_heartbeat(tid)

    def stale_trial_ids(self) -> set[int]:
        if self.backend.get_heartbeat_interval() is None:
            return set()
        return set(self.backend._get_stale_trial_ids(self.study_id))

    def check_file(self) -> None:
        if isinstance(self.backend, RetryingRDBStorage):
            self.backend.check_file()

    def set_trial_attrs(self, trial: TrialRef, attrs: dict[str, Any]) -> None:
        """One transaction (Optuna commits each ``set_user_attr`` alone); a finished trial raises
        ``UpdateFinishedTrialError``, as ``set_user_attr`` does."""
        tid, backend = self.trial_id(trial), self.backend

        def write() -> None:
            with _create_scoped_session(backend.scoped_session, True) as session:
                for key, value in attrs.items():
                    backend._set_trial_attr_without_commit(session, rdb_models.TrialUserAttributeModel, tid, key, value)

        self._retry(write)

    def set_study_attrs(self, attrs: dict[str, Any]) -> None:
        """One transaction: a study is never left half-described. Raises ``sqlalchemy.exc.IntegrityError``
        when another process wrote the same keys at the same moment."""
        backend, sid = self.backend, self.study_id

        def write() -> None:
            with _create_scoped_session(backend.scoped_session, True) as session:
                study = rdb_models.StudyModel.find_or_raise_by_id(sid, session)
                for key, value in attrs.items():
                    row = rdb_models.StudyUserAttributeModel.find_by_study_and_key(study, key, session)
                    if row is None:
                        row = rdb_models.StudyUserAttributeModel(study_id=sid, key=key, value_json=json.dumps(value))
                        session.add(row)
                    else:
                        row.value_json = json.dumps(value)

        self._retry(write)

    def count_counted(self, before: int | None = None) -> int:
        T = rdb_models.TrialModel.__table__
        clause = _counted_clause(self.study_id)
        if before is not None:
            clause = and_(clause, T.c.number < before)
        query = select(func.count()).select_from(T).where(clause)

        def run() -> int:
            with self.backend.engine.connect() as conn:
                return int(conn.execute(query).scalar_one())

        return self._retry(run)

    def grid_point_taken(self, trial: TrialRef) -> bool:
        tid, gid = self.trial_id(trial), self.grid_id(trial)
        T, S = rdb_models.TrialModel.__table__, rdb_models.TrialSystemAttributeModel.__table__
        query = (
            select(S.c.trial_id)
            .select_from(S.join(T, S.c.trial_id == T.c.trial_id))
            .where(_counted_clause(self.study_id), S.c.key == "grid_id", S.c.value_json == json.dumps(gid))
            .where(T.c.trial_id != tid)
            .limit(1)
        )

        def run() -> bool:
            with self.backend.engine.connect() as conn:
                return conn.execute(query).first() is not None

        return self._retry(run)

    def dispose(self) -> None:
        self.backend.engine.dispose()


def study_store(study: optuna.Study) -> StudyStore:
    """The adapter for a study's storage."""
    backend = rdb_backend(study._storage)
    return RDBStudyStore(study, backend) if backend is not None else InMemoryStudyStore(study)
