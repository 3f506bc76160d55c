"""Opening the study's storage, creating or resuming the study, and guarding it against a changed file.

What hpo does with an open storage (counting, batched writes, heartbeats, retries) is ``hpo.store``'s.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy import inspect as sql_inspect

from hpo.config import StudyConfig
from hpo.errors import StorageError
from hpo.fingerprint import (  # re-exported: the study attributes every reader names
    ATTR_CONFIG,
    ATTR_FINGERPRINT,
    ATTR_N_TRIALS,
    ATTR_SECTIONS,
    check_fingerprint,
)

# Naming, faults, retries and every private Optuna call live in the storage adapter (``hpo.store``).
from hpo.store import ANY_OPTUNA_TABLE as _ANY_OPTUNA_TABLE
from hpo.store import OPTUNA_TABLES as _OPTUNA_TABLES
from hpo.store import SQLITE_FAULTS as _SQLITE_FAULTS
from hpo.store import RetryingRDBStorage, storage_fault, study_store
from hpo.urls import missing_sqlite, reader_url, redact, sqlite_uri, url_password, where, writable
from hpo.urls import sqlite_path as _sqlite_path

# Study attributes hpo writes (user attrs, so optuna-dashboard shows them).


def storage_exists(url: str) -> bool:
    """Whether opening the storage could find an existing study (SQLite: the file exists)."""
    path = _sqlite_path(url)
    return path is None or path.exists()


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of an existing SQLite file, read without changing it (no WAL switch, no tables, no
    journal files left behind). Raises ``StorageError`` for a file that is not an SQLite database.

    The file is read through SQLite only: closing any other descriptor of it would drop the POSIX locks of
    this process's open SQLite connections, after which SQLite may delete a WAL file still in use.
    """
    # A writable file is read through a read-write connection: reading writes nothing, and on a WAL file
    # it removes the -wal/-shm it needed when it closes (a read-only connection would leave them).
    uri = sqlite_uri(path, writable(path))
    try:
        con = sqlite3.connect(uri, uri=True, timeout=60)
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        why = storage_fault(e) or str(e)
        if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
            why = "not an SQLite database (another kind of file, or damaged); check study.storage"
        raise StorageError(f"{path}: {why}") from None
    return {str(r[0]) for r in rows}


def _not_a_study_database(path: Path, tables: set[str]) -> StorageError:
    if not tables:
        what = "an empty file" if path.stat().st_size == 0 else "an empty database"
        return StorageError(f"{path} is {what}, not an hpo study database; check study.storage")
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return StorageError(f"{path} is not an hpo study database (no Optuna tables; it has {shown}); check study.storage")


