"""QLoRA's memory and speed: one LoRA run with the frozen base in full precision, in 8 bits and in 4 bits.

For each ``model.peft.quantize`` setting (none, 8bit, 4bit) and each seed, a fresh process builds the model a
trial of ``studies/bbc-news-minilm.yaml`` builds (pretrained all-MiniLM-L6-v2, a new 5-topic head) with a LoRA
adapter (r 8, alpha 16, query,value; the head trained in full, as peft does for classification) and trains
``--steps`` steps through hpo's own loop (``trainers.loop.train``), then evaluates on the held-out articles.
Reports per setting: the base model's weight bytes (transformers' ``get_memory_footprint``), the peak
memory hpo records (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS, also shown as the
growth over the RSS before the model was built), tokens/s and the metric: median and range over the seeds.

On a GPU machine this is the QLoRA check: ``--device cuda`` fails unless CUDA is there.
``--quick`` uses the quickstart's tiny GPT-2 (from config, trained tokenizer) and 4 steps: seconds, for tests.

Usage: python benchmarks/qlora_memory.py [--steps 30] [--seeds 0,1,2] [--quick] [--device cpu|cuda]
Writes JSON (default benchmarks/results/qlora_memory.json).
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "8bit", "4bit")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_config(quick: bool, mode: str, steps: int, seed: int) -> Any:
    from hpo.config import load_study_file

    if quick:
        cfg = load_study_file(ROOT / "studies" / "quickstart-lora.yaml")
        params = {"learning_rate": 3.0e-3, "per_device_train_batch_size": 8}
    else:
        cfg = load_study_file(ROOT / "studies" / "bbc-news-minilm.yaml")
        params = {"learning_rate": 3.0e-3, "per_device_train_batch_size": 16}
    run = cfg.base_run().model_dump(mode="json")
    run["training"].update(params, max_steps=steps, eval_steps=steps, seed=seed)
    run["eval_batches"] = 2 if quick else None
    run["model"]["peft"] = {"r": 8, "alpha": 16, "target_modules": "c_attn" if quick else "query,value"}
    if mode != "none":
        run["model"]["peft"]["quantize"] = mode
    from trainers.config import RunConfig

    return RunConfig.model_validate(run)


def child(args: argparse.Namespace) -> None:
    """One setting in this process (peak RSS is per process): print its figures as one JSON line."""
    import torch

    from hpo.api import cache_dir
    from trainers.base import NullReporter
    from trainers.data import prepare
    from trainers.loop import train

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    run = run_config(args.quick, args.child, args.steps, args.seed)
    data = prepare(run, cache_dir())
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    res = train(run, NullReporter(), cache_dir(), data=data)
    base = res.model.get_base_model()
    metric = "perplexity" if run.task == "causal_lm" else "f1_macro"
    print(
        json.dumps(
            {
                "mode": args.child,
                "seed": args.seed,
                "device": res.device,
                "base_weights_mb": round(base.get_memory_footprint() / 2**20, 2),
                "peak_memory_mb": res.peak_memory_mb,
                "rss_before_model_mb": round(rss_before, 1),
                "tokens_per_s": round(res.tokens_per_s, 1),
                "wall_s": round(time.perf_counter() - t0, 1),
                "metric": metric,
                "value": res.metrics[metric],
                "trainable_params": res.trainable_params,
                "total_params": res.total_params,
                "quantised_layers": sum(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in base.modules()),
            }
        ),
        flush=True,
    )


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.4g} [{min(values):.4g}, {max(values):.4g}]" if len(values) > 1 else f"{med:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="default 30 (--quick: 4)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if torch sees it")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (4 if args.quick else 30)
    if args.child:
        child(args)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    load = [os.getloadavg()]
    rows: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", mode, "--seed", str(seed), "--steps", str(args.steps)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--device", args.device] if args.device else []
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise SystemExit(f"{mode} seed {seed} failed: {tail}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{mode:>4} seed {seed}: base weights {r['base_weights_mb']:.1f} MB, peak {r['peak_memory_mb']:.0f} MB "
                f"({r['device']}), {r['tokens_per_s']:.0f} tokens/s, {r['metric']} {r['value']:.4g}",
                flush=True,
            )
            load.append(os.getloadavg())
    print(f"\n{len(rows) // len(MODES)} seed(s) x {args.steps} steps; median [min, max]")
    print(f"{'base':>5} {'weights MB':>12} {'peak MB':>22} {'growth MB (CPU)':>22} {'tokens/s':>22} {'metric':>26}")
    for mode in MODES:
        rs = [r for r in rows if r["mode"] == mode]
        growth = [r["peak_memory_mb"] - r["rss_before_model_mb"] for r in rs]
        print(
            f"{mode:>5} {rs[0]['base_weights_mb']:>12.1f} {spread([r['peak_memory_mb'] for r in rs]):>22} "
            f"{spread(growth) if rs[0]['device'] == 'cpu' else '-':>22} "
            f"{spread([r['tokens_per_s'] for r in rs]):>22} {spread([r['value'] for r in rs]):>26}"
        )
    print(f"load average (1 min) during the run: {min(la[0] for la in load):.1f}-{max(la[0] for la in load):.1f}")
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load": load,
        "quick": args.quick,
        "steps": args.steps,
        "rows": rows,
    }
    path = Path(args.json or ROOT / "benchmarks" / "results" / "qlora_memory.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
