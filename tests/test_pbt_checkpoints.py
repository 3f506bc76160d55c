"""PBT checkpoints with the real trainer: an interval stops with a checkpoint, a copy continues with its own
schedule, and a schedule trained in one go from scratch computes exactly what the intervals computed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpo.config import validate_study
from hpo.pbt_store import copy_checkpoint, member_dir
from hpo.pbt_worker import IntervalReporter
from studies import causal_lm
from trainers.base import NullReporter
from trainers.checkpoints import latest
from trainers.config import RunConfig


def _run(lrs: list[tuple[int, float]]) -> RunConfig:
    base = validate_study(causal_lm()).base_run().model_dump(mode="json")
    schedule = [{"step": s, "set": {"training.learning_rate": lr}} for s, lr in lrs]
    base["training"]["learning_rate"] = lrs[0][1]
    return RunConfig.model_validate({**base, "schedule": schedule})


def _interval(run: RunConfig, until: int, folder: Path, cache: Path) -> Any:
    from trainers.loop import train

    return train(
        run, IntervalReporter(NullReporter(), until), cache, checkpoint_dir=folder, save_every=8, keep_checkpoints=1
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_copy_then_continue_equals_the_schedule_from_scratch(tmp_path: Path, cache: Path) -> None:
    from trainers.loop import train

    root = tmp_path / "pop"
    parent, child = _run([(0, 2e-3)]), _run([(0, 2e-3), (8, 6e-3)])
    first = _interval(parent, 8, member_dir(root, 0), cache)
    assert (first.steps, first.stopped) == (8, "pbt-interval")
    assert latest(member_dir(root, 0)) == member_dir(root, 0) / "checkpoint-8"
    # Member 1 trained on its own first (another lr); the copy replaces its checkpoint with member 0's.
    _interval(_run([(0, 1e-4)]), 8, member_dir(root, 1), cache)
    copy_checkpoint(root, parent=0, member=1, step=8)
    assert sorted(p.name for p in member_dir(root, 1).iterdir()) == ["checkpoint-8"]
    continued = _interval(child, 16, member_dir(root, 1), cache)
    assert continued.resumed_from == 8 and continued.steps == 16
    # The replay: the child's schedule from scratch in one run, no checkpoint.
    replay = train(child, NullReporter(), cache)
    assert replay.metrics == continued.metrics  # to the last digit (CPU)
    # And the schedule mattered: the parent's own continuation differs.
    parent_on = _interval(parent, 16, member_dir(root, 0), cache)
    assert parent_on.metrics != continued.metrics


def test_a_checkpoint_after_schedules_part_is_not_resumed(tmp_path: Path, cache: Path) -> None:
    from trainers.base import CheckpointMismatch

    folder = tmp_path / "m"
    _interval(_run([(0, 2e-3), (4, 6e-3)]), 8, folder, cache)
    with pytest.raises(CheckpointMismatch, match="different configuration"):
        _interval(_run([(0, 2e-3), (4, 5e-3)]), 16, folder, cache)


def test_copy_of_a_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="member 0 has no checkpoint at step 8"):
        copy_checkpoint(tmp_path, parent=0, member=1, step=8)


def test_weight_decay_and_clip_norm_follow_the_schedule_across_a_copy(tmp_path: Path, cache: Path) -> None:
    from trainers.loop import train

    base = validate_study(causal_lm()).base_run().model_dump(mode="json")
    first = {"training.learning_rate": 3e-3, "training.weight_decay": 0.0, "training.max_grad_norm": 1.0}
    later = {"training.weight_decay": 0.5, "training.max_grad_norm": 0.05}
    base["training"].update(learning_rate=3e-3, weight_decay=0.0, max_grad_norm=1.0)
    parent = RunConfig.model_validate({**base, "schedule": [{"step": 0, "set": first}]})
    child = RunConfig.model_validate({**base, "schedule": [{"step": 0, "set": first}, {"step": 8, "set": later}]})
    root = tmp_path / "pop"
    _interval(parent, 8, member_dir(root, 0), cache)
    copy_checkpoint(root, parent=0, member=1, step=8)
    continued = _interval(child, 16, member_dir(root, 1), cache)
    assert train(child, NullReporter(), cache).metrics == continued.metrics
    assert train(parent, NullReporter(), cache).metrics != continued.metrics
