"""Record the exhaustive grid that ``pruning_replay.py`` replays: run it with hpo, export its eval curves.

The grid is a study file, ``benchmarks/data/quickstart_grid.yaml``: the quickstart's model, data and trial
length, the grid sampler, no pruning, 32 configs x 3 training seeds (96 runs of 300 steps; ~25 min on 2 CPU
cores). ``hpo run`` keeps every eval point in the ``hpo_curves`` table of the study's SQLite file
(``benchmarks/results/quickstart-grid.db``, git-ignored); this script then writes the eval-loss curves, one
row per run, to ``benchmarks/data/quickstart_grid.json`` (small; committed), which the replay reads.

Usage:
  flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/record_grid.py     # run (or resume) the grid, export
  .venv/bin/python benchmarks/record_grid.py --export-only               # re-export an existing database
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILE = ROOT / "benchmarks" / "data" / "quickstart_grid.yaml"
OUT = ROOT / "benchmarks" / "data" / "quickstart_grid.json"
CONFIG_KEYS = ("learning_rate", "per_device_train_batch_size", "dropout", "weight_decay")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(STUDY_FILE))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--export-only", action="store_true", help="skip `hpo run`; export the database as it is")
    args = ap.parse_args()

    from hpo.config import load_study_file  # imports torch-free modules only, but keep start-up lazy

    cfg = load_study_file(args.study)
    wall = None
    if not args.export_only:
        (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
        hpo = Path(sys.executable).with_name("hpo")
        t0 = time.perf_counter()
        proc = subprocess.run([str(hpo), "run", args.study], cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"hpo run failed ({proc.returncode})")
    data = export(cfg, Path(args.study))
    if wall is not None:
        data["record_wall_s"] = round(wall, 1)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    n = len(data["runs"])
    print(f"wrote {n} runs x {len(data['steps'])} evals to {args.out}")


def export(cfg: Any, study_path: Path) -> dict[str, Any]:
    """The grid's eval-loss curves as plain data: one row per run (config + seed), values per eval step."""
    from hpo.curves import CurveStore

    url = cfg.storage_url
    os.chdir(ROOT)  # the storage URL is relative to the repository root
    study = optuna.load_study(study_name=cfg.study.name, storage=url)
    store = CurveStore(url, cfg.study.name)
    curves: dict[int, dict[int, float]] = {}
    for p in store.read():
        if p.kind == "eval" and p.name == "eval_loss":
            curves.setdefault(p.trial_number, {})[p.step] = p.value
    store.close()
    steps = list(range(cfg.fidelity.eval_every, cfg.fidelity.max_steps + 1, cfg.fidelity.eval_every))
    runs = []
    missing = []
    for t in study.get_trials(deepcopy=False):
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        c = curves.get(t.number, {})
        if any(s not in c for s in steps):
            missing.append(t.number)
            continue
        row = {k: t.params[k] for k in CONFIG_KEYS}
        row["seed"] = t.params["seed"]
        row["eval_loss"] = [round(c[s], 5) for s in steps]
        row["train_time"] = round(t.user_attrs.get("train_time", float("nan")), 2)
        runs.append(row)
    if missing:
        print(f"warning: trials {missing} lack some eval points; left out", file=sys.stderr)
    runs.sort(key=lambda r: (*(r[k] for k in CONFIG_KEYS), r["seed"]))
    grid = cfg.grid()
    return {
        "what": "eval_loss curves of the quickstart model over an exhaustive grid (benchmarks/record_grid.py)",
        "study_file": str(study_path.resolve().relative_to(ROOT)),
        "objective": "eval_loss (perplexity = exp(eval_loss)); minimize",
        "max_steps": cfg.fidelity.max_steps,
        "steps": steps,
        "grid": {k: grid[k] for k in CONFIG_KEYS},
        "seeds": grid["seed"],
        "recorded": dt.datetime.now().isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": {p: md.version(p) for p in ("torch", "transformers", "optuna")},
        "runs": runs,
    }


if __name__ == "__main__":
    main()
