"""Pruning vs an exhaustive grid: replay the recorded quickstart grid with each sampler x pruner, offline.

The grid (``benchmarks/data/quickstart_grid.json``, recorded once by ``record_grid.py`` with hpo itself) holds
the eval-loss curves of the quickstart model for 4 learning rates x 2 batch sizes x 2 dropouts x 2 weight
decays = 32 configs, 3 training seeds each, an eval every 25 of the 300 steps. A replayed study searches a
categorical space over the grid values; each trial draws one of the 3 recorded seeds (at random, seeded by
the replay seed and the trial number) and is served that seed's curve at hpo's eval cadence (``--eval-every``,
default 50 as in the quickstart), reported to the pruner as hpo's orchestrator does (``replay.py``).

Definitions:
- a config's quality is its mean final eval loss over the 3 seeds; the grid's best is the best quality;
- a replayed study picks its best fully trained trial by the final value it saw (one seed's), and its gap is
  (quality of that config - grid's best) / grid's best, in %;
- cost is training steps, as a fraction of the exhaustive grid's (32 configs x 300 steps = 9 600: one seed).

Two budgets: (1) as many trials as the grid has configs (32) — what share of the steps does pruning spend,
and what does it lose?; (2) 35% of the grid's steps (3 360 = 11.2 full runs), trials until spent — how
close to the best does each combination get? The target: within 1% of the best with <= 35% of the steps.

Usage: python benchmarks/pruning_replay.py [--quick] [--reps 100] [--eval-every 50|25] [--candidates]
Prints a table and writes JSON (default benchmarks/results/pruning_replay.json).
"""

from __future__ import annotations

import argparse
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

from optuna.distributions import CategoricalDistribution  # noqa: E402
from replay import candidate_pruners, machine, median, print_table, replay  # noqa: E402

from hpo import pruners as P  # noqa: E402
from hpo import samplers as S  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "quickstart_grid.json"
KEYS = ("learning_rate", "per_device_train_batch_size", "dropout", "weight_decay")
STEP_SHARE = 0.35  # budget (2) and the target
GAP_TARGET = 1.0  # %


def pruner_rows(max_steps: int) -> dict[str, P._Pruner]:
    """Pruners as a study file names them (quickstart units: steps of a 300-step trial)."""
    return {
        "none": P.NopPrunerConfig(name="none"),
        "median, warmup 0 (Optuna's; hpo's old default)": P.MedianPrunerConfig(name="median"),
        "median, hpo default (warmup max_steps/6 = 50)": P.default_pruner(max_steps),
        "median, quickstart (startup 4, warmup 50)": P.MedianPrunerConfig(
            name="median", n_startup_trials=4, n_warmup_steps=50
        ),
        "successive_halving": P.SuccessiveHalvingPrunerConfig(name="successive_halving"),
        "hyperband": P.HyperbandPrunerConfig(name="hyperband"),
        "wilcoxon": P.WilcoxonPrunerConfig(name="wilcoxon"),
        "patient(median), patience 2": P.PatientPrunerConfig(
            name="patient", patience=2, wrapped=P.MedianPrunerConfig(name="median")
        ),
    }


class Grid:
    """The recorded grid as a curve function, with each config's quality."""

    def __init__(self, path: Path, eval_every: int) -> None:
        data = json.loads(path.read_text())
        self.data = data
        self.max_steps: int = data["max_steps"]
        self.grid: dict[str, list[Any]] = {k: data["grid"][k] for k in KEYS}
        steps: list[int] = data["steps"]
        if eval_every % (steps[1] - steps[0]) or self.max_steps % eval_every:
            raise SystemExit(f"--eval-every must be a multiple of {steps[1] - steps[0]} dividing {self.max_steps}")
        keep = [i for i, s in enumerate(steps) if s % eval_every == 0]
        self.steps = [steps[i] for i in keep]
        self.curves: dict[tuple[Any, ...], list[list[float]]] = {}
        for r in data["runs"]:
            self.curves.setdefault(tuple(r[k] for k in KEYS), []).append([r["eval_loss"][i] for i in keep])
        n = math.prod(len(v) for v in self.grid.values())
        if len(self.curves) != n:
            raise SystemExit(f"{path}: {len(self.curves)} configs recorded, the grid has {n}")
        self.quality = {c: sum(s[-1] for s in seeds) / len(seeds) for c, seeds in self.curves.items()}
        self.best = min(self.quality.values())
        self.total_steps = n * self.max_steps  # the exhaustive grid, one seed
        self.rep = 0

    def space(self) -> dict[str, CategoricalDistribution]:
        return {k: CategoricalDistribution(self.grid[k]) for k in KEYS}

    def __call__(self, params: dict[str, Any], number: int) -> list[tuple[int, float]]:
        seeds = self.curves[tuple(params[k] for k in KEYS)]
        curve = seeds[random.Random(self.rep * 1_000_003 + number).randrange(len(seeds))]
        return list(zip(self.steps, curve, strict=True))

    def gap(self, params: dict[str, Any] | None) -> float:
        if params is None:
            return math.inf
        return 100.0 * (self.quality[tuple(params[k] for k in KEYS)] - self.best) / self.best


