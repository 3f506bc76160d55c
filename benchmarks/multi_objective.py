"""Multi-objective studies: what pruning on the first objective costs the Pareto front, and a live
quality-vs-latency study against its single-objective winner.

1. Replay (recorded, seconds): the exhaustive quickstart grid (benchmarks/data/quickstart_grid.json: 32
   configurations x 3 seeds, eval_loss every 25 steps, train_time of each run) as a two-objective study,
   [final eval_loss, train_time], both minimised. Each replay runs all 32 configurations (one seed's curves)
   in a random order through ``hpo.objectives.ProxyPruner`` with the quickstart's pruner (median,
   n_startup_trials 4, n_warmup_steps 50): the evals go to the first objective's shadow study, as the
   orchestrator does. Counted: trials pruned, and pruned trials that are on the Pareto front of the 32
   fully trained runs (what pruning lost from the front).
2. Live (minutes): ``hpo run studies/bbc-news-minilm-latency.yaml`` (macro-F1 vs latency_ms), then its Pareto
   front against the trial a single-objective search on macro-F1 would return from the same trials (the
   F1-best): what that winner costs in latency, and what the cheapest front point gives up in F1.

Usage: python benchmarks/multi_objective.py [--quick] [--no-live] [--orders 20]
``--quick``: 2 orders per seed, and a live study of 4 trials x 20 steps (a few minutes on 2 cores).
Writes benchmarks/results/multi_objective.json. The machine is shared: its load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpo.objectives import ProxyPruner, front  # noqa: E402
from hpo.pruners import MedianPrunerConfig  # noqa: E402

GRID = ROOT / "benchmarks" / "data" / "quickstart_grid.json"
RESULTS = ROOT / "benchmarks" / "results"
STUDY = ROOT / "studies" / "bbc-news-minilm-latency.yaml"
optuna.logging.set_verbosity(optuna.logging.ERROR)


def pareto(points: dict[int, tuple[float, float]]) -> set[int]:
    """Indices of the non-dominated points (both objectives minimised)."""
    out = set()
    for i, a in points.items():
        if not any(b[0] <= a[0] and b[1] <= a[1] and b != a for j, b in points.items() if j != i):
            out.add(i)
    return out


def replay(runs: list[dict[str, Any]], steps: list[int], order: list[int], warmup: int = 50) -> dict[str, Any]:
    """One study over ``runs`` (one seed's 32 runs) in ``order``, pruned on eval_loss through ProxyPruner."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    proxy = ProxyPruner(
        study, MedianPrunerConfig(name="median", n_startup_trials=4, n_warmup_steps=warmup).build(), "minimize"
    )
    full = {i: (r["eval_loss"][-1], r["train_time"]) for i, r in enumerate(runs)}
    on_front = pareto(full)
    pruned: list[int] = []
    for i in order:
        r = runs[i]
        trial = study.ask()
        trial.set_user_attr("run", i)
        curve: dict[str, float] = {}
        stopped = False
        for step, v in zip(steps, r["eval_loss"], strict=True):
            curve[str(step)] = v
            trial.set_user_attr("objective_curve", dict(curve))
            if step < steps[-1] and proxy.should_prune(trial.number, step, v):
                stopped = True
                break
        if stopped:
            study.tell(trial, state=TrialState.PRUNED)
            proxy.finish(trial.number, TrialState.PRUNED, None)
            pruned.append(i)
        else:
            study.tell(trial, [r["eval_loss"][-1], r["train_time"]])
            proxy.finish(trial.number, TrialState.COMPLETE, r["eval_loss"][-1])
    found = {t.user_attrs["run"] for t in front(study)}
    return {
        "pruned": len(pruned),
        "front": len(on_front),
        "front_pruned": len(on_front & set(pruned)),
        "found_front": len(found),
        "found_on_true_front": len(found & on_front),
    }


def replay_all(orders: int, grid: Path = GRID) -> dict[str, Any]:
    data = json.loads(grid.read_text())
    steps = data["steps"]
    cells = []
    for seed in data["seeds"]:
        runs = [r for r in data["runs"] if r["seed"] == seed]
        rng = np.random.default_rng(seed)
        for k in range(orders):
            cell = replay(runs, steps, [int(i) for i in rng.permutation(len(runs))])
            cells.append({"seed": seed, "order": k, **cell})
    fp = [c["front_pruned"] for c in cells]
    return {
        "cells": cells,
        "replays": len(cells),
        "front_size": sorted({c["front"] for c in cells}),
        "pruned_median": statistics.median(c["pruned"] for c in cells),
        "front_pruned_median": statistics.median(fp),
        "front_pruned_max": max(fp),
        "replays_losing_a_front_point": sum(1 for v in fp if v > 0),
    }


