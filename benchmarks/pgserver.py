"""A throw-away PostgreSQL server for benchmarks (as tests/conftest.py starts one for tests).

Runs as the ``postgres`` user when started by root (initdb refuses root), listens on 127.0.0.1 only,
trusts local connections, runs with ``fsync=off`` (a benchmark measures hpo, not the disk), and is removed
afterwards. Needs the PostgreSQL server binaries (Debian: ``apt-get install postgresql``) and psycopg
(``pip install -e .[postgres]``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here."""


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    url: str  # base URL (``postgresql+psycopg://postgres@127.0.0.1:PORT``), no database
    datadir: str

    def cpu_seconds(self) -> float | None:
        """CPU time the server has used so far: the postmaster, its live backends, and exited ones."""
        try:
            pid = int(Path(self.datadir, "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            me, ppid = int(stat.parent.name), int(fields[1])
            if me == pid:
                total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime (reaped backends)
            elif ppid == pid:
                total += int(fields[11]) + int(fields[12])
        return total / tick


@contextmanager
def throwaway_postgres() -> Iterator[PgServer]:
    """A fresh server on 127.0.0.1, stopped and removed afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (pip install -e .[postgres])") from None
    bindir = _pg_bin()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    as_pg: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root and cannot switch to the postgres user")
        as_pg = ["runuser", "-u", "postgres", "--"]
    datadir = tempfile.mkdtemp(prefix="hpo-bench-pg-")
    os.chmod(datadir, 0o777)
    if as_pg:
        shutil.chown(datadir, "postgres", "postgres")
    port = _free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {datadir} -c fsync=off -c max_connections=200"

    def pg(*cmd: str) -> None:
        subprocess.run([*as_pg, *cmd], check=True, capture_output=True, text=True)

    try:
        pg(f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        pg(f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", f"{datadir}/log", "-o", opts, "start")
    except subprocess.CalledProcessError as e:
        shutil.rmtree(datadir, ignore_errors=True)
        raise PostgresUnavailable(f"could not start PostgreSQL: {e.stderr.strip()[:300]}") from None
    try:
        yield PgServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}", datadir)
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


def create_database(base_url: str, prefix: str = "bench") -> str:
    """A new, empty database on the server at ``base_url``; returns its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conninfo = base_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"
