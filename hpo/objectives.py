"""Multi-objective studies: the values a trial is told with, pruning on the first objective, the Pareto front.

A study file's ``objective`` may be a list (``hpo.config``): the first is a metric the trainer reports at
each eval (``f1_macro``, ``perplexity`` ...), the others may be costs the worker measures the same way for
every trial (``COST_METRICS``: ``params``, ``trainable_params``, ``peak_memory_mb``, ``train_time``,
``latency_ms``). A trial is told the vector of its values, in the file's order.

Pruning. Optuna refuses ``trial.report`` in a multi-objective study, so its pruners cannot see such a study.
hpo keeps the first objective's eval values itself (the trial's ``objective_curve`` attribute, step ->
value) and asks the study's pruner about a *shadow* study: an in-memory single-objective study, in the first
objective's direction, holding every finished trial's first-objective curve and final value (rebuilt from
the storage when a process starts, and topped up with other processes' trials every few seconds). So a
trial is pruned when its first objective looks poor against the other trials' first objective at the same
step, exactly as in a single-objective study of that metric; its costs play no part. A trial that would have
been on the Pareto front because it is cheap, while its quality is poor early, can be pruned: how often that
happened on a recorded study is measured by ``benchmarks/multi_objective.py`` and tests/test_objectives.py.
Without a ``pruner`` section the default (median) pruner applies as usual; ``pruner: {name: none}`` prunes
nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import COST_METRICS, StudyConfig
from hpo.protocol import TrialResult
from hpo.record import TrialAttrs

SYNC_EVERY = 5.0  # seconds between top-ups of the shadow study with other processes' trials

# Where each cost comes from in a worker's result.
_COSTS: dict[str, Callable[[TrialResult], float | int | None]] = {
    "params": lambda r: r.total_params,
    "trainable_params": lambda r: r.trainable_params,
    "peak_memory_mb": lambda r: r.peak_memory_mb,
    "train_time": lambda r: r.train_time,
    "latency_ms": lambda r: r.latency_ms,
}
assert set(_COSTS) == set(COST_METRICS)


def trial_values(cfg: StudyConfig, result: TrialResult) -> tuple[list[float] | None, str | None]:
    """The values of a finished trial, one per objective; or (None, the first metric it lacks)."""
    out: list[float] = []
    for o in cfg.objectives:
        v = _COSTS[o.metric](result) if o.metric in COST_METRICS else result.metrics.get(o.metric)
        if v is None or not math.isfinite(float(v)):
            return None, o.metric
        out.append(float(v))
    return out, None


def curve_of(t: FrozenTrial) -> dict[int, float]:
    """The first objective per eval step, as hpo kept it (multi-objective) or Optuna did (single)."""
    if t.intermediate_values:
        return dict(t.intermediate_values)
    stored = TrialAttrs.from_user_attrs(t.user_attrs).objective_curve or {}
    return {int(k): float(v) for k, v in stored.items()}


class ProxyPruner:
    """The study's pruner, judging the first objective in a shadow single-objective study (module docstring)."""

    def __init__(
        self, study: optuna.Study, pruner: optuna.pruners.BasePruner, direction: Literal["minimize", "maximize"]
    ) -> None:
        self.study = study
        self.shadow = optuna.create_study(
            direction=direction, pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0)
        )
        self._known: set[int] = set()  # real trial numbers whose result the shadow holds
        self._running: dict[int, optuna.Trial] = {}
        self._synced = -math.inf
        self.sync(force=True)

    def sync(self, force: bool = False) -> None:
        """Add finished trials of the real study (any process) that the shadow does not hold yet."""
        now = time.monotonic()
        if not force and now - self._synced < SYNC_EVERY:
            return
        self._synced = now
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.number in self._known or t.number in self._running:
                continue
            self._known.add(t.number)
            curve = curve_of(t)
            if t.state == TrialState.COMPLETE and t.values:
                self.shadow.add_trial(
                    optuna.trial.create_trial(state=TrialState.COMPLETE, value=t.values[0], intermediate_values=curve)
                )
            elif curve:
                last = curve[max(curve)]
                self.shadow.add_trial(
                    optuna.trial.create_trial(state=TrialState.PRUNED, value=last, intermediate_values=curve)
                )

    def should_prune(self, number: int, step: int, value: float) -> bool:
        """Report the first objective's eval of trial ``number`` and ask the pruner."""
        self.sync()
        shadow = self._running.get(number)
        if shadow is None:
            shadow = self._running[number] = self.shadow.ask()
        shadow.report(value, step)
        return shadow.should_prune()

    def finish(self, number: int, state: TrialState, value: float | None) -> None:
        """The trial ended: its shadow takes its first objective's value (or is pruned / failed)."""
        self._known.add(number)
        shadow = self._running.pop(number, None)
        if shadow is None:
            return
        if state == TrialState.COMPLETE and value is not None:
            self.shadow.tell(shadow, value)
        else:
            self.shadow.tell(shadow, state=TrialState.PRUNED if state == TrialState.PRUNED else TrialState.FAIL)


# ------------------------------------------------------------------------------------------ reading


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front (Optuna's ``best_trials``), ordered by the first objective (ties: lower number)."""
    first = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    return sorted(study.best_trials, key=lambda t: (first * t.values[0], t.number))


def first_objective_view(study: optuna.Study) -> optuna.Study:
    """An in-memory single-objective copy of a multi-objective study: every trial with its first objective
    as its value and its kept curve as intermediate values, for figures and tables made for one objective.
    Trial numbers are kept (trials are added in order); RUNNING and WAITING trials show as FAIL."""
    from hpo.storage import ATTR_CONFIG

    view = optuna.create_study(study_name=study.study_name, direction=study.directions[0])
    for k, v in study.user_attrs.items():
        if k == ATTR_CONFIG and isinstance(v, dict) and isinstance(v.get("objective"), list) and v["objective"]:
            v = {**v, "objective": v["objective"][0]}
        view.set_user_attr(k, v)
    for t in study.get_trials(deepcopy=False):
        state = t.state if t.state.is_finished() else TrialState.FAIL
        curve = curve_of(t)
        value: float | None = t.values[0] if t.values else None
        if state == TrialState.PRUNED and value is None and curve:
            value = curve[max(curve)]
        if state != TrialState.COMPLETE and state != TrialState.PRUNED:
            value = None
        view.add_trial(
            FrozenTrial(
                number=t.number,
                state=state,
                value=value,
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete or t.datetime_start,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                system_attrs={},
                intermediate_values=curve,
                trial_id=0,  # add_trial assigns its own
            )
        )
    return view


def names(cfg_or_config: Any) -> list[str]:
    """The objectives' metric names, from a StudyConfig or a stored configuration dict."""
    if isinstance(cfg_or_config, StudyConfig):
        return [o.metric for o in cfg_or_config.objectives]
    objective = (cfg_or_config or {}).get("objective")
    items: Sequence[Any] = objective if isinstance(objective, list) else [objective or {}]
    return [str(o.get("metric", f"objective {i}")) for i, o in enumerate(items)]
