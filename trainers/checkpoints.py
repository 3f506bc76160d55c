"""Checkpoints a run resumes from exactly: model, optimizer, scheduler and RNG states, plus the loop's state.

Written with ``accelerator.save_state`` (every process saves its RNG state; the main process the weights,
optimizer, scheduler and the loop's ``LoopState``, registered with ``register_for_checkpointing``) into a
hidden folder that becomes ``checkpoint-<step>`` only when complete, so an interruption while saving never
leaves a checkpoint that looks finished. ``trainer_state.json`` says what wrote it (step, configuration
digest, number of processes, format), read before anything is loaded; the batch order is re-derived from
the seed and the loop state's batch count, so a resumed run sees exactly the batches the uninterrupted run
would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from trainers.base import CheckpointMismatch, CheckpointWriteError
from trainers.config import RunConfig

STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"
# What a checkpoint holds and how; a checkpoint of another format is refused, not half-loaded.
# 2: the loop's state is accelerate's custom_checkpoint_0 (LoopState), no longer in trainer_state.json.
FORMAT = 2
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def run_digest(run: RunConfig, step: int | None = None) -> str:
    """A hash of everything that decides what the run computes: a checkpoint only resumes the same run.

    With ``step`` (a checkpoint's), a schedule counts only up to it: the changes after ``step`` have not
    happened yet, so two runs whose schedules agree that far share the checkpoint (a population-based-
    training member continues from the one it copied with its own schedule from there on).
    """
    data = run.model_dump(mode="json")
    if step is not None and "schedule" in data:
        data["schedule"] = [s for s in data["schedule"] if s["step"] < step]
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def latest(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, if any."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())  # type: ignore[no-any-return]


class Checkpoints:
    """Save and load the checkpoints of one run under ``root``, keeping the newest ``keep``.

    ``loop_state`` (an object with ``state_dict`` / ``load_state_dict``: the loop's ``LoopState``) is saved
    and restored with the model, optimizer, scheduler and RNG states.
    """

    def __init__(self, root: str | Path, accelerator: Any, run: RunConfig, loop_state: Any, keep: int = 1) -> None:
        self.root = Path(root)
        self.accelerator = accelerator
        self.run = run
        self.keep = max(1, keep)
        self.last_saved: int | None = None
        accelerator.register_for_checkpointing(loop_state)

    def load_latest(self) -> bool:
        """Restore the newest checkpoint into the prepared objects and the loop state; False if there is none."""
        path = latest(self.root)
        if path is None:
            return False
        state = read_state(path)
        if state.get("format") != FORMAT:
            raise CheckpointMismatch(
                f"{path} was written by another version of hpo (checkpoint format {state.get('format', 1)}, "
                f"now {FORMAT})"
            )
        if state.get("digest") != run_digest(self.run, int(state["step"])):
            raise CheckpointMismatch(f"{path} was written by a run with a different configuration")
        world = self.accelerator.num_processes
        if state.get("num_processes") != world:
            raise CheckpointMismatch(
                f"{path} was written by {state.get('num_processes')} process(es); resume it with the same number "
                f"(now {world}), or start over"
            )
        self.accelerator.load_state(str(path))
        self.last_saved = int(state["step"])
        return True

    def save(self, step: int) -> Path:
        """Write ``checkpoint-<step>``: complete or absent, never half-written."""
        acc = self.accelerator
        tmp = self.root / f".tmp-{PREFIX}{step}"
        final = self.root / f"{PREFIX}{step}"
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp))
            acc.wait_for_everyone()
            if acc.is_main_process:
                state = {
                    "format": FORMAT,
                    "step": step,
                    "digest": run_digest(self.run, step),
                    "num_processes": acc.num_processes,
                }
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                self._prune()
        except Exception as e:
            # Disk full, say: give the space of the half-written one back; the previous checkpoints stay.
            shutil.rmtree(tmp, ignore_errors=True)
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise CheckpointWriteError(f"could not write the checkpoint {final}: {first}") from e
        acc.wait_for_everyone()
        self.last_saved = step
        return final

    def _prune(self) -> None:
        done = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _NAME.match(p.name)))
        for _, p in done[: -self.keep]:
            shutil.rmtree(p, ignore_errors=True)
