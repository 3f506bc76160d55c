"""`hpo confirm`: re-train a study's best configurations on fresh seeds, and say how sure the winner is.

A search ranks configurations by one run each: a lucky seed can put a configuration on top. Confirmation
re-trains the K best complete trials on N fresh seeds (``training.seed`` + 1 ... + N, so a rerun with more
seeds extends the same list) at the trial's fidelity (or ``--steps``), and reports per configuration the
mean, the standard deviation, a 95% confidence interval (Student's t) and the probability of being the best
(bootstrap over each configuration's runs).

Where the runs live: a second Optuna study in the same storage, named ``<study>:confirm``. Its trials are
the confirmation runs, each with the configuration's parameters plus ``confirm_seed``; they are enqueued
with those fixed parameters and run by the study's own workers through the orchestrator (``hpo.api.run``),
so faults are handled as in ``hpo run`` (interrupted or orphaned runs are failed and re-queued with the same
parameters). Being another study, the runs never count towards the search's ``n_trials`` and the search's
sampler never sees them. Resuming is planning again: each (configuration, seed) pair with no complete or
running run and none waiting in the queue is enqueued (so a failed run is tried again), and the
confirmation study's total is set to what it has counted plus what waits, so a rerun after a kill or
Ctrl-C runs exactly the missing pairs.

The summary is stored in the confirmation study's user attribute ``hpo:confirm_summary`` once every
planned pair has a complete run; ``hpo best`` and ``hpo export`` then prefer its winner (best mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import FidelitySection, StudyConfig
from hpo.errors import HpoError
from hpo.pruners import NopPrunerConfig
from hpo.record import TrialRecord, counted, rank_key
from hpo.samplers import RandomSamplerConfig
from hpo.space import IntSpec, param_name

SUFFIX = ":confirm"
SEED_PARAM = "confirm_seed"  # the Optuna parameter carrying a confirmation run's seed
SEED_PATH = "training.seed"
ATTR_PLAN = "hpo:confirm"  # {"source", "steps"}: what the confirmation study re-trains, and how long
ATTR_SUMMARY = "hpo:confirm_summary"
DEFAULT_TOP, DEFAULT_SEEDS = 3, 3
BOOTSTRAP = 10_000


def study_name(name: str) -> str:
    return name + SUFFIX


def fresh_seeds(base: int, n: int) -> list[int]:
    """The seeds of ``n`` confirmation runs: after the search's own seed, so none repeats a search run."""
    return [base + 1 + i for i in range(n)]


# -------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class ConfigStats:
    """One configuration's confirmation runs."""

    trial: int  # the search trial whose parameters these are
    params: Mapping[str, Any]
    search_value: float | None  # what the search measured (one run, the search's seed)
    values: tuple[float, ...]  # one per seed, in seed order
    mean: float
    std: float  # sample standard deviation (n - 1); nan with one run
    ci_low: float  # 95% confidence interval of the mean (Student's t); nan with one run
    ci_high: float
    p_best: float  # bootstrap probability that this configuration has the best mean


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of the mean's confidence interval; std and interval nan for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


def p_best(groups: Sequence[Sequence[float]], direction: str, n_boot: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """Bootstrap probability that each group has the best mean: each round resamples every group's values
    with replacement and credits the best mean (a tie is shared equally). Seeded: the same input gives the
    same answer."""
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, len(groups)))
    for j, g in enumerate(groups):
        x = np.asarray(g, dtype=float)
        means[:, j] = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    sign = 1.0 if direction == "minimize" else -1.0
    scored = sign * means
    best = scored.min(axis=1, keepdims=True)
    winners = np.isclose(scored, best, rtol=0.0, atol=1e-12)
    share = winners / winners.sum(axis=1, keepdims=True)
    return [float(v) for v in share.mean(axis=0)]


