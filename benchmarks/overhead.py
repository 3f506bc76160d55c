"""Where a study's wall time goes: training/eval compute vs everything else.

Runs ``hpo run`` on a study file (default: studies/quickstart.yaml) as a user would, as a subprocess,
with a fresh SQLite file and (by default) a cold data cache, then splits the worker-seconds
(workers x wall time) into:

- compute: optimizer steps and eval passes, as timed inside the trainer;
- startup: process start, imports, storage creation, data preparation, until each worker's first trial;
- per-trial set-up: model build, batch set-up, reporting latency inside a trial;
- between trials: sampling, storage writes, hand-over to the worker;
- parallel tail: workers idle at the end while the last trials finish.

Usage: python benchmarks/overhead.py [STUDY.yaml] [--warm-cache] [--json PATH]
Prints a table and writes JSON (default benchmarks/results/overhead.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", nargs="?", default=str(ROOT / "studies" / "quickstart.yaml"))
    ap.add_argument("--warm-cache", action="store_true", help="reuse runs/cache (skip tokenizer training)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hpo-overhead-"))
    spec = yaml.safe_load(Path(args.study).read_text())
    name = spec["study"]["name"] + "-overhead"
    spec["study"]["name"] = name
    spec["study"]["storage"] = f"sqlite:///{tmp}/study.db"
    study_file = tmp / "study.yaml"
    study_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = dict(os.environ)
    if not args.warm_cache:
        env["HPO_CACHE_DIR"] = str(tmp / "cache")

    hpo = Path(sys.executable).with_name("hpo")
    t0 = dt.datetime.now()
    w0 = time.perf_counter()
    proc = subprocess.run([str(hpo), "run", str(study_file)], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - w0
    t_end = t0 + dt.timedelta(seconds=wall)
    if proc.returncode != 0:
        sys.exit(f"hpo run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    study = optuna.load_study(study_name=name, storage=spec["study"]["storage"])
    trials = [t for t in study.get_trials() if t.datetime_start and t.datetime_complete]
    result = split(trials, t0, t_end, wall)
    result.update(
        study=str(args.study),
        trials=len(trials),
        states={s: sum(1 for t in trials if t.state.name == s) for s in ("COMPLETE", "PRUNED", "FAIL")},
        best_value=study.best_value,
        worst_complete_value=max(t.value for t in trials if t.state.name == "COMPLETE"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        date=dt.date.today().isoformat(),
        cache="warm" if args.warm_cache else "cold",
        command=" ".join(["python", "benchmarks/overhead.py", *sys.argv[1:]]),
    )
    print_table(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def split(trials: list[Any], t0: dt.datetime, t_end: dt.datetime, wall: float) -> dict[str, Any]:
    """Split workers x wall into compute and the overhead categories, from the trials' records."""
    by_worker: dict[int, list[Any]] = {}
    for t in trials:
        by_worker.setdefault(int(t.user_attrs.get("worker", 0)), []).append(t)
    workers = len(by_worker)
    compute = in_trial = startup = between = tail = 0.0
    for ts in by_worker.values():
        ts.sort(key=lambda t: t.datetime_start)
        startup += (ts[0].datetime_start - t0).total_seconds()
        tail += (t_end - ts[-1].datetime_complete).total_seconds()
        for a, b in itertools.pairwise(ts):
            between += (b.datetime_start - a.datetime_complete).total_seconds()
        for t in ts:
            c = t.user_attrs.get("train_time", 0.0) + t.user_attrs.get("eval_time", 0.0)
            compute += c
            in_trial += (t.datetime_complete - t.datetime_start).total_seconds() - c
    total = workers * wall
    parts = {"startup": startup, "per_trial_setup": in_trial, "between_trials": between, "parallel_tail": tail}
    other = total - compute
    return {
        "wall_s": wall,
        "workers": workers,
        "worker_seconds": total,
        "compute_s": compute,
        "other_s": other,
        "other_share": other / total,
        "other_share_excluding_tail": (other - tail) / (total - tail),
        "parts_s": parts,
        "parts_share": {k: v / total for k, v in parts.items()},
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"study {r['study']}: {r['trials']} trials {r['states']}, {r['workers']} workers, cache {r['cache']}")
    print(f"best {r['best_value']:.4g} vs worst complete {r['worst_complete_value']:.4g}")
    print(f"{'':<34}{'seconds':>10}{'share':>9}")
    print(f"{'wall time':<34}{r['wall_s']:>10.1f}")
    print(f"{'worker-seconds (workers x wall)':<34}{r['worker_seconds']:>10.1f}{1:>9.1%}")
    print(f"{'  training + eval compute':<34}{r['compute_s']:>10.1f}{r['compute_s'] / r['worker_seconds']:>9.1%}")
    print(f"{'  everything else':<34}{r['other_s']:>10.1f}{r['other_share']:>9.1%}")
    labels = {
        "startup": "    startup (imports, storage, data)",
        "per_trial_setup": "    in-trial set-up and reporting",
        "between_trials": "    between trials (sample, storage)",
        "parallel_tail": "    parallel tail (idle at the end)",
    }
    for k, label in labels.items():
        print(f"{label:<34}{r['parts_s'][k]:>10.1f}{r['parts_share'][k]:>9.1%}")
    print(f"{'everything else, excluding the tail':<34}{'':>10}{r['other_share_excluding_tail']:>9.1%}")


if __name__ == "__main__":
    main()
