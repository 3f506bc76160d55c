"""The offline quickstart, run as a user runs it (slow: ~2-3 minutes on 2 cores; CI runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_study_finds_clearly_better_configurations(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    storage = f"sqlite:///{tmp_path}/quickstart.db"
    spec["study"]["storage"] = storage
    study_file = tmp_path / "quickstart.yaml"
    study_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    hpo = Path(sys.executable).with_name("hpo")
    env = {**os.environ, "HPO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([str(hpo), "run", str(study_file)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best trial" in proc.stdout

    study = optuna.load_study(study_name="quickstart", storage=storage)
    trials = study.get_trials()
    assert len(trials) == spec["study"]["n_trials"] >= 12
    states = {t.state.name for t in trials}
    assert "COMPLETE" in states and states <= {"COMPLETE", "PRUNED"}
    # The search must matter: the best perplexity is far below the worst one seen.
    values = [t.value for t in trials if t.value is not None]
    assert study.best_value < 0.5 * max(values)
    status = subprocess.run([str(hpo), "status", str(study_file)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "COMPLETE" in status.stdout
