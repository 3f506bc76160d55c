"""Learning curves in SQL, next to Optuna's tables: train loss, eval metrics, learning rate, throughput.

Optuna keeps one intermediate value per step (the objective). The curves a person compares need more, so
hpo keeps its own small table in the same database, created on demand and versioned. The orchestrator
buffers points and writes them in batches (one transaction every few seconds), so curves never slow
training. In-memory studies keep their curves in memory.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from hpo.errors import StorageError
from hpo.storage import reader_url, storage_fault, where

SCHEMA_VERSION = 1  # bump with a migration when the table changes

metadata = MetaData()
curves_table = Table(
    "hpo_curves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_name", String(512), nullable=False),
    Column("trial_number", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # "train" or "eval"
    Column("name", String(128), nullable=False),  # train_loss, learning_rate, eval_loss, perplexity, ...
    Column("value", Float, nullable=False),
    Index("ix_hpo_curves_study_trial", "study_name", "trial_number"),
)
schema_table = Table(
    "hpo_schema",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


@dataclass(frozen=True)
class CurvePoint:
    trial_number: int
    step: int
    kind: str
    name: str
    value: float


class CurveStore:
    """Buffered writer and reader of learning curves for one study.

    ``url`` is the study's SQLAlchemy URL, or None to keep the curves in memory.
    """

    def __init__(self, url: str | None, study_name: str, flush_every: float = 5.0) -> None:
        if flush_every < 0:
            raise ValueError(f"`flush_every >= 0` must hold, but got (flush_every={flush_every}).")
        self.study_name = study_name
        self.flush_every = flush_every
        self._buffer: list[dict[str, Any]] = []
        self._memory: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self.engine: Engine | None = None
        if url is not None:
            self.engine = _engine(url)
            ensure_schema(self.engine)

    def add(self, trial_number: int, step: int, kind: str, metrics: dict[str, float]) -> None:
        rows = [
            {
                "study_name": self.study_name,
                "trial_number": trial_number,
                "step": step,
                "kind": kind,
                "name": k,
                "value": float(v),
            }
            for k, v in metrics.items()
            if isinstance(v, int | float) and v == v and abs(v) != float("inf")  # SQL has no NaN
        ]
        with self._lock:
            self._buffer.extend(rows)
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered points in one transaction."""
        with self._lock:
            rows, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        if not rows:
            return
        if self.engine is None:
            self._memory.extend(rows)
            return
        try:
            with self.engine.begin() as conn:  # commit, or roll back on error
                conn.execute(insert(curves_table), rows)
        except OperationalError as e:
            fault = storage_fault(e)
            if fault is None:
                raise
            raise StorageError(f"{where(str(self.engine.url))}: {fault}") from e

    def read(self, trial_number: int | None = None) -> list[CurvePoint]:
        """All points of the study (or of one trial), ordered by trial, step."""
        self.flush()
        if self.engine is None:
            rows = [r for r in self._memory if trial_number is None or r["trial_number"] == trial_number]
        else:
            q = select(curves_table).where(curves_table.c.study_name == self.study_name)
            if trial_number is not None:
                q = q.where(curves_table.c.trial_number == trial_number)
            with self.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(q)]
        pts = [CurvePoint(r["trial_number"], r["step"], r["kind"], r["name"], r["value"]) for r in rows]
        return sorted(pts, key=lambda p: (p.trial_number, p.step, p.kind, p.name))

    def close(self) -> None:
        self.flush()
        if self.engine is not None:
            self.engine.dispose()


def read_curves(url: str, study_name: str, trial_number: int | None = None) -> list[CurvePoint]:
    """The study's stored learning curves, read only: [] when the database has no curves table (nothing
    is created); an SQLite file on a read-only file system is read as it is."""
    engine = _engine(reader_url(url))
    try:
        if not inspect(engine).has_table(curves_table.name):
            return []
        _check_schema(engine)
    finally:
        engine.dispose()
    store = CurveStore(None, study_name)
    store.engine = _engine(reader_url(url))  # the table exists: no schema check that could write
    try:
        return store.read(trial_number)
    finally:
        store.close()


def _engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def ensure_schema(engine: Engine) -> None:
    """Create the curves table on first use; refuse a database written by a newer hpo."""
    for attempt in range(3):
        # Two processes starting together on a new database may both try to create: the loser sees
        # "already exists" (or a duplicate version row) and simply checks again.
        try:
            metadata.create_all(engine, checkfirst=True)
            with engine.begin() as conn:
                row = conn.execute(select(schema_table.c.value).where(schema_table.c.key == "curves_version")).first()
                if row is None:
                    conn.execute(insert(schema_table), [{"key": "curves_version", "value": str(SCHEMA_VERSION)}])
            break
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 2:
                raise
            time.sleep(0.2)
    _check_schema(engine)


def _check_schema(engine: Engine) -> None:
    """Refuse a curves table written by a newer hpo (its layout may differ from what this one reads)."""
    with engine.connect() as conn:
        row = conn.execute(select(schema_table.c.value).where(schema_table.c.key == "curves_version")).first()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise StorageError(
            f"the curves table has schema version {row[0]}, newer than this hpo's {SCHEMA_VERSION}; "
            "upgrade hpo (`pip install -U hpo`)"
        )
