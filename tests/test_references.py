"""Every reference in a study file is followed before anything is written (issue 14.3).

A table of bad study files: each one makes `hpo validate` and `hpo run` exit 1 with one line
``FILE: key: message`` that names the setting and what exists instead, and leaves nothing behind (no
database, no cache, no lock file). Mistakes only a worker can see (a dirty row, a batch larger than the
tokenised data) are reported the same way at run time; a run whose trials all fail exits 1; a study that
failed before its first trial does not make its name unusable.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import studies
from hpo.cli import app
from hpo.config import load_study_file, validate_study
from hpo.errors import StudyMismatchError
from hpo.storage import ATTR_FINGERPRINT, create_or_resume, load_existing, open_storage
from studies import sentiment_rows, write_csv, write_sentiment_csv
from trainers.base import ConfigError
from trainers.data import load_records

runner = CliRunner()

Study = dict[str, Any]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A study folder with its data, and a different working directory (empty) that the CLI runs in."""
    proj = tmp_path / "proj"
    write_sentiment_csv(proj / "data" / "train.csv", 40)
    gpt2 = proj / "models" / "tiny-gpt2"
    gpt2.mkdir(parents=True)
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_positions": 64}))
    (gpt2 / "tokenizer.json").write_text("{}")
    (proj / "models" / "empty").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HPO_CACHE_DIR", str(cwd / "cache"))
    return proj


def base_study() -> Study:
    """A small classification study on proj/data/train.csv, a BERT built from scratch."""
    return studies.classification("refs", 2)


def write_study(proj: Path, data: Study, name: str = "study.yaml") -> Path:
    path = proj / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


Mutator = Callable[[Study, Path], None]


def set_(path: str, value: Any) -> Mutator:
    def mutate(d: Study, proj: Path) -> None:
        keys = path.split(".")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return mutate


def pretrained(name: str, **config: Any) -> Mutator:
    """Use a pretrained model folder instead of the from-scratch BERT."""

    def mutate(d: Study, proj: Path) -> None:
        d["task"] = "causal_lm"
        d["objective"] = {"metric": "perplexity"}
        d["model"] = {"name_or_path": name, **({"config": config} if config else {})}

    return mutate


def both(*ms: Mutator) -> Mutator:
    def mutate(d: Study, proj: Path) -> None:
        for m in ms:
            m(d, proj)

    return mutate


def batch_search(d: Study, proj: Path) -> None:
    d["search_space"]["training.per_device_train_batch_size"] = {"type": "categorical", "choices": [8, 64]}


