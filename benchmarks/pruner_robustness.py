"""Pruners when early evals mislead: TPE + each pruner on mf-prior-bench's synthetic MFHartmann curves.

MFHartmann (mf-prior-bench) has a fidelity z = 1..100; at z = 100 it is the exact Hartmann function, below it
the objective is flattened by a bias and noised, both shrinking with log z. The variants good / moderate / bad
/ terrible set how much the low-fidelity ranking disagrees with the final one (on `terrible`, early values
invert the ranking of the best region). A trial is one learning curve over z: it reports the value at every
``--eval-every`` z (as hpo reports an eval every ``fidelity.eval_every`` steps), is asked ``should_prune``
below z = 100, and costs the z it reached.

Protocol (as in shared/NOTES.md): hpo's default sampler (TPE, n_startup_trials 10, seeded), a budget of 30
full runs in fidelity units (3 000 z summed over all trials; a trial the budget cuts short is not fully
trained), 10 seeds; the figure is the median over seeds of the regret of the best fully trained trial (its
value at z = 100 minus the global optimum; lower is better). The default run uses 30 seeds (seeds 0-29), on
the four mfh6 variants: with 10, the spread between seeds (quartiles in the table) hides differences of
0.3; ``--seeds 10 --bench mfh6_good,mfh6_terrible`` is the notes' exact protocol. Pruners are built through
hpo's registry (``hpo.pruners``), with settings in fidelity units where they take steps.

mf-prior-bench pins an old numpy, so it lives in its own venv; one command creates it and runs this:

  make bench-pruners                # = benchmarks/.venv-mfpb/bin/python benchmarks/pruner_robustness.py

Usage: python benchmarks/pruner_robustness.py [--quick] [--bench mfh6_good,mfh3_terrible,...] [--seeds 30]
       [--candidates] (also the candidate defaults of replay.py)
Prints a table and writes JSON (default benchmarks/results/pruner_robustness.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hpo from this checkout

from replay import candidate_pruners, machine, median, print_table, quantile, replay  # noqa: E402

from hpo import pruners as P  # noqa: E402
from hpo.samplers import TPESamplerConfig  # noqa: E402

MAX_Z = 100
FULL_RUNS = 30


def pruner_rows(max_steps: int) -> dict[str, P._Pruner]:
    """The rows of the table: hpo's defaults as a study file gets them, and scaled variants.

    Settings that are in steps are given in fidelity units, scaled from the quickstart (300 steps) where the
    row says "quickstart-style": its median pruner warms up for 50 of 300 steps, i.e. a sixth of the run.
    """
    sixth = max_steps // 6
    return {
        "none": P.NopPrunerConfig(name="none"),
        "median, warmup 0 (Optuna's; hpo's old default)": P.MedianPrunerConfig(name="median"),
        "median, hpo default (warmup max_steps/6)": P.default_pruner(max_steps),
        "median, quickstart-style (startup 4, warmup 1/6)": P.MedianPrunerConfig(
            name="median", n_startup_trials=4, n_warmup_steps=sixth
        ),
        "successive_halving (hpo default)": P.SuccessiveHalvingPrunerConfig(name="successive_halving"),
        "hyperband (hpo default)": P.HyperbandPrunerConfig(name="hyperband"),
        "wilcoxon (hpo default)": P.WilcoxonPrunerConfig(name="wilcoxon"),
        "patient(median), patience 2": P.PatientPrunerConfig(
            name="patient", patience=2, wrapped=P.MedianPrunerConfig(name="median")
        ),
    }


class MFHCurves:
    """The curve function of one MFHartmann benchmark: the value at each eval z, and the exact final value."""

    def __init__(self, name: str, eval_every: int) -> None:
        import mfpbench

        self.bench = mfpbench.get(name)
        self.dims = len(self.bench.space)
        self.zs = list(range(eval_every, MAX_Z + 1, eval_every))
        if self.zs[-1] != MAX_Z:
            self.zs.append(MAX_Z)
        opt = self.bench.optimum
        self.optimum = self.value({f"X_{i}": getattr(opt, f"X_{i}") for i in range(self.dims)}, MAX_Z)

    def value(self, params: dict[str, Any], z: int) -> float:
        xs = tuple(float(params[f"X_{i}"]) for i in range(self.dims))
        return float(self.bench.mfh(z=z, Xs=xs))

    def __call__(self, params: dict[str, Any], number: int) -> list[tuple[int, float]]:
        return [(z, self.value(params, z)) for z in self.zs]

    def space(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {f"X_{i}": FloatDistribution(0.0, 1.0) for i in range(self.dims)}


def run_cell(curves: MFHCurves, pruner_cfg: P._Pruner, seed: int, bench: str) -> dict[str, Any]:
    res = replay(
        curves.space(),
        curves,
        TPESamplerConfig(name="tpe", seed=seed).build(),
        pruner_cfg.build(),
        MAX_Z,
        budget_steps=FULL_RUNS * MAX_Z,
        study_name=f"{bench}-{seed}",
    )
    regret = math.inf if res.best_params is None else curves.value(res.best_params, MAX_Z) - curves.optimum
    return {
        "seed": seed,
        "regret": regret,
        "trials": res.n_trials,
        "complete": res.n_complete,
        "pruned": res.n_pruned,
        "steps": res.steps,
    }


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    regrets = [c["regret"] for c in cells]
    return {
        "median_regret": median(regrets),
        "q25_regret": quantile(regrets, 0.25),
        "q75_regret": quantile(regrets, 0.75),
        "mean_trials": sum(c["trials"] for c in cells) / len(cells),
        "mean_complete": sum(c["complete"] for c in cells) / len(cells),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=",".join(f"mfh6_{v}" for v in ("good", "moderate", "bad", "terrible")))
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=5, help="report every N fidelity units (default 5)")
    ap.add_argument("--pruners", default="", help="comma-separated row numbers (1-based) to run; default all")
    ap.add_argument("--candidates", action="store_true", help="also the candidate defaults of replay.py")
    ap.add_argument("--quick", action="store_true", help="3 seeds, mfh6_good and mfh6_terrible (~1 min)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "pruner_robustness.json"))
    args = ap.parse_args()
    if args.quick:
        args.seeds = 3
        args.bench = "mfh6_good,mfh6_terrible"

    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    rows = pruner_rows(MAX_Z)
    if args.candidates:
        rows.update(candidate_pruners(MAX_Z))
    if args.pruners:
        keep = {int(i) - 1 for i in args.pruners.split(",")}
        rows = {k: v for i, (k, v) in enumerate(rows.items()) if i in keep}
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for bench in benches:
        curves = MFHCurves(bench, args.eval_every)
        for label, cfg in rows.items():
            cells = [run_cell(curves, cfg, seed, bench) for seed in range(args.seeds)]
            results.setdefault(label, {"pruner": cfg.model_dump(), "benchmarks": {}})
            results[label]["benchmarks"][bench] = {**summarize(cells), "cells": cells}
            s = results[label]["benchmarks"][bench]
            print(f"  {bench:16s} {label:50s} median regret {s['median_regret']:.3f}", file=sys.stderr)
    wall = time.perf_counter() - t0

    headers = ["pruner", *(f"{b} regret" for b in benches), *(f"{b} trials" for b in benches)]
    table_rows = []
    for label, r in results.items():
        b = r["benchmarks"]
        table_rows.append(
            [
                label,
                *(f"{b[x]['median_regret']:.3f} ({b[x]['q25_regret']:.2f}–{b[x]['q75_regret']:.2f})" for x in benches),
                *(f"{b[x]['mean_trials']:.0f} ({b[x]['mean_complete']:.0f} full)" for x in benches),
            ]
        )
    print(
        f"\nTPE (hpo default, n_startup_trials 10), budget {FULL_RUNS} full runs ({FULL_RUNS * MAX_Z} z), "
        f"{args.seeds} seeds, eval every {args.eval_every} z; median regret of the best fully trained trial "
        "(quartiles); trials per study (mean; fully trained)\n"
    )
    table = print_table(headers, table_rows)
    print(f"\n{wall:.0f} s")
    out = {
        "command": " ".join(["python", "benchmarks/pruner_robustness.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "wall_s": round(wall, 1),
        "protocol": {
            "sampler": "tpe (hpo default)",
            "budget_z": FULL_RUNS * MAX_Z,
            "seeds": args.seeds,
            "eval_every": args.eval_every,
        },
        "table": table,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
