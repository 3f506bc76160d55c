"""PBT vs TPE + the default pruner vs TPE + successive halving, at the same trial budget, and the replay gap.

For each study file (default: the quickstart and the BBC News study) and each seed, three searches run with
``hpo run`` into their own databases under ``benchmarks/results/pbt/`` (resumed, not redone, when already
complete):

- **pbt**: the study as a population of ``--population`` members (``pbt`` section: interval
  ``--interval`` steps, quantile 0.25, the mutable parameters of its search space: learning rate, weight
  decay), first population drawn by the random sampler with the seed;
- **tpe**: TPE with the seed and hpo's default pruner (median, warm-up a sixth of a trial);
- **sh**: TPE with the seed and the successive-halving pruner.

All three have ``n_trials`` = the population and the same ``fidelity.max_steps``, so PBT spends exactly
population x max_steps optimizer steps and the others at most that (the steps each one ran are counted and
shown). Per method: the best final value (median and min-max over the seeds), steps, wall time, and
whether (and after how long) it reached the TPE study's best of the same seed (for PBT, whose members all
end together, the run's wall time). Then the replay: the PBT winner exported with its schedule
(``hpo export --trial-length``) and trained from scratch by ``hpo train``; the gap to the winner's value.

The machine is shared: ``os.getloadavg()`` is recorded before and after, and wall times are only
comparable within one run of this script.

Usage: python benchmarks/pbt.py [STUDY.yaml ...] [--seeds 0,1,2] [--population 8] [--interval 50] [--quick]
``--quick``: the quickstart only, population 4, 60-step trials, intervals of 20, one seed (a few minutes).
Prints a table and writes JSON (default benchmarks/results/pbt.json).
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
HERE = ROOT / "benchmarks"
STUDIES = [ROOT / "studies" / "quickstart.yaml", ROOT / "studies" / "bbc-news-minilm.yaml"]
METHODS = ("pbt", "tpe", "sh")
HPO = [sys.executable, "-m", "hpo.cli"]


def variant(base: dict[str, Any], method: str, seed: int, population: int, interval: int, out: Path) -> dict[str, Any]:
    """The study file of one search: ``base`` with the method's sampler/pruner/pbt sections."""
    spec = json.loads(json.dumps(base))
    name = f"{spec['study']['name']}-{method}-s{seed}"
    spec["study"] = {"name": name, "n_trials": population, "storage": f"sqlite:///{out / (name + '.db')}"}
    spec.pop("full_run", None)
    spec["resources"] = {"workers": 2, "threads_per_worker": 1}
    if method == "pbt":
        spec["sampler"] = {"name": "random", "seed": seed}
        spec.pop("pruner", None)
        spec["pbt"] = {"population": population, "interval_steps": interval, "quantile": 0.25}
    elif method == "tpe":
        spec["sampler"] = {"name": "tpe", "seed": seed, "n_startup_trials": max(2, population // 3)}
        spec.pop("pruner", None)  # hpo's default pruner
    else:
        spec["sampler"] = {"name": "tpe", "seed": seed, "n_startup_trials": max(2, population // 3)}
        spec["pruner"] = {"name": "successive_halving"}
    return spec


def default_interval(base: dict[str, Any]) -> int:
    """A sixth of a trial, rounded down to whole evals (at least one eval)."""
    f = base["fidelity"]
    return max(f["eval_every"], f["max_steps"] // 6 // f["eval_every"] * f["eval_every"])


def quick(base: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(json.dumps(base))
    spec["fidelity"] = {**spec["fidelity"], "max_steps": 60, "eval_every": 20}
    pruner = spec.get("pruner")
    if isinstance(pruner, dict) and "n_warmup_steps" in pruner:
        pruner["n_warmup_steps"] = 10
    return spec


def run(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([*HPO, *args], cwd=cwd, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"hpo {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def measure(path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one search; its best value, steps spent, and each trial's end relative to the start."""
    import optuna

    wall = run(["run", str(path)], ROOT)
    study = optuna.load_study(study_name=spec["study"]["name"], storage=spec["study"]["storage"])
    trials = study.get_trials(deepcopy=False)
    t0 = min(t.datetime_start for t in trials if t.datetime_start)
    done = [t for t in trials if t.value is not None and t.state.name == "COMPLETE"]
    return {
        "best": study.best_value if done else None,
        "direction": study.direction.name.lower(),
        "steps": sum(int(t.user_attrs.get("steps") or 0) for t in trials),
        "wall": wall,
        # (seconds since the study's start, value) of every complete trial, in order of completion
        "ends": sorted(
            ((t.datetime_complete - t0).total_seconds(), t.value) for t in done if t.datetime_complete is not None
        ),
    }


def time_to(ends: list[tuple[float, float]], target: float, direction: str) -> float | None:
    """Seconds until a complete trial was at least as good as ``target`` (None: never)."""
    for s, v in ends:
        if (v <= target) if direction == "minimize" else (v >= target):
            return s
    return None


def replay(study_path: Path, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """The PBT winner's schedule exported at the trial's length and trained from scratch."""
    import optuna

    export = out / f"{spec['study']['name']}-replay"
    run(["export", str(study_path), "--trial-length", "-o", str(export), "--force"], ROOT)
    run(["train", str(export / "train.yaml"), "--force"], ROOT)
    metrics = json.loads((export / "model" / "metrics.json").read_text())["metrics"]
    metric = spec["objective"]["metric"]
    best = optuna.load_study(study_name=spec["study"]["name"], storage=spec["study"]["storage"]).best_value
    return {"winner": best, "replay": metrics[metric], "gap": metrics[metric] - best}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per study and method over the seeds: median and range of the best value, steps, wall, reach of TPE's best."""
    out = []
    for study in sorted({r["study"] for r in rows}):
        for method in METHODS:
            rs = [r for r in rows if r["study"] == study and r["method"] == method and r["best"] is not None]
            if not rs:
                continue
            best = [r["best"] for r in rs]
            reached = [r["to_tpe_best"] for r in rs if r["to_tpe_best"] is not None]
            gaps = [r["replay"]["gap"] for r in rs if r.get("replay")]
            out.append(
                {
                    "study": study,
                    "method": method,
                    "seeds": len(rs),
                    "best_median": statistics.median(best),
                    "best_min": min(best),
                    "best_max": max(best),
                    "steps_median": statistics.median(r["steps"] for r in rs),
                    "wall_median": statistics.median(r["wall"] for r in rs),
                    "reached_tpe_best": f"{len(reached)}/{len(rs)}",
                    "to_tpe_best_median": statistics.median(reached) if reached else None,
                    "replay_gap_max": max(gaps, key=abs) if gaps else None,
                }
            )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        "| study | method | seeds | best (median, min–max) | steps | wall s | reached TPE's best | s to it "
        "| replay gap |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        gap = "" if s["replay_gap_max"] is None else f"{s['replay_gap_max']:+.3g}"
        to = "" if s["to_tpe_best_median"] is None else f"{s['to_tpe_best_median']:.0f}"
        lines.append(
            f"| {s['study']} | {s['method']} | {s['seeds']} | {s['best_median']:.4g} ({s['best_min']:.4g}–"
            f"{s['best_max']:.4g}) | {s['steps_median']:.0f} | {s['wall_median']:.0f} | {s['reached_tpe_best']} | "
            f"{to} | {gap} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--interval", type=int, default=None, help="default: a sixth of the study's trial")
    ap.add_argument("--quick", action="store_true", help="quickstart only, population 4, 60-step trials, 1 seed")
    ap.add_argument("--out", type=Path, default=None, help="default: results/pbt (results/pbt-quick with --quick)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    studies = a.studies or (STUDIES[:1] if a.quick else STUDIES)
    seeds = [int(s) for s in a.seeds.split(",")][: 1 if a.quick else None]
    population = 4 if a.quick else a.population
    # Quick and full searches share study names: their databases live apart (a study is resumed, not redone).
    a.out = a.out or HERE / "results" / ("pbt-quick" if a.quick else "pbt")
    a.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for study_file in studies:
        base = yaml.safe_load(study_file.read_text())
        if a.quick:
            base = quick(base)
        interval = a.interval or default_interval(base)
        for seed in seeds:
            found: dict[str, dict[str, Any]] = {}
            for method in METHODS:
                spec = variant(base, method, seed, population, interval, a.out)
                path = a.out / f"{spec['study']['name']}.yaml"
                path.write_text(yaml.safe_dump(spec, sort_keys=False))
                found[method] = {"spec": spec, "path": path, **measure(path, spec)}
                print(f"{spec['study']['name']}: best {found[method]['best']}, {found[method]['steps']} steps, "
                      f"{found[method]['wall']:.0f}s", flush=True)  # fmt: skip
            target = found["tpe"]["best"]
            for method, f in found.items():
                row = {k: f[k] for k in ("best", "direction", "steps", "wall")}
                row.update(study=base["study"]["name"], method=method, seed=seed, interval=interval)
                row["to_tpe_best"] = (
                    None
                    if target is None or f["best"] is None or time_to(f["ends"], target, f["direction"]) is None
                    else (f["wall"] if method == "pbt" else time_to(f["ends"], target, f["direction"]))
                )
                if method == "pbt":
                    row["replay"] = replay(f["path"], f["spec"], a.out)
                rows.append(row)
    summary = summarise(rows)
    print(table(summary))
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "quick": a.quick,
        "population": population,
        "rows": rows,
        "summary": summary,
    }
    out_json = a.json or (HERE / "results" / ("pbt-quick.json" if a.quick else "pbt.json"))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_json} (load average {load_before[0]:.1f} before, {result['load_avg_after'][0]:.1f} after)")
    return result


if __name__ == "__main__":
    main()