def summarize(
    configs: Sequence[tuple[int, Mapping[str, Any], float | None, Sequence[float]]], direction: str
) -> list[ConfigStats]:
    """Per configuration (trial, params, search value, values over seeds): the statistics, in the given
    order. Configurations without a value are left out of the bootstrap (p_best 0)."""
    with_runs = [c for c in configs if c[3]]
    probs = (
        dict(zip((c[0] for c in with_runs), p_best([c[3] for c in with_runs], direction), strict=True))
        if with_runs
        else {}
    )
    out = []
    for number, params, search_value, values in configs:
        mean, std, lo, hi = t_interval(values) if values else (math.nan,) * 4
        out.append(
            ConfigStats(number, dict(params), search_value, tuple(values), mean, std, lo, hi, probs.get(number, 0.0))
        )
    return out


def winner_of(stats: Sequence[ConfigStats], direction: str) -> ConfigStats | None:
    """The best mean; ties: the higher probability of being best, then the search's order."""
    done = [(i, s) for i, s in enumerate(stats) if not math.isnan(s.mean)]
    if not done:
        return None
    return min(done, key=lambda p: (rank_key(direction, p[1].mean, 0)[0], -p[1].p_best, p[0]))[1]


# ------------------------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """What a confirmation re-trains: the source study's file, the configurations and seeds, the length."""

    source: StudyConfig
    configs: list[FrozenTrial]  # the K best complete trials, best first (distinct parameters)
    seeds: list[int]
    steps: int
    metric: str
    direction: str

    def pairs(self) -> list[tuple[int, int]]:
        return [(t.number, s) for t in self.configs for s in self.seeds]

    def params(self, number: int, seed: int) -> dict[str, Any]:
        t = next(c for c in self.configs if c.number == number)
        return {**t.params, SEED_PARAM: seed}

    def study_config(self, n_trials: int) -> StudyConfig:
        """The confirmation study's configuration: the source's, with the seed as a (fixed) parameter, the
        trial length, no pruner (every run goes to the end), and only the first objective."""
        cfg = self.source
        fidelity = cfg.fidelity
        if self.steps != fidelity.max_steps:
            fidelity = FidelitySection(
                max_steps=self.steps,
                eval_every=min(fidelity.eval_every, self.steps),
                eval_batches=fidelity.eval_batches,
            )
        space = {**cfg.search_space, SEED_PATH: IntSpec(type="int", low=0, high=2**31 - 1, name=SEED_PARAM)}
        head = cfg.study.model_copy(
            update={"name": study_name(cfg.study.name), "storage": cfg.storage_url, "n_trials": max(1, n_trials)}
        )
        update: dict[str, Any] = {
            "study": head,
            "sampler": RandomSamplerConfig(name="random", seed=0),  # never draws: every parameter is fixed
            "pruner": NopPrunerConfig(name="none"),
            "fidelity": fidelity,
            "search_space": space,
        }
        first = _first_objective(cfg)
        if first is not None:
            update["objective"] = first
        return cfg.model_copy(update=update)


def _first_objective(cfg: StudyConfig) -> Any:
    """A multi-objective study is confirmed on its first objective (None: the study has one)."""
    return cfg.objectives[0] if cfg.multi_objective else None


def _metric(cfg: StudyConfig) -> tuple[str, str]:
    return cfg.metric, cfg.direction


