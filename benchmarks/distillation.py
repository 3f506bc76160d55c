"""Distilled student vs a student trained on labels alone: the best of each study at the same trial budget.

``--pair bbc`` (issue 11's benchmark): the teacher is the all-MiniLM-L6-v2 that ``studies/bbc-news-minilm.yaml``
fine-tunes, taken as a user would: ``hpo run`` the study (cut to ``--teacher-trials``), ``hpo export`` its best
trial, ``hpo train`` it at the study's full length. The students are ``studies/bbc-news-distill.yaml`` (a
2-layer BERT from its config; temperature and alpha searched with the learning rate) and the same file
without its ``distillation`` section (the learning rate searched alone). Objective: macro-F1.

``--pair quickstart``: the teacher is a larger GPT-2 (4 layers, 128 dimensions) trained the same way from the
quickstart; the students are the quickstart's tiny GPT-2 with the teacher's tokenizer, with and without
distillation. Objective: perplexity.

Each student study runs with ``hpo run`` (a subprocess, as a user runs it) once per sampler seed
(``--seeds``), ``--trials`` trials of ``--steps`` steps, into a fresh database. Reports per study and seed the
best value and wall time, then per kind the median and range over seeds, and the paired difference
(distilled - labels) with a 95% t-interval over seeds. ``--teacher DIR`` reuses a trained teacher folder.
The distilled trials also pay the teacher's forward passes; ``--kinds labels --labels-steps N`` runs only the
label-only studies, N steps per trial (no teacher needed), for the comparison at equal compute.
``--quick``: 2 trials of 12 steps, one seed pair, a teacher of 2 trials (the plumbing: 9 min on a machine
under load 20; tests/test_bench_distill.py runs it).

Usage: python benchmarks/distillation.py [--pair bbc|quickstart] [--seeds 0,1,2] [--trials 8] [--steps N]
Writes JSON (default benchmarks/data/distillation-PAIR.json); the machine's load average is recorded, since
this machine is shared with other jobs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
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
STUDIES = ROOT / "studies"
LARGER_GPT2 = {"model_type": "gpt2", "n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": 64}
# Student studies: (file, objective) per pair; the teacher's study file per pair.
PAIRS: dict[str, dict[str, str]] = {
    "bbc": {"teacher": "bbc-news-minilm.yaml", "student": "bbc-news-distill.yaml"},
    "quickstart": {"teacher": "quickstart.yaml", "student": "quickstart.yaml"},
}


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval of the mean; the bounds are nan with one value."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def hpo(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "HPO_CACHE_DIR": str(cwd / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    p = subprocess.run([sys.executable, "-m", "hpo.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"hpo {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def run_and_best(data: dict[str, Any], name: str, work: Path) -> tuple[float, dict[str, Any]]:
    """Write the study file NAME.yaml, `hpo run` it; (its wall seconds, `hpo best --json`)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.perf_counter()
    hpo("run", str(path), cwd=work)
    wall = time.perf_counter() - t0
    return wall, json.loads(hpo("best", str(path), "--json", cwd=work))


