"""A small in-memory replay harness for pruning benchmarks (shared by pruning_replay.py and pruner_robustness.py).

A study is replayed the way hpo's orchestrator drives one, minus the training: Optuna ask/tell in memory, one
trial at a time; each trial's learning curve comes from a *curve function* (recorded curves, or a synthetic
benchmark); at each eval point the value is reported (``trial.report(value, step)``, step in optimizer steps)
and, below the trial's full length, ``trial.should_prune()`` is asked, exactly as ``hpo.orchestrator`` does.
Pruners and samplers are built through hpo's own registries (``hpo.pruners`` / ``hpo.samplers`` configs and
their ``.build()``), so what is measured is what a study file gets.

Training cost is counted in steps: a trial stopped after its eval at step s cost s steps; a complete one cost
``max_steps``. A budget is a number of trials, a number of steps, or both (whichever runs out first); a trial
the step budget cuts short ends there, not fully trained. The result is the best *fully trained* trial (by
the value it reported at ``max_steps``), as a study's best trial is.

Only optuna and pydantic (and hpo's torch-free registry modules) are imported: this runs in the small
``benchmarks/.venv-mfpb`` venv too.
"""

from __future__ import annotations

import math
import os
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

# A curve function: (params, trial number) -> [(step, value), ...] in increasing step order, the last step
# being the full length. The trial number lets a replay draw per-trial noise (e.g. which seed's curve).
CurveFn = Callable[[dict[str, Any], int], Sequence[tuple[int, float]]]

optuna.logging.set_verbosity(optuna.logging.ERROR)  # e.g. GridSampler re-running an exhausted grid
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # Wilcoxon, Patient


@dataclass
class ReplayResult:
    best_value: float | None  # the value the best fully trained trial reported at max_steps
    best_params: dict[str, Any] | None
    steps: int  # training steps spent by all trials
    n_trials: int
    n_complete: int
    n_pruned: int
    n_cut: int = 0  # trials the step budget ended before their full length
    complete_params: list[dict[str, Any]] = field(default_factory=list)


def replay(
    space: Mapping[str, BaseDistribution],
    curve: CurveFn,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    max_steps: int,
    *,
    budget_trials: int | None = None,
    budget_steps: int | None = None,
    direction: str = "minimize",
    study_name: str = "replay",
) -> ReplayResult:
    """Run one replayed study; see the module docstring for the rules."""
    if budget_trials is None and budget_steps is None:
        raise ValueError("give budget_trials, budget_steps or both")
    # A fixed study name: HyperbandPruner assigns brackets by a hash of the study name and trial number.
    study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner, study_name=study_name)
    dists = dict(space)
    spent = 0
    n_trials = n_pruned = n_cut = 0
    minimize = direction == "minimize"
    best: tuple[float, dict[str, Any]] | None = None
    complete: list[dict[str, Any]] = []
    while (budget_trials is None or n_trials < budget_trials) and (budget_steps is None or spent < budget_steps):
        trial = study.ask(dists)
        n_trials += 1
        params = trial.params
        last = 0
        state = TrialState.COMPLETE
        value = math.nan
        for step, value in curve(params, trial.number):
            cost = step - last
            if budget_steps is not None and spent + cost > budget_steps:
                spent = budget_steps  # the budget ends inside this eval interval
                state = TrialState.PRUNED
                n_cut += 1
                break
            spent += cost
            last = step
            trial.report(value, step)
            if step < max_steps and trial.should_prune():
                state = TrialState.PRUNED
                n_pruned += 1
                break
        if state == TrialState.COMPLETE:
            if last != max_steps:
                raise ValueError(f"the curve of trial {trial.number} ends at step {last}, not {max_steps}")
            study.tell(trial, value)
            complete.append(params)
            if best is None or (value < best[0] if minimize else value > best[0]):
                best = (value, params)
        else:
            study.tell(trial, state=TrialState.PRUNED)
    return ReplayResult(
        best_value=None if best is None else best[0],
        best_params=None if best is None else best[1],
        steps=spent,
        n_trials=n_trials,
        n_complete=len(complete),
        n_pruned=n_pruned,
        n_cut=n_cut,
        complete_params=complete,
    )


def candidate_pruners(max_steps: int) -> dict[str, Any]:
    """Candidate defaults, in a trial's own units (warm-up as a share of its full length)."""
    from hpo import pruners as P

    def med(frac: float, **kw: Any) -> Any:
        return P.MedianPrunerConfig(name="median", n_warmup_steps=int(max_steps * frac), **kw)

    return {
        "median, warmup 1/10": med(1 / 10),
        "median, warmup 1/4": med(1 / 4),
        "median, warmup 1/2": med(1 / 2),
        "median, startup 10, warmup 1/4": med(1 / 4, n_startup_trials=10),
        "percentile 75 (prune worst 1/4), warmup 1/4": P.PercentilePrunerConfig(
            name="percentile", percentile=75.0, n_warmup_steps=int(max_steps / 4)
        ),
        "hyperband, min_resource 1/10": P.HyperbandPrunerConfig(name="hyperband", min_resource=max_steps // 10),
    }


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    s = sorted(xs)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for p in ("optuna", "numpy", "mf-prior-bench"):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return {
        "cpu_cores": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        **versions,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str | None = None) -> str:
    """A markdown table (printed and returned): right-aligned except the first column unless told."""
    aligns = aligns or "l" + "r" * (len(headers) - 1)
    cells = [[str(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in aligns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    text = "\n".join(lines)
    print(text)
    return text
