"""Seeded samplers keep a study reproducible without replaying draws: a resumed study and several processes on
one study repeat no parameter set (only the deliberate re-run of a failed trial, marked ``retry_of``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from doubles import run_orchestrators
from test_orchestrator import Harness, study_dict

from hpo.config import validate_study
from hpo.record import A_RETRY_OF, counted
from hpo.samplers import SAMPLER_NAMES
from hpo.storage import create_or_resume, open_storage

GRID_SPACE = {
    "training.learning_rate": {
        "type": "float",
        "low": 1.0e-5,
        "high": 1.0,
        "log": True,
        "grid": [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1, 1.0],
    },
    "model.dropout": {"type": "categorical", "choices": [0.0, 0.1]},
}

# Every registered sampler, seeded. Each is set so that the trials after the first run still include draws
# of its random start-up phase, where the old per-process seeding replayed the first run's draws.
SAMPLERS: list[tuple[str, dict[str, Any]]] = [
    ("random", {"name": "random", "seed": 0}),
    ("tpe", {"name": "tpe", "seed": 0, "n_startup_trials": 4}),  # trials 4-5 come from TPE itself
    ("gp", {"name": "gp", "seed": 0}),  # start-up phase only: fitting a GP costs seconds of torch
    ("cmaes", {"name": "cmaes", "seed": 0, "n_startup_trials": 4}),  # trials 4-5 come from CMA-ES
    ("qmc", {"name": "qmc", "seed": 0, "scramble": True}),
    ("grid", {"name": "grid", "seed": 0}),
    ("nsga2", {"name": "nsga2", "seed": 0, "population_size": 4}),  # trials 4-5: NSGA-II's second generation
    ("nsga3", {"name": "nsga3", "seed": 0, "population_size": 4}),
]


def test_the_table_covers_every_sampler() -> None:
    assert {s[1]["name"] for s in SAMPLERS} == set(SAMPLER_NAMES)


def seeded(sampler: dict[str, Any], n_trials: int) -> dict[str, Any]:
    extra = {"search_space": GRID_SPACE} if sampler["name"] == "grid" else {}
    return study_dict(study={"n_trials": n_trials}, sampler=sampler, **extra)


def ran(study: optuna.Study) -> list[tuple[Any, ...]]:
    """The parameter sets of the trials that ran as new draws (not re-runs), in trial order."""
    return [
        tuple(sorted(t.params.items()))
        for t in study.get_trials(deepcopy=False)
        if counted(t) and A_RETRY_OF not in t.user_attrs
    ]


@pytest.mark.parametrize("sampler", [s[1] for s in SAMPLERS], ids=[s[0] for s in SAMPLERS])
def test_a_resumed_seeded_study_repeats_no_parameters_and_matches_one_long_run(
    sampler: dict[str, Any], tmp_path: Path
) -> None:
    resumed = Harness(f"sqlite:///{tmp_path}/resumed.db")
    resumed.run(validate_study(seeded(sampler, 3)), workers=1)
    study = resumed.run(validate_study(seeded(sampler, 6)), workers=1)  # n_trials raised: a new process would
    params = ran(study)
    assert len(params) == 6
    assert len(set(params)) == 6, f"repeated parameter sets: {params}"
    # Reproducible: the same seed gives the same trials as one uninterrupted run.
    once = Harness(f"sqlite:///{tmp_path}/once.db").run(validate_study(seeded(sampler, 6)), workers=1)
    assert ran(once) == params


@pytest.mark.parametrize("sampler", [s[1] for s in SAMPLERS], ids=[s[0] for s in SAMPLERS])
@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_two_processes_on_one_seeded_study_repeat_no_parameters(sampler: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    d = seeded(sampler, 8)
    create_or_resume(validate_study(d), open_storage(url, create=True))  # as the first `hpo run` does
    run_orchestrators(url, d, processes=2, workers=2)
    study = optuna.load_study(study_name="t", storage=open_storage(url, create=False))
    params = ran(study)
    assert len(params) == 8
    assert len(set(params)) == 8, f"repeated parameter sets: {params}"
