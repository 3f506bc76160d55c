"""A trial's length as a budget of training samples or tokens (``fidelity.max_samples`` / ``max_tokens``).

With ``fidelity.max_steps`` a batch-32 trial sees twice the data of a batch-16 trial and costs about twice
as much: a step budget favours large batches and makes the long trials that leave cores idle at the end of
a study. With a sample (or token) budget every trial sees the same data whatever its batch size: this
module turns the budget into each trial's optimizer steps and eval cadence, and the optimizer step of an
eval into the pruner's step, counted in samples (or tokens) seen, so the pruner compares trials at equal
data seen (Optuna's pruners compare intermediate values reported at the same step).

Tokens are samples x ``data.max_length`` (the block length of causal-LM training, the padded length of a
classification row). ``eval_every`` and the pruner's warm-up (``n_warmup_steps``) are in the budget's unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from trainers.config import RunConfig

Unit = Literal["steps", "samples", "tokens"]


@dataclass(frozen=True)
class TrialLength:
    unit: Unit
    budget: int  # in ``unit``
    eval_every: int  # in ``unit``
    per_step: int  # units per optimizer step (1 for a step budget)
    max_steps: int  # optimizer steps of the trial
    eval_steps: int  # optimizer steps between evals

    def report_step(self, step: int) -> int:
        """The pruner's step of an eval at optimizer step ``step``: the data seen, on the ``eval_every``
        grid so that trials of every batch size report at the same steps (the last eval: the budget)."""
        if self.unit == "steps":
            return step
        if step >= self.max_steps:
            return self.budget
        return min(self.budget, (step // self.eval_steps) * self.eval_every)


def units_per_step(unit: Unit, run: RunConfig) -> int:
    """Samples (or tokens) one optimizer step trains on in this run."""
    if unit == "steps":
        return 1
    t = run.training
    samples = t.per_device_train_batch_size * t.gradient_accumulation_steps
    return samples * run.data.max_length if unit == "tokens" else samples


def trial_length(unit: Unit, budget: int, eval_every: int, run: RunConfig) -> TrialLength:
    per_step = units_per_step(unit, run)
    return TrialLength(
        unit=unit,
        budget=budget,
        eval_every=eval_every,
        per_step=per_step,
        max_steps=max(1, math.ceil(budget / per_step)),
        eval_steps=max(1, round(eval_every / per_step)),
    )


def with_length(run: RunConfig, length: TrialLength) -> RunConfig:
    """The run with its steps and eval cadence set from the budget."""
    training = run.training.model_copy(update={"max_steps": length.max_steps, "eval_steps": length.eval_steps})
    return run.model_copy(update={"training": training})
