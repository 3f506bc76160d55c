"""LoRA vs full fine-tuning: the best of a LoRA study and of a full-training study at the same trial budget.

Runs ``studies/quickstart.yaml`` (every weight trained) and ``studies/quickstart-lora.yaml`` (a LoRA adapter
on the same frozen model) with ``hpo run`` as a user would, each cut to the same budget (``--trials`` trials
of ``--steps`` steps, evaluated every ``steps / 3``) and once per sampler seed (``--seeds``), each into a
fresh database under a temporary folder. Reports per study and seed: the best trial's perplexity, the
study's wall time, and the best trial's trainable / total parameters, tokens/s and peak memory (on CPU: the
worker process's peak resident set size, see ``TrainResult.peak_memory_mb``).

Usage: python benchmarks/lora_vs_full.py [--trials 6] [--steps 150] [--seeds 0,1] [--json PATH]
Prints a table and writes JSON (default benchmarks/results/lora_vs_full.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {"full": ROOT / "studies" / "quickstart.yaml", "lora": ROOT / "studies" / "quickstart-lora.yaml"}


def run_one(kind: str, seed: int, trials: int, steps: int, work: Path) -> dict[str, Any]:
    from hpo.api import best

    data = yaml.safe_load(STUDIES[kind].read_text())
    name = f"{kind}-s{seed}"
    data["study"] = {"name": name, "n_trials": trials, "storage": f"sqlite:///{work}/{name}.db"}
    data["sampler"]["seed"] = seed
    data["sampler"]["n_startup_trials"] = min(data["sampler"]["n_startup_trials"], max(1, trials // 2))
    data["pruner"]["n_warmup_steps"] = steps // 3
    data["fidelity"].update(max_steps=steps, eval_every=max(1, steps // 3))
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "HPO_CACHE_DIR": str(work / "cache")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpo.cli", "run", str(path)], check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t0
    _, rec = best(path)
    a = rec.attrs
    return {
        "study": kind,
        "seed": seed,
        "best_perplexity": rec.value,
        "wall_s": round(wall, 1),
        "trainable_params": a.trainable_params,
        "total_params": a.total_params,
        "tokens_per_s": a.tokens_per_s,
        "peak_memory_mb": a.peak_memory_mb,
        "best_params": rec.params,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "lora_vs_full.json"))
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for kind in STUDIES:
                rows.append(run_one(kind, seed, args.trials, args.steps, Path(tmp)))
                r = rows[-1]
                print(
                    f"{r['study']:5} seed {r['seed']}: best perplexity {r['best_perplexity']:.1f}, wall {r['wall_s']:.0f}s, "
                    f"trainable {r['trainable_params']:,} of {r['total_params']:,}, "
                    f"{r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_memory_mb']:.0f} MB",
                    flush=True,
                )
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_at_end": os.getloadavg(),
        "trials": args.trials,
        "steps": args.steps,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
