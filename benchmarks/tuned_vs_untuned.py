"""Tuned vs untuned: the best configuration a study found vs the common default fine-tuning configuration.

For each study file (default: the quickstart and the BBC News study) this runs the study with ``hpo run``
into its own database under ``benchmarks/results/tuned/`` (resumed, not redone, when it is already
complete), takes the best trial's parameters, and trains two configurations at the trial's step budget:

- **tuned**: the best trial's parameters;
- **default**: the common fine-tuning defaults — learning rate 5e-5, batch 8, dropout 0.1, weight decay 0
  (the Hugging Face ``TrainingArguments`` defaults and the usual dropout of BERT/GPT-2 configs).

Everything else is the study's base configuration (model, data, schedule, warm-up, step budget). Both are
trained on seeds the search never saw (``training.seed`` 1, 2, 3 by default; the study's trials all used
the base seed), because the best trial's own value is the maximum of many noisy draws and flatters the
tuned configuration. Runs go through the same training code as trials (``trainers.loop.train``), two at a
time with one thread each, as ``hpo run`` runs trials on 2 cores.

Generation studies (``studies/bbc-headlines-t5.yaml``, objective ROUGE-L): the default decoding is
``generate``'s (greedy, no n-gram blocking, no repetition penalty); the table gives each metric's mean
over seeds and a 95% confidence interval (Student t) of the per-seed difference tuned - default.

``--quick`` checks the script end to end in a minute or two: 2 trials of at most 20 steps, one seed,
results in ``benchmarks/results/tuned-quick/`` (its figures mean nothing).

Usage: python benchmarks/tuned_vs_untuned.py [STUDY.yaml ...] [--seeds 1,2,3] [--json PATH] [--quick]
Prints a table and writes JSON (default benchmarks/results/tuned_vs_untuned.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
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
HERE = ROOT / "benchmarks"
STUDIES = [ROOT / "studies" / "quickstart.yaml", ROOT / "studies" / "bbc-news-minilm.yaml"]
HEADLINES = ROOT / "studies" / "bbc-headlines-t5.yaml"  # `python benchmarks/tuned_vs_untuned.py` + this path

# The common default fine-tuning configuration, by search-space path.
DEFAULTS = {
    "training.learning_rate": 5.0e-5,
    "training.per_device_train_batch_size": 8,
    "model.dropout": 0.1,
    "training.weight_decay": 0.0,
    # generate()'s defaults: greedy decoding, no n-gram blocking, no repetition penalty
    "generation.num_beams": 1,
    "generation.no_repeat_ngram_size": 0,
    "generation.repetition_penalty": 1.0,
    "generation.length_penalty": 1.0,
}
# Student t, two-sided 95%, by degrees of freedom (the runs use a handful of seeds)
T95 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
# The figures the project answers to: ~20% lower perplexity (language modelling) after tuning.
REFERENCE = {"perplexity": 20.0, "eval_loss": None, "f1_macro": 10.0, "accuracy": 10.0, "rougeL": 10.0}
QUICK = {"n_trials": 2, "max_steps": 20, "eval_every": 10}


def bench_study_file(study: Path, out_dir: Path, quick: bool = False) -> Path:
    """A copy of the study file whose study lives in the benchmark's own database (not the user's runs/)."""
    spec = yaml.safe_load(study.read_text())
    spec["study"]["storage"] = f"sqlite:///{out_dir / (spec['study']['name'] + '.db')}"
    base = study.parent.resolve()
    data = spec.get("data") or {}
    if isinstance(data.get("files"), dict):  # the copy lives elsewhere: data paths as the original meant them
        data["files"] = {k: str(base / v) if isinstance(v, str) else [str(base / f) for f in v]
                         for k, v in data["files"].items()}  # fmt: skip
    if quick:
        spec["study"]["n_trials"] = QUICK["n_trials"]
        fid = spec["fidelity"]
        fid["max_steps"] = min(fid["max_steps"], QUICK["max_steps"])
        fid["eval_every"] = min(fid["eval_every"], QUICK["eval_every"])
        spec.pop("pruner", None)
        if "generation" in spec:
            spec["generation"]["eval_samples"] = 8
    path = out_dir / study.name
    text = yaml.safe_dump(spec, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def run_study(path: Path) -> float:
    """``hpo run`` as a user would (a complete study returns at once). Returns seconds taken."""
    hpo = Path(sys.executable).with_name("hpo")
    t0 = time.perf_counter()
    proc = subprocess.run([str(hpo), "run", str(path)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"hpo run {path} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def default_params(cfg: Any) -> dict[str, Any]:
    """The default configuration as this study's trial parameters (only the paths its space searches)."""
    from hpo.space import param_name

    missing = [p for p in cfg.search_space if p not in DEFAULTS]
    if missing:
        sys.exit(f"{cfg.study.name}: no default value for searched parameter(s) {missing}")
    return {param_name(p, spec): DEFAULTS[p] for p, spec in cfg.search_space.items()}


