"""A run whose loss explodes far above where it started is stopped as diverged (trainer), and such a trial is
PRUNED with the reason (orchestrator), as a NaN loss is; healthy learning rates never trip the rule."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from rich.console import Console
from test_trainers import tiny_study

from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.orchestrator import Orchestrator
from hpo.storage import create_or_resume, open_storage
from hpo.worker import TrainerRunner, WorkerSpec
from trainers.base import DIVERGED_FACTOR, Diverged, NullReporter, diverged
from trainers.loop import train


class Losses(NullReporter):
    def __init__(self) -> None:
        self.train: list[float] = []

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.train.append(metrics["train_loss"])


def run_config(lr: float, steps: int = 30) -> Any:
    d = tiny_study()
    d["fidelity"] = {"max_steps": steps, "eval_every": steps, "eval_batches": 1}
    d["training"]["logging_steps"] = 5
    return validate_study(d).trial_run({"dropout": 0.0, "learning_rate": lr})


@pytest.mark.parametrize(
    ("loss", "first", "expected"),
    [
        (9.1, 7.6, False),  # the quickstart's worst healthy spike (learning rate 0.1)
        (22.0, 7.6, False),
        (23.0, 7.6, True),
        (90.0, 7.6, True),  # learning rate 1
        (0.9, 0.05, False),  # a model that starts almost perfect: noise, not divergence
        (1.1, 0.05, True),  # ...but worse than chance on two classes is
    ],
)
def test_the_divergence_rule(loss: float, first: float, expected: bool) -> None:
    assert diverged(loss, first) is expected


@pytest.mark.parametrize("lr", [1.0, 10.0])
def test_a_diverging_run_stops_with_the_reason(lr: float, tmp_path: Path) -> None:
    seen = Losses()
    with pytest.raises(Diverged, match=r"^diverged: training loss .* at step \d+ is over 3x the first step's") as info:
        train(run_config(lr), seen, tmp_path)
    e = info.value
    assert e.first == pytest.approx(math.log(300), abs=0.5)  # a fresh model's loss: ~ln(vocabulary)
    assert e.value == seen.train[-1] > DIVERGED_FACTOR * e.first  # the exploded window was logged first
    assert info.value.step < 30


@pytest.mark.parametrize("lr", [1.0e-3, 1.0e-2, 1.0e-1])
def test_healthy_learning_rates_never_count_as_diverged(lr: float, tmp_path: Path) -> None:
    result = train(run_config(lr), NullReporter(), tmp_path)
    assert result.steps == 30 and result.stopped is None


@pytest.mark.slow
def test_a_diverging_trial_is_pruned_with_reason_diverged(tmp_path: Path) -> None:
    d = tiny_study()
    d.update(
        study={"name": "div", "n_trials": 2},
        sampler={"name": "grid"},
        pruner={"name": "none"},
        fidelity={"max_steps": 30, "eval_every": 10, "eval_batches": 1},
        search_space={"training.learning_rate": {"type": "categorical", "choices": [1.0e-3, 10.0]}},
    )
    d["training"]["logging_steps"] = 5
    cfg = validate_study(d)
    study, _ = create_or_resume(cfg, open_storage(f"sqlite:///{tmp_path}/div.db", create=True))
    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, study, [WorkerSpec(0, 1, {}, "cpu")], TrainerRunner(str(tmp_path / "cache")), display)
    try:
        orch.run()
    finally:
        orch.close()
    trials = {t.params["learning_rate"]: t for t in study.get_trials()}
    assert trials[1.0e-3].state == optuna.trial.TrialState.COMPLETE
    bad = trials[10.0]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.user_attrs["reason"].startswith("diverged: training loss")
