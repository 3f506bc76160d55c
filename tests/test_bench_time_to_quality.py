"""benchmarks/time_to_quality.py: the verdict's arithmetic (fast, table-driven), and --quick end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_to_quality as ttq  # noqa: E402


def row(t: float, loss: float | None, state: str = "COMPLETE") -> dict[str, Any]:
    return {"complete_s": t, "eval_loss": loss, "state": state}


ROWS = [row(10, 6.0), row(20, 5.0, "PRUNED"), row(30, 5.1), row(50, 5.04), row(70, 4.9)]


@pytest.mark.parametrize(
    ("target", "expected"),
    [(6.0, 10), (5.1, 30), (5.05, 50), (5.0, 70), (4.0, None)],  # a pruned trial's value never counts
)
def test_time_to(target: float, expected: float | None) -> None:
    assert ttq.time_to(ROWS, target) == expected


def test_regret_area_is_the_mean_best_so_far_regret_over_the_budget() -> None:
    rows = [row(10, 5.5), row(30, 5.0)]
    # best 5.0, worst 6.0: 20% until 10 s, 10% until 30 s, 0% until 40 s.
    assert ttq.regret_area(rows, 5.0, 6.0, 40.0) == pytest.approx((20 * 10 + 10 * 20 + 0 * 10) / 40)
    assert ttq.regret_area(rows, 5.0, 6.0, 20.0) == pytest.approx((20 * 10 + 10 * 10) / 20)  # budget cuts
    assert ttq.regret_area([], 5.0, 6.0, 40.0) == pytest.approx(20.0)  # nothing completed: the worst


@pytest.mark.parametrize(
    ("values", "median", "reached"),
    [([3.0, 1.0, 2.0], 2.0, "3/3"), ([3.0, None, 1.0], 3.0, "2/3"), ([None, None, 1.0], None, "1/3")],
)
def test_summary_counts_a_miss_as_later_than_any_hit(
    values: list[float | None], median: float | None, reached: str
) -> None:
    s = ttq.summary(values)
    assert (s["median"], s["reached"]) == (median, reached)


def side(t2: float | None, area: float) -> dict[str, Any]:
    return {"time_to": {"2%": {"median": t2}}, "area": {"median": area}}


@pytest.mark.parametrize(
    ("sides", "baseline", "met"),
    [
        ({"trainer-1p": side(90, 3), "trainer-Np": side(60, 4), "hpo": side(20, 1)}, "trainer-Np", True),
        ({"trainer-1p": side(90, 3), "trainer-Np": side(60, 4), "hpo": side(21, 1)}, "trainer-Np", False),
        ({"trainer-1p": side(None, 3), "trainer-Np": side(None, 2), "hpo": side(80, 1)}, "trainer-Np", True),
        ({"trainer-1p": side(60, 3), "trainer-Np": side(60, 2), "hpo": side(None, 1)}, "trainer-Np", False),
    ],
)
def test_verdict_takes_the_stronger_baseline(sides: dict[str, Any], baseline: str, met: bool) -> None:
    v = ttq.verdict(sides)
    assert v["baseline"] == baseline
    assert v["hpo"]["met"] is met


def test_grid_quality_is_the_best_mean_over_seeds() -> None:
    grid = {
        "grid": {"a": [1, 2]},
        "runs": [
            {"a": 1, "eval_loss": [9.0, 5.0]},
            {"a": 1, "eval_loss": [9.0, 5.2]},
            {"a": 2, "eval_loss": [9.0, 6.0]},
        ],
    }
    assert ttq.grid_quality(grid) == (pytest.approx(5.1), 6.0)


def test_samples_side_keeps_the_middle_batch_size_length() -> None:
    spec = ttq.spec_for("hpo-samples", 3, quick=False)
    assert spec["fidelity"]["max_samples"] == 300 * 16 and spec["fidelity"]["eval_every"] == 50 * 16
    assert "max_steps" not in spec["fidelity"] and spec["sampler"]["seed"] == 3


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "ttq.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["sides"]) == {"trainer-1p", "trainer-Np", "hpo", "hpo-samples"}
    assert all(len(v) == 1 and v[0]["rows"] for v in r["runs"].values())
    assert r["verdict"]["baseline"] in ("trainer-1p", "trainer-Np")
