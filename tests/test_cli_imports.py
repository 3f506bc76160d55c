"""CLI latency by construction: what each command imports (issue 13). Timing depends on the machine; the
import set does not, so the tests check the libraries a command loads, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("optuna", "sqlalchemy", "alembic", "torch", "transformers", "numpy", "pandas", "plotly")

# Runs the CLI in this process and prints the heavy modules it imported, whatever the exit code.
PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["hpo"] + json.loads(sys.argv[1])
from hpo.cli import app
try:
    app()
except SystemExit:
    pass
print("HEAVY=" + json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def heavy_imports(args: list[str], cwd: Path = ROOT) -> tuple[list[str], str]:
    p = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = [x for x in p.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line, p.stdout + p.stderr
    return json.loads(line[-1][6:]), p.stdout + p.stderr


@pytest.mark.parametrize(
    "args",
    [["--help"], ["validate", "--help"], ["run", "--help"], ["status", "--help"], ["report", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    heavy, out = heavy_imports(args)
    assert "Usage" in out
    assert heavy == []


def test_validate_reads_the_model_config_without_torch_transformers_or_optuna() -> None:
    heavy, out = heavy_imports(["validate", str(ROOT / "studies" / "quickstart.yaml")])
    assert "ok " in out and "4 parameters" in out
    assert heavy == []


def test_validate_still_names_a_wrong_key_with_hints(tmp_path: Path) -> None:
    text = (ROOT / "studies" / "quickstart.yaml").read_text().replace("n_layer: 2", "n_layers: 2")
    study = tmp_path / "study.yaml"
    study.write_text(text)
    heavy, out = heavy_imports(["validate", str(study)], cwd=tmp_path)
    assert "model.from_config.n_layers: unknown key for model_type 'gpt2'" in out
    assert "did you mean n_layer" in out
    assert "transformers" in heavy  # an unknown key is confirmed by importing the config class
    assert list(tmp_path.iterdir()) == [study]  # nothing written


def test_status_does_not_import_torch_or_transformers(tmp_path: Path) -> None:
    heavy, out = heavy_imports(["status", str(ROOT / "studies" / "quickstart.yaml")], cwd=tmp_path)
    assert "no study yet" in out
    assert not {"torch", "transformers"} & set(heavy)


def test_status_of_a_study_reads_it_without_alembic_or_the_orchestrator(tmp_path: Path) -> None:
    """`hpo status` on a real study goes through the SQL snapshot (hpo.snapshot): no alembic (Optuna's schema
    check) and no torch; the table still shows every trial."""
    import optuna
    import yaml

    from hpo.config import load_study_file
    from hpo.storage import create_or_resume, open_storage

    raw = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    raw["study"]["storage"] = f"sqlite:///{tmp_path / 'q.db'}"
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_study_file(path)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    for value in (310.5, 290.25):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs={"steps": 300}))

    heavy, out = heavy_imports(["status", str(path)], cwd=tmp_path)

    assert "290.2" in out and "310.5" in out and "2/16 trials" in out
    assert not {"alembic", "torch", "transformers"} & set(heavy)
