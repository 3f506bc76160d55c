"""The Optuna sampler subclasses hpo builds (``hpo.samplers`` holds the study file's sampler settings).

They live apart from the settings so that reading and validating a study file never imports Optuna: these
classes subclass Optuna's, and ``hpo.samplers``' ``build`` methods import them when a study starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


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


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` once the grid is exhausted.

    That call only works inside ``Study.optimize``; with ask/tell it raises. The orchestrator stops at the
    grid's size itself.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


class TrialNumberQMCSampler(optuna.samplers.QMCSampler):
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
