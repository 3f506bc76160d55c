"""The pruner a study file gets when it names none: the median pruner, warmed up for a sixth of a trial.

Why a warm-up (benchmarks/pruner_robustness.py, benchmarks/README.md): with Optuna's warm-up of 0, a trial can
be pruned at its first eval, and where early evals rank trials differently from their final values that made
TPE's result worse than no pruning at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from test_config import minimal_study

from hpo.config import StudyConfig, load_study_file
from hpo.pruners import MedianPrunerConfig, default_pruner


def load(tmp_path: Path, data: dict[str, Any]) -> StudyConfig:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_study_file(path)


def without_pruner(max_steps: int = 300, eval_every: int = 50) -> dict[str, Any]:
    data = minimal_study()
    del data["pruner"]
    data["fidelity"].update(max_steps=max_steps, eval_every=eval_every)
    return data


@pytest.mark.parametrize(("max_steps", "warmup"), [(300, 50), (1200, 200), (1000, 166), (100, 16), (5, 0)])
def test_a_file_without_pruner_gets_the_median_pruner_warmed_up_for_a_sixth(
    max_steps: int, warmup: int, tmp_path: Path
) -> None:
    cfg = load(tmp_path, without_pruner(max_steps, eval_every=min(5, max_steps)))
    assert cfg.pruner == MedianPrunerConfig(name="median", n_startup_trials=5, n_warmup_steps=warmup)


def test_a_written_pruner_keeps_its_own_arguments(tmp_path: Path) -> None:
    # `{name: median}` mirrors Optuna's constructor: warm-up 0, as written. Only an absent pruner is hpo's.
    data = without_pruner()
    data["pruner"] = {"name": "median"}
    assert load(tmp_path, data).pruner == MedianPrunerConfig(name="median", n_warmup_steps=0)
    data["pruner"] = {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 50}  # the quickstart's
    assert load(tmp_path, data).pruner == MedianPrunerConfig(name="median", n_startup_trials=4, n_warmup_steps=50)
    data["pruner"] = {"name": "none"}
    assert load(tmp_path, data).pruner.name == "none"


def test_the_default_survives_a_round_trip_through_plain_data(tmp_path: Path) -> None:
    cfg = load(tmp_path, without_pruner(max_steps=600))
    again = StudyConfig.model_validate(cfg.model_dump())
    assert again.pruner == cfg.pruner == MedianPrunerConfig(name="median", n_warmup_steps=100)


def _study_with_complete_trials(pruner: optuna.pruners.BasePruner, steps: list[int]) -> optuna.Study:
    """Five complete trials (the median pruner's n_startup_trials) whose curve is 1.0 at every step."""
    study = optuna.create_study(direction="minimize", pruner=pruner)
    for _ in range(5):
        t = study.ask()
        for s in steps:
            t.report(1.0, s)
        study.tell(t, 1.0)
    return study


def test_the_default_judges_no_trial_before_a_sixth_of_its_steps() -> None:
    steps = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
    default = default_pruner(60).build()  # warm-up 60 // 6 = 10 steps
    study = _study_with_complete_trials(default, steps)
    bad = study.ask()
    bad.report(5.0, 5)  # far worse than the median, but inside the warm-up
    assert not bad.should_prune()
    bad.report(5.0, 10)  # the warm-up is over
    assert bad.should_prune()

    # Optuna's own default (what `{name: median}` gives) prunes the same trial at its first eval.
    optuna_default = MedianPrunerConfig(name="median").build()
    study = _study_with_complete_trials(optuna_default, steps)
    early = study.ask()
    early.report(5.0, 5)
    assert early.should_prune()


def test_the_default_keeps_a_slow_starter_that_catches_up_after_the_warm_up() -> None:
    # A curve that is worst at its first eval (a plateau at a high learning rate) and best from the second:
    # the warm-up lets it through; Optuna's warm-up 0 drops it at the first eval.
    steps = list(range(25, 301, 25))
    for cfg, pruned_at_first in ((default_pruner(300), False), (MedianPrunerConfig(name="median"), True)):
        study = _study_with_complete_trials(cfg.build(), steps)
        slow = study.ask()
        slow.report(3.0, 25)
        assert bool(slow.should_prune()) is pruned_at_first
        if not pruned_at_first:
            for s in steps[1:]:
                slow.report(0.5, s)
                assert not slow.should_prune()
