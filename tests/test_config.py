"""Study-file validation as a table of good and bad files, plus fingerprints and trial configurations.

Every case starts from a valid minimal study (the content of studies/quickstart.yaml, built here so the
tests do not move when the example does), applies one modification, writes YAML to a temporary file and
loads it with ``hpo.config.load_study_file``.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from hpo.config import StudyConfig, load_study_file, validate_study
from hpo.errors import StudyFileError
from hpo.pruners import PRUNER_NAMES, PatientPrunerConfig
from hpo.samplers import SAMPLER_NAMES
from trainers.config import RunConfig

REPO = Path(__file__).resolve().parents[1]

Study = dict[str, Any]
Mutator = Callable[[Study], None]


def minimal_study() -> Study:
    """The content of studies/quickstart.yaml as plain data."""
    return {
        "study": {"name": "quickstart", "n_trials": 16},
        "task": "causal_lm",
        "objective": {"metric": "perplexity"},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 6},
        "pruner": {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 50},
        "fidelity": {"max_steps": 300, "eval_every": 50, "eval_batches": 4},
        "model": {
            "from_config": {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 64},
            "tokenizer": {"train_vocab_size": 2048},
        },
        "data": {"builtin": "pydoc_topics", "max_length": 64},
        "training": {"per_device_eval_batch_size": 32, "warmup_ratio": 0.05, "lr_scheduler_type": "cosine"},
        "search_space": {
            "training.learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
            "training.per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        },
    }


@pytest.fixture
def study() -> Study:
    """A fresh minimal study for a test to modify."""
    return minimal_study()


def write_study(tmp_path: Path, data: Any, raw: Mapping[str, str] | None = None, name: str = "study.yaml") -> Path:
    """Dump ``data`` as YAML, replace each sentinel token of ``raw`` by its literal YAML text, write it."""
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    for token, literal in (raw or {}).items():
        assert token in text, f"sentinel {token} not in the dumped YAML"
        text = text.replace(token, literal)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, mutate: Mutator | None = None, raw: Mapping[str, str] | None = None) -> StudyConfig:
    data = minimal_study()
    if mutate is not None:
        mutate(data)
    return load_study_file(write_study(tmp_path, data, raw))


# ------------------------------------------------------------------------------------------ mutators


def put(*keys: str, value: Any) -> Mutator:
    """Set ``data[k1][k2]...[kn] = value`` (creating mappings on the way)."""

    def mutate(data: Study) -> None:
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return mutate


def drop(*keys: str) -> Mutator:
    """Delete ``data[k1]...[kn]``."""

    def mutate(data: Study) -> None:
        node = data
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return mutate


def space(path: str, entry: dict[str, Any]) -> Mutator:
    """Add or replace the search-space entry at ``path``."""
    return put("search_space", path, value=entry)


def chain(*mutators: Mutator) -> Mutator:
    def mutate(data: Study) -> None:
        for m in mutators:
            m(data)

    return mutate


def grid_space(data: Study) -> None:
    """Give every float entry of the minimal study a `grid`, so the grid sampler can run it."""
    ss = data["search_space"]
    ss["training.learning_rate"]["grid"] = [1e-5, 1e-4, 1e-3]
    ss["model.dropout"]["grid"] = [0.0, 0.1]
    ss["training.weight_decay"]["grid"] = [0.0, 0.1]


LR = "training.learning_rate"


def one_entry(data: Study) -> None:
    """Keep only the learning-rate entry (with a grid): validation cost grows with the search space."""
    data["search_space"] = {LR: {"type": "float", "low": 1e-5, "high": 1e-2, "log": True, "grid": [1e-4, 1e-3]}}


# ------------------------------------------------------------------------------------------ bad files


@dataclass(frozen=True)
class Bad:
    id: str
    where: str  # the YAML location the problem is reported at; "" for whole-file problems
    fragment: str  # a key fragment of the message
    mutate: Mutator | None = None
    text: str | None = None  # the whole file, instead of the minimal study + mutate
    raw: Mapping[str, str] = field(default_factory=dict)


BAD: list[Bad] = [
    # unknown keys
    Bad("unknown-top-level-key", "bogus", "unknown key", put("bogus", value=1)),
    Bad("unknown-nested-key", "study.bogus", "unknown key", put("study", "bogus", value=1)),
    Bad("unknown-training-setting", "training.learning_rat", "unknown key", put("training", "learning_rat", value=1)),
    Bad(
        "unknown-key-in-space-entry",
        f"search_space[{LR}].lowest",
        "unknown key",
        put("search_space", LR, "lowest", value=1),
    ),
    Bad("unknown-sampler-arg", "sampler.n_startup", "unknown key", put("sampler", "n_startup", value=3)),
    Bad(
        "sampler-class-key", "sampler.class", "unknown key", put("sampler", "class", value="optuna.samplers.TPESampler")
    ),
    # search-space entries
    Bad(
        "low-gt-high",
        f"search_space[{LR}]",
        "`low <= high` must hold",
        space(LR, {"type": "float", "low": 1.0, "high": 0.1}),
    ),
    Bad(
        "int-low-gt-high",
        "search_space[training.per_device_train_batch_size]",
        "`low <= high` must hold",
        space("training.per_device_train_batch_size", {"type": "int", "low": 32, "high": 8}),
    ),
    Bad(
        "log-low-zero",
        f"search_space[{LR}]",
        "`low > 0` must hold when `log` is true",
        space(LR, {"type": "float", "low": 0.0, "high": 0.1, "log": True}),
    ),
    Bad(
        "log-low-negative",
        f"search_space[{LR}]",
        "`low > 0` must hold when `log` is true",
        space(LR, {"type": "float", "low": -1.0, "high": 0.1, "log": True}),
    ),
    Bad(
        "int-log-low-zero",
        "search_space[training.per_device_train_batch_size]",
        "`low >= 1` must hold",
        space("training.per_device_train_batch_size", {"type": "int", "low": 0, "high": 64, "log": True}),
    ),
    Bad(
        "step-with-log",
        f"search_space[{LR}]",
        "`step` and `log` cannot be used together",
        space(LR, {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}),
    ),
    Bad(
        "int-step-with-log",
        "search_space[training.per_device_train_batch_size]",
        "`step` and `log` cannot be used together",
        space("training.per_device_train_batch_size", {"type": "int", "low": 8, "high": 64, "log": True, "step": 8}),
    ),
    Bad(
        "step-not-positive",
        f"search_space[{LR}].step",
        "greater than 0",
        space(LR, {"type": "float", "low": 0.0, "high": 1.0, "step": 0.0}),
    ),
    Bad(
        "infinite-bound",
        f"search_space[{LR}]",
        "must be finite",
        space(LR, {"type": "float", "low": 0.0, "high": float("inf")}),
    ),
    Bad(
        "int-low-fractional",
        "search_space[training.per_device_train_batch_size].low",
        "valid integer",
        space("training.per_device_train_batch_size", {"type": "int", "low": 1.5, "high": 8}),
    ),
    Bad(
        "missing-type",
        f"search_space[{LR}]",
        "`type` must be one of float, int, categorical (it is missing)",
        space(LR, {"low": 1e-5, "high": 1e-2}),
    ),
    Bad(
        "unknown-type",
        f"search_space[{LR}]",
        "`type` must be one of float, int, categorical, but got 'loguniform'",
        space(LR, {"type": "loguniform", "low": 1e-5, "high": 1e-2}),
    ),
    Bad(
        "missing-high", f"search_space[{LR}].high", "required key is missing", space(LR, {"type": "float", "low": 1e-5})
    ),
    Bad(
        "empty-choices",
        "search_space[training.per_device_train_batch_size].choices",
        "at least 1",
        space("training.per_device_train_batch_size", {"type": "categorical", "choices": []}),
    ),
    Bad(
        "duplicate-choices",
        "search_space[training.per_device_train_batch_size]",
        "`choices` must be distinct",
        space("training.per_device_train_batch_size", {"type": "categorical", "choices": [8, 16, 8]}),
    ),
    Bad("empty-search-space", "search_space", "at least 1", put("search_space", value={})),
    Bad(
        "path-bad-root",
        "search_space[optimizer.lr]",
        "the path must start with one of model, data, training",
        space("optimizer.lr", {"type": "float", "low": 0.1, "high": 1.0}),
    ),
    Bad(
        "path-without-dot",
        "search_space[training]",
        "the path must start with one of model, data, training",
        space("training", {"type": "float", "low": 0.1, "high": 1.0}),
    ),
    Bad(
        "path-not-a-setting",
        "search_space[training.not_a_setting]",
        "'training.not_a_setting' is not a setting",
        space("training.not_a_setting", {"type": "float", "low": 0.1, "high": 1.0}),
    ),
    Bad(
        "path-below-a-leaf",
        "search_space[training.learning_rate.x]",
        "is not a setting",
        space("training.learning_rate.x", {"type": "float", "low": 0.1, "high": 1.0}),
    ),
    Bad(
        "path-into-unset-files",
        "search_space[data.files.train]",
        "is not a setting",
        space("data.files.train", {"type": "categorical", "choices": ["a.txt"]}),
    ),
    Bad(
        "from-config-on-pretrained",
        "search_space[model.from_config.n_layer]",
        "`model.from_config` is not set",
        chain(
            put("model", value={"name_or_path": "gpt2"}),
            drop("search_space", "model.dropout"),
            space("model.from_config.n_layer", {"type": "int", "low": 1, "high": 4}),
        ),
    ),
    Bad(
        "target-out-of-range",
        "search_space[model.dropout]",
        "value 1.5 is not valid there",
        space("model.dropout", {"type": "float", "low": 0.0, "high": 1.5}),
    ),
    Bad(
        "target-lr-zero",
        f"search_space[{LR}]",
        "value 0.0 is not valid there: Input should be greater than 0",
        space(LR, {"type": "float", "low": 0.0, "high": 0.1}),
    ),
    Bad(
        "target-bad-choice",
        "search_space[training.lr_scheduler_type]",
        "value 'cosine_annealing' is not valid there",
        space("training.lr_scheduler_type", {"type": "categorical", "choices": ["linear", "cosine_annealing"]}),
    ),
    Bad(
        "target-model-config-not-a-mapping",
        "search_space[model.config]",
        "is not valid there",
        space("model.config", {"type": "categorical", "choices": [1, 2]}),
    ),
    Bad(
        "duplicate-param-name",
        "search_space[model.config.dropout]",
        "parameter name 'dropout' is also used by [model.dropout]",
        space("model.config.dropout", {"type": "float", "low": 0.0, "high": 0.5}),
    ),
    Bad(
        "duplicate-param-name-via-name",
        "search_space[training.adam_beta1]",
        "parameter name 'lr' is also used by",
        chain(
            put("search_space", LR, "name", value="lr"),
            space("training.adam_beta1", {"type": "float", "low": 0.8, "high": 0.95, "name": "lr"}),
        ),
    ),
    # grid sampler
    Bad(
        "grid-sampler-float-without-grid",
        f"search_space[{LR}]",
        "the grid sampler needs `grid: [...]`",
        put("sampler", value={"name": "grid"}),
    ),
    Bad(
        "grid-sampler-int-log-without-grid",
        "search_space[training.per_device_train_batch_size]",
        "the grid sampler needs `grid: [...]`",
        chain(
            grid_space,
            put("sampler", value={"name": "grid"}),
            space("training.per_device_train_batch_size", {"type": "int", "low": 8, "high": 64, "log": True}),
        ),
    ),
    Bad(
        "grid-sampler-huge-int-range",
        "search_space[training.per_device_train_batch_size]",
        "the grid sampler needs `grid: [...]`",
        chain(
            grid_space,
            put("sampler", value={"name": "grid"}),
            space("training.per_device_train_batch_size", {"type": "int", "low": 1, "high": 100_000}),
        ),
    ),
    Bad(
        "grid-values-outside",
        f"search_space[{LR}]",
        "`grid` values must lie in [low, high]",
        put("search_space", LR, "grid", value=[1e-5, 0.5]),
    ),
    Bad(
        "grid-values-duplicate",
        f"search_space[{LR}]",
        "`grid` values must be unique",
        put("search_space", LR, "grid", value=[1e-4, 1e-4]),
    ),
    Bad(
        "grid-values-empty",
        f"search_space[{LR}]",
        "`grid` must not be empty",
        put("search_space", LR, "grid", value=[]),
    ),
    # sections
    Bad("wrong-type-n-trials", "study.n_trials", "valid integer", put("study", "n_trials", value="many")),
    Bad("n-trials-zero", "study.n_trials", "greater than or equal to 1", put("study", "n_trials", value=0)),
    Bad("bad-study-name", "study.name", "should match pattern", put("study", "name", value="my study/1")),
    Bad("wrong-type-sampler-seed", "sampler.seed", "valid integer", put("sampler", "seed", value="zero")),
    Bad("bad-task", "task", "Input should be", put("task", value="translation")),
    Bad("missing-model", "model", "required key is missing", drop("model")),
    Bad("missing-fidelity", "fidelity", "required key is missing", drop("fidelity")),
    Bad(
        "model-neither-source",
        "model",
        "give exactly one of `name_or_path` (pretrained) or `from_config`",
        put("model", value={"revision": "main"}),
    ),
    Bad(
        "model-both-sources", "model", "give exactly one of `name_or_path`", put("model", "name_or_path", value="gpt2")
    ),
    Bad(
        "from-config-without-model-type",
        "model",
        "`from_config` needs a `model_type`",
        put("model", "from_config", value={"n_layer": 2}),
    ),
    Bad(
        "data-builtin-and-files",
        "data",
        "give exactly one of `builtin`, `dataset` or `files`",
        put("data", "files", value={"train": "a.txt"}),
    ),
    Bad("data-no-source", "data", "give exactly one of `builtin`, `dataset` or `files`", drop("data", "builtin")),
    Bad("data-unknown-builtin", "data.builtin", "Input should be", put("data", "builtin", value="wikitext")),
    Bad(
        "unknown-sampler",
        "sampler",
        "`name` must be one of random, grid, tpe, gp, cmaes, qmc, nsga2, nsga3, but got 'bogus'",
        put("sampler", value={"name": "bogus"}),
    ),
    Bad(
        "sampler-missing-name",
        "sampler",
        "`name` must be one of random, grid, tpe, gp, cmaes, qmc, nsga2, nsga3 (it is missing)",
        put("sampler", value={"seed": 1}),
    ),
    Bad(
        "unknown-pruner",
        "pruner",
        "`name` must be one of none, median, percentile",
        put("pruner", value={"name": "bogus"}),
    ),
    Bad(
        "pruner-bad-arg",
        "pruner.n_startup_trials",
        "greater than or equal to 0",
        put("pruner", value={"name": "median", "n_startup_trials": -1}),
    ),
    Bad(
        "wrapped-pruner-bad-arg",
        "pruner.wrapped.n_warmup_steps",
        "greater than or equal to 0",
        put("pruner", value={"name": "patient", "patience": 2, "wrapped": {"name": "median", "n_warmup_steps": -5}}),
    ),
    Bad(
        "threshold-without-bounds",
        "pruner",
        "give `lower`, `upper` or both",
        put("pruner", value={"name": "threshold"}),
    ),
    Bad("bad-metric", "objective.metric", "Input should be", put("objective", "metric", value="bleu4")),
    Bad(
        "metric-not-for-task",
        "objective.metric",
        "'accuracy' is not reported by task 'causal_lm'",
        put("objective", "metric", value="accuracy"),
    ),
    Bad(
        "contradictory-direction",
        "objective.direction",
        "must be 'minimize' for metric 'perplexity', but got 'maximize'",
        put("objective", "direction", value="maximize"),
    ),
    Bad(
        "eval-every-gt-max-steps",
        "fidelity",
        "`eval_every <= max_steps` must hold",
        put("fidelity", "eval_every", value=500),
    ),
    Bad(
        "warmup-ratio-too-big",
        "training.warmup_ratio",
        "less than or equal to 1",
        put("training", "warmup_ratio", value=2.0),
    ),
    Bad(
        "bf16-and-fp16",
        "training",
        "`bf16` and `fp16` cannot both be true",
        chain(put("training", "bf16", value=True), put("training", "fp16", value=True)),
    ),
    Bad("workers-zero", "resources", "`workers >= 1` must hold", put("resources", value={"workers": 0})),
    # the file itself
    Bad(
        "duplicate-yaml-key", "", "duplicate key 'n_trials'", text="study:\n  name: dup\n  n_trials: 3\n  n_trials: 4\n"
    ),
    Bad(
        "invalid-yaml-syntax", "", "invalid YAML: line 3, column 11", text="study:\n  name: [unclosed\n  n_trials: 3\n"
    ),
    Bad("yaml-list", "", "a study file must be a YAML mapping of sections", text="- study\n- task\n"),
    Bad("empty-file", "", "a study file must be a YAML mapping of sections", text=""),
    Bad("yaml-scalar", "", "a study file must be a YAML mapping of sections", text="just a string\n"),
]


def _problem_lines(err: StudyFileError, path: Path, where: str) -> list[str]:
    prefix = f"{path}: {where}: " if where else f"{path}: "
    return [line for line in str(err).splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_study_file(case: Bad, study: Study, tmp_path: Path) -> None:
    if case.text is not None:
        path = tmp_path / "study.yaml"
        path.write_text(case.text, encoding="utf-8")
    else:
        assert case.mutate is not None
        case.mutate(study)
        path = write_study(tmp_path, study, case.raw)
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    err = info.value
    text = str(err)
    assert text.startswith(str(path))
    assert all(line.startswith(f"{path}: ") for line in text.splitlines())
    assert err.path == str(path)
    lines = _problem_lines(err, path, case.where)
    assert any(case.fragment in line for line in lines), f"no line at {case.where!r} with {case.fragment!r} in:\n{text}"
    assert any(loc == case.where and case.fragment in msg for loc, msg in err.problems)


def test_every_problem_is_reported_on_its_own_line(tmp_path: Path) -> None:
    data = minimal_study()
    data["sampler"] = {"name": "grid"}
    path = write_study(tmp_path, data)
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    assert [loc for loc, _ in info.value.problems] == [
        f"search_space[{LR}]",
        "search_space[model.dropout]",
        "search_space[training.weight_decay]",
    ]
    assert len(str(info.value).splitlines()) == 3


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "missing.yaml"
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    assert str(info.value) == f"{path}: no such file"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError) as info:
        load_study_file(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: ")
    assert "is a directory" in str(info.value)


def test_path_is_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = minimal_study()
    data["bogus"] = 1
    write_study(tmp_path, data, name="rel.yaml")
    with pytest.raises(StudyFileError) as info:
        load_study_file("rel.yaml")
    assert str(info.value) == "rel.yaml: bogus: unknown key"


# ------------------------------------------------------------------------------------------ good files


@dataclass(frozen=True)
class Good:
    id: str
    mutate: Mutator | None = None
    raw: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[StudyConfig], None] | None = None


def _lr_is(value: float) -> Callable[[StudyConfig], None]:
    def check(cfg: StudyConfig) -> None:
        assert type(cfg.training.learning_rate) is float
        assert cfg.training.learning_rate == value

    return check


def _lr_low_is(value: float) -> Callable[[StudyConfig], None]:
    def check(cfg: StudyConfig) -> None:
        spec = cfg.search_space[LR]
        assert spec.type == "float"
        assert type(spec.low) is float and spec.low == value

    return check


def _choices_are(path: str, expected: list[Any]) -> Callable[[StudyConfig], None]:
    def check(cfg: StudyConfig) -> None:
        spec = cfg.search_space[path]
        assert spec.type == "categorical"
        assert spec.choices == expected
        assert [type(c) for c in spec.choices] == [type(e) for e in expected]

    return check


def _check_patient(cfg: StudyConfig) -> None:
    assert cfg.pruner.name == "patient"
    assert cfg.pruner.wrapped is not None and cfg.pruner.wrapped.name == "median"
    assert cfg.pruner.wrapped.n_warmup_steps == 10


def _check_grid(cfg: StudyConfig) -> None:
    assert cfg.grid() == {
        "learning_rate": [1e-5, 1e-4, 1e-3],
        "per_device_train_batch_size": [8, 16, 32],
        "dropout": [0.0, 0.1],
        "weight_decay": [0.0, 0.1],
    }


def _direction_is(cfg: StudyConfig, direction: str) -> None:
    assert cfg.direction == direction


def _check_defaults(cfg: StudyConfig) -> None:
    assert cfg.direction == "minimize"
    assert cfg.objective.direction == "minimize"
    assert cfg.storage_url == "sqlite:///runs/quickstart.db"
    assert cfg.sampler.name == "tpe" and cfg.sampler.n_startup_trials == 6
    assert cfg.resources.workers == "auto"


GOOD: list[Good] = [
    Good("quickstart-as-is", check=_check_defaults),
    Good(
        "exp-without-dot-in-float-field",
        put("training", "learning_rate", value="SENTINEL_LR"),
        raw={"SENTINEL_LR": "1e-5"},
        check=_lr_is(1e-5),
    ),
    Good(
        "exp-with-dot-in-float-field",
        put("training", "learning_rate", value="SENTINEL_LR"),
        raw={"SENTINEL_LR": "1.0e-5"},
        check=_lr_is(1e-5),
    ),
    Good(
        "exp-uppercase-plus-sign",
        put("training", "learning_rate", value="SENTINEL_LR"),
        raw={"SENTINEL_LR": "3E+0"},
        check=_lr_is(3.0),
    ),
    Good(
        "exp-without-dot-in-space-bound",
        put("search_space", LR, "low", value="SENTINEL_LOW"),
        raw={"SENTINEL_LOW": "1e-5"},
        check=_lr_low_is(1e-5),
    ),
    Good(
        "exp-in-categorical-choices",
        space(LR, {"type": "categorical", "choices": ["SENTINEL_A", "SENTINEL_B", "SENTINEL_C"]}),
        raw={"SENTINEL_A": "1e-5", "SENTINEL_B": "1.0e-4", "SENTINEL_C": "'1e-5'"},
        check=_choices_are(LR, [1e-5, 1e-4, "1e-5"]),
    ),
    Good(
        "categorical-keeps-types",
        space("training.bf16", {"type": "categorical", "choices": [True, False, None]}),
        check=_choices_are("training.bf16", [True, False, None]),
    ),
    Good("direction-explicit-natural", put("objective", "direction", value="minimize")),
    Good(
        "patient-wrapping-median",
        put("pruner", value={"name": "patient", "patience": 3, "wrapped": {"name": "median", "n_warmup_steps": 10}}),
        check=_check_patient,
    ),
    Good("grid-sampler-with-grid-values", chain(grid_space, put("sampler", value={"name": "grid"})), check=_check_grid),
    Good(
        "grid-sampler-small-int-range",
        chain(
            grid_space,
            put("sampler", value={"name": "grid"}),
            space("training.per_device_train_batch_size", {"type": "int", "low": 8, "high": 32, "step": 8}),
        ),
    ),
    Good("model-config-path", space("model.config.attn_pdrop", {"type": "float", "low": 0.0, "high": 0.2})),
    Good("from-config-path", space("model.from_config.n_layer", {"type": "int", "low": 1, "high": 4})),
    Good("data-path", space("data.max_length", {"type": "categorical", "choices": [32, 64]})),
    Good(
        "name-override-resolves-clash",
        space("model.config.dropout", {"type": "float", "low": 0.0, "high": 0.5, "name": "config_dropout"}),
    ),
    Good(
        "classification-accuracy",
        chain(
            put("task", value="sequence_classification"),
            put("objective", value={"metric": "accuracy"}),
            put("model", value={"name_or_path": "prajjwal1/bert-tiny"}),
        ),
        check=lambda cfg: _direction_is(cfg, "maximize"),
    ),
    Good(
        "pretrained-model-with-config-path",
        chain(
            put("model", value={"name_or_path": "gpt2"}),
            space("model.config.attn_pdrop", {"type": "float", "low": 0.0, "high": 0.2}),
        ),
    ),
]


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_good_study_file(case: Good, study: Study, tmp_path: Path) -> None:
    if case.mutate is not None:
        case.mutate(study)
    cfg = load_study_file(write_study(tmp_path, study, case.raw))
    assert isinstance(cfg, StudyConfig)
    if case.check is not None:
        case.check(cfg)


SAMPLER_CONFIGS: dict[str, dict[str, Any]] = {
    "random": {"name": "random", "seed": 1},
    "grid": {"name": "grid", "seed": 1},
    "tpe": {"name": "tpe", "n_startup_trials": 3, "multivariate": True},
    "gp": {"name": "gp", "deterministic_objective": True},
    "cmaes": {"name": "cmaes", "popsize": 4},
    "qmc": {"name": "qmc", "qmc_type": "halton"},
    "nsga2": {"name": "nsga2", "population_size": 8},
    "nsga3": {"name": "nsga3", "dividing_parameter": 2},
}


def test_sampler_table_covers_the_registry() -> None:
    assert set(SAMPLER_CONFIGS) == set(SAMPLER_NAMES)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_name_validates(name: str, tmp_path: Path) -> None:
    cfg = load(tmp_path, chain(one_entry, put("sampler", value=SAMPLER_CONFIGS[name])))
    assert cfg.sampler.name == name


PRUNER_CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"name": "none"},
    "median": {"name": "median", "n_startup_trials": 2},
    "percentile": {"name": "percentile", "percentile": 25.0},
    "successive_halving": {"name": "successive_halving", "min_resource": 50},
    "hyperband": {"name": "hyperband", "max_resource": 300},
    "threshold": {"name": "threshold", "upper": 1000.0},
    "wilcoxon": {"name": "wilcoxon", "p_threshold": 0.05},
    "patient": {"name": "patient", "patience": 2},
}


def test_pruner_table_covers_the_registry() -> None:
    assert set(PRUNER_CONFIGS) == set(PRUNER_NAMES)


@pytest.mark.parametrize("name", PRUNER_NAMES)
def test_every_pruner_name_validates(name: str, tmp_path: Path) -> None:
    cfg = load(tmp_path, chain(one_entry, put("pruner", value=PRUNER_CONFIGS[name])))
    assert cfg.pruner.name == name


@pytest.mark.parametrize("wrapped", ["median", "percentile", "successive_halving", "hyperband", "threshold"])
def test_patient_wraps_each_allowed_pruner(wrapped: str, tmp_path: Path) -> None:
    pruner = {"name": "patient", "patience": 1, "wrapped": PRUNER_CONFIGS[wrapped]}
    cfg = load(tmp_path, chain(one_entry, put("pruner", value=pruner)))
    assert isinstance(cfg.pruner, PatientPrunerConfig)
    assert cfg.pruner.wrapped is not None and cfg.pruner.wrapped.name == wrapped


def test_quickstart_study_file_validates() -> None:
    cfg = load_study_file(REPO / "studies" / "quickstart.yaml")
    assert cfg.study.name == "quickstart"


OTHER_STUDY_FILES = sorted(p for p in (REPO / "studies").glob("*.yaml") if p.name != "quickstart.yaml")


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in OTHER_STUDY_FILES]
    or [pytest.param(None, id="none", marks=pytest.mark.skip(reason="no study files besides quickstart.yaml"))],
)
def test_repository_study_files_validate(path: Path) -> None:
    cfg = load_study_file(path)
    assert cfg.study.name
    assert len(cfg.fingerprint()) == 16


# ------------------------------------------------------------------------------------------ fingerprints


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    """The minimal study, loaded once (validation round-trips YAML and is not free)."""
    return load(tmp_path_factory.mktemp("base"))


def two_entries(data: Study) -> None:
    """Keep the learning-rate and dropout entries: fingerprints do not need more, and validation is cheaper."""
    data["search_space"] = {k: data["search_space"][k] for k in (LR, "model.dropout")}


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    return load(tmp_path_factory.mktemp("small"), two_entries)


def test_fingerprint_is_stable_for_the_same_file(tmp_path: Path) -> None:
    path = write_study(tmp_path, minimal_study())
    a, b = load_study_file(path), load_study_file(path)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert a.fingerprints() == b.fingerprints()


def test_fingerprint_ignores_key_order_and_written_defaults(tmp_path: Path, base_cfg: StudyConfig) -> None:
    data = minimal_study()
    reordered = dict(reversed(list(data.items())))
    explicit = copy.deepcopy(data)
    explicit["objective"]["direction"] = "minimize"  # the metric's natural direction, filled in when missing
    explicit["training"]["weight_decay"] = 0.0  # the default
    base = load_study_file(write_study(tmp_path, data, name="a.yaml")).fingerprint()
    assert base == base_cfg.fingerprint()
    assert load_study_file(write_study(tmp_path, reordered, name="b.yaml")).fingerprint() == base
    assert load_study_file(write_study(tmp_path, explicit, name="c.yaml")).fingerprint() == base


FINGERPRINT_CHANGES: list[tuple[str, Mutator, str]] = [
    ("space-bound", put("search_space", LR, "high", value=0.1), "search_space"),
    ("space-other-entry", put("search_space", "model.dropout", "high", value=0.5), "search_space"),
    ("space-log", put("search_space", LR, "log", value=False), "search_space"),
    ("space-name", put("search_space", LR, "name", value="lr"), "search_space"),
    ("space-new-entry", space("training.adam_beta1", {"type": "float", "low": 0.8, "high": 0.95}), "search_space"),
    ("space-entry-removed", drop("search_space", "model.dropout"), "search_space"),
    ("space-type", space("model.dropout", {"type": "categorical", "choices": [0.0, 0.1]}), "search_space"),
    ("objective-metric", put("objective", "metric", value="eval_loss"), "objective"),
    ("fidelity", put("fidelity", "max_steps", value=400), "fidelity"),
    ("training", put("training", "seed", value=7), "training"),
    ("model", put("model", "from_config", "n_layer", value=3), "model"),
    ("data", put("data", "max_length", value=32), "data"),
]


@pytest.mark.parametrize(
    ("change", "part"), [(c[1], c[2]) for c in FINGERPRINT_CHANGES], ids=[c[0] for c in FINGERPRINT_CHANGES]
)
def test_fingerprint_changes_with_the_experiment(
    change: Mutator, part: str, small_cfg: StudyConfig, tmp_path: Path
) -> None:
    base = small_cfg
    changed = load(tmp_path, chain(two_entries, change))
    assert changed.fingerprint() != base.fingerprint()
    diff = {k for k, v in changed.fingerprints().items() if base.fingerprints()[k] != v}
    assert diff == {part}


FINGERPRINT_SAME: list[tuple[str, Mutator]] = [
    ("n-trials", put("study", "n_trials", value=100)),
    ("timeout", put("study", "timeout", value=60.0)),
    ("description", put("study", "description", value="more trials")),
    ("sampler-seed", put("sampler", "seed", value=123)),
    ("sampler-name", put("sampler", value={"name": "random", "seed": 5})),
    ("resources", put("resources", value={"workers": 2})),
]


@pytest.mark.parametrize("change", [c[1] for c in FINGERPRINT_SAME], ids=[c[0] for c in FINGERPRINT_SAME])
def test_fingerprint_ignores_study_bookkeeping_and_sampler(
    change: Mutator, small_cfg: StudyConfig, tmp_path: Path
) -> None:
    assert load(tmp_path, chain(two_entries, change)).fingerprint() == small_cfg.fingerprint()


def _from_builder(module: str, name: str, *args: Any) -> Callable[[Path], StudyConfig]:
    """A loader of a study built by another test file (imported when run: some import torch)."""

    def loaded(tmp_path: Path) -> StudyConfig:
        built = getattr(importlib.import_module(module), name)(*[tmp_path if a is Path else a for a in args])
        return load_study_file(built[0]) if isinstance(built, tuple) else validate_study(built)

    return loaded


# The fingerprints of every study file in studies/ and of the tests' studies, as computed by the code before
# the configuration models were frozen (issue 16, commit 548cfd1). A study resumed from a file must keep its
# fingerprint across refactors: a changed value means every existing study would be refused as "changed".
# Change a value here only with a change that is meant to invalidate existing studies.
PINNED_FINGERPRINTS: list[tuple[str, Callable[[Path], StudyConfig], str]] = [
    *[
        (f"studies/{name}", lambda _, name=name: load_study_file(REPO / "studies" / name), value)
        for name, value in [
            ("bbc-news-minilm.yaml", "773971f528febbca"),
            ("distilbert-sst2.yaml", "67f0b3af1ae7e9d4"),
            ("gpt2-wikitext103.yaml", "b21140b5539c343c"),
            ("quickstart.yaml", "f666f5939f255a44"),
        ]
    ],
    ("test_config.minimal_study", lambda _: validate_study(minimal_study()), "f666f5939f255a44"),
    ("test_orchestrator.study_dict", _from_builder("test_orchestrator", "study_dict"), "370d4c36601c73ee"),
    ("test_cli.tiny", _from_builder("test_cli", "tiny", Path), "41a9bb04f9d4ad5d"),
    ("test_export.tiny", _from_builder("test_export", "tiny", Path), "54f00c6608201ce6"),
    ("test_references.base_study", _from_builder("test_references", "base_study"), "0e1e6164e38b5a48"),
    ("test_trainers.tiny_study", _from_builder("test_trainers", "tiny_study"), "82f37961de9ba1ce"),
    ("test_oom.study", _from_builder("test_oom", "study", "retry", 3), "e65415269791a35f"),
    ("dash_fixtures.study_yaml", _from_builder("dash_fixtures", "study_yaml", Path), "be12b6ea725a85f8"),
    ("test_faults.study_file", _from_builder("test_faults", "study_file", Path), "b636c4d12bcd39db"),
]


@pytest.mark.parametrize(
    ("load_cfg", "expected"), [c[1:] for c in PINNED_FINGERPRINTS], ids=[c[0] for c in PINNED_FINGERPRINTS]
)
def test_fingerprints_of_existing_studies_do_not_change(
    load_cfg: Callable[[Path], StudyConfig], expected: str, tmp_path: Path
) -> None:
    assert load_cfg(tmp_path).fingerprint() == expected


# ------------------------------------------------------------------------------------------ trial runs


def test_trial_run_writes_params_at_their_paths(base_cfg: StudyConfig) -> None:
    cfg = base_cfg
    params = {"learning_rate": 3e-4, "per_device_train_batch_size": 16, "dropout": 0.2, "weight_decay": 0.05}
    run = cfg.trial_run(params)
    assert run.training.learning_rate == 3e-4
    assert run.training.per_device_train_batch_size == 16
    assert run.training.weight_decay == 0.05
    assert run.model.dropout == 0.2
    # the fidelity section caps the trial's length and sets its evaluation cadence
    assert run.training.max_steps == 300
    assert run.training.eval_steps == 50
    assert run.eval_batches == 4
    # everything else comes from the file
    assert run.task == "causal_lm"
    assert run.training.lr_scheduler_type == "cosine"
    assert run.training.per_device_eval_batch_size == 32
    assert run.model.from_config == {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 64}
    assert run.data.builtin == "pydoc_topics"


def test_trial_run_does_not_leak_between_trials(tmp_path: Path) -> None:
    cfg = load(tmp_path, space("model.config.attn_pdrop", {"type": "float", "low": 0.0, "high": 0.2}))
    first = cfg.trial_run({"attn_pdrop": 0.1, "learning_rate": 1e-3})
    second = cfg.trial_run({})
    assert first.model.config == {"attn_pdrop": 0.1}
    assert first.training.learning_rate == 1e-3
    assert second.model.config == {}
    assert second.training.learning_rate == 5e-5  # TrainingConfig's default: the file does not set it
    assert cfg.model.config == {}
    assert cfg.base_run().model.config == {}


def test_trial_run_uses_the_name_override(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, space("model.config.dropout", {"type": "float", "low": 0.0, "high": 0.5, "name": "cfg_dropout"})
    )
    run = cfg.trial_run({"cfg_dropout": 0.25, "dropout": 0.1})
    assert run.model.config == {"dropout": 0.25}
    assert run.model.dropout == 0.1


def test_trial_run_rejects_an_invalid_value(base_cfg: StudyConfig) -> None:
    with pytest.raises(ValidationError):
        base_cfg.trial_run({"dropout": 1.5})


# ------------------------------------------------------------------- regressions (bugs found in review)


@pytest.mark.parametrize("key", ["grid", "median", "random"])
def test_unknown_key_named_like_a_tag_keeps_its_location(key: str, tmp_path: Path) -> None:
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, put("training", key, value=1))
    assert info.value.problems == [(f"training.{key}", "unknown key")]


def test_search_space_key_named_like_a_type_keeps_its_location(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, space("int", {"type": "int", "low": 5, "high": 1}))
    assert [loc for loc, _ in info.value.problems] == ["search_space[int]"]


def test_wrapped_pruner_error_lists_only_wrappable_names(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, put("pruner", value={"name": "patient", "patience": 2, "wrapped": {"name": "wilcoxon"}}))
    ((loc, msg),) = info.value.problems
    assert loc == "pruner.wrapped"
    assert "wilcoxon, " not in msg.split("but got")[0]
    assert "patient" not in msg.split("but got")[0]


def test_float_entry_on_int_setting_is_rejected(tmp_path: Path) -> None:
    entry = {"type": "float", "low": 1, "high": 4}
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, space("training.gradient_accumulation_steps", entry))
    assert info.value.problems[0][0] == "search_space[training.gradient_accumulation_steps]"


def test_target_check_message_has_no_pydantic_prefix(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, put("model", "from_config", "model_type", value="xlnet"))
    ((loc, msg),) = info.value.problems
    assert loc == "search_space[model.dropout]"
    assert "`dropout` is not mapped for model_type 'xlnet'" in msg
    assert "Value error, " not in msg


def test_non_scalar_mapping_key_is_a_study_file_error(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("[a, b]: 1\n", encoding="utf-8")
    with pytest.raises(StudyFileError, match="invalid YAML"):
        load_study_file(path)


def test_yaml_merge_keys_are_accepted(tmp_path: Path) -> None:
    text = write_study(tmp_path, minimal_study()).read_text(encoding="utf-8")
    assert text.count("\ntraining:\n") == 1
    path = tmp_path / "merge.yaml"
    path.write_text(text.replace("\ntraining:\n", "\ntraining:\n  <<: {seed: 7}\n"), encoding="utf-8")
    cfg = load_study_file(path)
    assert cfg.training.seed == 7


def test_dot_underscore_scalar_does_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(write_study(tmp_path, minimal_study()).read_text() + "bogus: ._\n", encoding="utf-8")
    with pytest.raises(StudyFileError, match="bogus: unknown key"):
        load_study_file(path)


def test_signed_leading_dot_float_is_a_float(tmp_path: Path) -> None:
    # model.from_config takes any YAML value, so it shows what the loader produced
    cfg = load(tmp_path, put("model", "from_config", "x", value="SENTINEL_X"), raw={"SENTINEL_X": "-.5"})
    assert cfg.model.from_config is not None
    assert cfg.model.from_config["x"] == -0.5


def test_non_utf8_file_is_a_study_file_error(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_bytes(b"study:\n  name: caf\xe9\n")
    with pytest.raises(StudyFileError):
        load_study_file(path)


# ------------------------------------------------------------------------------------------ frozen models

# A validated configuration is never edited: defaults are filled in while validating, and a variant is a
# copy. (Before issue 16, validation assigned the default pruner and the objective's direction afterwards,
# and trial runs were dicts edited by path.)
FROZEN: list[tuple[str, Callable[[StudyConfig], Any], str, Any]] = [
    ("study-config", lambda c: c, "pruner", None),
    ("study-section", lambda c: c.study, "n_trials", 99),
    ("objective-direction", lambda c: c.objective, "direction", "maximize"),
    ("fidelity", lambda c: c.fidelity, "max_steps", 10),
    ("resources", lambda c: c.resources, "workers", 2),
    ("full-run", lambda c: c.full_run, "max_steps", 10),
    ("sampler", lambda c: c.sampler, "seed", 1),
    ("pruner", lambda c: c.pruner, "n_warmup_steps", 0),
    ("search-space-entry", lambda c: c.search_space["training.learning_rate"], "low", 0.1),
    ("model", lambda c: c.model, "dropout", 0.5),
    ("tokenizer", lambda c: c.model.tokenizer, "train_vocab_size", 100),
    ("data", lambda c: c.data, "max_length", 16),
    ("training", lambda c: c.training, "learning_rate", 0.1),
    ("run", lambda c: c.base_run(), "eval_batches", 1),
    ("run-training", lambda c: c.trial_run({"learning_rate": 1e-3}).training, "learning_rate", 0.1),
]


@pytest.mark.parametrize(("part", "attr", "value"), [c[1:] for c in FROZEN], ids=[c[0] for c in FROZEN])
def test_config_models_are_frozen(
    part: Callable[[StudyConfig], Any], attr: str, value: Any, base_cfg: StudyConfig
) -> None:
    obj = part(base_cfg)
    before = getattr(obj, attr)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(obj, attr, value)
    assert getattr(obj, attr) == before


CONFIG_MODULES = ["hpo.config", "hpo.space", "hpo.samplers", "hpo.pruners", "hpo.export", "trainers.config"]


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_every_config_model_is_frozen(module: str) -> None:
    # A model added later inherits its module's frozen base; one that does not is caught here.
    mod = importlib.import_module(module)
    models = [
        v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == module
    ]
    assert models
    assert [m.__name__ for m in models if not m.model_config.get("frozen")] == []


def test_a_variant_is_a_copy(base_cfg: StudyConfig) -> None:
    more = base_cfg.model_copy(update={"study": base_cfg.study.model_copy(update={"n_trials": 99})})
    assert (more.study.n_trials, base_cfg.study.n_trials) == (99, 16)
    assert more.fingerprint() == base_cfg.fingerprint()


def test_base_run_is_a_run_config_sharing_nothing_mutable_with_the_study(base_cfg: StudyConfig) -> None:
    run = base_cfg.base_run()
    assert isinstance(run, RunConfig)
    assert (run.training.max_steps, run.training.eval_steps, run.eval_batches) == (300, 50, 4)
    assert run.model.from_config == base_cfg.model.from_config
    assert run.model.from_config is not base_cfg.model.from_config
    assert run.model.config is not base_cfg.model.config
    assert base_cfg.base_run() is not run


DEFAULTS_FILLED: list[tuple[str, Mutator, str, Any]] = [
    ("direction-from-metric", lambda data: None, "objective.direction", "minimize"),
    ("direction-null", put("objective", "direction", value=None), "objective.direction", "minimize"),
    (
        "pruner-from-fidelity",
        chain(drop("pruner"), put("fidelity", "max_steps", value=600)),
        "pruner.n_warmup_steps",
        100,
    ),
]


@pytest.mark.parametrize(
    ("mutate", "where", "expected"), [c[1:] for c in DEFAULTS_FILLED], ids=[c[0] for c in DEFAULTS_FILLED]
)
def test_defaults_are_filled_while_validating_and_the_input_is_left_as_it_is(
    mutate: Mutator, where: str, expected: Any
) -> None:
    data = minimal_study()
    mutate(data)
    snapshot = copy.deepcopy(data)
    node: Any = validate_study(data)
    for key in where.split("."):
        node = getattr(node, key)
    assert node == expected
    assert data == snapshot
