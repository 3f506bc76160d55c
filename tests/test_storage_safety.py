"""The storage under real faults and mistakes: a file that is not a study database (refused, unchanged), a
read-only or full file system and a damaged file (named at once, not retried), a study whose creator died
before describing it, a database deleted during a run, and a study file changed since the study began."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from dash_fixtures import sqlite_study_file, study_yaml
from doubles import CurveRunner
from fsfaults import small_fs
from orchestrators import Orchestrator
from rich.console import Console
from typer.testing import CliRunner

import studies
from hpo.cli import app
from hpo.config import load_study_file, validate_study
from hpo.display import RunDisplay
from hpo.errors import StorageError, StudyMismatchError
from hpo.fingerprint import StudyChangedWarning
from hpo.storage import (
    ATTR_CONFIG,
    ATTR_FINGERPRINT,
    create_or_resume,
    load_existing,
    open_storage,
)
from hpo.worker import WorkerSpec

runner = CliRunner()
READ_COMMANDS = [
    ["status"],
    ["best"],
    ["curves", "-t", "0"],
    ["report", "-o", "{tmp}/r.html"],
    ["export", "-o", "{tmp}/x"],
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _study_file(tmp_path: Path, db: Path, name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_yaml(tmp_path, name, f"sqlite:///{db}")))
    return path


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    con.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    con.commit()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (_foreign, "is not an hpo study database (no Optuna tables; it has invoices)"),
        (_empty, "is an empty file, not an hpo study database"),
        (_garbage, "not an SQLite database"),
    ],
)
def test_read_only_commands_refuse_a_file_that_is_not_a_study_database_and_leave_it_as_it_was(
    tmp_path: Path, make: Any, said: str
) -> None:
    db = tmp_path / "other-app.db"
    make(db)
    before = _digest(db)
    path = _study_file(tmp_path, db)
    for cmd in READ_COMMANDS:
        args = [a.format(tmp=tmp_path) for a in cmd]
        result = runner.invoke(app, [args[0], str(path), *args[1:]])
        assert result.exit_code == 1, (cmd, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {db}") and said in lines[0], (cmd, result.output)
        assert _digest(db) == before, cmd
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other-app.db", "s.yaml"], cmd  # no -wal, -shm, out
    if make is not _empty:  # `hpo run` does not take it over either (an empty file is an empty database)
        with pytest.raises(StorageError, match="not an"):
            open_storage(f"sqlite:///{db}", create=True)
        assert _digest(db) == before and not (tmp_path / "other-app.db-wal").exists()


# ------------------------------------------------------------------------------------------ real faults


@contextlib.contextmanager
def _read_only_view(src: Path, path: Path) -> Iterator[Path]:
    """``src`` seen read-only at ``path`` (a read-only bind mount: as root, chmod does not stop writes)."""
    path.mkdir()
    done = subprocess.run(["mount", "--bind", str(src), str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {done.stderr.decode().strip()[:120]}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_file_system_is_read_by_read_only_commands_and_named_by_writers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sqlite_study_file(src, "alpha")  # a study with 5 trials and their curves
    with _read_only_view(src, tmp_path / "ro") as ro:
        db = ro / "runs" / "alpha.db"
        path = tmp_path / "alpha.yaml"
        path.write_text(yaml.safe_dump(study_yaml(ro, "alpha", f"sqlite:///{db}")))
        result = runner.invoke(app, ["status", str(path)])
        assert result.exit_code == 0, result.output
        assert "alpha" in result.output and "best trial" in result.output
        result = runner.invoke(app, ["curves", str(path), "-t", "0", "--json"])
        assert result.exit_code == 0 and json.loads(result.output), result.output
        result = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html")])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["dashboard", str(path), "--port", "0"])  # it would write notes
        assert result.exit_code == 1 and "read-only" in result.output and "--no-notes" in result.output
        from dashboards.launch import start

        d = start(path, port=0, notes=False)
        threading.Thread(target=d.serve, daemon=True).start()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/api/studies", timeout=10) as r:
                assert json.loads(r.read())["study_summaries"][0]["study_name"] == "alpha"
        finally:
            d.shutdown()
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:  # what `hpo run` does first
            create_or_resume(load_study_file(path), open_storage(f"sqlite:///{db}", create=True))
        assert time.monotonic() - t0 < 10  # named at once, not retried for two minutes
        assert str(e.value).startswith(str(db)) and "read-only" in str(e.value)
        assert len(str(e.value).splitlines()) == 1


def test_a_full_disk_is_named_at_once(tmp_path: Path) -> None:
    with small_fs(tmp_path / "full", 2048) as mnt:
        path = sqlite_study_file(mnt, "alpha", curves=False)
        db = mnt / "runs" / "alpha.db"
        storage = open_storage(f"sqlite:///{db}", create=True)
        study = optuna.load_study(study_name="alpha", storage=storage)
        with open(mnt / "filler", "wb") as f:  # take every free block
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:
            for i in range(10_000):  # pages already allocated take a few writes; then the disk is full
                t = study.ask()
                t.set_user_attr("padding", "x" * 4000 + str(i))
                study.tell(t, 1.0)
        assert time.monotonic() - t0 < 30
        assert str(e.value) == f"{db}: the disk is full"
        result = runner.invoke(app, ["status", str(path)])  # reading still works
        assert result.exit_code == 0, result.output


def test_a_damaged_database_is_named_in_one_line(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    db = tmp_path / "runs" / "alpha.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page:] = os.urandom(len(data) - page)  # every page after the schema page is garbage
    db.write_bytes(bytes(data))
    t0 = time.monotonic()
    result = runner.invoke(app, ["status", str(path)])
    assert time.monotonic() - t0 < 10, result.output
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {db}: "), result.output
    assert "damaged" in lines[0] or "not an SQLite database" in lines[0], result.output


# ----------------------------------------------------------------------------------------- creation


def _study_dict(storage: str, name: str = "t", n_trials: int = 4) -> dict[str, Any]:
    return studies.curve(name, n_trials, storage, fidelity={"max_steps": 10, "eval_every": 5})


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path}/study.db"


def test_a_study_whose_creator_died_before_describing_it_is_completed_by_the_next_run(url: str) -> None:
    cfg = validate_study(_study_dict(url))
    # What a process killed between creating the study and writing its fingerprint leaves behind.
    optuna.create_study(study_name="t", storage=open_storage(url, create=True), direction="minimize")
    study = load_existing(cfg)  # read-only commands show it (no trials yet) instead of refusing
    assert study.get_trials() == []
    study, created = create_or_resume(cfg, open_storage(url, create=True))
    assert created and study.user_attrs[ATTR_FINGERPRINT] == cfg.fingerprint()
    study, created = create_or_resume(cfg, open_storage(url, create=True))
    assert not created
    # A study of the same name with trials and no fingerprint is not hpo's: still refused.
    optuna.create_study(study_name="foreign", storage=open_storage(url, create=True)).add_trial(
        optuna.trial.create_trial(value=1.0)
    )
    with pytest.raises(StudyMismatchError, match="not created by hpo"):
        create_or_resume(validate_study(_study_dict(url, "foreign")), open_storage(url, create=True))


def _create(url: str, start_at: float, out: Any) -> None:
    cfg = validate_study(_study_dict(url))
    time.sleep(max(0.0, start_at - time.time()))
    try:
        study, created = create_or_resume(cfg, open_storage(url, create=True))
        out.put(("ok", created, study.user_attrs[ATTR_FINGERPRINT] == cfg.fingerprint()))
    except Exception as e:  # reported to the test
        out.put(("error", type(e).__name__, str(e)))


@pytest.mark.slow
def test_processes_starting_together_all_get_the_study(url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 4.0  # every process has imported hpo by then
    procs = [ctx.Process(target=_create, args=(url, start_at, out)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[0] == "ok" and r[2] for r in results), results
    studies = optuna.get_all_study_names(storage=open_storage(url, create=False))
    assert studies == ["t"]


# ---------------------------------------------------------------------------------- file replaced


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_during_a_run_stops_it_naming_the_file(tmp_path: Path, how: str) -> None:
    db = tmp_path / "study.db"
    cfg = validate_study(_study_dict(f"sqlite:///{db}", n_trials=30))
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, study, [WorkerSpec(0, 1, {}, "cpu")], CurveRunner(step_sleep=0.01), display)

    def after_first_trial() -> bool:
        if db.exists() and len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 1:
            db.unlink()  # the open connections keep writing to the unlinked file
            if how == "replaced":
                db.write_bytes(b"")
        return False

    try:
        with pytest.raises(StorageError) as e:
            orch.run(should_stop=after_first_trial)
    finally:
        orch.close()
    assert str(e.value) == f"{db}: the study database was {how} during the run; stopping"


# ---------------------------------------------------------------------------------- changed file


def test_read_only_commands_show_a_study_whose_file_changed_with_a_warning(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    doc = yaml.safe_load(path.read_text())
    doc["search_space"]["model.dropout"]["high"] = 0.5
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for cmd in READ_COMMANDS:
        args = [a.format(tmp=tmp_path) for a in cmd]
        result = runner.invoke(app, [args[0], str(path), *args[1:]])
        assert result.exit_code == 0, (cmd, result.output)
        assert "warning: the study file changed since study 'alpha' was created (search_space)" in result.output
    cfg = load_study_file(path)
    with pytest.raises(StudyMismatchError, match="different search_space"):  # `hpo run` still refuses
        create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    t0 = time.monotonic()
    result = runner.invoke(app, ["worker", str(path)])  # and `hpo worker`, before starting any worker
    assert result.exit_code == 1 and "different search_space" in result.output
    assert time.monotonic() - t0 < 5
    with pytest.warns(StudyChangedWarning, match="search_space"):
        study = load_existing(cfg)
    assert study.user_attrs[ATTR_CONFIG]["search_space"]["model.dropout"]["high"] == 0.3  # as it was run


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
