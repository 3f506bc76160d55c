"""`hpo confirm`: how often the search's best is still the best after re-seeding, and the spread of the
objective per configuration.

1. Replay (recorded, seconds): the exhaustive quickstart grid (benchmarks/data/quickstart_grid.json: 32
   configurations, each trained on 3 seeds). A simulated search draws 16 configurations at random and runs
   each on one seed (the search seed); its top 3 are then "confirmed" on the two other seeds, as `hpo
   confirm --top 3 --seeds 2` would (the statistics are hpo.confirm's: mean, P(best)). Counted over many
   searches: how often the confirmed winner is the search's best, how often it is the configuration with the
   best 3-seed mean among those 3, and the seed-to-seed spread (std) of every configuration's final
   perplexity.
2. Live (minutes): `hpo run` then `hpo confirm --top 3 --seeds 3` on studies/quickstart.yaml, and with
   ``--bbc`` on studies/bbc-news-minilm.yaml too (~30 min more on 2 cores): the table `hpo confirm` prints.

Usage: python benchmarks/confirm.py [--quick] [--no-live] [--bbc] [--searches 200]
``--quick``: 20 searches; the live quickstart shrunk to 4 trials x 50 steps, confirmed with --top 2
--seeds 2 (a minute or two). Writes benchmarks/results/confirm.json; the machine's load is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpo.confirm import p_best, t_interval  # noqa: E402

GRID = ROOT / "benchmarks" / "data" / "quickstart_grid.json"
RESULTS = ROOT / "benchmarks" / "results"
KEYS = ("learning_rate", "per_device_train_batch_size", "dropout", "weight_decay")


def grid_values(grid: Path = GRID) -> dict[tuple[Any, ...], dict[int, float]]:
    """Final perplexity per configuration and seed."""
    data = json.loads(grid.read_text())
    out: dict[tuple[Any, ...], dict[int, float]] = {}
    for r in data["runs"]:
        out.setdefault(tuple(r[k] for k in KEYS), {})[r["seed"]] = math.exp(r["eval_loss"][-1])
    return out


def replay(searches: int, n_trials: int = 16, top: int = 3, seed: int = 0) -> dict[str, Any]:
    values = grid_values()
    configs = list(values)
    seeds = sorted(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    stays = agrees = 0
    for _ in range(searches):
        picked = [configs[i] for i in rng.choice(len(configs), size=n_trials, replace=False)]
        s = int(rng.choice(seeds))
        fresh = [x for x in seeds if x != s]
        ranked = sorted(picked, key=lambda c: values[c][s])[:top]
        groups = [[values[c][x] for x in fresh] for c in ranked]
        means = [statistics.fmean(g) for g in groups]
        probs = p_best(groups, "minimize", n_boot=2000, seed=1)
        winner = min(range(top), key=lambda i: (means[i], -probs[i], i))
        stays += winner == 0
        all_seeds = [statistics.fmean(values[c].values()) for c in ranked]
        agrees += winner == min(range(top), key=lambda i: all_seeds[i])
    spreads = {c: t_interval(list(v.values()))[1] for c, v in values.items()}
    rel = [spreads[c] / statistics.fmean(values[c].values()) for c in configs]
    return {
        "searches": searches,
        "trials_per_search": n_trials,
        "top": top,
        "fresh_seeds": len(seeds) - 1,
        "search_best_stays_best": stays / searches,
        "confirmed_winner_is_best_3_seed_mean": agrees / searches,
        "std_perplexity_median": statistics.median(spreads.values()),
        "std_perplexity_max": max(spreads.values()),
        "std_relative_median": statistics.median(rel),
        "std_relative_max": max(rel),
    }


def live(study: Path, quick: bool, workdir: Path) -> dict[str, Any]:
    from hpo import yamlio

    raw = yamlio.load(study)
    raw["study"]["storage"] = f"sqlite:///{workdir}/{raw['study']['name']}.db"
    top, seeds = (2, 2) if quick else (3, 3)
    if quick:
        raw["study"]["n_trials"] = 4
        raw["fidelity"] = {**raw["fidelity"], "max_steps": 50, "eval_every": 25}
        raw["pruner"] = {"name": "none"}
    path = workdir / study.name
    path.write_text(yamlio.dumps(raw))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "run", str(path)], cwd=workdir, env=env, capture_output=True, text=True
    )
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout)[-2000:]}
    t1 = time.monotonic()
    cmd = [sys.executable, "-m", "hpo.cli", "confirm", str(path), "--top", str(top), "--seeds", str(seeds), "--json"]
    conf = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    t2 = time.monotonic()
    if conf.returncode != 0:
        return {"error": (conf.stderr or conf.stdout)[-2000:]}
    body = json.loads(conf.stdout[conf.stdout.index("{") :])
    return {
        "study": study.name,
        "search_s": round(t1 - t0, 1),
        "confirm_s": round(t2 - t1, 1),
        "search_best": body["search_best"],
        "winner": body["winner"],
        "search_best_stays_best": body["winner"] == body["search_best"],
        "configs": body["configs"],
        "metric": body["metric"],
        "seeds": body["seeds"],
        "steps": body["steps"],
    }


def _print_live(lv: dict[str, Any]) -> None:
    if "error" in lv:
        print(f"live study failed: {lv['error']}")
        return
    print(
        f"\nlive: {lv['study']}: search {lv['search_s']}s, confirm {lv['confirm_s']}s; "
        f"{lv['metric']} over seeds {lv['seeds']}"
    )
    print(f"  {'trial':>5} {'search':>9} {'mean':>9} {'std':>8} {'95% CI':>21} {'P(best)':>8}")
    for c in lv["configs"]:
        ci = "-" if c["ci_low"] is None else f"{c['ci_low']:.4g} - {c['ci_high']:.4g}"
        print(
            f"  {c['trial']:>5} {c['search_value']:>9.4g} {c['mean']:>9.4g} {c['std'] or 0:>8.3g} {ci:>21} "
            f"{c['p_best']:>8.2f}"
        )
    print(
        f"  search best {lv['search_best']}, confirmed winner {lv['winner']}: "
        f"{'stays' if lv['search_best_stays_best'] else 'changes'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 searches; a shrunk live quickstart")
    ap.add_argument("--no-live", action="store_true", help="the recorded replay only (seconds)")
    ap.add_argument("--bbc", action="store_true", help="also the BBC News study live (~30 min on 2 cores)")
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS / "confirm.json")
    a = ap.parse_args()
    load0 = os.getloadavg()
    rep = replay(20 if a.quick else a.searches)
    print(
        f"replay on the recorded quickstart grid: {rep['searches']} searches of {rep['trials_per_search']} "
        f"trials, top {rep['top']} confirmed on {rep['fresh_seeds']} fresh seeds"
    )
    print(f"  the search's best stays best: {100 * rep['search_best_stays_best']:.0f}% of searches")
    print(
        f"  the confirmed winner has the best 3-seed mean of the top {rep['top']}: "
        f"{100 * rep['confirmed_winner_is_best_3_seed_mean']:.0f}%"
    )
    print(
        f"  seed-to-seed std of final perplexity per configuration: median {rep['std_perplexity_median']:.3g} "
        f"({100 * rep['std_relative_median']:.1f}%), max {rep['std_perplexity_max']:.3g} "
        f"({100 * rep['std_relative_max']:.1f}%)"
    )
    out: dict[str, Any] = {"replay": rep, "live": []}
    if not a.no_live:
        for study in [ROOT / "studies" / "quickstart.yaml"] + (
            [ROOT / "studies" / "bbc-news-minilm.yaml"] if a.bbc else []
        ):
            work = Path(tempfile.mkdtemp(prefix="hpo-confirm-"))
            try:
                lv = live(study, a.quick, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            out["live"].append(lv)
            _print_live(lv)
    load1 = os.getloadavg()
    out["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": load0,
        "loadavg_end": load1,
        "note": "shared machine: other agents' jobs run at the same time",
    }
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nload average {load0[0]:.1f} -> {load1[0]:.1f}; wrote {a.out}")


if __name__ == "__main__":
    main()
