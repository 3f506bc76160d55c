"""benchmarks/gpu.py --dry-run: the GPU check's script end to end on CPU (tiny model, 2-trial study, a
1-process accelerate launch). It measures nothing about GPUs; it keeps the script working until a GPU
machine runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


def test_utilisation_means_per_device_between_the_first_and_last_trial() -> None:
    u = gpu.Utilisation(dry=True)
    u.samples = [(1.0, [100.0, 0.0]), (2.0, [50.0, 100.0]), (3.0, [100.0, 100.0]), (9.0, [0.0, 0.0])]
    assert u.busy(1.5, 3.5) == [0.75, 1.0]
    assert u.busy(20.0, 30.0) == []


def test_real_run_refuses_a_machine_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True)
    assert p.returncode != 0 and "--dry-run" in p.stderr


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    a, b, c = r["throughput"], r["utilisation"], r["multi_gpu"]
    assert r["dry_run"] and a["device"] == "cpu" and a["hpo_tokens_per_s"] > 0 and a["bare_tokens_per_s"] > 0
    assert b["trials"] == 2 and b["samples"] > 0 and len(b["busy_per_device"]) == 1
    assert c["processes"] == 1 and "eval_loss" in json.dumps(c["1p"]["metrics"])
