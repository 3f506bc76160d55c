"""Cleaning + augmentation in the search vs not, on noisy, scarce data: BBC News with 20% of the training
labels flipped and a 200-example training subset (issue 11's benchmark).

The data: the built-in BBC News split (``data.seed`` 0, 10% eval, as ``builtin: bbc_news`` splits it); from
its training part, ``--train-size`` examples drawn with a fixed seed, of which ``--flip`` have their label
replaced by another label drawn at random (seeded); the eval part keeps its true labels. Both are written as
JSON lines and named in ``data.files``. The model and budget: ``studies/bbc-news-minilm.yaml`` (MiniLM
fine-tuned), ``--trials`` trials of ``--steps`` steps per study. Two studies per sampler seed:

- ``plain``: the example's search space as it is;
- ``clean+augment``: the same, plus ``data.clean`` (normalised duplicates and train/eval leakage removed) and
  ``data.augment`` with ``p`` (0 to 0.3) and ``n_aug`` (0 to 4) searched: 0 is in the range, so the search
  can turn augmentation off.

Reports the best macro-F1 per study and seed, the median and range per kind, and the paired difference with a
95% t-interval over seeds, plus what cleaning removed. ``--quick``: 2 trials of 6 steps, one seed (the
plumbing; tests/test_bench_distill.py runs it).

Usage: python benchmarks/clean_augment.py [--seeds 0,1,2] [--trials 8] [--steps 60] [--quick]
Writes JSON (default benchmarks/data/clean_augment.json) with the machine's load average (a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation import STUDIES, cut, hpo, record, run_and_best, t_interval, write_json


def noisy_data(work: Path, train_size: int, flip: float, seed: int = 0) -> dict[str, Any]:
    """Write train.jsonl (subset, labels flipped) and eval.jsonl (true labels); return what was done."""
    from trainers import corpora
    from trainers.clean import normalized
    from trainers.data import _split

    texts, labels = corpora.bbc_news()
    tr, ev = _split(len(texts), 0.1, 0)  # as `builtin: bbc_news` splits it (data.seed 0, eval_fraction 0.1)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(tr)[:train_size])
    names = sorted(set(labels))
    train_labels = [labels[i] for i in chosen]
    flipped = rng.permutation(len(chosen))[: round(flip * len(chosen))]
    for j in flipped:
        train_labels[j] = str(rng.choice([n for n in names if n != train_labels[j]]))
    with open(work / "train.jsonl", "w", encoding="utf-8") as f:
        for i, lab in zip(chosen, train_labels, strict=True):
            f.write(json.dumps({"text": texts[i], "label": lab}) + "\n")
    # The eval split is deduplicated here (as `dedup: normalized` would): both studies are then judged on the
    # same rows, which cleaning inside one study would otherwise change.
    seen: set[str] = set()
    kept = []
    for i in ev:
        key = normalized(texts[i])
        if key not in seen:
            seen.add(key)
            kept.append(i)
    with open(work / "eval.jsonl", "w", encoding="utf-8") as f:
        for i in kept:
            f.write(json.dumps({"text": texts[i], "label": labels[i]}) + "\n")
    return {"train": len(chosen), "flipped": len(flipped), "eval": len(kept), "eval_duplicates": len(ev) - len(kept)}


def study(kind: str, work: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((STUDIES / "bbc-news-minilm.yaml").read_text())
    data["data"] = {
        "files": {"train": str(work / "train.jsonl"), "validation": str(work / "eval.jsonl")},
        "max_length": data["data"]["max_length"],
    }
    if kind == "clean+augment":
        data["data"]["clean"] = {"dedup": "normalized"}
        data["data"]["augment"] = {"p": 0.1, "n_aug": 1}
        data["search_space"]["data.augment.p"] = {"type": "float", "low": 0.0, "high": 0.3}
        data["search_space"]["data.augment.n_aug"] = {"type": "int", "low": 0, "high": 4}
    return data


def run_one(kind: str, seed: int, trials: int, steps: int, work: Path) -> dict[str, Any]:
    name = f"{'clean-augment' if kind != 'plain' else 'plain'}-s{seed}"
    data = cut(study(kind, work), name, trials, steps, seed, work)
    wall, best = run_and_best(data, name, work)
    status = json.loads(hpo("status", str(work / f"{name}.yaml"), "--json", cwd=work))
    return {
        "kind": kind,
        "seed": seed,
        "best": best["value"],
        "best_params": best["params"],
        "wall_s": round(wall, 1),
        "data_clean": status.get("data_clean"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--train-size", type=int, default=200)
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--quick", action="store_true", help="2 trials of 6 steps, one seed (the plumbing)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    trials, steps = args.trials, args.steps
    if args.quick:
        seeds, trials, steps = [0], 2, 6
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        made = noisy_data(work, args.train_size, args.flip)
        print(f"data: {made['train']} training examples ({made['flipped']} labels flipped), {made['eval']} eval")
        for seed in seeds:
            for kind in ("clean+augment", "plain"):
                r = run_one(kind, seed, trials, steps, work)
                rows.append(r)
                print(f"{kind:13} seed {seed}: best f1_macro {r['best']:.4f}, wall {r['wall_s']:.0f}s", flush=True)
    summary: dict[str, Any] = {}
    for kind in ("clean+augment", "plain"):
        vals = [r["best"] for r in rows if r["kind"] == kind]
        summary[kind] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
        print(f"{kind:13}: median {summary[kind]['median']:.4f} (range {min(vals):.4f}-{max(vals):.4f})")
    by = {(r["kind"], r["seed"]): r["best"] for r in rows}
    diffs = [by[("clean+augment", s)] - by[("plain", s)] for s in seeds]
    mean, lo, hi = t_interval(diffs)
    summary["difference"] = {"per_seed": diffs, "mean": mean, "ci95": [lo, hi]}
    print(f"clean+augment - plain: mean {mean:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]")
    out = record(load_start, t0, quick=args.quick, data=made, trials=trials, steps=steps, rows=rows, summary=summary)
    write_json(out, args.json, f"clean_augment{'-quick' if args.quick else ''}.json")
    return out


if __name__ == "__main__":
    main()
