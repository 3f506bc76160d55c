"""Warm start: configurations checked before anything is written, enqueued once per study, and the best
trials of an earlier study carried over where they fit this space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import studies
from hpo.conditional import ask
from hpo.config import StudyConfig, load_study_file
from hpo.errors import StudyFileError
from hpo.storage import create_or_resume, open_storage
from hpo.warmstart import enqueue, plan

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE: dict[str, Any] = {
    "training.learning_rate": dict(studies.LEARNING_RATE),  # [1e-4, 1e-2], log
    "training.per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
}


def write(tmp_path: Path, name: str, data: Any) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def study_file(tmp_path: Path, name: str = "s", **over: Any) -> Path:
    raw = studies.causal_lm(name, storage=f"sqlite:///{tmp_path}/{name}.db", search_space=SPACE, **over)
    return write(tmp_path, f"{name}.yaml", raw)


def test_enqueued_configs_run_first_and_only_once_across_resume(tmp_path: Path) -> None:
    configs = write(
        tmp_path,
        "c.yaml",
        [{"learning_rate": 1e-3}, {"training.learning_rate": 2e-3, "per_device_train_batch_size": 16}],
    )
    path = study_file(tmp_path)
    cfg = load_study_file(path)
    for _ in range(2):  # the first run, then a resumed one
        ws = plan(cfg, str(path), configs)
        study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
        lines = enqueue(study, ws)
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        assert len(waiting) == 2, lines
    assert "already enqueued" in lines[-1]
    first, second = ask(study, cfg.search_space), ask(study, cfg.search_space)
    assert first.params["learning_rate"] == 1e-3 and "per_device_train_batch_size" in first.params  # the rest sampled
    assert second.params == {"learning_rate": 2e-3, "per_device_train_batch_size": 16}
    assert first.user_attrs["warm_start"] == "c.yaml[0]"


def test_the_study_files_warm_start_configs(tmp_path: Path) -> None:
    path = study_file(tmp_path, warm_start={"configs": [{"learning_rate": 5e-3}]})
    cfg = load_study_file(path)
    ws = plan(cfg, str(path))
    assert [c for c, _ in ws.configs] == [{"learning_rate": 5e-3}]
    assert ws.configs[0][1] == "warm_start.configs[0]"
    assert "warm_start" not in cfg.fingerprints()  # where to start does not change what a result means


BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("outside the range", [{"learning_rate": 0.5}], "c.yaml: [0].learning_rate: 0.5 is outside [0.0001, 0.01]"),
    ("not a choice", [{}, {"per_device_train_batch_size": 12}],
     "c.yaml: [1].per_device_train_batch_size: 12 is not one of the choices [8, 16]"),
    ("unknown key", [{"training.warmup_ratio": 0.1}], "c.yaml: [0].training.warmup_ratio: not a key of search_space"),
    ("not a number", [{"learning_rate": "fast"}], "c.yaml: [0].learning_rate: 'fast' is not a number"),
    ("not a list", {"learning_rate": 1e-3}, "c.yaml: a list of configurations"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), [b[1:] for b in BAD_CONFIGS], ids=[b[0] for b in BAD_CONFIGS])
def test_a_bad_enqueued_config_names_the_key_and_writes_nothing(tmp_path: Path, data: Any, message: str) -> None:
    path = study_file(tmp_path)
    with pytest.raises(StudyFileError) as e:
        plan(load_study_file(path), str(path), write(tmp_path, "c.yaml", data))
    assert message in str(e.value).replace(str(tmp_path) + "/", "")
    assert len(str(e.value).strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()


def test_a_bad_config_in_the_study_file_is_a_validation_error(tmp_path: Path) -> None:
    path = study_file(tmp_path, warm_start={"configs": [{"learning_rate": 1.0}]})
    with pytest.raises(StudyFileError, match=r"warm_start.configs\[0\].learning_rate: 1.0 is outside"):
        load_study_file(path)


def run_earlier(tmp_path: Path, values: dict[float, float], space: dict[str, Any] | None = None) -> StudyConfig:
    """An earlier study with one complete trial per (learning rate -> perplexity)."""
    raw = studies.causal_lm("old", storage=f"sqlite:///{tmp_path}/old.db", search_space=space or SPACE)
    cfg = load_study_file(write(tmp_path, "old.yaml", raw))
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    for lr, value in values.items():
        study.enqueue_trial({"learning_rate": lr, "per_device_train_batch_size": 8})
        t = ask(study, cfg.search_space)
        study.tell(t, value)
    return cfg


def test_top_k_of_an_earlier_study_that_fit_this_space(tmp_path: Path) -> None:
    wide = {**SPACE, "training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
    run_earlier(tmp_path, {1e-3: 30.0, 5e-2: 10.0, 2e-3: 20.0, 1e-4: 90.0}, wide)
    path = study_file(tmp_path, warm_start={"from": "old.yaml", "top": 3})
    ws = plan(load_study_file(path), str(path))
    # The best trial (5e-2) is outside this study's range: skipped, with the reason.
    assert [c["learning_rate"] for c, _ in ws.configs] == [2e-3, 1e-3]
    assert ws.skipped == ["old trial 1: training.learning_rate 0.05 is outside [0.0001, 0.01]"]
    assert [label for _, label in ws.configs] == ["old trial 2", "old trial 0"]


@pytest.mark.parametrize(
    ("warm", "message"),
    [
        ({"from": "nope.yaml"}, "s.yaml: warm_start.from: no such study file"),
        ({"from": "old.yaml"}, "s.yaml: warm_start.from: old.yaml: no study yet"),
    ],
    ids=["no file", "never run"],
)
def test_a_warm_start_study_that_does_not_exist(tmp_path: Path, warm: dict[str, Any], message: str) -> None:
    write(tmp_path, "old.yaml", studies.causal_lm("old", storage=f"sqlite:///{tmp_path}/old.db", search_space=SPACE))
    path = study_file(tmp_path, warm_start=warm)
    with pytest.raises(StudyFileError) as e:
        plan(load_study_file(path), str(path))
    assert message in str(e.value).replace(str(tmp_path) + "/", "")
    assert not (tmp_path / "old.db").exists() and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("warm", "message"),
    [
        ({"from": "nope.yaml"}, "s.yaml: warm_start.from: no such study file: nope.yaml"),
        ({"from": "old.yaml"}, "s.yaml: warm_start.from: old.yaml: no study yet: sqlite:///old.db does not exist"),
        ({"from": "bad.yaml"}, "s.yaml: warm_start.from: bad.yaml does not validate: bad.yaml: sampler: `name`"),
    ],
    ids=["no file", "never run", "invalid file"],
)
def test_hpo_validate_follows_the_warm_start_reference(tmp_path: Path, warm: dict[str, Any], message: str) -> None:
    from hpo.references import validate_file

    write(tmp_path, "old.yaml", studies.causal_lm("old", storage=f"sqlite:///{tmp_path}/old.db", search_space=SPACE))
    bad = studies.causal_lm("bad", storage=f"sqlite:///{tmp_path}/bad.db", search_space=SPACE)
    write(tmp_path, "bad.yaml", {**bad, "sampler": {"name": "annealing"}})
    path = study_file(tmp_path, warm_start=warm)
    with pytest.raises(StudyFileError) as e:
        validate_file(path)
    assert str(e.value).replace(str(tmp_path) + "/", "").startswith(message), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "old.yaml", "s.yaml"]  # nothing written


def test_the_cli_refuses_a_bad_enqueue_file_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hpo.cli import app

    path = study_file(tmp_path)
    bad = write(tmp_path, "c.yaml", [{"learning_rate": 1e-3}, {"per_device_train_batch_size": 12}])
    result = CliRunner().invoke(app, ["run", str(path), "--enqueue", str(bad)])
    assert result.exit_code == 1
    assert (
        result.output.strip() == f"error: {bad}: [1].per_device_train_batch_size: 12 is not one of the choices [8, 16]"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "s.yaml"]


def test_the_cli_suggest_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hpo.cli import app

    path = study_file(tmp_path)
    cfg = load_study_file(path)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    for lr, value in ((1e-3, 3.0), (2e-3, 2.0), (3e-3, 2.5), (1e-4, 9.0), (5e-4, 4.0)):
        study.enqueue_trial({"learning_rate": lr, "per_device_train_batch_size": 8})
        study.tell(ask(study, cfg.search_space), value)
    out = tmp_path / "narrow.yaml"
    result = CliRunner().invoke(app, ["suggest", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "narrowed around the top 3 of 5 complete trials (best: trial 1)" in result.output
    new = load_study_file(out)
    assert new.search_space["training.per_device_train_batch_size"].choices == [8]  # type: ignore[union-attr]
    assert new.warm_start is not None and new.warm_start.configs[0]["training.learning_rate"] == 2e-3
