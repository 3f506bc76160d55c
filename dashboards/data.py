"""Studies as plain data: the pure half of hpo's own plots and tables (Optuna's split: ``_get_*_info`` then
``_get_*_plot``), and what hpo adds to Optuna's plots (``dashboards.figures``).

``collect(study, points)`` reads an Optuna study and its learning curves once into a :class:`StudyData` of
plain values; every other function here turns a ``StudyData`` into the data of one figure or table. Nothing
here draws, prints or touches storage, so each function is tested by equality on small fixed studies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.curves import CurvePoint
from hpo.genstudy import uses_proxy
from hpo.record import ATTR_DATA_CLEAN, TrialRecord, best_of, rank_trials, running_best

ATTR_CONFIG = "hpo:config"  # the study's resolved study file (see hpo.storage)
FINISHED = ("COMPLETE", "PRUNED", "FAIL")

# The two parameters the issue names for a contour, by their Optuna names (hpo.space.param_name).
LEARNING_RATE = "learning_rate"
BATCH_SIZE = "per_device_train_batch_size"


# --------------------------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class ParamInfo:
    name: str
    kind: str  # "float", "int" or "categorical"
    log: bool = False
    choices: tuple[Any, ...] | None = None  # categorical only


@dataclass(frozen=True)
class TrialInfo:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None  # the objective (a pruned trial: its last reported value)
    params: dict[str, Any]
    intermediate: dict[int, float]  # objective per eval step, as reported to the pruner
    steps: int | None  # optimizer steps run
    start: float | None  # seconds since the study's first trial started
    end: float | None
    duration: float | None
    device: str | None
    worker: int | None
    reason: str | None
    tokens_per_s: float | None = None
    train_time: float | None = None
    eval_time: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    requeued: bool = False  # a FAIL that was re-run as another trial
    counted: bool = True  # counts towards n_trials (hpo.record.counts: not waiting, re-queued or discarded)
    examples: tuple[dict[str, str], ...] = ()  # generation tasks: (source, reference, prediction) of its final eval


@dataclass(frozen=True)
class StudyData:
    name: str
    direction: str  # "minimize" or "maximize"
    metric: str  # the objective's name
    task: str | None
    sampler: str | None
    pruner: str | None
    max_steps: int | None  # steps of a trial that is not pruned
    eval_every: int | None
    params: tuple[ParamInfo, ...]
    trials: tuple[TrialInfo, ...]
    curves: dict[int, dict[str, tuple[tuple[int, ...], tuple[float, ...]]]]  # trial -> name -> (steps, values)
    importances: dict[str, float]  # Optuna's default evaluator (PED-ANOVA), normalised; {} if not computable
    importance_note: str | None = None  # why there are no importances
    stored_curves: bool = False  # hpo_curves had points (else objective curves are the reported values)
    data_clean: dict[str, Any] | None = None  # what data.clean removed (study attribute, trainers/clean.py)

    @property
    def complete(self) -> list[TrialInfo]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]

    def best(self) -> TrialInfo | None:
        return best_of(self.trials, self.direction)


def collect(study: optuna.Study, points: Sequence[CurvePoint] = (), importances: bool = True) -> StudyData:
    """Read a study (and its learning-curve points) into plain data."""
    trials = study.get_trials(deepcopy=False)
    config: dict[str, Any] = study.user_attrs.get(ATTR_CONFIG) or {}
    direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    metric = (config.get("objective") or {}).get("metric") or "objective"
    fidelity = config.get("fidelity") or {}
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    t0 = min(starts) if starts else None
    # A generation objective's pruned trials last reported the pruning proxy (-eval_loss), not the objective:
    # they have no value on the objective's axis (hpo.genstudy).
    proxied = uses_proxy(metric)
    infos = tuple(_trial_info(t, t0, proxied) for t in trials)
    max_steps = fidelity.get("max_steps")
    if max_steps is None:  # not an hpo study: the longest trial is the full length
        seen = [t.steps for t in infos if t.steps is not None]
        max_steps = max(seen) if seen else None
    imp, note = _importances(study, trials) if importances else ({}, "not computed")
    return StudyData(
        name=study.study_name,
        direction=direction,
        metric=metric,
        task=config.get("task"),
        sampler=(config.get("sampler") or {}).get("name") or type(study.sampler).__name__,
        pruner=(config.get("pruner") or {}).get("name") or type(study.pruner).__name__,
        max_steps=max_steps,
        eval_every=fidelity.get("eval_every"),
        params=_params(trials),
        trials=infos,
        curves=_curves(points, infos, metric),
        importances=imp,
        importance_note=note,
        stored_curves=bool(points),
        data_clean=study.user_attrs.get(ATTR_DATA_CLEAN),
    )


def _seconds(a: datetime | None, t0: datetime | None) -> float | None:
    if a is None or t0 is None:
        return None
    return round((a - t0).total_seconds(), 3)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _trial_info(t: FrozenTrial, t0: datetime | None, proxied: bool = False) -> TrialInfo:
    r = TrialRecord.from_trial(t)
    a = r.attrs
    start = _seconds(t.datetime_start, t0)
    end = _seconds(t.datetime_complete, t0)
    duration = _num(a.duration)
    if duration is None and start is not None and end is not None:
        duration = round(end - start, 3)
    value = r.value if not (proxied and r.state == TrialState.PRUNED) else None
    return TrialInfo(
        number=r.number,
        state=r.state.name,
        value=value if value is not None and math.isfinite(value) else None,
        params=dict(r.params),
        intermediate={int(k): float(v) for k, v in sorted(r.intermediate.items()) if math.isfinite(v)},
        steps=r.steps,
        start=start,
        end=end,
        duration=duration,
        device=a.device,
        worker=a.worker,
        reason=a.reason,
        tokens_per_s=_num(a.tokens_per_s),
        train_time=_num(a.train_time),
        eval_time=_num(a.eval_time),
        metrics={k: float(v) for k, v in (a.metrics or {}).items() if _num(v) is not None},
        requeued=a.requeued,
        counted=r.counted,
        examples=a.examples or (),
    )


def _params(trials: Sequence[FrozenTrial]) -> tuple[ParamInfo, ...]:
    """Every parameter of the study, in first-seen order, with its scale (from the trials' distributions)."""
    out: dict[str, ParamInfo] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in out:
                continue
            if isinstance(dist, CategoricalDistribution):
                out[name] = ParamInfo(name, "categorical", choices=tuple(dist.choices))
            elif isinstance(dist, IntDistribution):
                out[name] = ParamInfo(name, "int", log=dist.log)
            elif isinstance(dist, FloatDistribution):
                out[name] = ParamInfo(name, "float", log=dist.log)
    return tuple(out.values())


def _curves(
    points: Sequence[CurvePoint], trials: Sequence[TrialInfo], metric: str
) -> dict[int, dict[str, tuple[tuple[int, ...], tuple[float, ...]]]]:
    """Per trial, per series name: (steps, values). The objective falls back to the reported values."""
    acc: dict[int, dict[str, dict[int, float]]] = {}
    for p in points:
        acc.setdefault(p.trial_number, {}).setdefault(p.name, {})[p.step] = p.value
    for t in trials:
        series = acc.setdefault(t.number, {})
        if metric not in series and t.intermediate:
            series[metric] = dict(t.intermediate)
    return {
        n: {name: (tuple(sorted(s)), tuple(s[k] for k in sorted(s))) for name, s in sorted(by_name.items()) if s}
        for n, by_name in sorted(acc.items())
        if by_name
    }


def _importances(study: optuna.Study, trials: Sequence[FrozenTrial]) -> tuple[dict[str, float], str | None]:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        return {}, f"needs at least 2 complete trials (has {len(done)})"
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as e:
        return {}, str(e).splitlines()[0]
    return {k: float(v) for k, v in imp.items()}, None


# ---------------------------------------------------------------------------------------- importances


@dataclass(frozen=True)
class ImportanceData:
    params: tuple[str, ...]  # most important first
    values: tuple[float, ...]
    n_complete: int
    note: str | None  # why it is empty


def importance(sd: StudyData) -> ImportanceData:
    ranked = sorted(sd.importances.items(), key=lambda kv: (-kv[1], kv[0]))
    return ImportanceData(
        tuple(k for k, _ in ranked), tuple(round(v, 6) for _, v in ranked), len(sd.complete), sd.importance_note
    )


# --------------------------------------------------------------------------------------------- contours


def contour_pairs(sd: StudyData, n: int = 2) -> list[tuple[str, str]]:
    """Which parameter pairs get a contour: learning rate x batch size first, then the two most important."""
    names = [p.name for p in sd.params]
    pairs: list[tuple[str, str]] = []
    if LEARNING_RATE in names and BATCH_SIZE in names:
        pairs.append((LEARNING_RATE, BATCH_SIZE))
    ranked = [k for k in importance(sd).params if k in names] or names
    if len(ranked) >= 2:
        top = (ranked[0], ranked[1])
        if set(top) not in [set(p) for p in pairs]:
            pairs.append(top)
    return pairs[:n]


# ----------------------------------------------------------------------------------- learning curves


@dataclass(frozen=True)
class CurveSeries:
    number: int
    state: str
    steps: tuple[int, ...]
    values: tuple[float, ...]
    final: float | None  # the trial's objective value (pruned: last reported)


@dataclass(frozen=True)
class CurvesData:
    panels: tuple[str, ...]  # series names, objective first
    series: dict[str, tuple[CurveSeries, ...]]  # panel -> one per trial that has it
    best: int | None  # best trial number
    objective: str
    direction: str
    from_intermediate: bool  # the objective curves came from Optuna's intermediate values (no hpo_curves)


# Panels after the objective, in this order, when any trial has them.
CURVE_PANELS = ("eval_loss", "train_loss", "learning_rate")


def curves(sd: StudyData) -> CurvesData:
    names = {name for by_name in sd.curves.values() for name in by_name}
    panels = [sd.metric] + [n for n in CURVE_PANELS if n in names and n != sd.metric]
    states = {t.number: t for t in sd.trials}
    series: dict[str, tuple[CurveSeries, ...]] = {}
    for panel in panels:
        rows = []
        for n, by_name in sd.curves.items():
            if panel in by_name and n in states:
                steps, values = by_name[panel]
                rows.append(CurveSeries(n, states[n].state, steps, values, states[n].value))
        series[panel] = tuple(rows)
    best = sd.best()
    return CurvesData(
        tuple(panels), series, best.number if best else None, sd.metric, sd.direction, not sd.stored_curves
    )


# ------------------------------------------------------------------------------- compute and pruning


@dataclass(frozen=True)
class ComputeTrial:
    number: int
    state: str
    steps_run: int
    steps_full: int  # what the trial would have run without pruning
    seconds: float | None  # train + eval time spent


@dataclass(frozen=True)
class ComputeData:
    trials: tuple[ComputeTrial, ...]
    max_steps: int | None
    steps_run: int
    steps_without_pruning: int
    steps_saved: int
    saved_fraction: float  # of steps_without_pruning
    seconds_run: float  # train + eval time of finished trials
    seconds_saved: float  # estimated: each pruned trial's remaining steps at its own speed
    n_pruned: int


def compute(sd: StudyData) -> ComputeData:
    """Steps run vs the steps the same trials would have used without pruning (finished trials only)."""
    rows: list[ComputeTrial] = []
    saved_s = 0.0
    for t in sd.trials:
        if t.state not in FINISHED:
            continue
        run = t.steps or 0
        full = run
        if t.state == "PRUNED" and sd.max_steps is not None:
            full = max(run, sd.max_steps)
            spent = t.train_time
            if spent is not None and run > 0:
                saved_s += spent / run * (full - run)
        secs = None if t.train_time is None else round(t.train_time + (t.eval_time or 0.0), 3)
        rows.append(ComputeTrial(t.number, t.state, run, full, secs))
    run_total = sum(r.steps_run for r in rows)
    full_total = sum(r.steps_full for r in rows)
    return ComputeData(
        trials=tuple(rows),
        max_steps=sd.max_steps,
        steps_run=run_total,
        steps_without_pruning=full_total,
        steps_saved=full_total - run_total,
        saved_fraction=round((full_total - run_total) / full_total, 6) if full_total else 0.0,
        seconds_run=round(sum(r.seconds or 0.0 for r in rows), 3),
        seconds_saved=round(saved_s, 3),
        n_pruned=sum(1 for r in rows if r.state == "PRUNED"),
    )


# ---------------------------------------------------------------------------------------------- lanes


def lane(t: TrialInfo) -> str:
    device = t.device or "unknown device"
    return device if t.worker is None else f"{device} · worker {t.worker}"


# ------------------------------------------------------------------------------------------- top trials


@dataclass(frozen=True)
class TopRow:
    rank: int
    number: int
    value: float
    params: dict[str, Any]
    steps: int | None
    duration: float | None
    tokens_per_s: float | None
    device: str | None


def top_trials(sd: StudyData, n: int = 10) -> tuple[TopRow, ...]:
    done = rank_trials(sd.trials, sd.direction)[:n]
    return tuple(
        TopRow(i + 1, t.number, t.value, dict(t.params), t.steps, t.duration, t.tokens_per_s, lane(t))
        for i, t in enumerate(done)
        if t.value is not None
    )


# ------------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    name: str
    metric: str
    direction: str
    sampler: str | None
    pruner: str | None
    states: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    most_important: str | None
    most_important_value: float | None
    steps_run: int
    steps_saved: int
    saved_fraction: float
    wall_time: float | None  # first trial start to last trial end


def summary(sd: StudyData) -> Summary:
    states: dict[str, int] = {}
    for t in sd.trials:
        states[t.state] = states.get(t.state, 0) + 1
    best = sd.best()
    imp = importance(sd)
    c = compute(sd)
    ends = [t.end for t in sd.trials if t.end is not None]
    return Summary(
        name=sd.name,
        metric=sd.metric,
        direction=sd.direction,
        sampler=sd.sampler,
        pruner=sd.pruner,
        states=dict(sorted(states.items())),
        best_number=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        most_important=imp.params[0] if imp.params else None,
        most_important_value=imp.values[0] if imp.values else None,
        steps_run=c.steps_run,
        steps_saved=c.steps_saved,
        saved_fraction=c.saved_fraction,
        wall_time=max(ends) if ends else None,
    )


@dataclass(frozen=True)
class ComparisonSeries:
    name: str
    numbers: tuple[int, ...]  # complete trials in the order they finished
    cumulative_steps: tuple[int, ...]  # steps run by all finished trials up to each of them
    best: tuple[float, ...]  # best value so far


@dataclass(frozen=True)
class ComparisonData:
    metric: str
    direction: str
    comparable: bool  # same metric and direction everywhere
    series: tuple[ComparisonSeries, ...]
    importances: dict[str, dict[str, float]]  # study -> param -> importance


def comparison(studies: Sequence[StudyData]) -> ComparisonData:
    """Best-so-far of several studies against trials and against training steps spent."""
    out = []
    for sd in studies:
        finished = sorted(
            (t for t in sd.trials if t.state in FINISHED),
            key=lambda t: (t.end if t.end is not None else math.inf, t.number),
        )
        numbers: list[int] = []
        cum: list[int] = []
        values: list[float] = []
        total = 0
        for t in finished:
            total += t.steps or 0
            if t.state == "COMPLETE" and t.value is not None:
                numbers.append(t.number)
                cum.append(total)
                values.append(t.value)
        best = running_best(values, sd.direction)
        out.append(ComparisonSeries(sd.name, tuple(numbers), tuple(cum), tuple(best)))
    first = studies[0]
    comparable = all(s.metric == first.metric and s.direction == first.direction for s in studies)
    return ComparisonData(
        first.metric, first.direction, comparable, tuple(out), {s.name: dict(s.importances) for s in studies}
    )