def record(load_start: tuple[float, float, float], t0: float, **fields: Any) -> dict[str, Any]:
    """A run's JSON: date, machine, the load averages at its start and end (a shared machine), wall time."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_at_start": load_start,
        "load_at_end": os.getloadavg(),
        "note": "a shared machine: the load averages say whether other jobs ran at the same time",
        "wall_s": round(time.perf_counter() - t0, 1),
        **fields,
    }


def write_json(out: dict[str, Any], given: str | None, default_name: str) -> Path:
    path = Path(given or ROOT / "benchmarks" / "data" / default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def cut(data: dict[str, Any], name: str, trials: int, steps: int, seed: int, work: Path) -> dict[str, Any]:
    """The study cut to the budget: its own database, sampler seed, trials and steps."""
    data["study"] = {"name": name, "n_trials": trials, "storage": f"sqlite:///{work}/{name}.db"}
    data["sampler"]["seed"] = seed
    data["sampler"]["n_startup_trials"] = min(data["sampler"].get("n_startup_trials", 10), max(1, trials // 2))
    data["pruner"] = {**data["pruner"], "n_warmup_steps": steps // 3}
    data["fidelity"] = {**data["fidelity"], "max_steps": steps, "eval_every": max(1, steps // 3)}
    return data


def train_teacher(pair: str, trials: int, steps: int | None, full_steps: int | None, work: Path) -> Path:
    """The teacher as a user makes it: hpo run, hpo export (best trial), hpo train. Returns its folder."""
    data = yaml.safe_load((STUDIES / PAIRS[pair]["teacher"]).read_text())
    if pair == "quickstart":
        data["model"]["from_config"] = dict(LARGER_GPT2)
    s = steps or data["fidelity"]["max_steps"]
    data = cut(data, "teacher", trials, s, 0, work)
    if full_steps is not None:
        data["full_run"] = {"max_steps": full_steps, "eval_steps": max(1, full_steps // 2)}
    path = work / "teacher.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.perf_counter()
    hpo("run", str(path), cwd=work)
    hpo("export", str(path), "-o", str(work / "teacher-export"), cwd=work)
    hpo("train", str(work / "teacher-export" / "train.yaml"), cwd=work)
    print(f"teacher trained in {time.perf_counter() - t0:.0f}s: {work / 'teacher-export' / 'model'}", flush=True)
    return work / "teacher-export" / "model"


def student(pair: str, kind: str, teacher: Path | None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((STUDIES / PAIRS[pair]["student"]).read_text())
    if pair == "quickstart":
        assert teacher is not None, "the quickstart student uses the teacher's tokenizer"
        data["model"]["tokenizer"] = {"name_or_path": str(teacher)}  # the teacher's: one vocabulary
        data["search_space"] = {"training.learning_rate": data["search_space"]["training.learning_rate"]}
        data["distillation"] = {"teacher": str(teacher), "temperature": 2.0, "alpha": 0.5}
        data["search_space"]["distillation.temperature"] = {"type": "float", "low": 1.0, "high": 8.0}
        data["search_space"]["distillation.alpha"] = {"type": "float", "low": 0.0, "high": 1.0}
    elif teacher is not None:  # None: labels alone, the section is dropped below
        data["distillation"]["teacher"] = str(teacher)
    if kind == "labels":
        del data["distillation"]
        data["search_space"] = {k: v for k, v in data["search_space"].items() if not k.startswith("distillation.")}
    return data


def run_student(
    pair: str, kind: str, seed: int, trials: int, steps: int, teacher: Path | None, work: Path
) -> dict[str, Any]:
    name = f"{pair}-{kind}-s{seed}"
    data = cut(student(pair, kind, teacher), name, trials, steps, seed, work)
    wall, best = run_and_best(data, name, work)
    attrs = best.get("user_attrs", {})
    return {
        "kind": kind,
        "seed": seed,
        "steps": steps,
        "objective": data["objective"]["metric"],
        "best": best["value"],
        "best_params": best["params"],
        "wall_s": round(wall, 1),
        "train_time": attrs.get("train_time"),
        "teacher_time": attrs.get("teacher_time"),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("distilled", "labels"):
        vals = [r["best"] for r in rows if r["kind"] == kind]
        if vals:
            out[kind] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
    if len(out) < 2:
        return out
    by_seed = {(r["kind"], r["seed"]): r["best"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    diffs = [by_seed[("distilled", s)] - by_seed[("labels", s)] for s in seeds]
    mean, lo, hi = t_interval(diffs)
    out["difference"] = {"per_seed": diffs, "mean": mean, "ci95": [lo, hi]}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=sorted(PAIRS), default="bbc")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="per trial (default: the student study's)")
    ap.add_argument("--teacher", default=None, help="a trained teacher folder (skips training one)")
    ap.add_argument("--teacher-trials", type=int, default=None, help="default: the teacher study's n_trials")
    ap.add_argument("--kinds", default="distilled,labels", help="which student studies (labels alone: no teacher)")
    ap.add_argument("--labels-steps", type=int, default=None, help="steps of the label-only trials (default: --steps)")
    ap.add_argument("--quick", action="store_true", help="2 trials of 12 steps, one seed (the plumbing)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    kinds = [k for k in ("distilled", "labels") if k in args.kinds.split(",")]
    if not kinds or set(args.kinds.split(",")) - {"distilled", "labels"}:
        ap.error(f"--kinds: distilled and/or labels, not {args.kinds!r}")
    if args.pair == "quickstart" and not args.teacher and kinds == ["labels"]:
        ap.error("--pair quickstart --kinds labels: the student uses the teacher's tokenizer; give --teacher DIR")
    load_start = os.getloadavg()
    seeds = [int(s) for s in args.seeds.split(",")]
    default_steps = yaml.safe_load((STUDIES / PAIRS[args.pair]["student"]).read_text())["fidelity"]["max_steps"]
    steps, trials = args.steps or default_steps, args.trials
    teacher_trials = args.teacher_trials
    teacher_steps: int | None = None
    full_steps: int | None = None
    if args.quick:
        seeds, steps, trials, teacher_trials, teacher_steps, full_steps = [0], 12, 2, 2, 12, 24
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher: Path | None
        if args.teacher:
            teacher = Path(args.teacher).resolve()
        elif kinds == ["labels"]:
            teacher = None  # nothing to distil from: the label-only studies need no teacher
        else:
            written = yaml.safe_load((STUDIES / PAIRS[args.pair]["teacher"]).read_text())["study"]["n_trials"]
            n = teacher_trials or written
            teacher = train_teacher(args.pair, n, teacher_steps, full_steps, work)
        teacher_metrics = json.loads((teacher / "metrics.json").read_text()).get("metrics") if teacher else None
        for seed in seeds:
            for kind in kinds:
                n = (args.labels_steps or steps) if kind == "labels" else steps
                r = run_student(args.pair, kind, seed, trials, n, teacher, work)
                rows.append(r)
                print(f"{kind:9} seed {seed}: best {r['objective']} {r['best']:.4g}, {r['wall_s']:.0f}s", flush=True)
    summary = summarise(rows)
    for kind in kinds:
        s = summary[kind]
        print(f"{kind:9}: median {s['median']:.4g} (range {s['min']:.4g}-{s['max']:.4g}, {s['n']} seeds)")
    d = summary.get("difference") or {"mean": math.nan, "ci95": [math.nan, math.nan]}
    print(f"distilled - labels: mean {d['mean']:+.4g}, 95% CI [{d['ci95'][0]:+.4g}, {d['ci95'][1]:+.4g}]")
    out = record(
        load_start,
        t0,
        pair=args.pair,
        quick=args.quick,
        trials=trials,
        steps=steps,
        labels_steps=args.labels_steps or steps,
        kinds=kinds,
        teacher={"folder": str(teacher) if teacher else None, "metrics": teacher_metrics},
        rows=rows,
        summary=summary,
    )
    only = "" if len(kinds) == 2 else f"-{kinds[0]}-only"
    write_json(out, args.json, f"distillation-{args.pair}{only}{'-quick' if args.quick else ''}.json")
    return out


if __name__ == "__main__":
    main()
