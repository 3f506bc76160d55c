"""The CLI through Typer's CliRunner: one-line errors that write nothing, and a real end-to-end study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import studies
from hpo.cli import app

runner = CliRunner()


def tiny(tmp_path: Path, **over: Any) -> dict[str, Any]:
    """``studies.causal_lm`` as ``hpo run`` runs it end to end: TPE, median pruning, four parameters."""
    d = studies.causal_lm(
        "e2e",
        3,
        f"sqlite:///{tmp_path}/runs/e2e.db",
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2},
        pruner={"name": "median", "n_startup_trials": 1},
        training={"per_device_eval_batch_size": 8},
        search_space={
            "training.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "training.per_device_train_batch_size": {"type": "categorical", "choices": [4, 8]},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        },
    )
    return d | over  # a section given replaces the base's


def write(tmp_path: Path, data: Any, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "validate", "status", "best", "curves", "devices"):
        assert cmd in result.output


def test_validate_ok(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(write(tmp_path, tiny(tmp_path)))])
    assert result.exit_code == 0, result.output
    assert (
        "ok" in result.output and "learning_rate, per_device_train_batch_size, dropout, weight_decay" in result.output
    )


def _bad(tmp_path: Path, kind: str) -> tuple[dict[str, Any], str]:
    d = tiny(tmp_path)
    if kind == "unknown key":
        d["training"]["learning_rat"] = 1.0e-3
        return d, "training.learning_rat: unknown key"
    if kind == "low > high":
        d["search_space"]["training.learning_rate"].update(low=1.0e-2, high=1.0e-4)
        return d, "search_space[training.learning_rate]: `low <= high` must hold, but got (low=0.01, high=0.0001)."
    if kind == "wrong type":
        d["study"]["n_trials"] = "many"
        return d, "study.n_trials: Input should be a valid integer"
    assert kind == "missing model"
    del d["model"]
    return d, "model: required key is missing"


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("kind", ["unknown key", "low > high", "wrong type", "missing model"])
def test_bad_file_one_line_error_and_nothing_written(tmp_path: Path, command: str, kind: str) -> None:
    data, expected = _bad(tmp_path, kind)
    path = write(tmp_path, data)
    result = runner.invoke(app, [command, str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {path}: {expected}"] or (
        len(lines) == 1 and lines[0].startswith(f"error: {path}: {expected}")
    ), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # no database, no cache, no study


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    data, _ = _bad(tmp_path, "low > high")
    result = runner.invoke(app, ["--debug", "validate", str(write(tmp_path, data))])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "StudyFileError"


def test_status_before_any_run_says_what_to_do(tmp_path: Path) -> None:
    path = write(tmp_path, tiny(tmp_path))
    result = runner.invoke(app, ["status", str(path)])
    assert result.exit_code == 1
    assert "no study yet" in result.output and "hpo run" in result.output
    assert not (tmp_path / "runs" / "e2e.db").exists()


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_end_to_end_real_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path, tiny(tmp_path))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "best trial" in result.output
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/runs/e2e.db")
    assert len(study.trials) == 3
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    best = study.best_trial
    assert best.user_attrs["steps"] == 16 and best.user_attrs["device"] == "cpu"
    assert best.value == pytest.approx(best.user_attrs["metrics"]["perplexity"])
    assert set(best.params) == {"learning_rate", "per_device_train_batch_size", "dropout", "weight_decay"}
    assert sorted(best.intermediate_values) == [8, 16]

    status = runner.invoke(app, ["status", str(path)])
    assert status.exit_code == 0 and "COMPLETE" in status.output and "3/3" in status.output
    best_out = runner.invoke(app, ["best", str(path)])
    assert best_out.exit_code == 0 and f"best trial {best.number}" in best_out.output

    curves = runner.invoke(app, ["curves", str(path), "--trial", str(best.number), "--json"])
    assert curves.exit_code == 0, curves.output
    points = json.loads(curves.output)
    names = {p["name"] for p in points}
    assert {"train_loss", "learning_rate", "tokens_per_s", "eval_loss", "perplexity"} <= names
    evals = sorted(p["step"] for p in points if p["name"] == "perplexity")
    assert evals == [8, 16]
    missing = runner.invoke(app, ["curves", str(path), "--trial", "99"])
    assert missing.exit_code == 1 and "no trial 99" in missing.output

    # Rerunning a finished study runs nothing more: n_trials is the total.
    again = runner.invoke(app, ["run", str(path)])
    assert again.exit_code == 0 and "ran 0 trials" in again.output
    assert len(optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/runs/e2e.db").trials) == 3

    # Resuming with a different search space is refused with the way out.
    changed = tiny(tmp_path)
    changed["search_space"]["model.dropout"]["high"] = 0.5
    refused = runner.invoke(app, ["run", str(write(tmp_path, changed))])
    assert refused.exit_code == 1 and "change `study.name`" in refused.output