def plan(path: str | Path, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS, steps: int | None = None) -> Plan:
    """Check the arguments and the study, and choose what to re-train; reads only."""
    from hpo.api import validate
    from hpo.export import ranked_trials
    from hpo.storage import load_existing

    if top < 1:
        raise HpoError(f"--top must be at least 1, but got {top}")
    if seeds < 2:
        raise HpoError(f"--seeds must be at least 2 (a spread needs two runs), but got {seeds}")
    if steps is not None and steps < 1:
        raise HpoError(f"--steps must be at least 1, but got {steps}")
    cfg = validate(path)
    entry = cfg.search_space.get(SEED_PATH)
    if entry is not None or any(param_name(p, s) == SEED_PARAM for p, s in cfg.search_space.items()):
        raise HpoError(
            f"{path}: search_space[{SEED_PATH}]: the seed is searched; confirmation re-seeds each run itself"
        )
    search = load_existing(cfg, strict=True)  # confirmation runs the file's configuration: it must be the study's
    ranked = ranked_trials(search)
    distinct: list[FrozenTrial] = []
    for t in ranked:
        if all(t.params != d.params for d in distinct):
            distinct.append(t)
    if not distinct:
        raise HpoError(f"study {cfg.study.name!r} has no complete trial yet; run `hpo run {path}`")
    if top > len(distinct):
        what = "Pareto-front trials" if len(search.directions) > 1 else "complete trials with distinct parameters"
        raise HpoError(
            f"--top {top} is larger than the study's {len(distinct)} {what}; give --top {len(distinct)} or less"
        )
    metric, direction = _metric(cfg)
    length = steps if steps is not None else cfg.fidelity.max_steps
    if not length:  # a sample/token budget gives each configuration its own steps: say how long to run
        raise HpoError(
            f"study {cfg.study.name!r} sets its trial length as fidelity.{cfg.fidelity.unit}: give the steps of each "
            "confirmation run with --steps"
        )
    return Plan(cfg, distinct[:top], fresh_seeds(cfg.training.seed, seeds), length, metric, direction)


# ---------------------------------------------------------------------------------------------- reading


def _pair_of(t: FrozenTrial, plan: Plan, trials: Sequence[FrozenTrial] = ()) -> tuple[int, int] | None:
    """The (configuration, seed) pair of a confirmation run, by its parameters.

    A run still WAITING in the queue has no parameters yet: it is found by what it was enqueued with (the
    ``confirm_of`` and ``confirm_seed`` attributes), or, re-queued by the ledger after a fault, by the
    parameters of the run it repeats (``retry_of``, among ``trials``).
    """
    params = t.params
    if t.state == TrialState.WAITING:
        a = TrialRecord.from_trial(t).attrs
        if a.retry_of is not None:
            first = next((x for x in trials if x.number == a.retry_of), None)
            return _pair_of(first, plan) if first is not None and first.state != TrialState.WAITING else None
        number, seed = t.user_attrs.get("confirm_of"), t.user_attrs.get(SEED_PARAM)
        if not isinstance(number, int) or not isinstance(seed, int):
            return None
        return (number, seed) if (number, seed) in plan.pairs() else None
    seed = params.get(SEED_PARAM)
    if seed is None:
        return None
    rest = {k: v for k, v in params.items() if k != SEED_PARAM}
    for c in plan.configs:
        if c.params == rest:
            return c.number, int(seed)
    return None


def collect(
    plan: Plan, trials: Sequence[FrozenTrial]
) -> list[tuple[int, Mapping[str, Any], float | None, list[float]]]:
    """Each configuration's complete runs, one per planned seed (the first complete run of a pair)."""
    by_pair: dict[tuple[int, int], float] = {}
    out: list[tuple[int, Mapping[str, Any], float | None, list[float]]] = []
    for t in sorted(trials, key=lambda t: t.number):
        pair = _pair_of(t, plan)
        if pair is None or t.state != TrialState.COMPLETE or t.values is None or pair in by_pair:
            continue
        by_pair[pair] = float(t.values[0])
    for c in plan.configs:
        values = [by_pair[(c.number, s)] for s in plan.seeds if (c.number, s) in by_pair]
        out.append((c.number, dict(c.params), c.values[0] if c.values else None, values))
    return out


