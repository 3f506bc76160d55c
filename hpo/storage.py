"""Opening the study's storage, creating or resuming the study, and guarding it against a changed file."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from sqlalchemy import event
from sqlalchemy.engine import make_url

from hpo import accounting
from hpo.config import StudyConfig
from hpo.errors import StorageError, StudyMismatchError

# Study attributes hpo writes (user attrs, so optuna-dashboard shows them).
ATTR_FINGERPRINT = "hpo:fingerprint"
ATTR_SECTIONS = "hpo:fingerprints"
ATTR_CONFIG = "hpo:config"
ATTR_N_TRIALS = "hpo:n_trials"

HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
GRACE_PERIOD = 40  # a RUNNING trial without heartbeat for this long belonged to a dead process


def redact(url: str) -> str:
    """The URL with its password hidden: safe for logs, reports and exports."""
    try:
        u = make_url(url)
    except Exception:
        return "<storage>"
    return u.render_as_string(hide_password=True) if u.password else url


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def storage_exists(url: str) -> bool:
    """Whether opening the storage could find an existing study (SQLite: the file exists)."""
    path = _sqlite_path(url)
    return path is None or path.exists()


_log = logging.getLogger("hpo.storage")

# How long a storage call keeps retrying while the database is unreachable (e.g. PostgreSQL restarting).
RETRY_FOR = 120.0

_NO_RETRY = {"remove_session", "upgrade", "get_current_version", "get_head_version", "get_all_versions"}


def _transient(e: BaseException) -> bool:
    """A lost or refused connection, as opposed to a logical error (a finished trial, a missing study)."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
        cause = cause.__cause__
    return False


def _with_retry(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        delay, waited = 0.5, 0.0
        while True:
            try:
                return fn(self, *args, **kwargs)
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
                if not _transient(e) or waited >= RETRY_FOR:
                    raise
                _log.warning("storage unreachable (%s); retrying in %.1fs", type(e).__name__, delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 10.0)

    return call


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls wait out a briefly unreachable database (retries with backoff) instead of
    failing the run. Transactions roll back on failure, so a retried call starts clean.

    It adds the few calls the orchestrator makes per trial that Optuna has no single call for.
    """

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes in one transaction (Optuna commits each ``set_user_attr`` alone)."""
        with _create_scoped_session(self.scoped_session, True) as session:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)

    def count_counted(self, study_id: int, before: int | None = None) -> int:
        return accounting.count_counted(self, study_id, before)

    def grid_point_taken(self, study_id: int, grid_id: Any, trial_id: int) -> bool:
        return accounting.grid_point_taken(self, study_id, grid_id, trial_id)


for _name, _fn in inspect.getmembers(RetryingRDBStorage, inspect.isfunction):
    if (not _name.startswith("_") or _name == "_get_stale_trial_ids") and _name not in _NO_RETRY:
        setattr(RetryingRDBStorage, _name, _with_retry(_name, _fn))


def open_storage(url: str, create: bool) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats; SQLite files get WAL mode and a long busy timeout."""
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    try:
        path = _sqlite_path(url)
    except Exception as e:
        raise StorageError(f"study.storage: not a valid SQLAlchemy URL ({redact(url)}): {e}") from None
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        if not path.exists():
            if not create:
                raise StorageError(f"no study database at {path}; run `hpo run STUDY.yaml` first")
            path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers (optuna-dashboard, `hpo status`) work while the run writes, and is
        # persistent in the file. busy timeout: concurrent writers wait instead of failing with
        # "database is locked".
        with sqlite3.connect(path, timeout=60) as con:
            con.execute("PRAGMA journal_mode=WAL")
        engine_kwargs["connect_args"] = {"timeout": 60}
    # No ``pool_pre_ping`` on server databases: it would ping at every connection checkout, i.e. at each of
    # the ~30 storage calls of a trial. A call that meets a dropped connection fails, the connection is
    # invalidated, and ``_with_retry`` runs the call again on a fresh one (tested with a restarted server).
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat args
                    storage = RetryingRDBStorage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=HEARTBEAT_INTERVAL,
                        grace_period=GRACE_PERIOD,
                    )
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Processes started together on an empty database (a SLURM array's tasks) all create
                # Optuna's tables; on PostgreSQL the losers fail on a duplicate type or row. The tables
                # exist now, so opening again succeeds.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StorageError(f"cannot open storage {redact(url)}: {first.replace(url, redact(url))}") from None
    if path is not None:
        # In WAL mode, synchronous=NORMAL is still safe against a crashed or killed process (only a power
        # cut can lose the last commits) and makes each of Optuna's many small commits much cheaper.
        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()
    return storage


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_or_resume(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    """The study of this file: created with its config and fingerprint, or resumed if they match.

    Returns (study, created).
    """
    name = cfg.study.name
    sampler = cfg.sampler.build(cfg.grid() if cfg.sampler.name == "grid" else None)
    pruner = cfg.pruner.build()
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = None
    if study is None:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=cfg.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,  # another process may create it between our load and create
        )
        if ATTR_FINGERPRINT not in study.user_attrs:
            study.set_user_attr(ATTR_FINGERPRINT, cfg.fingerprint())
            study.set_user_attr(ATTR_SECTIONS, cfg.fingerprints())
            study.set_user_attr(ATTR_CONFIG, json.loads(cfg.model_dump_json()))
            study.set_user_attr(ATTR_N_TRIALS, cfg.study.n_trials)
            return study, True
    check_fingerprint(cfg, study)
    if study.user_attrs.get(ATTR_N_TRIALS) != cfg.study.n_trials:
        study.set_user_attr(ATTR_N_TRIALS, cfg.study.n_trials)
    return study, False


def check_fingerprint(cfg: StudyConfig, study: optuna.Study) -> None:
    """Refuse to resume a study whose results came from a different search space, objective or base config."""
    attrs = study.user_attrs
    stored = attrs.get(ATTR_FINGERPRINT)
    if stored is None:
        raise StudyMismatchError(
            f"study {cfg.study.name!r} in {redact(cfg.storage_url)} was not created by hpo; "
            "give `study.name` a new value to start a new study"
        )
    if stored == cfg.fingerprint():
        return
    old = attrs.get(ATTR_SECTIONS, {})
    changed = [k for k, v in cfg.fingerprints().items() if old.get(k) != v]
    if study.direction.name.lower() != cfg.direction:
        changed.append("direction")
    raise StudyMismatchError(
        f"study {cfg.study.name!r} in {redact(cfg.storage_url)} was created from a different "
        f"{', '.join(changed) or 'configuration'}; its results would not be comparable. "
        "To start a new study, change `study.name` in the file (or delete the old study with "
        f"`optuna delete-study --study-name {cfg.study.name} --storage URL`)."
    )


def load_existing(cfg: StudyConfig) -> optuna.Study:
    """The study of a file for read-only commands (status, best): it must already exist."""
    url = cfg.storage_url
    if not storage_exists(url):
        raise StorageError(f"no study yet: {redact(url)} does not exist; run `hpo run` on the file first")
    storage = open_storage(url, create=False)
    try:
        study = optuna.load_study(study_name=cfg.study.name, storage=storage)
    except KeyError:
        raise StorageError(f"no study {cfg.study.name!r} in {redact(url)}; run `hpo run` on the file first") from None
    check_fingerprint(cfg, study)
    return study
