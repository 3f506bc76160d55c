"""The processes of a running `hpo run`, for the tests that stop, freeze or kill them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def worker_pids(pid: int) -> list[int]:
    """The worker processes of the `hpo run` with ``pid`` (its multiprocessing children, not the resource
    tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids = []
    for c in (int(x) for x in out.split()):
        with contextlib.suppress(OSError):  # one that ended since pgrep listed it
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                pids.append(c)
    return pids


def send(pids: list[int], sig: signal.Signals) -> None:
    """``sig`` to each of ``pids`` that still lives."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