def json_data(d: Study, proj: Path) -> None:
    records = [{"sentence": t, "lab": lab} for t, lab in sentiment_rows(10)]
    (proj / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    d["data"]["files"] = {"train": "data/train.jsonl"}


# (case id, mutation, expected key, hints the message must contain)
CASES: list[tuple[str, Mutator, str, list[str]]] = [
    ("misspelt text column", set_("data.text_column", "sentense"), "data.text_column",
     ["no column 'sentense' in data/train.csv", "its columns: sentence, label"]),
    ("missing label column", set_("data.label_column", "labels"), "data.label_column",
     ["no column 'labels'", "its columns: sentence, label"]),
    ("JSON lines column", json_data, "data.label_column", ["no column 'label' in data/train.jsonl", "sentence, lab"]),
    ("missing file", set_("data.files", {"train": "data/trian.csv"}), "data.files.train",
     ["no such file", "data/trian.csv", "relative to the study file's folder"]),
    ("missing file in a list", set_("data.files", {"train": ["data/train.csv", "data/more.csv"]}),
     "data.files.train[1]", ["no such file", "data/more.csv"]),
    ("eval split not among the files", set_("data.eval_split", "validation"), "data.eval_split",
     ["no split 'validation' in data.files", "splits there: train"]),
    ("dataset folder that does not exist", set_("data", {"dataset": "./corpora/nope", "max_length": 32}),
     "data.dataset", ["no such folder", "corpora/nope"]),
    ("model folder that does not exist", pretrained("./models/tiny-gtp2"), "model.name_or_path",
     ["no such folder", "models/tiny-gtp2"]),
    ("model folder without config.json", pretrained("./models/empty"), "model.name_or_path",
     ["has no config.json"]),
    ("tokenizer folder that does not exist",
     set_("model.tokenizer", {"name_or_path": "./tok"}), "model.tokenizer.name_or_path", ["no such folder"]),
    ("unknown from_config key", set_("model.from_config.num_hiden_layers", 1), "model.from_config.num_hiden_layers",
     ["unknown key for model_type 'bert'", "num_hidden_layers"]),
    ("unknown model_type", set_("model.from_config.model_type", "bertt"), "model.from_config.model_type",
     ["unknown model_type 'bertt'", "bert"]),
    ("unknown model.config key of a pretrained folder", pretrained("models/tiny-gpt2", n_layerz=2),
     "model.config.n_layerz", ["unknown key for model_type 'gpt2'", "n_layer"]),
    ("search over an unknown model.config key",
     set_("search_space", {"model.config.hidden_dropout": {"type": "float", "low": 0.0, "high": 0.2}}),
     "search_space[model.config.hidden_dropout]", ["unknown key for model_type 'bert'", "hidden_dropout_prob"]),
    ("max_length > positions", set_("data.max_length", 128), "data.max_length",
     ["128 is longer than the model's 64 positions", "model.from_config.max_position_embeddings"]),
    ("max_length > positions of a pretrained folder",
     both(pretrained("models/tiny-gpt2"), set_("data.max_length", 100)), "data.max_length",
     ["100 is longer than the model's 64 positions", "n_positions in", "config.json"]),
    ("batch larger than the data", set_("training.per_device_train_batch_size", 64),
     "training.per_device_train_batch_size", ["a batch of 64 is larger than the training set: 36 examples",
                                              "40 rows in data/train.csv"]),
    ("searched batch larger than the data", batch_search, "search_space[training.per_device_train_batch_size]",
     ["a batch of 64 is larger than the training set"]),
]  # fmt: skip


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(("mutate", "key", "hints"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_reference_one_line_and_nothing_written(
    project: Path, command: str, mutate: Mutator, key: str, hints: list[str]
) -> None:
    data = base_study()
    mutate(data, project)
    path = write_study(project, data)
    root = project.parent
    before = everything(root)
    result = runner.invoke(app, [command, str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: {key}: "), result.output
    for hint in hints:
        assert hint in lines[0], result.output
    assert "Traceback" not in result.output
    assert everything(root) == before  # no database, cache, lock file or runs/ folder anywhere


def test_the_base_study_is_valid(project: Path) -> None:
    result = runner.invoke(app, ["validate", str(write_study(project, base_study()))])
    assert result.exit_code == 0, result.output


def test_relative_paths_resolve_against_the_study_file_folder(project: Path) -> None:
    """Run from another working directory: the files and local folders next to the study file are found, and
    the run configuration carries their absolute paths (workers and the cache key see one file)."""
    data = base_study()
    path = write_study(project, data)
    assert Path.cwd() != project
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    cfg = load_study_file(os.path.relpath(path))
    assert cfg.base_run().data.files["train"] == str(project / "data" / "train.csv")
    pretrained("models/tiny-gpt2")(data, project)
    cfg = load_study_file(write_study(project, data))
    assert cfg.base_run().model.name_or_path == str(project / "models" / "tiny-gpt2")
    # The fingerprint keeps the paths as written: moving the project does not orphan its study.
    assert cfg.data.files == {"train": "data/train.csv"}
    # A hub name stays a hub name.
    data["model"]["name_or_path"] = "openai-community/gpt2"
    cfg = load_study_file(write_study(project, data))
    assert cfg.base_run().model.name_or_path == "openai-community/gpt2"


def test_valid_model_config_keys_pass(project: Path) -> None:
    """The architecture's own keys (and their aliases) are accepted under from_config, config and search."""
    data = base_study()
    data["model"]["from_config"].update(hidden_dropout_prob=0.1, type_vocab_size=1)
    data["model"]["config"] = {"attention_probs_dropout_prob": 0.1, "num_labels": 2}
    data["search_space"]["model.config.classifier_dropout"] = {"type": "float", "low": 0.0, "high": 0.2}
    assert runner.invoke(app, ["validate", str(write_study(project, data))]).exit_code == 0
    gpt2 = base_study()
    pretrained("models/tiny-gpt2", n_layer=1, n_embd=32, n_head=2, n_positions=64)(gpt2, project)
    gpt2["data"] = {"builtin": "pydoc_topics", "max_length": 64}
    result = runner.invoke(app, ["validate", str(write_study(project, gpt2))])
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------------------- dirty data


def test_empty_text_cell_names_the_file_and_row(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", sentiment_rows(4))
    b = write_csv(tmp_path / "b.csv", [*sentiment_rows(2), ("", "pos"), *sentiment_rows(2)])
    data = validate_study(base_study()).data.model_copy(update={"files": {"train": [str(a), str(b)]}})
    with pytest.raises(ConfigError) as e:
        load_records(data, need_labels=True)
    assert e.value.key == "data.text_column"
    assert e.value.message == f"{b} data row 3: the 'sentence' cell is empty"


def test_empty_label_is_an_error_not_a_class(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "a.csv", [*sentiment_rows(5), ("good fine", "")])
    data = validate_study(base_study()).data.model_copy(update={"files": {"train": str(f)}})
    with pytest.raises(ConfigError) as e:
        load_records(data, need_labels=True)
    assert (e.value.key, e.value.message) == ("data.label_column", f"{f} data row 6: the 'label' cell is empty")


# --------------------------------------------------------------------- a study with no trials yet


def test_a_study_with_no_trials_takes_the_fixed_files_fingerprint(tmp_path: Path) -> None:
    """A run that failed at start-up (0 trials) must not make the study name unusable once the typo is fixed."""
    url = f"sqlite:///{tmp_path}/s.db"
    first = base_study()
    first["study"]["storage"] = url
    first["data"]["max_length"] = 16
    fixed = copy.deepcopy(first)
    fixed["data"]["max_length"] = 32
    storage = open_storage(url, create=True)
    study, created = create_or_resume(validate_study(first), storage)
    assert created and not study.trials
    cfg = validate_study(fixed)
    load_existing(cfg)  # read-only commands show it too
    study, created = create_or_resume(cfg, storage)
    assert not created
    assert study.user_attrs[ATTR_FINGERPRINT] == cfg.fingerprint()
    # Once a trial exists, a changed file is refused as before.
    study.tell(study.ask(), 0.5)
    with pytest.raises(StudyMismatchError, match="different data"):
        create_or_resume(validate_study(first), storage)


# ----------------------------------------------------------------------------- found at run time


@pytest.mark.slow
def test_dirty_row_at_run_time_is_one_line_leaves_no_study_and_debug_shows_the_worker(project: Path) -> None:
    dirty = write_csv(project / "data" / "train.csv", [*sentiment_rows(6), ("", "pos"), *sentiment_rows(20)])
    path = write_study(project, base_study())
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: data.text_column: {dirty} data row 7: the 'sentence' cell is empty"]
    assert "Traceback" not in result.output
    assert not (Path.cwd() / "runs" / "refs.db").exists()  # the study this run created is gone again

    debug = runner.invoke(app, ["--debug", "run", str(path)])
    assert debug.exit_code != 0
    assert "worker traceback:" in debug.output and "trainers/data.py" in debug.output, debug.output

    write_csv(dirty, sentiment_rows(30))  # fixed: the same study name runs
    again = runner.invoke(app, ["run", str(path)])
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="refs", storage="sqlite:///runs/refs.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_batch_larger_than_the_tokenised_data_fails_every_trial_and_the_run_exits_1(project: Path) -> None:
    """A causal LM's blocks cannot be counted before tokenising: the trial fails naming the setting (it is not
    trained on one short batch recorded as the larger size), and a run whose trials all fail exits 1."""
    data = base_study()
    data.update(task="causal_lm", objective={"metric": "perplexity"})
    data["model"] = studies.tiny_gpt2()
    data["data"] = {"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 1, "max_eval_samples": 2}
    data["training"]["per_device_train_batch_size"] = 512
    path = write_study(project, data)
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0  # not countable before tokenising
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {path}: training.per_device_train_batch_size: a batch of 512 is larger ")
    assert "blocks of data.max_length=32 tokens" in errors[0] and "(all 2 trials of this run failed)" in errors[0]
    study = optuna.load_study(study_name="refs", storage="sqlite:///runs/refs.db")
    reasons = {t.user_attrs["reason"] for t in study.trials}
    assert len(reasons) == 1 and next(iter(reasons)).startswith("error: training.per_device_train_batch_size: ")


def test_a_hub_name_offline_and_not_cached_is_named(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online a hub name is left to from_pretrained; with HF_HUB_OFFLINE set, one not in the cache cannot work."""
    data = base_study()
    pretrained("someorg/no-such-model")(data, project)
    path = write_study(project, data)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # CI runs offline (.ci/run sets it)
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {path}: model.name_or_path: 'someorg/no-such-model' is not a local folder, and HF_HUB_OFFLINE "
        "is set but it is not in the hub cache"
    )
