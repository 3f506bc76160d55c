"""benchmarks/cli_latency.py --quick runs end to end: every command succeeds, the JSON has each row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_latency_quick(tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cli_latency.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["command"].split()[1] for r in rows] == ["--help", "validate", "status"]
    assert all(r["rc"] == 0 and r["cpu_s_median"] > 0 for r in rows)
    assert rows[0]["imports"] == [] and rows[1]["imports"] == []
    assert "optuna" in rows[2]["imports"]
