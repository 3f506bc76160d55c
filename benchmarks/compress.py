"""Compression of a study's best model: size on disk, CPU latency and quality per variant.

Runs ``hpo.compress.compress`` (dynamic int8, magnitude pruning, combinations) on ``--model DIR`` (a folder
hpo wrote: ``hpo train``, ``fidelity.save_models``, a soup) or, by default, on the best saved model of the
newest BBC News study ``benchmarks/fusion.py`` ran (``benchmarks/results/fusion-work/bbc-fusion-*-models``).
Quality is deterministic; latency is measured ``--repeats`` times (median and spread) with one torch thread,
as each variant's median of 3 passes per repeat. The machine's load average is recorded before and after.

``--quick`` compresses an untrained one-layer BERT built from the tests' tiny study in-process (seconds):
it checks the script end to end (tests/test_fusion.py runs it).

Usage: python benchmarks/compress.py [--model DIR] [--repeats 3] [--max-drop 1%] [--max-examples N] [--quick]
Writes JSON (default benchmarks/results/compress.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def newest_bbc_model() -> Path:
    root = ROOT / "benchmarks" / "results" / "fusion-work"
    folders = sorted(root.glob("bbc-fusion-*-models"), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise SystemExit("no BBC News models: run benchmarks/fusion.py --study bbc first, or give --model DIR")
    best: tuple[float, Path] | None = None
    for d in folders[-1].glob("trial-*"):
        mark = d / "hpo_model.json"
        if mark.is_file():
            v = json.loads(mark.read_text()).get("value")
            if v is not None and (best is None or v > best[0]):  # macro-F1: higher is better
                best = (v, d)
    if best is None:
        raise SystemExit(f"no saved model in {folders[-1]}")
    return best[1]


def quick_model(work: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import studies
    from hpo.config import validate_study
    from hpo.saved_models import SaveSpec, save_trial_model
    from trainers.data import prepare
    from trainers.models import build_model

    csv = studies.write_sentiment_csv(work / "data" / "train.csv", 40)
    run = validate_study(studies.classification(csv=str(csv))).base_run()
    data = prepare(run, os.environ["HPO_CACHE_DIR"])
    torch.manual_seed(0)
    spec = SaveSpec(str(work / "models"), "quick", "f1_macro")
    save_trial_model(spec, 0, build_model(run, data), data.tokenizer_dir, run.model_dump(mode="json"), {})
    return work / "models" / "trial-0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-drop", default="1%")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress.json")
    a = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    from hpo.compress import compress, render
    from trainers.base import quiet_libraries

    quiet_libraries()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    os.environ.setdefault("HPO_CACHE_DIR", str(ROOT / "runs" / "cache"))
    tmp = Path(tempfile.mkdtemp(prefix="hpo-compress-bench-"))
    if a.quick:
        os.environ["HPO_CACHE_DIR"] = str(tmp / "cache")
        model, repeats = quick_model(tmp), 2
    else:
        model, repeats = (a.model or newest_bbc_model()), a.repeats
    load_before = os.getloadavg()
    runs = []
    for i in range(repeats):
        r = compress(model, tmp / f"out-{i}", a.max_drop, a.max_examples)
        runs.append(r)
    last = runs[-1]
    for line in render(last):
        print(line)
    rows: list[dict[str, Any]] = []
    for j, v in enumerate(last.variants):
        row: dict[str, Any] = {"variant": v.name}
        if v.skipped is not None:
            row["skipped"] = v.skipped
        else:
            lat = [r.variants[j].latency_ms for r in runs]
            row.update(
                metric=v.metric,
                drop=v.drop,
                size_mb=v.size_mb,
                zipped_mb=v.zipped_mb,
                nonzero_fraction=(v.nonzero or 0) / max(v.params or 1, 1),
                latency_ms={"median": statistics.median(lat), "min": min(lat), "max": max(lat), "n": len(lat)},
            )
        rows.append(row)
        if "latency_ms" in row:
            lm = row["latency_ms"]
            print(
                f"  {v.name:32} latency over {lm['n']} repeats: {lm['median']:.3g} [{lm['min']:.3g}, {lm['max']:.3g}]"
            )
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "model": str(model),
        "metric": last.metric,
        "eval_rows": last.rows,
        "max_drop": last.max_drop,
        "chosen": [r.chosen for r in runs],
        "quick": a.quick,
        "variants": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"load average before {load_before}, after {os.getloadavg()}; wrote {a.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
