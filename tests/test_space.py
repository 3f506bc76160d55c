"""Search-space entries: validation, the step to Optuna distributions, grids, and writing sampled values."""

from __future__ import annotations

import re
from typing import Any

import optuna.distributions as od
import pytest
from pydantic import TypeAdapter, ValidationError

from hpo.space import (
    CategoricalSpec,
    FloatSpec,
    IntSpec,
    ParamSpec,
    apply_params,
    grid_values,
    param_name,
    set_path,
    to_distribution,
    to_distributions,
    with_values,
)
from trainers.config import RunConfig

Spec = FloatSpec | IntSpec | CategoricalSpec

_ADAPTER: TypeAdapter[Any] = TypeAdapter(ParamSpec)


def spec(**entry: Any) -> Spec:
    """Validate one search-space entry the way a study file does (through the `type` discriminator)."""
    return _ADAPTER.validate_python(entry)


# ------------------------------------------------------------------------------------------ distributions

DISTRIBUTIONS: list[tuple[str, dict[str, Any], od.BaseDistribution]] = [
    ("float", {"type": "float", "low": 0.0, "high": 0.3}, od.FloatDistribution(0.0, 0.3)),
    (
        "float-log",
        {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        od.FloatDistribution(1e-5, 1e-2, log=True),
    ),
    ("float-step", {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}, od.FloatDistribution(0.0, 1.0, step=0.25)),
    ("float-int-bounds", {"type": "float", "low": 1, "high": 4}, od.FloatDistribution(1.0, 4.0)),
    ("float-single-point", {"type": "float", "low": 0.5, "high": 0.5}, od.FloatDistribution(0.5, 0.5)),
    (
        "float-grid-ignored",
        {"type": "float", "low": 0.0, "high": 1.0, "grid": [0.0, 0.5]},
        od.FloatDistribution(0.0, 1.0),
    ),
    ("int", {"type": "int", "low": 1, "high": 10}, od.IntDistribution(1, 10)),
    ("int-log", {"type": "int", "low": 8, "high": 1024, "log": True}, od.IntDistribution(8, 1024, log=True)),
    ("int-step", {"type": "int", "low": 0, "high": 100, "step": 10}, od.IntDistribution(0, 100, step=10)),
    ("int-negative", {"type": "int", "low": -5, "high": 5}, od.IntDistribution(-5, 5)),
    ("categorical-ints", {"type": "categorical", "choices": [8, 16, 32]}, od.CategoricalDistribution([8, 16, 32])),
    (
        "categorical-strings",
        {"type": "categorical", "choices": ["linear", "cosine"]},
        od.CategoricalDistribution(["linear", "cosine"]),
    ),
    (
        "categorical-mixed",
        {"type": "categorical", "choices": [None, True, 2, 0.5, "x"]},
        od.CategoricalDistribution([None, True, 2, 0.5, "x"]),
    ),
    ("categorical-single", {"type": "categorical", "choices": [3]}, od.CategoricalDistribution([3])),
]


@pytest.mark.parametrize(
    ("entry", "expected"), [(d[1], d[2]) for d in DISTRIBUTIONS], ids=[d[0] for d in DISTRIBUTIONS]
)
def test_to_distribution(entry: dict[str, Any], expected: od.BaseDistribution) -> None:
    dist = to_distribution(spec(**entry))
    assert type(dist) is type(expected)
    assert dist == expected


def test_to_distribution_keeps_choice_types() -> None:
    dist = to_distribution(spec(type="categorical", choices=[2, 2.5, "1", False, None]))
    assert isinstance(dist, od.CategoricalDistribution)
    assert [type(c) for c in dist.choices] == [int, float, str, bool, type(None)]


def test_float_bounds_from_ints_become_floats() -> None:
    s = spec(type="float", low=1, high=4)
    assert isinstance(s, FloatSpec)
    assert type(s.low) is float and type(s.high) is float


def test_to_distributions_names_in_file_order() -> None:
    space = {
        "training.learning_rate": spec(type="float", low=1e-5, high=1e-2, log=True),
        "training.per_device_train_batch_size": spec(type="categorical", choices=[8, 16]),
        "model.config.dropout": spec(type="float", low=0.0, high=0.5, name="cfg_dropout"),
        "model.dropout": spec(type="float", low=0.0, high=0.3),
    }
    dists = to_distributions(space)
    assert list(dists) == ["learning_rate", "per_device_train_batch_size", "cfg_dropout", "dropout"]
    assert dists["cfg_dropout"] == od.FloatDistribution(0.0, 0.5)
    assert dists["per_device_train_batch_size"] == od.CategoricalDistribution([8, 16])


# ------------------------------------------------------------------------------------------ grids

GRIDS: list[tuple[str, dict[str, Any], list[Any] | None]] = [
    ("categorical", {"type": "categorical", "choices": ["a", None, 3]}, ["a", None, 3]),
    ("float-explicit", {"type": "float", "low": 0.0, "high": 1.0, "grid": [0.5, 0.0, 1.0]}, [0.5, 0.0, 1.0]),
    (
        "float-log-explicit",
        {"type": "float", "low": 1e-5, "high": 1e-2, "log": True, "grid": [1e-5, 1e-3]},
        [1e-5, 1e-3],
    ),
    ("int-explicit", {"type": "int", "low": 1, "high": 1000, "grid": [1, 10, 100]}, [1, 10, 100]),
    ("int-small-range", {"type": "int", "low": 2, "high": 5}, [2, 3, 4, 5]),
    ("int-small-range-step", {"type": "int", "low": 0, "high": 10, "step": 4}, [0, 4, 8]),
    ("int-single-point", {"type": "int", "low": 7, "high": 7}, [7]),
    ("int-1000-points", {"type": "int", "low": 1, "high": 1000}, list(range(1, 1001))),
    ("int-1001-points", {"type": "int", "low": 0, "high": 1000}, None),
    ("int-large-range", {"type": "int", "low": 1, "high": 1_000_000}, None),
    ("int-log", {"type": "int", "low": 1, "high": 8, "log": True}, None),
    ("float-without-grid", {"type": "float", "low": 0.0, "high": 1.0}, None),
    ("float-step-without-grid", {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5}, None),
]


@pytest.mark.parametrize(("entry", "expected"), [(g[1], g[2]) for g in GRIDS], ids=[g[0] for g in GRIDS])
def test_grid_values(entry: dict[str, Any], expected: list[Any] | None) -> None:
    assert grid_values(spec(**entry)) == expected


def test_grid_values_returns_a_copy() -> None:
    s = spec(type="categorical", choices=[1, 2])
    values = grid_values(s)
    assert values is not None
    values.append(3)
    assert isinstance(s, CategoricalSpec)
    assert s.choices == [1, 2]


# ------------------------------------------------------------------------------------------ spec validation

BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("float-low-gt-high", {"type": "float", "low": 1.0, "high": 0.0}, "`low <= high` must hold"),
    ("float-log-low-zero", {"type": "float", "low": 0.0, "high": 1.0, "log": True}, "`low > 0` must hold"),
    ("float-step-and-log", {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "`step` and `log`"),
    ("float-step-zero", {"type": "float", "low": 0.0, "high": 1.0, "step": 0.0}, "greater than 0"),
    ("float-nan", {"type": "float", "low": float("nan"), "high": 1.0}, "must be finite"),
    ("float-inf", {"type": "float", "low": 0.0, "high": float("inf")}, "must be finite"),
    ("float-grid-outside", {"type": "float", "low": 0.0, "high": 1.0, "grid": [0.5, 2.0]}, "must lie in [low, high]"),
    ("float-grid-empty", {"type": "float", "low": 0.0, "high": 1.0, "grid": []}, "must not be empty"),
    ("float-grid-duplicate", {"type": "float", "low": 0.0, "high": 1.0, "grid": [0.5, 0.5]}, "must be unique"),
    ("int-low-gt-high", {"type": "int", "low": 3, "high": 1}, "`low <= high` must hold"),
    ("int-log-low-zero", {"type": "int", "low": 0, "high": 8, "log": True}, "`low >= 1` must hold"),
    ("int-step-and-log", {"type": "int", "low": 1, "high": 8, "log": True, "step": 2}, "`step` and `log`"),
    ("int-step-zero", {"type": "int", "low": 0, "high": 8, "step": 0}, "greater than or equal to 1"),
    ("int-fractional", {"type": "int", "low": 0.5, "high": 8}, "valid integer"),
    ("int-grid-outside", {"type": "int", "low": 1, "high": 8, "grid": [0, 4]}, "must lie in [low, high]"),
    ("categorical-empty", {"type": "categorical", "choices": []}, "at least 1"),
    ("categorical-duplicate-int", {"type": "categorical", "choices": [1, 2, 1]}, "`choices` must be distinct"),
    ("categorical-duplicate-str", {"type": "categorical", "choices": ["a", "a"]}, "`choices` must be distinct"),
    ("categorical-duplicate-bool", {"type": "categorical", "choices": [True, 1, True]}, "`choices` must be distinct"),
    ("categorical-duplicate-none", {"type": "categorical", "choices": [None, None]}, "`choices` must be distinct"),
    ("categorical-list-choice", {"type": "categorical", "choices": [[1, 2]]}, "Input should be"),
    ("unknown-key", {"type": "float", "low": 0.0, "high": 1.0, "distribution": "uniform"}, "Extra inputs"),
    ("unknown-type", {"type": "uniform", "low": 0.0, "high": 1.0}, "does not match any of the expected tags"),
]


@pytest.mark.parametrize(("entry", "fragment"), [(b[1], b[2]) for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_spec(entry: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        spec(**entry)


# Optuna stores a choice by list.index, so 1, 1.0 and True would be stored as the same choice.
SAME_TO_OPTUNA: list[tuple[str, list[Any]]] = [
    ("int-and-bool", [1, True]),
    ("zero-and-false", [0, False]),
    ("int-and-float", [1, 1.0]),
]


@pytest.mark.parametrize("choices", [g[1] for g in SAME_TO_OPTUNA], ids=[g[0] for g in SAME_TO_OPTUNA])
def test_categorical_values_optuna_cannot_tell_apart_are_rejected(choices: list[Any]) -> None:
    with pytest.raises(ValidationError, match="`choices` must be distinct"):
        spec(type="categorical", choices=choices)


GOOD_CHOICES: list[tuple[str, list[Any]]] = [
    ("int-and-str", [1, "1"]),
    ("none-and-str", [None, "None"]),
]


@pytest.mark.parametrize("choices", [g[1] for g in GOOD_CHOICES], ids=[g[0] for g in GOOD_CHOICES])
def test_categorical_values_of_different_types_are_distinct(choices: list[Any]) -> None:
    s = spec(type="categorical", choices=choices)
    assert isinstance(s, CategoricalSpec)
    assert s.choices == choices
    assert [type(c) for c in s.choices] == [type(c) for c in choices]


# ------------------------------------------------------------------------------------------ names and paths

NAMES: list[tuple[str, dict[str, Any], str]] = [
    ("training.learning_rate", {}, "learning_rate"),
    ("model.dropout", {}, "dropout"),
    ("model.config.attn_pdrop", {}, "attn_pdrop"),
    ("model.config.dropout", {"name": "cfg_dropout"}, "cfg_dropout"),
    ("dropout", {}, "dropout"),
]


@pytest.mark.parametrize(("path", "extra", "expected"), NAMES, ids=[f"{n[0]}-{n[2]}" for n in NAMES])
def test_param_name(path: str, extra: dict[str, Any], expected: str) -> None:
    assert param_name(path, spec(type="float", low=0.0, high=0.5, **extra)) == expected


def test_set_path_writes_nested_value() -> None:
    config: dict[str, Any] = {"training": {"learning_rate": 1e-3, "seed": 1}}
    set_path(config, "training.learning_rate", 3e-4)
    assert config == {"training": {"learning_rate": 3e-4, "seed": 1}}


def test_set_path_creates_missing_mappings() -> None:
    config: dict[str, Any] = {"model": {"config": {}}}
    set_path(config, "model.config.x", 1)
    set_path(config, "model.config.sub.y", 2)
    assert config == {"model": {"config": {"x": 1, "sub": {"y": 2}}}}


def test_set_path_replaces_none_with_a_mapping() -> None:
    config: dict[str, Any] = {"model": {"config": None}}
    set_path(config, "model.config.attn_pdrop", 0.1)
    assert config == {"model": {"config": {"attn_pdrop": 0.1}}}


def test_set_path_top_level_key() -> None:
    config: dict[str, Any] = {}
    set_path(config, "task", "causal_lm")
    assert config == {"task": "causal_lm"}


@pytest.mark.parametrize("path", ["training.learning_rate.x", "training.learning_rate.x.y"])
def test_set_path_below_a_leaf_raises_key_error(path: str) -> None:
    config: dict[str, Any] = {"training": {"learning_rate": 1e-3}}
    with pytest.raises(KeyError):
        set_path(config, path, 1)
    assert config == {"training": {"learning_rate": 1e-3}}


def run_config(**model: Any) -> RunConfig:
    """A small run configuration (a GPT-2 built from scratch) to write sampled values into."""
    return RunConfig.model_validate(
        {
            "task": "causal_lm",
            "model": {"from_config": {"model_type": "gpt2", "n_layer": 2}, "tokenizer": {"train_vocab_size": 300}}
            | model,
            "data": {"builtin": "pydoc_topics"},
            "training": {"learning_rate": 5e-5},
        }
    )


def test_apply_params_writes_each_param_at_its_path_without_mutating() -> None:
    base = run_config()
    snapshot = base.model_dump()
    space = {
        "training.learning_rate": spec(type="float", low=1e-5, high=1e-2, log=True),
        "model.dropout": spec(type="float", low=0.0, high=0.3),
        "model.config.attn_pdrop": spec(type="float", low=0.0, high=0.3, name="attn"),
        "model.from_config.n_layer": spec(type="int", low=1, high=4),
    }
    out = apply_params(base, space, {"learning_rate": 1e-3, "dropout": 0.1, "attn": 0.2, "n_layer": 3, "other": 9})
    assert isinstance(out, RunConfig)
    assert base.model_dump() == snapshot
    assert out.training.learning_rate == 1e-3
    assert out.model.dropout == 0.1
    assert out.model.config == {"attn_pdrop": 0.2}
    assert out.model.from_config == {"model_type": "gpt2", "n_layer": 3}
    # everything else as in base
    assert (out.task, out.data, out.eval_batches) == (base.task, base.data, base.eval_batches)
    assert out.training.model_copy(update={"learning_rate": 5e-5}) == base.training
    # nothing mutable is shared with the input
    assert out.model.config is not base.model.config
    assert out.model.from_config is not base.model.from_config


def test_apply_params_skips_params_not_sampled() -> None:
    base = run_config()
    space = {"training.learning_rate": spec(type="float", low=1e-5, high=1e-2)}
    assert apply_params(base, space, {}) == base


def test_apply_params_uses_the_name_override() -> None:
    space = {
        "model.dropout": spec(type="float", low=0.0, high=0.3),
        "model.config.dropout": spec(type="float", low=0.0, high=0.3, name="cfg_dropout"),
    }
    out = apply_params(run_config(), space, {"dropout": 0.1, "cfg_dropout": 0.2})
    assert (out.model.dropout, out.model.config) == (0.1, {"dropout": 0.2})


# A value is checked where it lands: the result is a validated run configuration, not edited plain data.
BAD_VALUES: list[tuple[str, str, Any, type[Exception]]] = [
    ("dropout-out-of-range", "model.dropout", 1.5, ValidationError),
    ("float-into-int-setting", "training.gradient_accumulation_steps", 2.5, ValidationError),
    ("zero-batch", "training.per_device_train_batch_size", 0, ValidationError),
    ("below-a-leaf", "training.learning_rate.x", 0.1, KeyError),
]


@pytest.mark.parametrize(("path", "value", "error"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_with_values_validates_the_new_run(path: str, value: Any, error: type[Exception]) -> None:
    base = run_config()
    with pytest.raises(error):
        with_values(base, {path: value})
    assert base == run_config()


def test_with_values_creates_mappings_under_model_config() -> None:
    out = with_values(run_config(), {"model.config.sub.y": 2})
    assert out.model.config == {"sub": {"y": 2}}
