"""benchmarks/lora_vs_full.py and benchmarks/qlora_memory.py: the seed summaries, and each script's --quick path
end to end (real `hpo run` studies / real training processes, so those are slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lvf = _load("lora_vs_full")
qm = _load("qlora_memory")


@pytest.mark.parametrize(
    ("values", "shown"),
    [([0.951], "0.951"), ([0.951, 0.94, 0.96], "0.951 [0.94, 0.96]"), ([1865.4, 1864.3], "1865 [1864, 1865]")],
)
def test_spread_is_the_median_and_range_over_seeds(values: list[float], shown: str) -> None:
    assert lvf.spread(values) == shown
    assert qm.spread(values) == shown


def test_summary_has_one_line_per_study_over_its_seeds() -> None:
    def row(kind: str, best: float) -> dict[str, Any]:
        return {"study": kind, "best": best, "wall_s": 10.0, "tokens_per_s": 100.0, "peak_memory_mb": 500.0}

    lines = lvf.summary([row("full", 0.9), row("lora", 0.8), row("full", 0.7), row("lora", 0.95), row("full", 0.8)])
    assert len(lines) == 3
    assert lines[1].split()[:3] == ["full", "3", "0.8"] and "[0.7, 0.9]" in lines[1]
    assert lines[2].split()[:3] == ["lora", "2", "0.875"] and "[0.8, 0.95]" in lines[2]


def _run(script: str, *args: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "load average" in proc.stdout
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_lora_vs_full_quick_runs_both_studies(tmp_path: Path) -> None:
    res = _run("lora_vs_full.py", "--quick", tmp_path=tmp_path)
    assert (res["trials"], res["steps"], len(res["load"])) == (2, 8, 3)
    full, lora = res["rows"]
    assert (full["study"], lora["study"]) == ("full", "lora")
    assert full["trainable_params"] == full["total_params"]
    assert 0 < lora["trainable_params"] < lora["total_params"]


@pytest.mark.slow
def test_qlora_memory_quick_quantises_the_base(tmp_path: Path) -> None:
    res = _run("qlora_memory.py", "--quick", "--seeds", "0", "--steps", "2", "--device", "cpu", tmp_path=tmp_path)
    rows = {r["mode"]: r for r in res["rows"]}
    assert set(rows) == {"none", "8bit", "4bit"}
    assert rows["none"]["quantised_layers"] == 0
    assert rows["8bit"]["quantised_layers"] > 0 and rows["4bit"]["quantised_layers"] > 0
    assert rows["4bit"]["base_weights_mb"] < rows["8bit"]["base_weights_mb"] < rows["none"]["base_weights_mb"]
    # The same model and adapter whatever the base's format.
    assert len({(r["trainable_params"], r["total_params"]) for r in rows.values()}) == 1
