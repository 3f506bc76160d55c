"""benchmarks/confirm.py and benchmarks/multi_objective.py: the recorded replays (seconds) and their --quick
modes. The replay of the recorded quickstart grid as a two-objective study says how often pruning on the
first objective removed a configuration of the final Pareto front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import confirm as bench_confirm  # noqa: E402
import multi_objective as bench_mo  # noqa: E402


def test_pareto_by_hand() -> None:
    pts = {0: (1.0, 3.0), 1: (2.0, 2.0), 2: (3.0, 3.0), 3: (1.0, 3.0), 4: (2.5, 2.0)}
    # 2 is dominated by 1; 4 by 1; 0 and 3 tie (neither dominates the other)
    assert bench_mo.pareto(pts) == {0, 1, 3}


def test_pruning_on_the_first_objective_loses_front_points_in_the_recorded_replay() -> None:
    rep = bench_mo.replay_all(orders=2)
    cells = [(c["seed"], c["pruned"], c["front"], c["front_pruned"]) for c in rep["cells"]]
    # Measured on the recorded grid ([final eval_loss, train_time]; the quickstart's median pruner on
    # eval_loss): of a front of 4-5 configurations, 1-3 are pruned in every replay (cheap, slow-learning
    # configurations that look poor early). Deterministic: the curves are recorded and the orders seeded.
    assert cells == [(0, 22, 4, 2), (0, 22, 4, 3), (1, 20, 4, 2), (1, 25, 4, 2), (2, 25, 5, 2), (2, 22, 5, 1)]
    assert rep["replays_losing_a_front_point"] == 6
    for c in rep["cells"]:
        # what the study's own front holds of the true front: never a pruned configuration
        assert c["found_on_true_front"] == c["front"] - c["front_pruned"]


def test_confirmation_replay_on_the_recorded_grid() -> None:
    rep = bench_confirm.replay(searches=20)
    assert rep["searches"] == 20 and rep["fresh_seeds"] == 2
    assert 0.0 <= rep["search_best_stays_best"] <= 1.0
    assert rep["std_perplexity_median"] > 0  # seeds do move the result


@pytest.mark.parametrize("script", ["confirm.py", "multi_objective.py"])
def test_quick_mode_writes_json(script: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--no-live", "--out", str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    body = json.loads(out.read_text())
    assert body["replay"] and len(body["machine"]["loadavg_start"]) == 3
    assert "load average" in res.stdout
