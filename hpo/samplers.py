"""The closed registry of samplers a study file may name.

Each config class mirrors the Optuna constructor it builds (same argument names and defaults, minus the
callables, which YAML cannot carry). A study file never names code to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union

import optuna
from pydantic import BaseModel, ConfigDict, Field


class _Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = None

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        raise NotImplementedError


class RandomSamplerConfig(_Sampler):
    name: Literal["random"]

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.seed)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` once the grid is exhausted.

    That call only works inside ``Study.optimize``; with ask/tell it raises. The orchestrator stops at the
    grid's size itself.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


class GridSamplerConfig(_Sampler):
    name: Literal["grid"]

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        if grid is None:
            raise ValueError("the grid sampler needs the grid of every parameter.")
        return _AskTellGridSampler(dict(grid), seed=self.seed)


class TPESamplerConfig(_Sampler):
    name: Literal["tpe"]
    n_startup_trials: int = Field(default=10, ge=0)
    n_ei_candidates: int = Field(default=24, ge=1)
    multivariate: bool | None = None
    group: bool = False
    constant_liar: bool = True  # parallel workers: running trials count as bad, so workers spread out
    consider_endpoints: bool | None = None
    prior_weight: float | None = Field(default=None, gt=0.0)

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(**self.model_dump(exclude={"name"}))


class GPSamplerConfig(_Sampler):
    name: Literal["gp"]
    n_startup_trials: int = Field(default=10, ge=0)
    deterministic_objective: bool = False

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(**self.model_dump(exclude={"name"}))


class CmaEsSamplerConfig(_Sampler):
    name: Literal["cmaes"]
    x0: dict[str, Any] | None = None
    sigma0: float | None = Field(default=None, gt=0.0)
    n_startup_trials: int = Field(default=1, ge=0)
    restart_strategy: Literal["ipop", "bipop"] | None = None
    popsize: int | None = Field(default=None, ge=1)
    inc_popsize: int = -1
    consider_pruned_trials: bool = False
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        # CMA-ES only handles float/int; categoricals go to its independent (random) sampler.
        return optuna.samplers.CmaEsSampler(**self.model_dump(exclude={"name"}), warn_independent_sampling=False)


class QMCSamplerConfig(_Sampler):
    name: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = False

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        return optuna.samplers.QMCSampler(**self.model_dump(exclude={"name"}))


SamplerConfig = Annotated[
    Union[
        RandomSamplerConfig,
        GridSamplerConfig,
        TPESamplerConfig,
        GPSamplerConfig,
        CmaEsSamplerConfig,
        QMCSamplerConfig,
    ],
    Field(discriminator="name"),
]

SAMPLER_NAMES = ("random", "grid", "tpe", "gp", "cmaes", "qmc")
