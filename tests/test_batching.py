"""training.effective_batch_size: gradient accumulation derived per trial, refused where it cannot be kept."""

from __future__ import annotations

from typing import Any

import pytest

import studies
from hpo.batching import accumulation
from hpo.config import validate_study
from hpo.errors import StudyFileError

BATCH = {"type": "categorical", "choices": [4, 8, 16]}


def study(training: dict[str, Any], space: dict[str, Any] | None = None, gpus: int = 1) -> dict[str, Any]:
    over: dict[str, Any] = {
        "training": training,
        "search_space": space or {"training.per_device_train_batch_size": BATCH},
    }
    if gpus > 1:
        over["resources"] = {"gpus_per_trial": gpus}
    return studies.causal_lm(**over)


@pytest.mark.parametrize(
    ("effective", "batch", "world", "steps"),
    [(32, 4, 1, 8), (32, 8, 1, 4), (32, 32, 1, 1), (32, 8, 2, 2), (64, 16, 4, 1)],
)
def test_accumulation(effective: int, batch: int, world: int, steps: int) -> None:
    assert accumulation(effective, batch, world) == steps
    assert steps * batch * world == effective


@pytest.mark.parametrize(("batch", "steps"), [(4, 8), (8, 4), (16, 2)])
def test_each_trial_keeps_the_effective_batch(batch: int, steps: int) -> None:
    cfg = validate_study(study({"effective_batch_size": 32}), "s.yaml")
    t = cfg.trial_run({"per_device_train_batch_size": batch}).training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (batch, steps)


def test_processes_per_trial_count() -> None:
    cfg = validate_study(study({"effective_batch_size": 32}, gpus=2), "s.yaml")
    assert cfg.trial_run({"per_device_train_batch_size": 4}).training.gradient_accumulation_steps == 4


def test_the_effective_batch_itself_may_be_searched() -> None:
    space = {
        "training.per_device_train_batch_size": BATCH,
        "training.effective_batch_size": {"type": "categorical", "choices": [16, 64]},
    }
    cfg = validate_study(study({}, space), "s.yaml")
    t = cfg.trial_run({"per_device_train_batch_size": 8, "effective_batch_size": 64}).training
    assert t.gradient_accumulation_steps == 8


def test_unset_it_changes_nothing() -> None:
    cfg = validate_study(study({"gradient_accumulation_steps": 3}), "s.yaml")
    assert cfg.trial_run({"per_device_train_batch_size": 4}).training.gradient_accumulation_steps == 3
    assert "effective_batch_size" not in cfg.training.model_dump()  # older studies keep their fingerprint


BAD: list[tuple[str, dict[str, Any], dict[str, Any] | None, int, str]] = [
    ("not a multiple of a choice", {"effective_batch_size": 24}, None, 1,
     "s.yaml: training.effective_batch_size: effective_batch_size 24 is not a multiple of per_device_train_batch_size "
     "16 (a choice of search_space[training.per_device_train_batch_size])"),
    ("processes", {"effective_batch_size": 32}, None, 4,
     "training.effective_batch_size: effective_batch_size 32 is not a multiple of per_device_train_batch_size 16 x 4 "
     "processes"),
    ("base batch", {"effective_batch_size": 20, "per_device_train_batch_size": 8},
     {"training.learning_rate": studies.LEARNING_RATE}, 1,
     "training.effective_batch_size: effective_batch_size 20 is not a multiple of per_device_train_batch_size 8"),
    ("accumulation set too", {"effective_batch_size": 32, "gradient_accumulation_steps": 2}, None, 1,
     "s.yaml: training.gradient_accumulation_steps: it is derived from training.effective_batch_size"),
    ("accumulation searched", {"effective_batch_size": 32},
     {"training.gradient_accumulation_steps": {"type": "int", "low": 1, "high": 4}}, 1,
     "search_space[training.gradient_accumulation_steps]: it is derived from training.effective_batch_size"),
    ("searched effective", {},
     {"training.per_device_train_batch_size": BATCH,
      "training.effective_batch_size": {"type": "categorical", "choices": [32, 40]}}, 1,
     "search_space[training.effective_batch_size]: effective_batch_size 40 is not a multiple of"),
]  # fmt: skip


@pytest.mark.parametrize(("training", "space", "gpus", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_an_effective_batch_that_cannot_be_kept_is_refused(
    training: dict[str, Any], space: dict[str, Any] | None, gpus: int, message: str
) -> None:
    with pytest.raises(StudyFileError) as e:
        validate_study(study(training, space, gpus), "s.yaml")
    assert message in str(e.value)
    assert len(str(e.value).strip().splitlines()) == 1
