"""benchmarks/pbt.py: the three searches' study files are valid hpo studies (quick and full), and the
measures (time to the TPE best, the summary over seeds, the table) are what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from hpo.config import validate_study

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "pbt.py"
_spec = importlib.util.spec_from_file_location("bench_pbt", _PATH)
assert _spec is not None and _spec.loader is not None
bp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bp)


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("study", bp.STUDIES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", bp.METHODS)
def test_each_search_is_a_valid_study(study: Path, method: str, quick: bool, tmp_path: Path) -> None:
    base = yaml.safe_load(study.read_text())
    if quick:
        base = bp.quick(base)
    spec = bp.variant(
        base, method, 1, 4 if quick else 8, 20 if quick else 50 if "quick" in study.stem else 20, tmp_path
    )
    cfg = validate_study(spec, "<bench>")  # the checks hpo run does first (pbt section included)
    assert cfg.study.n_trials == (4 if quick else 8)
    assert cfg.fidelity.max_steps == (60 if quick else base["fidelity"]["max_steps"])
    assert (cfg.pbt is not None) == (method == "pbt")
    assert cfg.pruner.name == {"pbt": "median", "tpe": "median", "sh": "successive_halving"}[method]
    assert str(tmp_path) in cfg.storage_url


def test_time_to_the_tpe_best() -> None:
    ends = [(10.0, 5.0), (20.0, 3.0), (30.0, 2.0)]
    assert bp.time_to(ends, 3.0, "minimize") == 20.0
    assert bp.time_to(ends, 1.0, "minimize") is None
    assert bp.time_to(ends, 4.0, "maximize") == 10.0


def test_summary_and_table_over_seeds() -> None:
    rows = [
        {"study": "q", "method": "tpe", "best": b, "steps": 100, "wall": 10.0, "to_tpe_best": 5.0} for b in (3.0, 1.0)
    ]
    rows += [
        {"study": "q", "method": "pbt", "best": b, "steps": 120, "wall": 20.0, "to_tpe_best": t,
         "replay": {"gap": g}}
        for b, t, g in ((2.0, 20.0, 0.0), (4.0, None, -0.5))
    ]  # fmt: skip
    s = {r["method"]: r for r in bp.summarise(rows)}
    assert (s["tpe"]["best_median"], s["tpe"]["best_min"], s["tpe"]["best_max"]) == (2.0, 1.0, 3.0)
    assert s["pbt"]["reached_tpe_best"] == "1/2" and s["pbt"]["replay_gap_max"] == -0.5
    assert "| q | pbt | 2 | 3 (2–4) | 120 | 20 | 1/2 | 20 | -0.5 |" in bp.table(bp.summarise(rows))
