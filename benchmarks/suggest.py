"""Does `hpo suggest` help? A second study from the suggested (narrowed) file vs a second study with the
original ranges, replayed offline on the recorded quickstart grid.

The recorded grid (``benchmarks/data/quickstart_grid.json``: the quickstart model, 4 learning rates x 2 batch
sizes x 2 dropouts x 2 weight decays, 3 training seeds, an eval every 25 of 300 steps) is turned into a
continuous surrogate of the quickstart's search space: each seed's eval-loss curve is interpolated
multilinearly in (log learning rate, dropout, weight decay) between the recorded points, and linearly
extrapolated beyond them (learning rates below 3e-4 down to the quickstart's 1e-5, dropout above 0.15 up to
0.3), capped at the loss of a uniform guess, ln(2048). The batch size is searched over the recorded {16, 32}
(the quickstart also has 8, which was not recorded). Each trial is served one seed's curve (drawn from the
replay seed and the trial number), reported at the quickstart's cadence (every 50 steps) to the quickstart's
median pruner, as ``hpo.orchestrator`` does; a trial's training time is its steps times the recorded mean
seconds per step of its batch size.

Protocol, per replay seed: study A (the quickstart's TPE settings, N trials) on the original space; then,
with the same trial count N and the same sampler seed, three second studies:
  original   the original ranges;
  +best      the original ranges with A's best trial enqueued first (warm start alone);
  suggested  ``hpo.suggest.narrow`` on A's complete trials, A's best enqueued first (what `hpo suggest` writes).
Reported per arm over the seeds: the best value found (perplexity of the best complete trial, as the study
saw it) and its true quality (the mean over the 3 recorded seeds of the chosen configuration), median and
interquartile range; how often the study reached A's best value, and the median training seconds (replayed)
and trials until it did. Sampling goes through hpo's own code (sampler registry, ``hpo.conditional.ask``).

Usage: python benchmarks/suggest.py [--quick] [--seeds 20] [--trials 16]
Prints a table and writes JSON (default benchmarks/data/suggest.json).
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hpo from this checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

import optuna  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402
from replay import machine, median, print_table, quantile  # noqa: E402

from hpo.conditional import ask  # noqa: E402
from hpo.pruners import MedianPrunerConfig  # noqa: E402
from hpo.samplers import TPESamplerConfig  # noqa: E402
from hpo.space import ParamSpec  # noqa: E402
from hpo.suggest import narrow  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)

DATA = ROOT / "benchmarks" / "data" / "quickstart_grid.json"
OUT = ROOT / "benchmarks" / "data" / "suggest.json"
EVAL_EVERY = 50
CAP = math.log(2048)  # a uniform guess over the quickstart's vocabulary
_SPEC: TypeAdapter[Any] = TypeAdapter(ParamSpec)
# studies/quickstart.yaml's space, with the batch sizes the grid recorded.
SPACE = {
    "training.learning_rate": _SPEC.validate_python({"type": "float", "low": 1e-5, "high": 1e-2, "log": True}),
    "training.per_device_train_batch_size": _SPEC.validate_python({"type": "categorical", "choices": [16, 32]}),
    "model.dropout": _SPEC.validate_python({"type": "float", "low": 0.0, "high": 0.3}),
    "training.weight_decay": _SPEC.validate_python({"type": "float", "low": 0.0, "high": 0.1}),
}


def _weights(xs: list[float], x: float) -> list[tuple[int, float]]:
    """Linear interpolation (extrapolation at the ends) weights of ``x`` over the sorted points ``xs``."""
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return [(i, 1.0 - t), (i + 1, t)]


class Surrogate:
    """The recorded grid as a continuous function of the quickstart's parameters (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.data = data
        self.max_steps: int = data["max_steps"]
        steps: list[int] = data["steps"]
        self.keep = [i for i, s in enumerate(steps) if s % EVAL_EVERY == 0]
        self.steps = [steps[i] for i in self.keep]
        g = data["grid"]
        self.lrs = [math.log10(v) for v in g["learning_rate"]]
        self.drops, self.wds = list(g["dropout"]), list(g["weight_decay"])
        self.seeds: list[int] = data["seeds"]
        self.curves: dict[tuple[Any, ...], list[float]] = {}
        per_batch: dict[int, list[float]] = {}
        for r in data["runs"]:
            key = (r["learning_rate"], r["per_device_train_batch_size"], r["dropout"], r["weight_decay"], r["seed"])
            self.curves[key] = [r["eval_loss"][i] for i in self.keep]
            per_batch.setdefault(r["per_device_train_batch_size"], []).append(r["train_time"] / self.max_steps)
        self.step_seconds = {b: sum(v) / len(v) for b, v in per_batch.items()}
        self.grid = g

    def curve(self, p: dict[str, Any], seed: int) -> list[float]:
        lr = math.log10(p["learning_rate"])
        out = [0.0] * len(self.steps)
        for i, wi in _weights(self.lrs, lr):
            for j, wj in _weights(self.drops, p["dropout"]):
                for k, wk in _weights(self.wds, p["weight_decay"]):
                    key = (
                        self.grid["learning_rate"][i],
                        p["per_device_train_batch_size"],
                        self.drops[j],
                        self.wds[k],
                        seed,
                    )
                    w = wi * wj * wk
                    for s, v in enumerate(self.curves[key]):
                        out[s] += w * v
        return [min(CAP, v) for v in out]

    def quality(self, p: dict[str, Any]) -> float:
        """The configuration's true final eval loss: the mean over the recorded seeds."""
        return sum(self.curve(p, s)[-1] for s in self.seeds) / len(self.seeds)


