"""Small fixed studies for the dashboard and report tests: exact values, fixed times, no training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

import studies
from hpo.config import load_study_file
from hpo.curves import CurveStore
from hpo.space import to_distributions
from hpo.storage import create_or_resume, open_storage

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)
DISTS = {
    "learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
    "per_device_train_batch_size": CategoricalDistribution([8, 16, 32]),
    "dropout": FloatDistribution(0.0, 0.3),
}
CONFIG = {
    "task": "causal_lm",
    "objective": {"metric": "perplexity", "direction": "minimize"},
    "fidelity": {"max_steps": 100, "eval_every": 50},
    "sampler": {"name": "tpe", "seed": 0},
    "pruner": {"name": "median"},
}

# number, state, value, params (lr, batch, dropout), intermediate values, user attrs, start s, end s
Row = tuple[int, TrialState, float | None, tuple[float, int, float], dict[int, float], dict[str, Any], float, float]
TRIALS: list[Row] = [
    (
        0, TrialState.COMPLETE, 10.0, (1e-3, 16, 0.1), {50: 20.0, 100: 10.0},
        {"steps": 100, "device": "cpu", "worker": 0, "duration": 2.0, "train_time": 1.5, "eval_time": 0.25,
         "tokens_per_s": 1000.0, "metrics": {"eval_loss": 2.3, "perplexity": 10.0}},
        0.0, 2.0,
    ),
    (
        1, TrialState.PRUNED, 30.0, (1e-4, 8, 0.2), {50: 30.0},
        {"steps": 50, "device": "cpu", "worker": 1, "duration": 1.0, "train_time": 0.5, "eval_time": 0.25,
         "tokens_per_s": 900.0, "reason": "pruned by median pruner at step 50 (perplexity=30)"},
        0.0, 1.0,
    ),
    (
        2, TrialState.COMPLETE, 5.0, (1e-2, 32, 0.0), {50: 8.0, 100: 5.0},
        {"steps": 100, "device": "cpu", "worker": 1, "duration": 2.5, "train_time": 2.0, "eval_time": 0.25,
         "tokens_per_s": 1100.0, "metrics": {"eval_loss": 1.6, "perplexity": 5.0}},
        1.0, 3.5,
    ),
    (
        3, TrialState.FAIL, None, (1e-3, 8, 0.3), {},
        {"device": "cpu", "worker": 0, "duration": 0.5, "reason": "error: CUDA out of memory"},
        2.0, 2.5,
    ),
    (
        4, TrialState.COMPLETE, 8.0, (3e-3, 8, 0.05), {50: 12.0, 100: 8.0},
        {"steps": 100, "device": "cpu", "worker": 0, "duration": 2.0, "train_time": 1.5, "eval_time": 0.25},
        2.5, 4.5,
    ),
]  # fmt: skip


def frozen(row: Any, dists: dict[str, Any] = DISTS) -> FrozenTrial:
    number, state, value, (lr, bs, dropout), inter, attrs, start, end = row
    params = {"learning_rate": lr, "per_device_train_batch_size": bs, "dropout": dropout}
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        values=None,
        datetime_start=T0 + dt.timedelta(seconds=start),
        datetime_complete=T0 + dt.timedelta(seconds=end),
        params={k: v for k, v in params.items() if k in dists},
        distributions={k: v for k, v in dists.items() if k in params},
        user_attrs=attrs,
        system_attrs={},
        intermediate_values=inter,
        trial_id=number,
    )


def fixed_study(name: str = "fixed", rows: list[Any] | None = None) -> optuna.Study:
    """An in-memory study with the trials above (fixed values and times)."""
    study = optuna.create_study(study_name=name, direction="minimize")
    study.set_user_attr("hpo:config", {**CONFIG, "study": {"name": name}})
    for row in TRIALS if rows is None else rows:
        study.add_trial(frozen(row))
    return study


def study_yaml(tmp_path: Path, name: str = "dash", storage: str | None = None, sampler: str = "tpe") -> dict[str, Any]:
    return studies.causal_lm(
        name,
        5,
        storage or f"sqlite:///{tmp_path}/runs/{name}.db",
        sampler={"name": sampler, "seed": 0},
        pruner={"name": "median"},
        fidelity={"max_steps": 100, "eval_every": 50},
        data={"builtin": "pydoc_topics", "max_length": 32},
        search_space={
            "training.learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
            "training.per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
    )


def sqlite_study_file(
    tmp_path: Path, name: str = "dash", storage: str | None = None, sampler: str = "tpe", curves: bool = True
) -> Path:
    """A study file whose SQLite (or given) storage holds the fixed trials and their learning curves."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_yaml(tmp_path, name, storage, sampler), sort_keys=False))
    cfg = load_study_file(path)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    dists = to_distributions(cfg.search_space)
    for row in TRIALS:
        study.add_trial(frozen(row, dists))
    if curves:
        store = CurveStore(cfg.storage_url, name)
        for number, _, _, _, inter, _, _, _ in TRIALS:
            for step, value in inter.items():
                store.add(number, step, "eval", {"perplexity": value, "eval_loss": value / 10})
                store.add(number, step, "train", {"train_loss": value / 8, "learning_rate": 1e-3 * (1 - step / 200)})
        store.close()
    return path
