"""Search-space entries of a study file, and the pure steps from entries to Optuna distributions and from
sampled values to a run configuration.

An entry targets a dotted path into the run configuration (``training.learning_rate``,
``model.dropout``, ``model.config.attn_pdrop``); the Optuna parameter is named after the last component
unless the entry gives a ``name``. Sampled values go into a new, validated copy of the (frozen) base run
(``apply_params``): the base is never edited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from hpo.registry import union_tags

if TYPE_CHECKING:  # imported where distributions are built: validating a file never needs Optuna
    import optuna.distributions as od

CategoricalValue = Union[None, bool, int, float, str]

# Where a search-space path may point. Anything else would silently do nothing.
TARGET_ROOTS = ("model", "data", "training", "generation", "distillation")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None  # Optuna parameter name; default: the path's last component
    # Sampled only when every named search-space key took one of the given values (``hpo.conditional``);
    # otherwise the setting keeps its base value. Left out of dumps when unset, so the fingerprint of a
    # space without conditions stays what it was before `when` existed.
    when: dict[str, Union[CategoricalValue, list[CategoricalValue]]] | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("when", 0) is None:
            del out["when"]
        return out


class FloatSpec(_Spec):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0.0)
    grid: list[float] | None = None  # values the grid sampler runs

    @model_validator(mode="after")
    def _check(self) -> FloatSpec:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"`low` and `high` must be finite, but got (low={self.low}, high={self.high}).")
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got (low={self.low}, high={self.high}).")
        if self.log and self.low <= 0.0:
            raise ValueError(f"`low > 0` must hold when `log` is true, but got (low={self.low}).")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log` cannot be used together.")
        _check_grid(self.grid, self.low, self.high)
        return self


class IntSpec(_Spec):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)
    grid: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> IntSpec:
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got (low={self.low}, high={self.high}).")
        if self.log and self.low < 1:
            raise ValueError(f"`low >= 1` must hold when `log` is true, but got (low={self.low}).")
        if self.log and self.step != 1:
            raise ValueError("`step` and `log` cannot be used together.")
        _check_grid(self.grid, self.low, self.high)
        return self


class CategoricalSpec(_Spec):
    type: Literal["categorical"]
    choices: list[CategoricalValue] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalSpec:
        seen: list[CategoricalValue] = []
        for c in self.choices:
            # Optuna stores a choice by its index (list.index), so 1, 1.0 and true are one choice to it.
            if any(c == s for s in seen):
                raise ValueError(
                    f"`choices` must be distinct, but {c!r} equals an earlier choice "
                    "(1, 1.0 and true are the same choice to Optuna)."
                )
            seen.append(c)
        return self


ParamSpec = Annotated[Union[FloatSpec, IntSpec, CategoricalSpec], Field(discriminator="type")]
SPEC_TYPES = union_tags(ParamSpec, "type")  # ("float", "int", "categorical")


def _check_grid(grid: Sequence[float] | None, low: float, high: float) -> None:
    if grid is None:
        return
    if not grid:
        raise ValueError("`grid` must not be empty.")
    if len(set(grid)) != len(grid):
        raise ValueError(f"`grid` values must be unique, but got {list(grid)}.")
    outside = [v for v in grid if not low <= v <= high]
    if outside:
        raise ValueError(f"`grid` values must lie in [low, high] = [{low}, {high}], but got {outside}.")


def param_name(path: str, spec: FloatSpec | IntSpec | CategoricalSpec) -> str:
    """The Optuna parameter name of the entry at ``path``."""
    return spec.name if spec.name is not None else path.rsplit(".", 1)[-1]


def to_distribution(spec: FloatSpec | IntSpec | CategoricalSpec) -> od.BaseDistribution:
    """Turn one search-space entry into the Optuna distribution it samples from."""
    import optuna.distributions as od

    if isinstance(spec, FloatSpec):
        return od.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntSpec):
        return od.IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return od.CategoricalDistribution(spec.choices)


def to_distributions(
    space: Mapping[str, FloatSpec | IntSpec | CategoricalSpec],
) -> dict[str, od.BaseDistribution]:
    """Map each parameter name to its distribution, in the file's order."""
    return {param_name(path, spec): to_distribution(spec) for path, spec in space.items()}


# Enumerating an int range for the grid sampler is fine up to this many points; beyond, the user must list.
_MAX_IMPLICIT_GRID = 1000


def grid_values(spec: FloatSpec | IntSpec | CategoricalSpec) -> list[Any] | None:
    """The values the grid sampler runs for an entry, or None when the entry has no finite grid."""
    if isinstance(spec, CategoricalSpec):
        return list(spec.choices)
    if spec.grid is not None:
        return list(spec.grid)
    if isinstance(spec, IntSpec) and not spec.log:
        n = (spec.high - spec.low) // spec.step + 1
        if n <= _MAX_IMPLICIT_GRID:
            return list(range(spec.low, spec.high + 1, spec.step))
    return None


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at a dotted ``path`` of a nested dict, creating mappings under ``*.config``."""
    keys = path.split(".")
    node: Any = config
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, dict):
            raise KeyError(".".join(keys[: i + 1]))
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
    if not isinstance(node, dict):
        raise KeyError(path)
    node[keys[-1]] = value


M = TypeVar("M", bound=BaseModel)


def with_values(base: M, values: Mapping[str, Any]) -> M:
    """A new, validated ``base`` with each value written at its dotted path; ``base`` is left as it is.

    The base is dumped to plain data once (fresh containers, nothing shared with it), edited there and
    validated once, so a value that is wrong at its path raises ``ValidationError`` and a path below a
    leaf raises ``KeyError``.
    """
    if not values:
        return base
    data = base.model_dump()
    for path, value in values.items():
        set_path(data, path, value)
    return type(base).model_validate(data)


def apply_params(
    base: M,
    space: Mapping[str, FloatSpec | IntSpec | CategoricalSpec],
    params: Mapping[str, Any],
) -> M:
    """``base`` with each sampled parameter written at its entry's path (parameters not sampled: as in base)."""
    values = {path: params[param_name(path, spec)] for path, spec in space.items() if param_name(path, spec) in params}
    return with_values(base, values)
