"""Data-parallel trials (resources.gpus_per_trial > 1), exercised on CPU with 2 ranks (gloo): rank 0
reports, and a prune stops every rank on the same step."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import studies
from hpo.cli import app


@pytest.mark.slow
def test_two_rank_trials_report_and_stop_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    storage = f"sqlite:///{tmp_path}/mp.db"
    spec = studies.causal_lm(
        "mp",
        2,
        storage,
        sampler={"name": "grid"},
        pruner={"name": "threshold", "upper": 250.0},  # lr 1e-5 is far above it at step 20: pruned
        fidelity={"max_steps": 60, "eval_every": 20, "eval_batches": 1},
        search_space={
            "training.learning_rate": {
                "type": "float",
                "low": 1.0e-5,
                "high": 1.0e-2,
                "log": True,
                "grid": [1.0e-5, 3.0e-3],
            }
        },
        resources={"gpus_per_trial": 2, "devices": "cpu"},
    )
    path = tmp_path / "mp.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    trials = {t.params["learning_rate"]: t for t in optuna.load_study(study_name="mp", storage=storage).trials}
    good, bad = trials[3.0e-3], trials[1.0e-5]
    assert good.state.name == "COMPLETE" and good.user_attrs["rank_steps"] == [60, 60]
    assert sorted(good.intermediate_values) == [20, 40, 60]
    assert bad.state.name == "PRUNED" and bad.user_attrs["reason"].startswith("pruned by threshold pruner at step 20")
    steps = bad.user_attrs["rank_steps"]
    assert len(steps) == 2 and steps[0] == steps[1] < 60  # both ranks stopped, on the same step
