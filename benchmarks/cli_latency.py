"""CLI latency: `hpo --help`, `hpo validate`, `hpo status` — CPU time, wall time, and what each imports.

Each command runs as a fresh process (``python -m hpo.cli``) ``--repeat`` times; the table gives the median
and range of its CPU time (user + system, from ``getrusage`` of the child: on a machine other jobs load,
CPU time moves far less than wall time) and of its wall time, and which heavy libraries the command
imported (Optuna, SQLAlchemy, torch, transformers, numpy). `hpo status` reads a 16-trial study made here
in a temporary folder (a copy of the quickstart's study file, trials added through Optuna with hpo's
attributes). Targets (issue 13): `--help` and `validate` < 0.3 s, `status` < 0.6 s wall, on a quiet machine.

Usage: python benchmarks/cli_latency.py [--repeat N] [--quick] [--json PATH]
Prints a table and writes JSON (default benchmarks/results/cli_latency.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAVY = ("optuna", "sqlalchemy", "torch", "transformers", "numpy")
TARGETS = {"--help": 0.3, "validate": 0.3, "status": 0.6}
# Reports the heavy modules a command imported, from inside the command's own process.
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules) + '\\n'))\n"
    "sys.argv = ['hpo'] + {args!r}\n"
    "from hpo.cli import entrypoint\n"
    "entrypoint()\n"
)


def imported(args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """The heavy libraries ``hpo ARGS`` imports (run once, in its own process)."""
    code = _PROBE.format(heavy=HEAVY, args=args)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    line = [x for x in p.stderr.splitlines() if x.startswith("HEAVY=")]
    return [m for m in line[-1][6:].split(",") if m] if line else ["?"]


def measure(args: list[str], cwd: Path, env: dict[str, str], repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "hpo.cli", *args]
    subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)  # bytecode written, files in the page cache
    cpu, wall = [], []
    rc = 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
        wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        rc = rc or p.returncode
    return {
        "command": "hpo " + " ".join(args),
        "rc": rc,
        "cpu_s_median": round(statistics.median(cpu), 3),
        "cpu_s_min": round(min(cpu), 3),
        "cpu_s_max": round(max(cpu), 3),
        "wall_s_median": round(statistics.median(wall), 3),
        "wall_s_min": round(min(wall), 3),
        "wall_s_max": round(max(wall), 3),
        "imports": imported(args, cwd, env),
    }


def make_study(folder: Path) -> Path:
    """A copy of the quickstart's study file with its SQLite study of 16 finished trials in ``folder``."""
    import optuna
    import yaml

    from hpo.config import load_study_file
    from hpo.space import to_distributions
    from hpo.storage import create_or_resume, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    raw["study"]["storage"] = f"sqlite:///{folder / 'quickstart.db'}"
    path = folder / "quickstart.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_study_file(path)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    dists = to_distributions(cfg.search_space)
    sampler = optuna.samplers.RandomSampler(seed=0)
    for i in range(16):
        params = {n: sampler.sample_independent(study, None, n, d) for n, d in dists.items()}  # type: ignore[arg-type]
        pruned = i % 3 == 2
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=None if pruned else 300.0 + 10 * i,
                state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
                intermediate_values={s: 400.0 - s / 10 for s in range(50, 301, 50)},
                user_attrs={"steps": 100 if pruned else 300, "duration": 12.5, "device": "cpu"},
            )
        )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1 run per command (a smoke test of this script)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "cli_latency.json")
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install has bytecode; without it every run compiles hpo
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(Path(tmp))
        rows = [
            measure(["--help"], ROOT, env, repeat),
            measure(["validate", str(ROOT / "studies" / "quickstart.yaml")], ROOT, env, repeat),
            measure(["status", str(study)], ROOT, env, repeat),
        ]
    load1 = os.getloadavg()
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_1min_before": round(load0[0], 2),
        "load_1min_after": round(load1[0], 2),
        "repeat": repeat,
        "rows": rows,
    }
    print(f"{'command':<22} {'cpu s (median, range)':<24} {'wall s (median, range)':<24} target  imports")
    for r in rows:
        key = r["command"].split()[1]
        target = TARGETS.get(key)
        verdict = "" if target is None else ("met" if r["wall_s_median"] <= target else "MISSED") + f" <{target}"
        cmd = r["command"].split(" /")[0]
        print(
            f"{cmd:<22} {r['cpu_s_median']:.3f} ({r['cpu_s_min']:.3f}-{r['cpu_s_max']:.3f}){'':<6} "
            f"{r['wall_s_median']:.3f} ({r['wall_s_min']:.3f}-{r['wall_s_max']:.3f}){'':<6} "
            f"{verdict:<11} {','.join(r['imports']) or '-'}"
        )
    print(f"load average (1 min) {result['load_1min_before']} -> {result['load_1min_after']} on {os.cpu_count()} CPUs")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    if any(r["rc"] for r in rows):
        sys.exit("a command failed: " + ", ".join(r["command"] for r in rows if r["rc"]))


if __name__ == "__main__":
    main()
