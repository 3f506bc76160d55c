"""LoRA vs full fine-tuning: the best of a LoRA study and of a full-training study at the same trial budget.

``--pair quickstart`` runs ``studies/quickstart.yaml`` (every weight trained) and
``studies/quickstart-lora.yaml`` (a LoRA adapter on the same frozen model); ``--pair bbc`` runs
``studies/bbc-news-minilm.yaml`` and the same study with a LoRA adapter on the pretrained MiniLM (rank,
alpha and target modules searched instead of dropout and weight decay; learning rates 10x higher, as
adapters take). Each study runs with ``hpo run`` as a user would, cut to the same budget (``--trials``
trials of ``--steps`` steps, evaluated every ``steps / 3``), once per sampler seed (``--seeds``), into a
fresh database under a temporary folder. Reports per study and seed: the best trial's objective, the
study's wall time, and the best trial's trainable / total parameters, tokens/s and peak memory (on CPU: the
worker process's peak resident set size, see ``TrainResult.peak_memory_mb``).

With several seeds it ends with the median and range of each figure over the seeds, per study, and the load
average before, between and after the studies (the machine is shared: wall times and tokens/s move with it).
``--quick`` is 2 trials x 8 steps, one seed: the whole path in about a minute, for tests.

Usage: python benchmarks/lora_vs_full.py [--pair quickstart|bbc] [--trials 6] [--steps 150] [--seeds 0,1] [--quick]
Prints a line per study and writes JSON (default benchmarks/results/lora_vs_full-PAIR.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "quickstart": {"full": "quickstart.yaml", "lora": "quickstart-lora.yaml"},
    "bbc": {"full": "bbc-news-minilm.yaml", "lora": "bbc-news-minilm.yaml"},
}


def bbc_lora(data: dict[str, Any]) -> dict[str, Any]:
    data["model"]["peft"] = {"type": "lora", "r": 8, "alpha": 16}
    data["search_space"] = {
        "training.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "training.per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
        "model.peft.r": {"type": "categorical", "choices": [4, 8, 16, 32]},
        "model.peft.alpha": {"type": "float", "low": 4.0, "high": 64.0, "log": True},
        "model.peft.target_modules": {
            "type": "categorical",
            "choices": ["query,value", "query,key,value", "all-linear"],
        },
    }
    return data


def run_one(pair: str, kind: str, seed: int, trials: int, steps: int, work: Path) -> dict[str, Any]:
    from hpo.api import best

    data = yaml.safe_load((ROOT / "studies" / PAIRS[pair][kind]).read_text())
    if pair == "bbc" and kind == "lora":
        data = bbc_lora(data)
    name = f"{pair}-{kind}-s{seed}"
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
        "objective": data["objective"]["metric"],
        "best": rec.value,
        "wall_s": round(wall, 1),
        "trainable_params": a.trainable_params,
        "total_params": a.total_params,
        "tokens_per_s": a.tokens_per_s,
        "peak_memory_mb": a.peak_memory_mb,
        "best_params": rec.params,
    }


def spread(values: list[float]) -> str:
    """Median [min, max] over seeds; the value alone for one seed."""
    med = statistics.median(values)
    return f"{med:.4g} [{min(values):.4g}, {max(values):.4g}]" if len(values) > 1 else f"{med:.4g}"


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per study: the best value, wall time, tokens/s and peak memory over the seeds."""
    lines = [
        f"{'study':6} {'seeds':>5} {'best (median [min, max])':>28} {'wall s':>22} {'tokens/s':>22} {'peak MB':>22}"
    ]
    for kind in ("full", "lora"):
        rs = [r for r in rows if r["study"] == kind]
        if not rs:
            continue
        lines.append(
            f"{kind:6} {len(rs):>5} {spread([r['best'] for r in rs]):>28} {spread([r['wall_s'] for r in rs]):>22} "
            f"{spread([r['tokens_per_s'] for r in rs]):>22} {spread([r['peak_memory_mb'] for r in rs]):>22}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", choices=sorted(PAIRS), default="quickstart")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--quick", action="store_true", help="2 trials x 8 steps, seed 0")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.trials, args.steps, args.seeds = 2, 8, "0"
    rows: list[dict[str, Any]] = []
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for kind in ("full", "lora"):
                rows.append(run_one(args.pair, kind, seed, args.trials, args.steps, Path(tmp)))
                load.append(os.getloadavg())
                r = rows[-1]
                print(
                    f"{r['study']:5} seed {r['seed']}: best {r['objective']} {r['best']:.4g}, wall {r['wall_s']:.0f}s, "
                    f"trainable {r['trainable_params']:,} of {r['total_params']:,}, "
                    f"{r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_memory_mb']:.0f} MB",
                    flush=True,
                )
    print()
    for line in summary(rows):
        print(line)
    print(f"load average (1 min) before / between / after the studies: {' '.join(f'{la[0]:.1f}' for la in load)}")
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load": load,
        "load_at_end": load[-1],
        "pair": args.pair,
        "trials": args.trials,
        "steps": args.steps,
        "rows": rows,
    }
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"lora_vs_full-{args.pair}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
