"""The closed registry of samplers a study file may name.

Each config class mirrors the Optuna constructor it builds (same argument names and defaults, minus the
callables, which YAML cannot carry). A study file never names code to import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field

from hpo.registry import union_tags


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` in a study seeded with ``seed``: well mixed, distinct per trial."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A seeded sampler whose randomness for each trial comes from (study seed, trial number).

    Every process (a resumed ``hpo run``, each ``hpo worker``, each SLURM task) builds the study's sampler
    anew. Seeded once per process, each would replay the same draws: a resumed study repeated its first
    trials, and concurrent processes ran the same parameters. The trial number is unique in a study (the
    storage assigns it), so a sampler built from (seed, number) for each trial draws something new in every
    process, and a study run again with the same seed and history still draws the same parameters.
    Everything else a sampler knows (past trials, CMA-ES state, QMC position) lives in the storage, so a
    fresh sampler per trial loses nothing but in-process caches.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._trials: dict[int, optuna.samplers.BaseSampler] = {}  # trials asked here and not yet told

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        sampler = self._trials.get(trial.number)
        return sampler if sampler is not None else self._make(trial_seed(self._seed, trial.number))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        sampler = self._trials[trial.number] = self._make(trial_seed(self._seed, trial.number))
        sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._trials.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])


class _Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(default=None, ge=0, lt=2**32)  # numpy's seed range

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def for_study(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        """The sampler a process puts on the study. Seeded: a fresh one per trial from (seed, trial number),
        so processes and resumes never replay each other's draws (``PerTrialSeedSampler``)."""
        if self.seed is None:
            return self.build(grid)  # each process draws its own entropy: nothing to replay
        return PerTrialSeedSampler(lambda s: self.model_copy(update={"seed": s}).build(grid), self.seed)


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


class _TrialNumberQMCSampler(optuna.samplers.QMCSampler):
    """QMCSampler that takes point N of its sequence for trial N.

    Optuna's QMCSampler keeps its position in a study attribute that it reads and then writes in two
    storage calls, so two processes asking at once took the same point (seen with two `hpo worker`s). The
    trial number is assigned atomically by the storage and grows across resumes: the same sequence, with
    the points of re-runs and of discarded trials skipped. (``_find_sample_id`` has no public equivalent.)
    """

    _number = 0

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._number = trial.number  # the orchestrator asks one trial at a time: sample_relative follows
        super().before_trial(study, trial)

    def _find_sample_id(self, study: optuna.Study, search_space: dict[str, BaseDistribution]) -> int:
        return self._number


class QMCSamplerConfig(_Sampler):
    name: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = False

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        return _TrialNumberQMCSampler(**self.model_dump(exclude={"name"}))

    def for_study(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        # The sequence must be one for the whole study (the seed scrambles it), and its position is a study
        # attribute, so resumes and other processes go on along it. Only the trials drawn before the search
        # space is known (the first ones, at random) take their seed from the trial number.
        if self.seed is None:
            return self.build(grid)
        first = PerTrialSeedSampler(lambda s: optuna.samplers.RandomSampler(seed=s), self.seed)
        return _TrialNumberQMCSampler(**self.model_dump(exclude={"name"}), independent_sampler=first)


class NSGAIISamplerConfig(_Sampler):
    """NSGA-II (multi-objective; also runs a single objective). Generations live in the storage."""

    name: Literal["nsga2"]
    population_size: int = Field(default=50, ge=2)
    mutation_prob: float | None = Field(default=None, ge=0.0, le=1.0)
    crossover_prob: float = Field(default=0.9, ge=0.0, le=1.0)
    swapping_prob: float = Field(default=0.5, ge=0.0, le=1.0)

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(**self.model_dump(exclude={"name"}))


class NSGAIIISamplerConfig(NSGAIISamplerConfig):
    """NSGA-III: NSGA-II with reference points, for three or more objectives."""

    name: Literal["nsga3"]  # type: ignore[assignment]
    dividing_parameter: int = Field(default=3, ge=1)

    def build(self, grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
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