def train_one(job: tuple[str, str, dict[str, Any], int]) -> dict[str, Any]:
    """One run (in a pool process with one thread): the study's base config with these parameters and seed."""
    study_path, label, params, seed = job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from hpo.api import cache_dir
    from hpo.config import load_study_file
    from trainers.base import NullReporter, quiet_libraries
    from trainers.data import prepare
    from trainers.loop import train

    quiet_libraries()
    cfg = load_study_file(study_path)
    run = cfg.trial_run(params)
    run = run.model_copy(update={"training": run.training.model_copy(update={"seed": seed})})
    t0 = time.perf_counter()
    result = train(run, NullReporter(), cache_dir(), data=prepare(run, cache_dir()))
    return {
        "label": label,
        "seed": seed,
        "metrics": result.metrics,
        "steps": result.steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def paired_ci(tuned: list[float], default: list[float]) -> tuple[float, float] | None:
    """95% confidence interval of the mean per-seed difference tuned - default (None with one seed)."""
    diffs = [t - d for t, d in zip(tuned, default, strict=True)]
    if len(diffs) < 2:
        return None
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return statistics.mean(diffs) - half, statistics.mean(diffs) + half


def summarise(cfg: Any, best: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    metric = cfg.metric
    candidates = (metric, "perplexity", "eval_loss", "accuracy", "f1_macro", "rouge1", "rouge2", "bleu", "chrf")
    keys = [k for k in candidates if k in runs[0]["metrics"]]
    keys = list(dict.fromkeys(keys))
    out: dict[str, Any] = {"metrics": {}}
    for k in keys:
        per = {lab: [r["metrics"][k] for r in runs if r["label"] == lab] for lab in ("tuned", "default")}
        t, d = statistics.mean(per["tuned"]), statistics.mean(per["default"])
        lower_better = k in ("perplexity", "eval_loss")
        # A default at 0 (e.g. ROUGE of a model that writes nothing yet): no relative gain, say so
        gain = 100.0 * ((d - t) / d if lower_better else (t - d) / d) if d else float("nan")
        out["metrics"][k] = {
            "tuned": per["tuned"],
            "default": per["default"],
            "tuned_mean": t,
            "default_mean": d,
            "improvement_pct": gain,  # lower perplexity / higher accuracy: positive is better
            "tuned_wins_every_seed": all(
                (a < b if lower_better else a > b) for a, b in zip(per["tuned"], per["default"], strict=True)
            ),
            "reference_pct": REFERENCE.get(k),
            "diff_ci95": paired_ci(per["tuned"], per["default"]),
        }
    out["objective"] = metric
    out["best_trial"] = {"number": best.number, "value": best.value, "params": best.params}
    return out


def fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", type=Path, default=STUDIES)
    ap.add_argument("--seeds", default="1,2,3", help="training seeds of the re-runs (the search used the base seed)")
    ap.add_argument("--json", default=None, help="default: benchmarks/results/tuned_vs_untuned[-quick].json")
    ap.add_argument("--quick", action="store_true", help="a check of the script: 2 short trials, one seed")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")][:1] if args.quick else [int(s) for s in args.seeds.split(",")]
    suffix = "-quick" if args.quick else ""
    args.json = args.json or str(HERE / "results" / f"tuned_vs_untuned{suffix}.json")
    out_dir = HERE / "results" / f"tuned{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)

    from hpo import api

    results: list[dict[str, Any]] = []
    for study in args.studies:
        path = bench_study_file(study, out_dir, args.quick)
        print(f"{study.name}: hpo run (resumes/returns at once when the study is complete) ...", flush=True)
        search_s = run_study(path)
        cfg, best = api.best(path)
        jobs = [(str(path), "tuned", best.params, s) for s in seeds]
        jobs += [(str(path), "default", default_params(cfg), s) for s in seeds]
        print(f"  best trial {best.number}: {cfg.metric}={best.value:.4g} {best.params}", flush=True)
        print(f"  training {len(jobs)} runs of {cfg.fidelity.max_steps} steps, 2 at a time ...", flush=True)
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(2) as pool:
            runs = pool.map(train_one, jobs, chunksize=1)
        row = {
            "study": str(study.relative_to(ROOT)) if study.is_relative_to(ROOT) else str(study),
            "name": cfg.study.name,
            "n_trials": cfg.study.n_trials,
            "steps": cfg.fidelity.max_steps,
            "search_seconds": round(search_s, 1),
            "rerun_seconds": round(time.perf_counter() - t0, 1),
            "default_params": default_params(cfg),
            "runs": runs,
            **summarise(cfg, best, runs),
        }
        results.append(row)

    print()
    head = f"{'study':<18}{'metric':<12}{'default':>10}{'tuned':>10}{'improvement':>13}{'every seed':>12}"
    print(f"{head}{'reference':>11}")
    for r in results:
        for k, m in r["metrics"].items():
            ref = f"~{m['reference_pct']:.0f}%" if m["reference_pct"] else "-"
            ci = m["diff_ci95"]
            print(
                f"{r['name']:<18}{k:<12}{fmt(m['default_mean']):>10}{fmt(m['tuned_mean']):>10}"
                f"{m['improvement_pct']:>12.1f}%{'yes' if m['tuned_wins_every_seed'] else 'no':>12}{ref:>11}"
                + (f"   diff 95% CI [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
            )
    print(f"(means over training seeds {seeds}; the same step budget as the study's trials)")
    result = {
        "benchmark": "tuned_vs_untuned",
        "command": " ".join(["python", "benchmarks/tuned_vs_untuned.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),  # a shared machine: other work ran next to this one
        },
        "defaults": DEFAULTS,
        "seeds": seeds,
        "studies": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