def sampler_rows(grid: Grid) -> dict[str, Any]:
    return {
        "random": lambda seed: S.RandomSamplerConfig(name="random", seed=seed).build(),
        "tpe": lambda seed: S.TPESamplerConfig(name="tpe", seed=seed).build(),
        "grid": lambda seed: S.GridSamplerConfig(name="grid", seed=seed).build(grid.grid),
    }


def run_cell(grid: Grid, sampler_fn: Any, pruner: P._Pruner, rep: int, budget: str) -> dict[str, Any]:
    grid.rep = rep
    n = len(grid.curves)
    res = replay(
        grid.space(),
        grid,
        sampler_fn(rep),
        pruner.build(),
        grid.max_steps,
        budget_trials=n if budget == "trials" else None,
        budget_steps=int(STEP_SHARE * grid.total_steps) if budget == "steps" else None,
        study_name=f"replay-{rep}",
    )
    return {
        "rep": rep,
        "gap": grid.gap(res.best_params),
        "steps_share": res.steps / grid.total_steps,
        "trials": res.n_trials,
        "complete": res.n_complete,
        "distinct": len({tuple(p[k] for k in KEYS) for p in res.complete_params}),
    }


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    gaps = [c["gap"] for c in cells]
    return {
        "median_gap": median(gaps),
        "within_target": sum(g <= GAP_TARGET for g in gaps) / len(gaps),
        "mean_steps_share": sum(c["steps_share"] for c in cells) / len(cells),
        "mean_trials": sum(c["trials"] for c in cells) / len(cells),
        "mean_complete": sum(c["complete"] for c in cells) / len(cells),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--reps", type=int, default=100, help="replayed studies per cell (seeds 0..N-1)")
    ap.add_argument("--eval-every", type=int, default=50, help="eval cadence in steps (25 or 50; default 50)")
    ap.add_argument("--samplers", default="random,tpe,grid")
    ap.add_argument("--candidates", action="store_true", help="also the candidate defaults of replay.py")
    ap.add_argument("--quick", action="store_true", help="3 reps, TPE only (~1 min)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "pruning_replay.json"))
    args = ap.parse_args()
    if args.quick:
        args.reps = 3
        args.samplers = "tpe"

    grid = Grid(Path(args.data), args.eval_every)
    samplers = {k: v for k, v in sampler_rows(grid).items() if k in args.samplers.split(",")}
    ranked = sorted(grid.quality.items(), key=lambda kv: kv[1])
    print(
        f"grid: {len(grid.curves)} configs x {len(grid.data['seeds'])} seeds, {grid.max_steps} steps, "
        f"eval every {args.eval_every}; best mean final eval_loss {grid.best:.4f} "
        f"({dict(zip(KEYS, ranked[0][0], strict=True))}); configs within {GAP_TARGET}%: "
        f"{sum(100 * (q - grid.best) / grid.best <= GAP_TARGET for _, q in ranked)}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    prows = pruner_rows(grid.max_steps)
    if args.candidates:
        prows.update(candidate_pruners(grid.max_steps))
    results: list[dict[str, Any]] = []
    for s_name, s_fn in samplers.items():
        for p_name, p_cfg in prows.items():
            row: dict[str, Any] = {"sampler": s_name, "pruner": p_name, "pruner_config": p_cfg.model_dump()}
            for budget in ("trials", "steps"):
                cells = [run_cell(grid, s_fn, p_cfg, rep, budget) for rep in range(args.reps)]
                row[budget] = {**summarize(cells), "cells": cells}
            results.append(row)
            print(f"  {s_name:7s} {p_name:45s} {time.perf_counter() - t0:6.0f} s", file=sys.stderr)
    wall = time.perf_counter() - t0

    headers = [
        "sampler",
        "pruner",
        "32 trials: steps",
        "gap (median)",
        f"≤{GAP_TARGET:g}%",
        "full runs",
        f"{STEP_SHARE:.0%} of steps: gap (median)",
        f"≤{GAP_TARGET:g}%",
        "trials",
    ]
    rows = []
    for r in results:
        a, b = r["trials"], r["steps"]
        rows.append(
            [
                r["sampler"],
                r["pruner"],
                f"{a['mean_steps_share']:.0%}",
                f"{a['median_gap']:.2f}%",
                f"{a['within_target']:.0%}",
                f"{a['mean_complete']:.1f}",
                f"{b['median_gap']:.2f}%",
                f"{b['within_target']:.0%}",
                f"{b['mean_trials']:.0f}",
            ]
        )
    print(
        f"\n{args.reps} replayed studies per row; steps as a share of the exhaustive grid's "
        f"({grid.total_steps}); gap = mean-over-seeds final eval_loss of the chosen config vs the grid's best "
        f"({grid.best:.4f}); '≤{GAP_TARGET:g}%' = share of studies within {GAP_TARGET:g}%\n"
    )
    table = print_table(headers, rows, "llrrrrrrr")
    print(f"\n{wall:.0f} s")
    out = {
        "command": " ".join(["python", "benchmarks/pruning_replay.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "wall_s": round(wall, 1),
        "grid": {
            "data": str(Path(args.data)),
            "recorded": grid.data.get("recorded"),
            "best_quality": grid.best,
            "total_steps": grid.total_steps,
            "eval_every": args.eval_every,
            "ranking": [[dict(zip(KEYS, c, strict=True)), round(q, 4)] for c, q in ranked],
        },
        "table": table,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
