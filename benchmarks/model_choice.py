"""Model choice in the search vs knowing the right model in advance, at the same trial budget.

``studies/quickstart-models.yaml`` searches ``model.preset`` (two GPT-2 shapes from scratch, ``narrow`` and
``wide``) with the wide model's depth as a conditional parameter. Per sampler seed, three studies with the
same trials and steps, each with ``hpo run`` as a user runs it:

- ``search``: the file as it is (the search chooses the model);
- ``narrow``: the narrow model fixed (no ``models:``, no preset, no depth), the rest of the space searched;
- ``wide``: the wide model fixed, its depth searched without the condition.

The oracle is the better of the two fixed studies of each seed (what a user who knew the right model would
get with the whole budget). Reports the best perplexity per study and seed, the median and range per kind,
the paired difference search - oracle with a 95% t-interval over seeds, and which model the search's best
trial used.

Usage: python benchmarks/model_choice.py [--seeds 0,1,2] [--trials 12] [--steps 300] [--quick]
Writes JSON (default benchmarks/data/model_choice.json) with the machine's load average.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation import STUDIES, record, run_and_best, t_interval, write_json

KINDS = ("search", "narrow", "wide")


def study(kind: str) -> dict[str, Any]:
    """The example file, or the same with one model fixed."""
    data: dict[str, Any] = yaml.safe_load((STUDIES / "quickstart-models.yaml").read_text())
    if kind == "search":
        return data
    models = data.pop("models")
    space = data["search_space"]
    del space["model.preset"]
    data["model"] = {**data["model"], **copy.deepcopy(models[kind])}
    if kind == "narrow":
        del space["model.config.n_layer"]  # the depth is searched for the wide model only
    else:
        space["model.config.n_layer"] = {k: v for k, v in space["model.config.n_layer"].items() if k != "when"}
    return data


def run_one(kind: str, seed: int, trials: int, steps: int, work: Path) -> dict[str, Any]:
    data = study(kind)
    name = f"{kind}-s{seed}"
    data["study"] = {"name": name, "n_trials": trials, "storage": f"sqlite:///{work}/{name}.db"}
    data["sampler"]["seed"] = seed
    data["sampler"]["n_startup_trials"] = min(data["sampler"]["n_startup_trials"], max(1, trials // 2))
    data["fidelity"] = {**data["fidelity"], "max_steps": steps, "eval_every": max(1, steps // 6)}
    data["pruner"] = {**data["pruner"], "n_warmup_steps": max(1, steps // 6)}
    wall, best = run_and_best(data, name, work)
    return {
        "kind": kind,
        "seed": seed,
        "best": best["value"],
        "best_params": best["params"],
        "model": best["params"].get("preset", kind),
        "wall_s": round(wall, 1),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        vals = [r["best"] for r in rows if r["kind"] == kind]
        out[kind] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
    by = {(r["kind"], r["seed"]): r["best"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    oracle = [min(by[("narrow", s)], by[("wide", s)]) for s in seeds]  # perplexity: lower is better
    diffs = [by[("search", s)] - o for s, o in zip(seeds, oracle, strict=True)]
    mean, lo, hi = t_interval(diffs)
    out["oracle"] = {"per_seed": oracle, "median": statistics.median(oracle)}
    out["search_minus_oracle"] = {"per_seed": diffs, "mean": mean, "ci95": [lo, hi]}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="3 trials of 12 steps, one seed (the plumbing)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    trials, steps = args.trials, args.steps
    if args.quick:
        seeds, trials, steps = [0], 3, 12
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for kind in KINDS:
                r = run_one(kind, seed, trials, steps, Path(tmp))
                rows.append(r)
                print(
                    f"{kind:6} seed {seed}: best perplexity {r['best']:.1f} ({r['model']}), {r['wall_s']:.0f}s",
                    flush=True,
                )
    summary = summarise(rows)
    for kind in KINDS:
        s = summary[kind]
        print(f"{kind:6}: median {s['median']:.1f} (range {s['min']:.1f}-{s['max']:.1f}, {s['n']} seeds)")
    d = summary["search_minus_oracle"]
    print(
        f"search - oracle (the better fixed model per seed): mean {d['mean']:+.1f},"
        f" 95% CI [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"
    )
    out = record(load_start, t0, quick=args.quick, trials=trials, steps=steps, rows=rows, summary=summary)
    write_json(out, args.json, f"model_choice{'-quick' if args.quick else ''}.json")
    return out


if __name__ == "__main__":
    main()
