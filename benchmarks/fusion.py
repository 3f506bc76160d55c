"""Model fusion on a study's best trials: prediction ensembles and soups against the best single model.

For each study (``--study quickstart`` and/or ``bbc``), runs the example study file with ``hpo run`` as a user
would, with ``fidelity.save_models: {top_k: max(--tops)}`` added (and cut to ``--trials`` trials of
``--steps`` steps; ``pruner: none`` so that enough trials complete to fuse), into a fresh database under
``--work``. Then, for each K in ``--tops`` and each split seed in ``--seeds``, ``hpo.ensemble.ensemble``
cuts the eval split into a selection half and a report half with that seed and measures, on the report
half: the best single model (the study's best trial), every member alone, the equal-weight ensemble, the
greedy-selection (Caruana) ensemble, the uniform and the greedy soup. Reported per study and K: the gain
of each fusion over the best single model on the report half (median, min and max over the split seeds),
its parameters relative to one model and its CPU latency per example. The machine's load average is
recorded before and after: on a shared machine, latencies are noisy (ratios between candidates less so).

``--quick`` runs the tests' tiny studies (a one-layer BERT on a generated CSV, a one-layer GPT-2) with 3
trials, K = 2 and two split seeds, in about a minute: it checks the script end to end
(tests/test_fusion.py runs it).

Usage: python benchmarks/fusion.py [--study quickstart,bbc] [--trials 8] [--steps 150] [--tops 3,5]
       [--seeds 0,1,2,3,4] [--max-examples N] [--quick] [--out FILE]
Writes JSON (default benchmarks/results/fusion.json).
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {"quickstart": "quickstart.yaml", "bbc": "bbc-news-minilm.yaml"}


def quick_studies(work: Path) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "tests"))
    import studies  # the tests' tiny study builders

    csv = studies.write_sentiment_csv(work / "data" / "train.csv", 60)
    cls = studies.classification("quick-cls", 3, csv=str(csv))
    cls["fidelity"] = {"max_steps": 8, "eval_every": 4}
    lm = studies.causal_lm("quick-lm", 3, resources={"workers": 1})
    return {"quick-cls": cls, "quick-lm": lm}


def prepare_study(data: dict[str, Any], name: str, work: Path, trials: int | None, steps: int | None, k: int) -> Path:
    data = dict(data)
    data["study"] = {**data["study"], "name": name, "storage": f"sqlite:///{work}/{name}.db"}
    if trials is not None:
        data["study"]["n_trials"] = trials
    fid = dict(data["fidelity"])
    if steps is not None:
        fid["max_steps"], fid["eval_every"] = steps, max(1, steps // 3)
    fid["save_models"] = {"top_k": k, "dir": str(work / f"{name}-models")}
    data["fidelity"] = fid
    data["pruner"] = {"name": "none"}  # every trial completes: K members to fuse
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_study(path: Path) -> float:
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "run", str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"hpo run {path} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.monotonic() - t0


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def measure(path: Path, tops: list[int], seeds: list[int], max_examples: int | None) -> list[dict[str, Any]]:
    from hpo.ensemble import ensemble

    rows: list[dict[str, Any]] = []
    for k in tops:
        per: dict[str, dict[str, list[Any]]] = {}
        metric = ""
        for seed in seeds:
            r = ensemble(path, k, max_examples=max_examples, split_seed=seed, say=lambda _: None)
            metric = r.metric
            for i, c in enumerate(r.candidates):
                name = "best single" if i == 0 else c.name
                d = per.setdefault(name, {"gain": [], "report": [], "latency_ms": [], "params_x": [], "skipped": []})
                if c.skipped is not None:
                    d["skipped"].append(c.skipped)
                    continue
                d["gain"].append(r.gain(c))
                d["report"].append(c.report)
                d["params_x"].append(c.params_x)
                if c.latency_ms is not None:
                    d["latency_ms"].append(c.latency_ms)
        for name, d in per.items():
            row: dict[str, Any] = {"top": k, "candidate": name, "metric": metric}
            if d["skipped"]:
                row["skipped"] = d["skipped"][0]
            else:
                row["gain"] = spread(d["gain"])
                row["report"] = spread(d["report"])
                row["params_x"] = (
                    statistics.median(x for x in d["params_x"] if x is not None)
                    if any(x is not None for x in d["params_x"])
                    else None
                )
                row["latency_ms"] = spread(d["latency_ms"]) if d["latency_ms"] else None
            rows.append(row)
    return rows


def write_json(
    path: Path, load_before: Any, tops: list[int], seeds: list[int], trials: Any, steps: Any, quick: bool, results: Any
) -> None:
    """Written after each study: a run cut short keeps what it measured."""
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "args": {"tops": tops, "seeds": seeds, "trials": trials, "steps": steps, "quick": quick},
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="quickstart,bbc")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="trial length (default: the study file's)")
    ap.add_argument("--tops", default="3,5")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the selection/report split")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--existing", default=None, help="NAME=STUDY.yaml,...: measure studies this script already ran (no new run)"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "fusion-work")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fusion.json")
    a = ap.parse_args()
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    tops = [int(x) for x in a.tops.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    if a.quick:
        tops, seeds = [2], [0, 1]
        files = quick_studies(a.work)
        trials, steps = 3, None
    else:
        files = {n: yaml.safe_load((ROOT / "studies" / STUDIES[n]).read_text()) for n in a.study.split(",")}
        trials, steps = a.trials, a.steps
    os.environ.setdefault("HPO_CACHE_DIR", str(ROOT / "runs" / "cache"))
    from transformers.utils import logging as hf_logging

    from trainers.base import quiet_libraries

    quiet_libraries()
    hf_logging.disable_progress_bar()
    os.chdir(ROOT)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    existing = dict(x.split("=", 1) for x in a.existing.split(",")) if a.existing else {}
    if existing:
        files = {key: {} for key in existing}
    for name, data in files.items():
        if name in existing:
            path, wall = Path(existing[name]).resolve(), float("nan")
        else:
            stamp = dt.datetime.now().strftime("%H%M%S")
            path = prepare_study(data, f"{name}-fusion-{stamp}", a.work, trials, steps, max(tops))
            wall = run_study(path)
        rows = measure(path, tops, seeds, a.max_examples)
        results[name] = {"study_file": str(path), "study_wall_s": round(wall, 1), "rows": rows}
        for row in rows:
            if "skipped" in row:
                print(f"{name:12} top {row['top']}  {row['candidate']:30} skipped: {row['skipped']}")
                continue
            g, lat = row["gain"], row["latency_ms"]
            lat_s = f"{lat['median']:.3g} ms/ex" if lat else ""
            print(
                f"{name:12} top {row['top']}  {row['candidate']:30} {row['metric']} gain {g['median']:+.4f} "
                f"[{g['min']:+.4f}, {g['max']:+.4f}]  params {row['params_x']}x  {lat_s}"
            )
        write_json(a.out, load_before, tops, seeds, trials, steps, a.quick, results)
    write_json(a.out, load_before, tops, seeds, trials, steps, a.quick, results)
    print(f"load average before {load_before}, after {os.getloadavg()}; wrote {a.out}")


if __name__ == "__main__":
    main()
