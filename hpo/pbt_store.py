"""Where a PBT population's checkpoints live, and the copy an exploit makes.

One folder per study (``pbt.checkpoint_dir``, default ``<folder of the SQLite file>/<study>-pbt``, or
``runs/<study>-pbt`` for a server storage), one sub-folder per member (``member-<m>``), and in it the
member's newest checkpoint only (``trainers.checkpoints``: the exact-resume format of ``hpo train``,
``checkpoint-<step>``). The population's disk use is bounded: ``population`` checkpoints, plus one being
written or copied. The storage refers to them by member number and step (``MemberRecord``), so any
machine that mounts the same folder at the same path can continue the population.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hpo.config import DEFAULT_RUNS_DIR, StudyConfig
from hpo.urls import sqlite_path
from trainers.checkpoints import PREFIX, latest

_COPY = ".copy-"
_OLD = ".old-"


def checkpoint_root(cfg: StudyConfig) -> Path:
    """The population's checkpoint folder (relative paths: to the working directory, like the storage)."""
    assert cfg.pbt is not None
    if cfg.pbt.checkpoint_dir is not None:
        return Path(cfg.pbt.checkpoint_dir)
    db = sqlite_path(cfg.storage_url)
    parent = db.parent if db is not None else Path(DEFAULT_RUNS_DIR)
    return parent / f"{cfg.study.name}-pbt"


def member_dir(root: Path, member: int) -> Path:
    return root / f"member-{member}"


def copy_checkpoint(root: Path, parent: int, member: int, step: int) -> Path:
    """Make ``member``'s checkpoint a copy of ``parent``'s ``checkpoint-<step>`` (its weights, optimizer,
    scheduler, RNG and loop state). Safe to repeat after a crash: the member ends with the parent's
    checkpoint whatever step of this function was interrupted, and the parent's is never touched."""
    src = member_dir(root, parent) / f"{PREFIX}{step}"
    if latest(member_dir(root, parent)) != src:
        raise FileNotFoundError(f"member {parent} has no checkpoint at step {step} under {root}")
    dst_dir = member_dir(root, member)
    dst_dir.mkdir(parents=True, exist_ok=True)
    tmp = dst_dir / f"{_COPY}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    final = dst_dir / f"{PREFIX}{step}"
    old = dst_dir / f"{_OLD}{step}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)  # a rename: the member's own checkpoint of this step goes aside, then away
    os.replace(tmp, final)
    for p in dst_dir.iterdir():  # older checkpoints of the member, and what was set aside
        if p != final:
            shutil.rmtree(p, ignore_errors=True)
    return final


def remove_population(root: Path) -> None:
    """Delete the checkpoints once the population finished (the results are in the storage)."""
    shutil.rmtree(root, ignore_errors=True)
