"""The hpo runs already using this machine's cores, so a second `hpo run` or `hpo worker` on the same host
plans its workers on the cores that are left instead of oversubscribing them.

Each running orchestrator keeps one small file, ``<pid>.json``, in a per-user directory (under
``$XDG_RUNTIME_DIR``, else the temp directory) saying how many cores its workers use. Files of processes
that no longer exist (killed with -9) are ignored and removed by the next reader. Claims are made under an
``flock`` of the directory, so runs starting at the same moment see each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hpo.worker import WorkerSpec


def default_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"hpo-{os.getuid()}" / "runs"


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux): tells a live run from a new process that reused a dead run's pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or _start_time(pid) in (None, started)


@dataclass(frozen=True)
class HostRun:
    pid: int
    cores: int
    study: str


class HostRuns:
    """The registry of hpo runs on this host (this user's)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or default_dir()
        self._mine: Path | None = None

    def others(self) -> list[HostRun]:
        """Live runs of other processes; reading only (a missing directory means none)."""
        if not self.dir.is_dir():
            return []
        runs = []
        for f in sorted(self.dir.glob("*.json")):
            try:
                d = json.loads(f.read_text())
                pid, started = int(d["pid"]), d.get("started")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or not ours to judge
            if pid == os.getpid():
                continue
            if not _alive(pid, started):
                with contextlib.suppress(OSError):
                    f.unlink()  # its run was killed before it could remove it
                continue
            runs.append(HostRun(pid, int(d.get("cores", 0)), str(d.get("study", "?"))))
        return runs

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def claim(self, study: str, plan: Callable[[int], list[WorkerSpec]]) -> tuple[list[WorkerSpec], list[HostRun]]:
        """Plan this run's workers on the cores other runs leave (``plan(busy_cores)``) and record its own use.

        Returns the workers and the other runs.
        """
        with self._locked():
            others = self.others()
            specs = plan(sum(r.cores for r in others))
            cores = sum(s.threads * s.processes for s in specs)
            entry = {"pid": os.getpid(), "started": _start_time(os.getpid()), "cores": cores, "study": study}
            mine = self.dir / f"{os.getpid()}.json"
            tmp = mine.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry))
            tmp.replace(mine)  # readers never see half a file
            self._mine = mine
        return specs, others

    def release(self) -> None:
        if self._mine is not None:
            with contextlib.suppress(OSError):
                self._mine.unlink()
            self._mine = None