@dataclass
class Confirmation:
    """A stored confirmation summary (``hpo:confirm_summary``)."""

    study: str
    metric: str
    direction: str
    steps: int
    seeds: list[int]
    configs: list[ConfigStats]
    winner: int | None  # the search trial whose configuration has the best mean
    search_best: int | None  # the search's own best trial (rank 1)
    complete: bool = True
    missing: list[tuple[int, int]] = field(default_factory=list)  # (trial, seed) pairs without a complete run

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["configs"] = [{**asdict(c), "values": list(c.values), "params": dict(c.params)} for c in self.configs]
        d["missing"] = [list(p) for p in self.missing]
        return _finite(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Confirmation:
        nan = math.nan
        configs = [
            ConfigStats(
                trial=int(c["trial"]),
                params=dict(c["params"]),
                search_value=c.get("search_value"),
                values=tuple(float(v) for v in c["values"]),
                mean=nan if c.get("mean") is None else float(c["mean"]),
                std=nan if c.get("std") is None else float(c["std"]),
                ci_low=nan if c.get("ci_low") is None else float(c["ci_low"]),
                ci_high=nan if c.get("ci_high") is None else float(c["ci_high"]),
                p_best=float(c.get("p_best") or 0.0),
            )
            for c in d["configs"]
        ]
        return cls(
            study=str(d["study"]),
            metric=str(d["metric"]),
            direction=str(d["direction"]),
            steps=int(d["steps"]),
            seeds=[int(s) for s in d["seeds"]],
            configs=configs,
            winner=d.get("winner"),
            search_best=d.get("search_best"),
            complete=bool(d.get("complete", True)),
            missing=[(int(a), int(b)) for a, b in d.get("missing", [])],
        )


def _finite(v: Any) -> Any:
    """JSON has no NaN: a missing statistic is stored as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def confirmation(plan: Plan, trials: Sequence[FrozenTrial]) -> Confirmation:
    rows = collect(plan, trials)
    stats = summarize(rows, plan.direction)
    missing = [(n, s) for n, _, _, _ in rows for s in plan.seeds if s not in _seeds_done(plan, trials, n)]
    win = winner_of(stats, plan.direction)
    return Confirmation(
        study=plan.source.study.name,
        metric=plan.metric,
        direction=plan.direction,
        steps=plan.steps,
        seeds=list(plan.seeds),
        configs=stats,
        winner=win.trial if win else None,
        search_best=plan.configs[0].number,
        complete=not missing,
        missing=missing,
    )


def _seeds_done(plan: Plan, trials: Sequence[FrozenTrial], number: int) -> set[int]:
    return {
        p[1]
        for t in trials
        if t.state == TrialState.COMPLETE and (p := _pair_of(t, plan)) is not None and p[0] == number
    }


# ------------------------------------------------------------------------------------------------- runs


def load_study(storage: optuna.storages.BaseStorage, source: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=study_name(source), storage=storage)
    except KeyError:
        return None


def prepare(plan: Plan, storage: optuna.storages.BaseStorage) -> tuple[StudyConfig, optuna.Study, int]:
    """Create or resume the confirmation study and enqueue every planned pair without a counted or waiting
    run. Returns its configuration (whose ``n_trials`` is what it counted plus what waits), the study and
    the number of runs still to do."""
    from hpo.storage import create_or_resume

    existing = load_study(storage, plan.source.study.name)
    if existing is not None:
        ran = existing.user_attrs.get(ATTR_PLAN) or {}
        if ran.get("steps") not in (None, plan.steps):
            raise HpoError(
                f"study {plan.source.study.name!r} was confirmed at {ran['steps']} steps; confirm again with "
                f"--steps {ran['steps']} (or delete the study {study_name(plan.source.study.name)!r})"
            )
    trials = existing.get_trials(deepcopy=False) if existing is not None else []
    n_counted = sum(1 for t in trials if counted(t))
    # A pair is done, under way or queued; a pair whose run failed or was pruned runs again (the cause may
    # be fixed), its failed run still counted in the total below.
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    covered = {p for t in trials if t.state in live and (p := _pair_of(t, plan, trials))}
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    todo = [p for p in plan.pairs() if p not in covered]
    cfg = plan.study_config(n_counted + waiting + len(todo))
    study, _ = create_or_resume(cfg, storage)
    if study.user_attrs.get(ATTR_PLAN) is None:
        study.set_user_attr(ATTR_PLAN, {"source": plan.source.study.name, "steps": plan.steps})
    for number, seed in todo:
        study.enqueue_trial(plan.params(number, seed), user_attrs={"confirm_of": number, SEED_PARAM: seed})
    return cfg, study, waiting + len(todo)


def store_summary(study: optuna.Study, conf: Confirmation) -> None:
    study.set_user_attr(ATTR_SUMMARY, conf.to_json())


@dataclass
class ConfirmResult:
    confirmation: Confirmation
    ran: int  # runs done by this call
    interrupted: bool = False
    summary: Any = None  # the orchestrator's RunSummary, when runs were needed


def confirm(
    path: str | Path,
    top: int = DEFAULT_TOP,
    seeds: int = DEFAULT_SEEDS,
    steps: int | None = None,
    display: Any = None,
) -> ConfirmResult:
    """``hpo confirm``: plan, enqueue what is missing, run it in the study's workers, summarize and store."""
    from hpo import api
    from hpo.storage import open_storage

    p = plan(path, top, seeds, steps)  # bad input stops here: nothing written
    storage = open_storage(p.source.storage_url, create=False)
    cfg, study, todo = prepare(p, storage)
    summary = None
    if todo:
        summary = api.run(path, display=display, config=cfg)
    trials = study.get_trials(deepcopy=False)
    conf = confirmation(p, trials)
    if conf.complete:
        store_summary(study, conf)
    return ConfirmResult(conf, summary.ran if summary else 0, bool(summary and summary.interrupted), summary)


def stored(cfg: StudyConfig, study: optuna.Study) -> Confirmation | None:
    """The stored confirmation of a search study (None when none has finished), read from its storage."""
    from hpo.store import study_store

    conf_study = load_study(study_store(study).storage, cfg.study.name)
    if conf_study is None:
        return None
    raw = conf_study.user_attrs.get(ATTR_SUMMARY)
    if not isinstance(raw, dict):
        return None
    try:
        return Confirmation.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None  # written by something else: not trusted


def winner_trial(cfg: StudyConfig, study: optuna.Study) -> tuple[TrialRecord, Confirmation] | None:
    """The confirmed winner as a search trial, with its confirmation; None without a confirmation."""
    conf = stored(cfg, study)
    if conf is None or conf.winner is None:
        return None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == conf.winner]
    if not found or found[0].state != TrialState.COMPLETE:
        return None
    return TrialRecord.from_trial(found[0]), conf


def describe(conf: Confirmation) -> str:
    """One line on what the confirmation found, for `hpo best` and `hpo export`."""
    w = next((c for c in conf.configs if c.trial == conf.winner), None)
    if w is None:
        return "confirmation has no winner"
    same = (
        "the search's best too"
        if conf.winner == conf.search_best
        else f"the search's best was trial {conf.search_best}"
    )
    return (
        f"confirmed winner: trial {w.trial}, {conf.metric} {w.mean:.4g} ± {w.std:.2g} (mean ± std over "
        f"{len(w.values)} seeds, 95% CI {w.ci_low:.4g}–{w.ci_high:.4g}, P(best) {w.p_best:.2f}); {same}"
    )


def confirmed_best(path: str | Path) -> tuple[TrialRecord, Confirmation] | None:
    """`hpo best`'s and `hpo export`'s question: the confirmed winner of a file's study, if confirmed."""
    import warnings

    from hpo.config import load_study_file
    from hpo.storage import load_existing

    cfg = load_study_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a changed study file: the caller has already said so
        study = load_existing(cfg)
    return winner_trial(cfg, study)