def open_storage(url: str, create: bool, readonly: bool = False) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats; SQLite files get WAL mode and a long busy timeout.

    ``readonly``: for commands that only read (status, best, report, ...): the storage must already hold
    Optuna's tables (nothing is created) and an SQLite file's journal mode is left as it is. An existing
    file that is not a study database is refused, whatever ``readonly`` says.
    """
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    try:
        path = _sqlite_path(url)
    except Exception as e:
        raise StorageError(f"study.storage: not a valid SQLAlchemy URL ({redact(url)}): {e}") from None
    engine_kwargs: dict[str, Any] = {}
    open_url = url
    if path is not None:
        if not path.exists():
            if not create or readonly:
                raise StorageError(f"no study database at {path}; run `hpo run STUDY.yaml` first")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"{path.parent}: cannot create the study database's folder: {e.strerror}") from None
        else:
            tables = _sqlite_tables(path)
            # A writer accepts an empty file, and one another process is filling with Optuna's tables now.
            if (readonly and not _OPTUNA_TABLES <= tables) or (tables and not tables & _ANY_OPTUNA_TABLE):
                raise _not_a_study_database(path, tables)
        if readonly:
            open_url = reader_url(url)
        elif not writable(path):  # SQLite might open it and fail only at the first write
            raise StorageError(f"{path}: {_SQLITE_FAULTS['SQLITE_READONLY']}")
        else:
            # WAL lets readers (optuna-dashboard, `hpo status`) work while the run writes, and is
            # persistent in the file. busy timeout: concurrent writers wait instead of failing with
            # "database is locked".
            try:
                _wal_mode(path)
            except sqlite3.Error as e:
                raise StorageError(f"{path}: {storage_fault(e) or e}") from None
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif readonly:
        _check_server_tables(url)
    # No ``pool_pre_ping`` on server databases: it would ping at every connection checkout, i.e. at each of
    # the ~30 storage calls of a trial. A call that meets a dropped connection fails, the connection is
    # invalidated, and ``hpo.store.call_with_retry`` runs the call again on a fresh one (tested with a
    # restarted server).
    try:
        storage = RetryingRDBStorage.connect(open_url, engine_kwargs, readonly)
    except Exception as e:
        fault = storage_fault(e)
        if fault is not None:
            raise StorageError(f"{where(url)}: {fault}") from None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StorageError(f"cannot open storage {redact(url)}: {first.replace(url, redact(url))}") from None
    if path is not None:
        # In WAL mode, synchronous=NORMAL is still safe against a crashed or killed process (only a power
        # cut can lose the last commits) and makes each of Optuna's many small commits much cheaper.
        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()
        st = path.stat()
        storage.file_identity = (str(path), (st.st_dev, st.st_ino))
    return storage


def _wal_mode(path: Path) -> None:
    """Switch the file to WAL (persistent: once per file). The switch needs the file to itself and SQLite
    may answer "database is locked" at once instead of waiting (processes starting together on a new
    file, a SLURM array): try again for a while."""
    for attempt in range(30):
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
                if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    con.execute("PRAGMA journal_mode=WAL")
                return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == 29:
                raise
            time.sleep(0.05 * (attempt + 1))


def _check_server_tables(url: str) -> None:
    """A server database (PostgreSQL, MySQL) without Optuna's tables is not a study database: refuse it
    before Optuna would create them."""
    engine = sqlalchemy.create_engine(url)
    try:
        tables = set(sql_inspect(engine).get_table_names())
    except sqlalchemy.exc.SQLAlchemyError as e:
        fault = storage_fault(e)
        first = fault or (str(e.orig if isinstance(e, sqlalchemy.exc.DBAPIError) else e).splitlines() or [""])[0]
        raise StorageError(f"cannot open storage {redact(url)}: {first.replace(url, redact(url))}") from None
    finally:
        engine.dispose()
    if not _OPTUNA_TABLES <= tables:
        raise StorageError(f"{redact(url)} is not an hpo study database (no Optuna tables); check study.storage")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def stored_config(cfg: StudyConfig) -> dict[str, Any]:
    """The study file as stored in the study (``hpo:config``): the storage URL with its password hidden."""
    config: dict[str, Any] = json.loads(cfg.model_dump_json())
    if config["study"].get("storage"):
        config["study"]["storage"] = redact(config["study"]["storage"])
    return config


def scrub_password(study: optuna.Study, url: str) -> bool:
    """Hide the storage password in a study's configuration attribute written by an older hpo.

    Returns whether the attribute was rewritten.
    """
    password = url_password(url)
    config = study.user_attrs.get(ATTR_CONFIG)
    if not password or not isinstance(config, dict) or str(password) not in json.dumps(config):
        return False
    study_section = dict(config.get("study") or {})
    if study_section.get("storage"):
        study_section["storage"] = redact(str(study_section["storage"]))
    clean = json.loads(json.dumps({**config, "study": study_section}).replace(str(password), "***"))
    study.set_user_attr(ATTR_CONFIG, clean)
    return True


def create_or_resume(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    """The study of this file: created with its config and fingerprint, or resumed if they match.

    Returns (study, created).
    """
    name = cfg.study.name
    sampler = cfg.sampler.for_study(cfg.grid() if cfg.sampler.name == "grid" else None)
    pruner = cfg.pruner.build()
    created = False
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=cfg.directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,  # another process may create it between our load and create
        )
        created = True
    if ATTR_FINGERPRINT not in study.user_attrs and not study.get_trials(deepcopy=False):
        # A new study, or one whose creating process died (or is still busy) before describing it: the
        # study and its description are two writes, so a fingerprint-less study without trials is still
        # being created, and whoever comes next completes it (a SLURM array starts many at once).
        created = _describe(cfg, study) or created
    check_fingerprint(cfg, study)  # also when just described: another process may have described it first
    if study.user_attrs.get(ATTR_FINGERPRINT) != cfg.fingerprint():
        # No trials yet (check_fingerprint allows that, e.g. a run that failed at start-up on a typo): the
        # fixed file's description is taken, so a typo never makes a study name unusable.
        _describe(cfg, study)
    scrub_password(study, cfg.storage_url)
    if study.user_attrs.get(ATTR_N_TRIALS) != cfg.study.n_trials:
        study.set_user_attr(ATTR_N_TRIALS, cfg.study.n_trials)
    return study, created


def _describe(cfg: StudyConfig, study: optuna.Study) -> bool:
    """Write the study's fingerprint and config in one transaction; False if another process did first."""
    attrs = {
        ATTR_FINGERPRINT: cfg.fingerprint(),
        ATTR_SECTIONS: cfg.fingerprints(),
        ATTR_CONFIG: stored_config(cfg),
        ATTR_N_TRIALS: cfg.study.n_trials,
    }
    try:
        study_store(study).set_study_attrs(attrs)
    except sqlalchemy.exc.IntegrityError:
        return False  # written at the same moment by another process: check that it is the same study
    return True


def load_existing(cfg: StudyConfig, strict: bool = False) -> optuna.Study:
    """The study of a file for commands that only read it (status, best, report, ...): it must already
    exist; the storage is opened read-only. A study whose file changed is shown with a
    ``StudyChangedWarning`` unless ``strict`` (then it is refused, as `hpo run` does)."""
    url = cfg.storage_url
    missing = missing_sqlite(url)
    if missing is not None:
        path = _sqlite_path(url)
        relative = path is not None and not path.is_absolute()  # say how to reach a study run elsewhere
        raise StorageError(
            f"{missing}; run `hpo run` on the file first"
            + (
                ", or run this command from the directory the study ran in (or give study.storage an absolute path)"
                if relative
                else ""
            )
        )
    storage = open_storage(url, create=False, readonly=True)
    try:
        study = optuna.load_study(study_name=cfg.study.name, storage=storage)
    except KeyError:
        raise StorageError(f"no study {cfg.study.name!r} in {redact(url)}; run `hpo run` on the file first") from None
    check_fingerprint(cfg, study, strict=strict)
    return study
