"""Learning curves in the study's own SQL database: created on demand, versioned, written in batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from hpo.curves import SCHEMA_VERSION, CurvePoint, CurveStore
from hpo.errors import StorageError


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    return None if request.param == "memory" else f"sqlite:///{tmp_path}/c.db"


def test_round_trip_ordered_by_trial_and_step(url: str | None) -> None:
    store = CurveStore(url, "s", flush_every=3600)
    store.add(1, 20, "train", {"train_loss": 2.0, "learning_rate": 1e-3})
    store.add(0, 10, "eval", {"eval_loss": 3.0, "perplexity": 20.0})
    store.add(0, 10, "train", {"train_loss": 3.5, "bad": float("nan")})  # NaN is dropped: SQL has no NaN
    assert store.read(0) == [
        CurvePoint(0, 10, "eval", "eval_loss", 3.0),
        CurvePoint(0, 10, "eval", "perplexity", 20.0),
        CurvePoint(0, 10, "train", "train_loss", 3.5),
    ]
    assert [p.trial_number for p in store.read()] == [0, 0, 0, 1, 1]
    store.close()


def test_points_are_buffered_until_flush(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    store = CurveStore(url, "s", flush_every=3600)
    store.add(0, 1, "train", {"train_loss": 1.0})
    reader = CurveStore(url, "s")
    assert reader.read() == []  # not written yet: one transaction per batch
    store.flush()
    assert reader.read() == [CurvePoint(0, 1, "train", "train_loss", 1.0)]


def test_table_is_created_on_demand_and_versioned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    CurveStore(url, "s").close()
    engine = create_engine(url)
    assert {"hpo_curves", "hpo_schema"} <= set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        assert conn.execute(text("select value from hpo_schema where key='curves_version'")).scalar() == str(
            SCHEMA_VERSION
        )
        conn.execute(text("update hpo_schema set value='999' where key='curves_version'"))
    with pytest.raises(StorageError, match="newer than this hpo"):  # one line at the CLI, no traceback
        CurveStore(url, "s")


def test_studies_sharing_a_database_keep_their_own_curves(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    a, b = CurveStore(url, "a"), CurveStore(url, "b")
    a.add(0, 1, "train", {"train_loss": 1.0})
    b.add(0, 1, "train", {"train_loss": 2.0})
    a.flush()
    b.flush()
    assert [p.value for p in a.read()] == [1.0] and [p.value for p in b.read()] == [2.0]
