"""The storage password never appears in anything hpo writes or serves, and `hpo dashboard` is read-only
(and answers only its own address) unless asked otherwise. Real PostgreSQL, real HTTP requests."""

from __future__ import annotations

import glob
import http.client
import json
import os
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from dash_fixtures import sqlite_study_file
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from hpo.cli import app
from hpo.config import load_study_file
from hpo.storage import ATTR_CONFIG, create_or_resume, open_storage
from hpo.store import StudyStore, study_store

runner = CliRunner()
SECRET = "s3cret-Pw-41x"


def _request(port: int, method: str, path: str, body: Any = None, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    out = (r.status, r.read())
    conn.close()
    return out


def _serve(path: Path, **kw: Any) -> Any:
    from dashboards.launch import start

    d = start(path, host="127.0.0.1", port=0, **kw)
    threading.Thread(target=d.serve, daemon=True).start()
    return d


def _served(port: int, sid: int) -> list[bytes]:
    """Everything the dashboard's read API serves about the study."""
    bodies = []
    for route in ("/api/meta", "/api/studies", f"/api/studies/{sid}", f"/csv/{sid}", f"/dashboard/studies/{sid}"):
        status, body = _request(port, "GET", route)
        assert status == 200, (route, body[:200])
        bodies.append(body)
    return bodies


def _pg_dump(url: str) -> bytes:
    u = make_url(url)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    if not found:
        pytest.skip("pg_dump is not installed")
    env = {**os.environ, "PGPASSWORD": u.password or ""}
    cmd = [found[-1], "-h", str(u.host), "-p", str(u.port), "-U", str(u.username), str(u.database)]
    return subprocess.run(cmd, check=True, capture_output=True, env=env).stdout


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_storage_password_is_in_nothing_hpo_writes_or_serves(tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth: the server ignores it
    path = sqlite_study_file(tmp_path, "pg", storage=url)
    cfg = load_study_file(path)
    study = optuna.load_study(study_name="pg", storage=open_storage(url, create=False))
    assert study.user_attrs[ATTR_CONFIG]["study"]["storage"] == url.replace(SECRET, "***")  # a new study
    assert study.user_attrs[ATTR_CONFIG] == json.loads(json.dumps(study.user_attrs[ATTR_CONFIG]))

    # A study an older hpo wrote, with the password in its configuration attribute.
    study.set_user_attr(ATTR_CONFIG, json.loads(cfg.model_dump_json()))
    assert SECRET.encode() in _pg_dump(url)
    # The dashboard, even one that writes nothing (--no-notes), serves no password...
    d = _serve(path, notes=False)
    try:
        served = _served(d.port, study_store(d.study).study_id)
    finally:
        d.shutdown()
    assert not any(SECRET.encode() in b for b in served)
    assert any(b"postgres:***@" in b for b in served)  # the attribute is served, with the password hidden
    # ... and the next `hpo run` (create_or_resume) scrubs it from the database.
    create_or_resume(cfg, open_storage(url, create=True))
    assert SECRET.encode() not in _pg_dump(url)

    outputs = []
    for cmd in (
        ["status", str(path)],
        ["status", str(path), "--json"],
        ["best", str(path), "--json"],
        ["curves", str(path), "-t", "0"],
        ["export", str(path), "-o", str(tmp_path / "export")],
        ["export", str(path), "--top", "2", "-o", str(tmp_path / "top")],
        ["report", str(path), "-o", str(tmp_path / "report.html")],
        ["validate", str(path)],
    ):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, (cmd, result.output)
        outputs.append(result.output)
    d = _serve(path, notes_every=0)  # writes the study note and the trial notes
    try:
        assert d.notes.study and d.notes.trials == 5
        served = _served(d.port, study_store(d.study).study_id)
    finally:
        d.shutdown()
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "pg.yaml"]
    assert len(written) >= 8  # the export folders' files and the report
    dump = _pg_dump(url)
    assert b"hpo:config" in dump and b"dashboard:" in dump  # the dump holds the study, its notes, its curves
    assert b"hpo_curves" in dump
    for blob in [dump, *written, *served, *(o.encode() for o in outputs)]:
        assert SECRET.encode() not in blob


# ---------------------------------------------------------------------------------------- read-only


def _trial_id(study: optuna.Study, number: int) -> int:
    return next(StudyStore.trial_id(t) for t in study.get_trials() if t.number == number)


def test_the_dashboard_is_read_only_and_answers_only_its_own_address(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    d = _serve(path, notes=False)
    url = load_study_file(path).storage_url
    try:
        port, sid = d.port, study_store(d.study).study_id
        running = d.study.ask()  # a trial a forged `tell` could finish with any value
        before = [(t.state, t.value) for t in d.study.get_trials()]
        forged = [
            ("DELETE", f"/api/studies/{sid}", None),
            ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
            ("POST", f"/api/trials/{StudyStore.trial_id(running)}/tell", {"state": "Complete", "values": [-1.0]}),
            ("POST", f"/api/trials/{_trial_id(d.study, 0)}/user-attrs", {"user_attrs": {"x": 1}}),
            ("PUT", f"/api/studies/{sid}/note", {"version": 1, "body": "forged"}),
            ("POST", f"/api/studies/{sid}/rename", {"study_name": "renamed"}),
        ]
        for method, route, body in forged:
            status, answer = _request(port, method, route, body)
            assert status == 405 and b"--allow-edits" in answer, (method, route, status, answer)
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", f"localhost.evil.example:{port}"):
            status, _ = _request(port, "GET", f"/api/studies/{sid}", host=host)
            assert status == 403, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            status, body = _request(port, "GET", f"/api/studies/{sid}", host=host)
            assert status == 200 and json.loads(body)["name"] == "alpha", host
        for route in ("/dashboard", f"/dashboard/studies/{sid}", "/api/meta", f"/api/studies/{sid}/param_importances"):
            assert _request(port, "GET", route)[0] == 200, route
        assert _request(port, "HEAD", f"/api/studies/{sid}")[0] == 200
        study = optuna.load_study(study_name="alpha", storage=open_storage(url, create=False))
        assert [(t.state, t.value) for t in study.get_trials()] == before  # nothing changed
        assert optuna.get_all_study_names(open_storage(url, create=False)) == ["alpha"]
        assert "x" not in study.trials[0].user_attrs
    finally:
        d.shutdown()

    d = _serve(path, notes=False, allow_edits=True)
    try:
        port, sid = d.port, study_store(d.study).study_id
        status, _ = _request(port, "PUT", f"/api/studies/{sid}/note", {"version": 1, "body": "my words"})
        assert status == 204
        status, _ = _request(port, "POST", f"/api/trials/{StudyStore.trial_id(running)}/tell", {"state": "Fail"})
        assert status == 204
        assert _request(port, "GET", f"/api/studies/{sid}", host=f"evil.example:{port}")[0] == 403  # still
    finally:
        d.shutdown()
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name="alpha", storage=open_storage(url, create=False))
    assert get_note(study) == "my words"
    assert study.trials[-1].state == TrialState.FAIL


def test_dashboard_cli_says_whether_it_is_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `hpo dashboard` says is what its server does: an edit is refused, or allowed with --allow-edits."""
    from dashboards.launch import Dashboard

    path = sqlite_study_file(tmp_path, "alpha")
    real_serve = Dashboard.serve
    edits: list[int] = []

    def serve_one_edit(self: Any) -> None:  # the real server, for one edit, then shut down
        server = threading.Thread(target=real_serve, args=(self,), daemon=True)
        server.start()
        body = {"study_name": f"edit{len(edits)}", "directions": ["minimize"]}
        edits.append(_request(self.port, "POST", "/api/studies", body)[0])
        self.shutdown()
        server.join(10)

    monkeypatch.setattr(Dashboard, "serve", serve_one_edit)
    result = runner.invoke(app, ["dashboard", str(path), "--port", "0"])
    assert result.exit_code == 0 and "read-only (edits: --allow-edits)" in result.output, result.output
    result = runner.invoke(app, ["dashboard", str(path), "--port", "0", "--allow-edits"])
    assert result.exit_code == 0 and "edits allowed" in result.output, result.output
    assert edits[0] == 405 and 200 <= edits[1] < 300, edits
    names = optuna.get_all_study_names(open_storage(load_study_file(path).storage_url, create=False))
    assert sorted(names) == ["alpha", "edit1"]  # the refused edit changed nothing, the allowed one did


def test_allowed_hosts_of_a_wildcard_bind_include_this_machine() -> None:
    import socket

    from dashboards.launch import allowed_hosts

    assert allowed_hosts("127.0.0.1", 8080) == {"127.0.0.1:8080", "localhost:8080", "[::1]:8080"}
    assert "[::1]:9000" in allowed_hosts("::1", 9000)
    assert f"{socket.gethostname().lower()}:8080" in allowed_hosts("0.0.0.0", 8080)
    assert "example.org:8080" in allowed_hosts("example.org", 8080)
    assert "localhost" in allowed_hosts("127.0.0.1", 80)  # port 80 is left out by browsers


def test_urllib_reaches_the_dashboard_through_its_printed_url(tmp_path: Path) -> None:
    d = _serve(sqlite_study_file(tmp_path, "alpha"), notes=False)
    try:
        with urllib.request.urlopen(d.study_url, timeout=10) as r:
            assert r.status == 200
    finally:
        d.shutdown()


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql+psycopg://hpo:s3cret-pw@db:5432/hpo", "s3cret-pw"),
        ("postgresql+psycopg://hpo@db:5432/hpo?password=s3cret-pw&sslmode=require", "s3cret-pw"),  # libpq's form
        ("postgresql+psycopg://hpo@db:5432/hpo", None),
        ("sqlite:///runs/x.db", None),
    ],
)
def test_a_password_in_either_place_of_the_url_is_found_and_hidden(url: str, password: str | None) -> None:
    from hpo.urls import redact, url_password

    assert url_password(url) == password
    shown = redact(url)
    assert "s3cret-pw" not in shown
    assert (shown == url) == (password is None)  # nothing else of the URL changes
