"""The closed registry of pruners a study file may name; each mirrors its Optuna constructor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpo.registry import union_tags

if TYPE_CHECKING:  # imported by build(): validating a study file (`hpo validate`) never needs Optuna
    import optuna


class _Pruner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def build(self) -> optuna.pruners.BasePruner:
        raise NotImplementedError

    def refused(self) -> str | None:
        """What Optuna's constructor would refuse in these arguments (it checks some combinations only
        there), without importing Optuna: `hpo validate` stays fast. `hpo run` builds the pruner itself;
        tests/test_registries.py checks both agree."""
        return None


class NopPrunerConfig(_Pruner):
    name: Literal["none"]

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.NopPruner()


class MedianPrunerConfig(_Pruner):
    name: Literal["median"]
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)  # in optimizer steps, as reported
    interval_steps: int = Field(default=1, ge=1)
    n_min_trials: int = Field(default=1, ge=1)

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.MedianPruner(**self.model_dump(exclude={"name"}))


class PercentilePrunerConfig(_Pruner):
    name: Literal["percentile"]
    percentile: float = Field(ge=0.0, le=100.0)
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)
    n_min_trials: int = Field(default=1, ge=1)

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.PercentilePruner(**self.model_dump(exclude={"name"}))


class SuccessiveHalvingPrunerConfig(_Pruner):
    name: Literal["successive_halving"]
    min_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=4, ge=2)
    min_early_stopping_rate: int = Field(default=0, ge=0)
    bootstrap_count: int = Field(default=0, ge=0)

    def refused(self) -> str | None:
        if isinstance(self.min_resource, int) and self.min_resource < 1:
            return (
                f"The value of `min_resource` is {self.min_resource}, but must be either `min_resource >= 1` or 'auto'"
            )
        if self.bootstrap_count > 0 and self.min_resource == "auto":
            return (
                "bootstrap_count > 0 and min_resource == 'auto' are mutually incompatible, "
                f"bootstrap_count is {self.bootstrap_count}"
            )
        return None

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(**self.model_dump(exclude={"name"}))


class HyperbandPrunerConfig(_Pruner):
    name: Literal["hyperband"]
    min_resource: int = Field(default=1, ge=1)
    max_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2)
    bootstrap_count: int = Field(default=0, ge=0)

    def refused(self) -> str | None:
        if self.bootstrap_count > 0 and self.max_resource == "auto":
            return (
                "bootstrap_count > 0 and max_resource == 'auto' are mutually incompatible, "
                f"bootstrap_count is {self.bootstrap_count}"
            )
        return None

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.HyperbandPruner(**self.model_dump(exclude={"name"}))


class ThresholdPrunerConfig(_Pruner):
    name: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ThresholdPrunerConfig:
        if self.lower is None and self.upper is None:
            raise ValueError("give `lower`, `upper` or both.")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"`lower <= upper` must hold, but got (lower={self.lower}, upper={self.upper}).")
        return self

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.ThresholdPruner(**self.model_dump(exclude={"name"}))


class WilcoxonPrunerConfig(_Pruner):
    name: Literal["wilcoxon"]
    p_threshold: float = Field(default=0.1, gt=0.0, lt=1.0)
    n_startup_steps: int = Field(default=2, ge=0)

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.WilcoxonPruner(**self.model_dump(exclude={"name"}))


_Wrapped = Annotated[
    Union[
        MedianPrunerConfig,
        PercentilePrunerConfig,
        SuccessiveHalvingPrunerConfig,
        HyperbandPrunerConfig,
        ThresholdPrunerConfig,
    ],
    Field(discriminator="name"),
]


class PatientPrunerConfig(_Pruner):
    name: Literal["patient"]
    patience: int = Field(ge=0)  # evals without improvement before pruning
    min_delta: float = Field(default=0.0, ge=0.0)
    wrapped: _Wrapped | None = None  # prune only when this pruner also says so

    def refused(self) -> str | None:
        return self.wrapped.refused() if self.wrapped is not None else None

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        inner = self.wrapped.build() if self.wrapped is not None else None
        return optuna.pruners.PatientPruner(inner, patience=self.patience, min_delta=self.min_delta)


PrunerConfig = Annotated[
    Union[
        NopPrunerConfig,
        MedianPrunerConfig,
        PercentilePrunerConfig,
        SuccessiveHalvingPrunerConfig,
        HyperbandPrunerConfig,
        ThresholdPrunerConfig,
        WilcoxonPrunerConfig,
        PatientPrunerConfig,
    ],
    Field(discriminator="name"),
]

WRAPPABLE_PRUNERS = union_tags(_Wrapped, "name")  # what `patient` may wrap

DEFAULT_WARMUP_SHARE = 6  # the default pruner waits for 1/6 of a trial's steps


def default_pruner(max_steps: int) -> MedianPrunerConfig:
    """The pruner of a study file that names none: Optuna's median pruner, judging no trial before a sixth
    of its steps (``fidelity.max_steps // 6``; the quickstart's 50 of 300).

    Optuna's own default warm-up is 0: a trial can be pruned at its first eval, where curves often rank
    trials differently from their final values (learning-rate warm-up, a loss plateau, a slow start at a
    high learning rate). Measured in benchmarks/README.md ("Pruners when early evals mislead"): with warm-up
    0, TPE's final result got worse than with no pruning at all where early and final values disagree
    (MFHartmann bad/terrible); with a sixth it was at or below no pruning on every correlation level. On the
    quickstart grid it is the same as warm-up 0 at the quickstart's eval cadence (50 steps), and prunes a
    little later with evals every 25 steps. ``pruner: {name: median}`` written out keeps Optuna's arguments.
    """
    return MedianPrunerConfig(name="median", n_warmup_steps=max_steps // DEFAULT_WARMUP_SHARE)


PRUNER_NAMES = union_tags(PrunerConfig, "name")  # ("none", "median", ...): the names a study file may write
