"""The closed registry of samplers a study file may name.

Each config class mirrors the Optuna constructor it builds (same argument names and defaults, minus the
callables, which YAML cannot carry). A study file never names code to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from hpo.registry import union_tags

if TYPE_CHECKING:  # imported by build(): validating a study file (`hpo validate`) never needs Optuna
    import optuna


class _Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(default=None, ge=0, lt=2**32)  # numpy's seed range

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def refused(self) -> str | None:
        """What Optuna's constructor would refuse in these arguments (it checks some combinations only
        there), without importing Optuna: `hpo validate` stays fast. `hpo run` builds the sampler itself;
        tests/test_registries.py checks both agree."""
        return None

    def for_study(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        """The sampler a process puts on the study. Seeded: a fresh one per trial from (seed, trial number),
        so processes and resumes never replay each other's draws (``PerTrialSeedSampler``)."""
        from hpo.sampler_classes import PerTrialSeedSampler

        if self.seed is None:
            return self.build(grid)  # each process draws its own entropy: nothing to replay
        return PerTrialSeedSampler(lambda s: self.model_copy(update={"seed": s}).build(grid), self.seed)


class RandomSamplerConfig(_Sampler):
    name: Literal["random"]

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)


class GridSamplerConfig(_Sampler):
    name: Literal["grid"]

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        from hpo.sampler_classes import AskTellGridSampler

        if grid is None:
            raise ValueError("the grid sampler needs the grid of every parameter.")
        return AskTellGridSampler(dict(grid), seed=self.seed)

    def for_study(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        # The seed only shuffles the grid, and trial N takes point N of that order (the rest: an unvisited
        # point), so every process must share one order; the orchestrator refuses a point already taken.
        return self.build(grid)


class TPESamplerConfig(_Sampler):
    name: Literal["tpe"]
    n_startup_trials: int = Field(default=10, ge=0)
    n_ei_candidates: int = Field(default=24, ge=1)
    multivariate: bool | None = None
    group: bool = False
    constant_liar: bool = True  # parallel workers: running trials count as bad, so workers spread out
    consider_endpoints: bool | None = None
    prior_weight: float | None = Field(default=None, gt=0.0)

    def refused(self) -> str | None:
        if self.group and self.multivariate is False:
            return "``group`` option can only be enabled when ``multivariate`` is enabled."
        return None

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.TPESampler(**self.model_dump(exclude={"name"}))


class GPSamplerConfig(_Sampler):
    name: Literal["gp"]
    n_startup_trials: int = Field(default=10, ge=0)
    deterministic_objective: bool = False

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        import optuna

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

    def refused(self) -> str | None:
        if self.lr_adapt and (self.use_separable_cma or self.with_margin):
            return "It is prohibited to pass `use_separable_cma` or `with_margin` argument when using `lr_adapt`."
        if self.use_separable_cma and self.with_margin:
            return "Currently, we do not support `use_separable_cma=True` and `with_margin=True`."
        return None

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        # CMA-ES only handles float/int; categoricals go to its independent (random) sampler.
        import optuna

        return optuna.samplers.CmaEsSampler(**self.model_dump(exclude={"name"}), warn_independent_sampling=False)


class QMCSamplerConfig(_Sampler):
    name: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = False

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        from hpo.sampler_classes import TrialNumberQMCSampler

        return TrialNumberQMCSampler(**self.model_dump(exclude={"name"}))

    def for_study(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        # The sequence must be one for the whole study (the seed scrambles it), and its position is a study
        # attribute, so resumes and other processes go on along it. Only the trials drawn before the search
        # space is known (the first ones, at random) take their seed from the trial number.
        import optuna

        from hpo.sampler_classes import PerTrialSeedSampler, TrialNumberQMCSampler

        if self.seed is None:
            return self.build(grid)
        first = PerTrialSeedSampler(lambda s: optuna.samplers.RandomSampler(seed=s), self.seed)
        return TrialNumberQMCSampler(**self.model_dump(exclude={"name"}), independent_sampler=first)


class NSGAIISamplerConfig(_Sampler):
    """NSGA-II (multi-objective; also runs a single objective). Generations live in the storage."""

    name: Literal["nsga2"]
    population_size: int = Field(default=50, ge=2)
    mutation_prob: float | None = Field(default=None, ge=0.0, le=1.0)
    crossover_prob: float = Field(default=0.9, ge=0.0, le=1.0)
    swapping_prob: float = Field(default=0.5, ge=0.0, le=1.0)

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.NSGAIISampler(**self.model_dump(exclude={"name"}))


class NSGAIIISamplerConfig(NSGAIISamplerConfig):
    """NSGA-III: NSGA-II with reference points, for three or more objectives."""

    name: Literal["nsga3"]  # type: ignore[assignment]
    dividing_parameter: int = Field(default=3, ge=1)

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.NSGAIIISampler(**self.model_dump(exclude={"name"}))


SamplerConfig = Annotated[
    Union[
        RandomSamplerConfig,
        GridSamplerConfig,
        TPESamplerConfig,
        GPSamplerConfig,
        CmaEsSamplerConfig,
        QMCSamplerConfig,
        NSGAIISamplerConfig,
        NSGAIIISamplerConfig,
    ],
    Field(discriminator="name"),
]

SAMPLER_NAMES = union_tags(SamplerConfig, "name")  # ("random", "grid", ...): the names a study file may write
