"""benchmarks/suggest.py: the surrogate reproduces the recorded grid, and --quick runs end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PATH = ROOT / "benchmarks" / "suggest.py"
_spec = importlib.util.spec_from_file_location("bench_suggest", _PATH)
assert _spec is not None and _spec.loader is not None
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)


def test_the_surrogate_is_the_recording_on_grid_points_and_between_them() -> None:
    sur = bs.Surrogate(bs.DATA)
    runs = json.loads(bs.DATA.read_text())["runs"]
    r = runs[5]
    p = {k: r[k] for k in ("learning_rate", "per_device_train_batch_size", "dropout", "weight_decay")}
    assert sur.curve(p, r["seed"]) == [r["eval_loss"][i] for i in sur.keep]
    a, b = dict(p, dropout=0.0), dict(p, dropout=0.15)
    mid = sur.curve(dict(p, dropout=0.075), 0)
    assert all(math.isclose(m, (x + y) / 2) for m, x, y in zip(mid, sur.curve(a, 0), sur.curve(b, 0), strict=True))
    assert max(sur.curve(dict(p, learning_rate=1e-5), 0)) <= bs.CAP  # extrapolated, capped at a uniform guess


def test_quick_mode_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, str(_PATH), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["arms"]) == {"original", "+best", "suggested"} and data["seeds"] == 3
    assert "| second: suggested |" in proc.stdout and "load average" in proc.stdout