# --------------------------------------------------------------------------------------------- live


def live(quick: bool, workdir: Path) -> dict[str, Any]:
    from hpo import yamlio

    raw = yamlio.load(STUDY)
    if quick:
        raw["study"]["n_trials"] = 4
        raw["fidelity"] = {"max_steps": 20, "eval_every": 10}
        raw["pruner"] = {"name": "none"}
    raw["study"]["storage"] = f"sqlite:///{workdir}/mo.db"
    path = workdir / "study.yaml"
    path.write_text(yamlio.dumps(raw))
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "run", str(path)], cwd=workdir, env=env, capture_output=True, text=True
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "wall_s": wall}
    study = optuna.load_study(study_name=raw["study"]["name"], storage=raw["study"]["storage"])
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    pts = front(study)
    f1_best = max(done, key=lambda t: (t.values[0], -t.number))
    cheapest = min(pts, key=lambda t: (t.values[1], t.number))
    row = lambda t: {"trial": t.number, "f1_macro": t.values[0], "latency_ms": t.values[1], "params": t.params}  # noqa: E731
    return {
        "wall_s": round(wall, 1),
        "trials": len(study.get_trials()),
        "complete": len(done),
        "pruned": sum(t.state == TrialState.PRUNED for t in study.get_trials()),
        "front": [row(t) for t in pts],
        "single_objective_winner": row(f1_best),
        "cheapest_front_point": row(cheapest),
        "latency_saved": 1 - cheapest.values[1] / f1_best.values[1],
        "f1_given_up": f1_best.values[0] - cheapest.values[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 orders per seed; a 4-trial live study")
    ap.add_argument("--no-live", action="store_true", help="the recorded replay only (seconds)")
    ap.add_argument("--orders", type=int, default=20, help="random trial orders per seed in the replay")
    ap.add_argument("--out", type=Path, default=RESULTS / "multi_objective.json")
    a = ap.parse_args()
    load0 = os.getloadavg()
    rep = replay_all(2 if a.quick else a.orders)
    print(
        "replay on the recorded quickstart grid ([eval_loss, train_time]; median pruner on eval_loss), "
        f"{rep['replays']} replays"
    )
    print(f"  Pareto front of the 32 full runs: {rep['front_size']} configurations")
    print(f"  trials pruned per replay: median {rep['pruned_median']}")
    print(
        f"  front configurations pruned: median {rep['front_pruned_median']}, max {rep['front_pruned_max']}; "
        f"replays that lost at least one: {rep['replays_losing_a_front_point']}/{rep['replays']}"
    )
    out: dict[str, Any] = {"replay": rep}
    if not a.no_live:
        work = Path(tempfile.mkdtemp(prefix="hpo-mo-"))
        try:
            lv = live(a.quick, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out["live"] = lv
        if "error" in lv:
            print(f"live study failed: {lv['error']}")
        else:
            print(
                f"\nlive: {STUDY.name}{' (--quick)' if a.quick else ''}: {lv['trials']} trials in {lv['wall_s']}s, "
                f"{lv['complete']} complete"
            )
            print(f"  {'trial':>5} {'f1_macro':>9} {'latency_ms':>11}  params")
            for r in lv["front"]:
                print(f"  {r['trial']:>5} {r['f1_macro']:>9.4f} {r['latency_ms']:>11.3f}  {r['params']}")
            w, c = lv["single_objective_winner"], lv["cheapest_front_point"]
            print(
                f"  single-objective winner (best F1): trial {w['trial']}, F1 {w['f1_macro']:.4f}, "
                f"{w['latency_ms']:.3f} ms; "
                f"cheapest front point: trial {c['trial']}, {100 * lv['latency_saved']:.0f}% less latency for "
                f"{lv['f1_given_up']:.4f} F1"
            )
    load1 = os.getloadavg()
    out["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": load0,
        "loadavg_end": load1,
        "note": "shared machine: other agents' jobs run at the same time (latency figures depend on it)",
    }
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nload average {load0[0]:.1f} -> {load1[0]:.1f}; wrote {a.out}")


if __name__ == "__main__":
    main()
