"""Shared fixtures: a throw-away PostgreSQL server on 127.0.0.1 when the machine has one installed."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    url: str  # base URL, without a database name
    restart: Callable[[float], None]  # stop, stay down this many seconds, start again


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """Base URL of a PostgreSQL server started for this test session (skips when none can be started).

    `.ci/run` installs the Debian package; the server runs as the `postgres` user (initdb refuses root),
    listens on 127.0.0.1 only, trusts local connections, and is removed afterwards.
    """
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if url:

        def cannot_restart(_down: float) -> None:
            pytest.skip("HPO_TEST_POSTGRES_URL names a server these tests cannot restart")

        yield PgServer(url, cannot_restart)
        return
    bindir = _pg_bin()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e .[postgres])")
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    as_pg: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("cannot switch to the postgres user")
        as_pg = ["runuser", "-u", "postgres", "--"]
    datadir = tempfile.mkdtemp(prefix="hpo-pg-")
    os.chmod(datadir, 0o777)
    if as_pg:
        shutil.chown(datadir, "postgres", "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_pg, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        run(
            f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", f"{datadir}/log",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {datadir} -c fsync=off", "start",
        )  # fmt: skip
    except subprocess.CalledProcessError as e:
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {e.stderr.strip()[:200]}")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {datadir} -c fsync=off"

    def restart(down: float) -> None:
        run(f"{bindir}/pg_ctl", "-D", datadir, "-m", "fast", "-w", "stop")
        time.sleep(down)
        run(f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", f"{datadir}/log", "-o", opts, "start")

    try:
        yield PgServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}", restart)
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = postgres_server.url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server.url}/{name}"


@pytest.fixture(scope="session", autouse=True)
def _own_host_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs started by the tests plan their workers on this session's own registry of live hpo runs
    (``hpo.hostload``): another `hpo run` on the machine (a user's, another test session's) must not take
    cores from tests that wait for two workers. Subprocesses inherit it through the environment."""
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("xdg"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