def run_study(
    sur: Surrogate,
    space: dict[str, Any],
    seed: int,
    n_trials: int,
    enqueue: dict[str, Any] | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    """One replayed study (the quickstart's TPE and median pruner); values are eval losses (minimized)."""
    sampler = TPESamplerConfig(name="tpe", seed=seed, n_startup_trials=6).for_study()
    pruner = MedianPrunerConfig(name="median", n_startup_trials=4, n_warmup_steps=50).build()
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    if enqueue is not None:
        study.enqueue_trial(enqueue)
    names = {p: p.rsplit(".", 1)[-1] for p in SPACE}
    rng = random.Random(seed * 1_000_003)
    seconds, hit_at, hit_trials = 0.0, None, None
    complete: list[tuple[int, float, dict[str, Any]]] = []
    for _ in range(n_trials):
        trial = ask(study, space)
        p = dict(trial.params)
        full = {names[k]: p.get(names[k]) for k in SPACE}
        curve = sur.curve(full, rng.choice(sur.seeds))
        per_step = sur.step_seconds[full["per_device_train_batch_size"]]
        pruned = False
        for step, value in zip(sur.steps, curve, strict=True):
            trial.report(value, step)
            if step < sur.max_steps and trial.should_prune():
                seconds += step * per_step
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if pruned:
            continue
        seconds += sur.max_steps * per_step
        study.tell(trial, curve[-1])
        complete.append((trial.number, curve[-1], p))
        if target is not None and hit_at is None and curve[-1] <= target:
            hit_at, hit_trials = seconds, trial.number + 1
    best = min(complete, key=lambda t: (t[1], t[0])) if complete else None
    best_full = {names[k]: best[2][names[k]] for k in SPACE} if best else None
    return {
        "best_value": best[1] if best else None,
        "best_params": best_full,
        "true_quality": sur.quality(best_full) if best_full else None,
        "complete": complete,
        "seconds": seconds,
        "hit_seconds": hit_at,
        "hit_trials": hit_trials,
    }


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    vals = [math.exp(c["best_value"]) for c in cells if c["best_value"] is not None]
    true = [math.exp(c["true_quality"]) for c in cells if c["true_quality"] is not None]
    hits = [c for c in cells if c["hit_seconds"] is not None]
    return {
        "best_ppl_median": median(vals),
        "best_ppl_iqr": [quantile(vals, 0.25), quantile(vals, 0.75)],
        "true_ppl_median": median(true),
        "true_ppl_iqr": [quantile(true, 0.25), quantile(true, 0.75)],
        "reached_first_best": len(hits) / len(cells),
        "seconds_to_first_best_median": median([c["hit_seconds"] for c in hits]) if hits else None,
        "trials_to_first_best_median": median([c["hit_trials"] for c in hits]) if hits else None,
        "seconds_total_median": median([c["seconds"] for c in cells]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--seeds", type=int, default=20, help="replay seeds (0..N-1)")
    ap.add_argument("--trials", type=int, default=16, help="trials per study (the quickstart's 16)")
    ap.add_argument("--quick", action="store_true", help="3 seeds, 8 trials (seconds)")
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.trials = 3, 8
    load_before = [round(x, 2) for x in __import__("os").getloadavg()]
    sur = Surrogate(Path(args.data))
    t0 = time.perf_counter()
    arms: dict[str, list[dict[str, Any]]] = {"original": [], "+best": [], "suggested": []}
    firsts: list[dict[str, Any]] = []
    narrowed: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        first = run_study(sur, SPACE, seed, args.trials)
        firsts.append(first)
        target = first["best_value"]
        s = narrow(SPACE, first["complete"], "minimize")
        best_params = {k.rsplit(".", 1)[-1]: v for k, v in s.best.items()}
        narrowed.append({k: v.model_dump() for k, v in s.space.items()})
        second = seed + 10_000  # the second studies share a seed, different from the first study's
        arms["original"].append(run_study(sur, SPACE, second, args.trials, target=target))
        arms["+best"].append(run_study(sur, SPACE, second, args.trials, best_params, target=target))
        arms["suggested"].append(run_study(sur, s.space, second, args.trials, best_params, target=target))
    wall = time.perf_counter() - t0
    summary = {arm: summarize(cells) for arm, cells in arms.items()}
    first_sum = summarize(firsts)

    def iqr(x: list[float]) -> str:
        return f"{x[0]:.0f}–{x[1]:.0f}"

    rows = [
        ["first study (A)", f"{first_sum['best_ppl_median']:.0f} ({iqr(first_sum['best_ppl_iqr'])})",
         f"{first_sum['true_ppl_median']:.0f} ({iqr(first_sum['true_ppl_iqr'])})", "-", "-", "-"],
    ]  # fmt: skip
    for arm, r in summary.items():
        secs = r["seconds_to_first_best_median"]
        rows.append(
            [
                f"second: {arm}",
                f"{r['best_ppl_median']:.0f} ({iqr(r['best_ppl_iqr'])})",
                f"{r['true_ppl_median']:.0f} ({iqr(r['true_ppl_iqr'])})",
                f"{r['reached_first_best']:.0%}",
                "-" if secs is None else f"{secs:.0f} s",
                "-" if r["trials_to_first_best_median"] is None else f"{r['trials_to_first_best_median']:.0f}",
            ]
        )
    print(
        f"\n{args.seeds} replay seeds, {args.trials} trials per study; perplexity median (IQR); "
        f"'reached': share of seeds whose second study matched A's best value; time and trials: median over those\n"
    )
    table = print_table(
        ["study", "best perplexity (seen)", "true perplexity of that config", "reached A's best", "time to it",
         "trials to it"],
        rows,
    )  # fmt: skip
    # Paired by seed (the second studies share their sampler seed): how often, and by how much, an arm's
    # chosen configuration is truly better than the other's.
    pairs: dict[str, dict[str, Any]] = {}
    for a, b in (("+best", "original"), ("suggested", "original"), ("suggested", "+best")):
        diffs = [
            math.exp(x["true_quality"]) - math.exp(y["true_quality"])
            for x, y in zip(arms[a], arms[b], strict=True)
            if x["true_quality"] is not None and y["true_quality"] is not None
        ]
        pairs[f"{a} vs {b}"] = {
            "better": sum(d < 0 for d in diffs) / len(diffs),
            "worse": sum(d > 0 for d in diffs) / len(diffs),
            "median_diff_ppl": median(diffs),
        }
        print(
            f"{a} vs {b}: truly better in {pairs[f'{a} vs {b}']['better']:.0%} of seeds, worse in "
            f"{pairs[f'{a} vs {b}']['worse']:.0%}; median difference {median(diffs):+.1f} perplexity"
        )
    load_after = [round(x, 2) for x in __import__("os").getloadavg()]
    print(f"\nwall {wall:.1f} s; load average before {load_before}, after {load_after} (shared machine)")
    out = {
        "what": "hpo suggest: second study from the narrowed file vs the original ranges (replayed grid)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "seeds": args.seeds,
        "trials": args.trials,
        "grid": str(Path(args.data).relative_to(ROOT)) if Path(args.data).is_relative_to(ROOT) else args.data,
        "machine": {**machine(), "load_before": load_before, "load_after": load_after},
        "wall_s": round(wall, 2),
        "first": first_sum,
        "arms": summary,
        "paired": pairs,
        "narrowed_spaces_first_10_seeds": narrowed[:10],
        "table": table,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
