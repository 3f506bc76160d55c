"""Generation studies: how well the pruning proxy (eval loss at the pruning steps) ranks trials by their final
generation metric (ROUGE-L).

A generation study reports ``-eval_loss`` to the pruner at every eval and computes ROUGE-L (say) only at the
end (README, "Generation tasks"). Pruning on the proxy is only as good as the proxy's ranking of trials by
the objective. This script runs a generation study *without pruning* (every trial reaches its final eval,
so every trial has both numbers), with the random sampler (trials spread over the space, not clustered by
TPE), into its own database under ``benchmarks/results/gen_proxy/``; then, for each eval step, Spearman's
rank correlation over trials between the proxy at that step and the final objective. 1.0: the proxy orders
trials exactly as the objective; 0: no relation. A bootstrap over trials gives a 90% interval.

``--db URL --name STUDY`` analyses a study already recorded (no run). ``--quick``: 4 trials of 20 steps
(checks the script; its figures mean nothing).

Usage: python benchmarks/gen_proxy.py [STUDY.yaml] [--trials N] [--seed S] [--quick] [--json PATH]
Prints a table and writes JSON (default benchmarks/results/gen_proxy[-quick].json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
STUDY = ROOT / "studies" / "bbc-headlines-t5.yaml"


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), float)
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x: Any, y: Any) -> float:
    a, b = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def proxy_correlation(
    trials: list[tuple[dict[int, float], float]], boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per eval step: Spearman between the reported proxy at that step and the final value, over trials that
    have both; with a bootstrap 90% interval over trials."""
    steps = sorted({s for iv, _ in trials for s in iv})
    rng = np.random.default_rng(seed)
    out = []
    for step in steps:
        pairs = [(iv[step], v) for iv, v in trials if step in iv]
        x, y = np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])
        rho = spearman(x, y) if len(pairs) >= 3 else float("nan")
        draws = []
        for _ in range(boot if len(pairs) >= 3 else 0):
            i = rng.integers(0, len(pairs), len(pairs))
            r = spearman(x[i], y[i])
            if np.isfinite(r):
                draws.append(r)
        lo, hi = (float(np.percentile(draws, 5)), float(np.percentile(draws, 95))) if draws else (None, None)
        out.append({"step": step, "trials": len(pairs), "spearman": rho, "ci90": [lo, hi]})
    return out


def read_trials(url: str, name: str) -> tuple[list[tuple[dict[int, float], float]], str]:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    metric = (study.user_attrs.get("hpo:config") or {}).get("objective", {}).get("metric", "objective")
    return [(dict(t.intermediate_values), float(t.value)) for t in done if t.value is not None], metric


def bench_file(study: Path, out_dir: Path, trials: int, seed: int, quick: bool) -> tuple[Path, str, str]:
    spec = yaml.safe_load(study.read_text())
    name = spec["study"]["name"] + ("-proxy-quick" if quick else "-proxy")
    url = f"sqlite:///{out_dir / (name + '.db')}"
    spec["study"].update(name=name, storage=url, n_trials=trials)
    spec["sampler"] = {"name": "random", "seed": seed}
    spec["pruner"] = {"name": "none"}  # every trial reaches its final eval
    if quick:
        spec["fidelity"].update(max_steps=20, eval_every=10)
        spec.setdefault("generation", {})["eval_samples"] = 8
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, url, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", nargs="?", type=Path, default=STUDY)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--db", help="analyse this recorded study (with --name) instead of running one")
    ap.add_argument("--name")
    ap.add_argument("--json")
    args = ap.parse_args()
    suffix = "-quick" if args.quick else ""
    out_dir = HERE / "results" / "gen_proxy"
    out_dir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    run_s = None
    if args.db:
        url, name = args.db, args.name
    else:
        trials = 4 if args.quick else args.trials
        path, url, name = bench_file(args.study, out_dir, trials, args.seed, args.quick)
        print(f"hpo run {path.name}: {trials} trials, no pruning, random sampler ...", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "hpo.cli", "run", str(path)], cwd=ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"hpo run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        run_s = round(time.perf_counter() - t0, 1)
    recorded, metric = read_trials(url, name)
    rows = proxy_correlation(recorded)
    print(f"\n{name}: Spearman(proxy at step, final {metric}) over {len(recorded)} complete trials")
    print(f"{'step':>6}{'trials':>8}{'spearman':>10}  90% bootstrap")
    for r in rows:
        lo, hi = r["ci90"]
        ci = f"[{lo:.2f}, {hi:.2f}]" if lo is not None else "-"
        print(f"{r['step']:>6}{r['trials']:>8}{r['spearman']:>10.2f}  {ci}")
    result = {
        "benchmark": "gen_proxy",
        "command": " ".join(["python", "benchmarks/gen_proxy.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_start": load0,
            "load_avg_end": os.getloadavg(),  # a shared machine: other agents' jobs ran next to this one
        },
        "study": name,
        "storage": url,
        "metric": metric,
        "run_seconds": run_s,
        "trials": [{"intermediate": iv, "value": v} for iv, v in recorded],
        "correlation": rows,
    }
    out = Path(args.json or HERE / "results" / f"gen_proxy{suffix}.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
