"""Derived batch settings: ``training.effective_batch_size`` keeps the samples per optimizer step fixed.

When ``per_device_train_batch_size`` is searched, each trial would otherwise also change the effective
batch (per-device batch x gradient accumulation x processes), and with it the noise of every step and the
meaning of the learning rate. With a target ``effective_batch_size``, each trial's gradient accumulation is
derived: ``effective_batch_size / (per_device_train_batch_size x processes)`` (processes: the study's
``resources.gpus_per_trial``). A batch size that does not divide it is refused when the file is validated,
naming the key, instead of silently rounding the target.
"""

from __future__ import annotations

from typing import Any

from hpo.space import grid_values
from trainers.config import RunConfig

EFFECTIVE = "training.effective_batch_size"
BATCH = "training.per_device_train_batch_size"
ACCUMULATION = "training.gradient_accumulation_steps"


def accumulation(effective: int, batch: int, world: int) -> int:
    """Gradient accumulation steps that make ``batch`` x ``world`` processes reach ``effective`` samples."""
    per_step = batch * world
    if effective % per_step:
        procs = f" x {world} processes" if world > 1 else ""
        raise ValueError(
            f"effective_batch_size {effective} is not a multiple of per_device_train_batch_size {batch}{procs}"
        )
    return effective // per_step


def derive(run: RunConfig, world: int) -> RunConfig:
    """``run`` with its gradient accumulation derived from its effective batch size (if it has one)."""
    t = run.training
    if t.effective_batch_size is None:
        return run
    steps = accumulation(t.effective_batch_size, t.per_device_train_batch_size, world)
    if steps == t.gradient_accumulation_steps:
        return run
    return run.model_copy(update={"training": t.model_copy(update={"gradient_accumulation_steps": steps})})


def _values(space: dict[str, Any], path: str, base: Any) -> list[Any]:
    spec = space.get(path)
    if spec is None:
        return [base]
    values = grid_values(spec)
    return values if values is not None else [spec.low, spec.high]


def check_effective(training: Any, space: dict[str, Any], world: int) -> list[tuple[str, str]]:
    """Problems of an effective batch size with the batch sizes the study may sample, as (key, message)."""
    if training.effective_batch_size is None and EFFECTIVE not in space:
        return []
    if ACCUMULATION in space:
        return [(f"search_space[{ACCUMULATION}]", "it is derived from training.effective_batch_size: search one")]
    if training.gradient_accumulation_steps != 1:
        return [(ACCUMULATION, "it is derived from training.effective_batch_size: set one of them")]
    where = f"search_space[{EFFECTIVE}]" if EFFECTIVE in space else EFFECTIVE
    for effective in _values(space, EFFECTIVE, training.effective_batch_size):
        for batch in _values(space, BATCH, training.per_device_train_batch_size):
            if not isinstance(effective, int) or not isinstance(batch, int):
                return [(where, "the effective and per-device batch sizes must be whole numbers (int or categorical)")]
            try:
                accumulation(effective, batch, world)
            except ValueError as e:
                searched = f" (a choice of search_space[{BATCH}])" if BATCH in space else ""
                return [(where, f"{e}{searched}")]
    return []
