"""Worker scaling: trials/s with 1, 2, 4, 8 workers on SQLite and PostgreSQL, lost and duplicated trials.

Runs hpo's real orchestrator and worker processes with a trainer double that sleeps (``sleep_runner.py``:
0.5 s per trial, 4 evals each reported to the median pruner; no torch), so the figures are what hpo's own
machinery costs: asking the sampler, storage writes, pruning decisions, hand-over to workers. Each
configuration gets a fresh study of ``trials-per-worker x workers`` trials on the quickstart's
4-parameter space, with the grid sampler by default (a grid point run twice is a duplicate).

Workers are started and ready before the clock starts; the clock stops when every orchestrator's
``run()`` returns. Also a multi-process row: several orchestrator processes on one study (the path for
several machines). PostgreSQL is a throw-away server started here and stopped at the end, unless
``--storage URL`` names a database (then only that storage is measured).

Usage: python benchmarks/scaling.py [--quick] [--storage URL] [--sampler grid|tpe|random] [--seconds S]
                                   [--json PATH]
Prints a table and writes JSON (default benchmarks/results/scaling.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # `hpo` from this checkout, also when not installed in editable mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1, 4, 8 workers, 8 trials per worker (~2 min)")
    ap.add_argument("--storage", help="measure only this storage URL (e.g. an existing PostgreSQL database)")
    ap.add_argument("--backends", default="sqlite,postgres", help="without --storage: which to measure")
    ap.add_argument("--workers", help="comma-separated worker counts (default 1,2,4,8)")
    ap.add_argument("--multi", default="2x4", help="orchestrator processes x workers rows, e.g. 2x4,4x2 ('' for none)")
    ap.add_argument("--trials-per-worker", type=int, help="n_trials = this x workers (default 32)")
    ap.add_argument("--seconds", type=float, default=0.5, help="sleep per trial (default 0.5)")
    ap.add_argument("--sampler", default="grid", choices=["grid", "tpe", "random"])
    ap.add_argument("--profile", action="store_true", help="cProfile each orchestrator (slower; next to the JSON)")
    ap.add_argument("--json", default=str(HERE / "results" / "scaling.json"))
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    workers = [int(w) for w in (args.workers or ("1,4,8" if args.quick else "1,2,4,8")).split(",")]
    per_worker = args.trials_per_worker or (8 if args.quick else 32)
    multi = [tuple(int(x) for x in m.split("x")) for m in args.multi.split(",") if m]
    layouts: list[tuple[int, int]] = [(1, w) for w in workers] + [(p, w) for p, w in multi]
    sampler: dict[str, Any] = {"name": args.sampler, "seed": 0}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="hpo-scaling-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stores = storages(args, tmp, stack)
        for backend, make_url, server in stores:
            for procs, w in layouts:
                url = make_url()
                n = per_worker * procs * w
                prof = str(Path(args.json).parent / f"scaling-{backend}-{procs}x{w}") if args.profile else None
                row = run_config(backend, url, procs, w, n, args.seconds, sampler, server, prof)
                rows.append(row)
                print(f"  {fmt_row(row, rows)}", flush=True)
                if args.storage:
                    from sleep_runner import delete_study

                    delete_study(url, row["study"])

    finish_rows(rows)
    result = {
        "benchmark": "scaling",
        "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "seconds_per_trial": args.seconds,
            "evals_per_trial": 4,
            "trials_per_worker": per_worker,
            "sampler": sampler,
            "orchestrator": "hpo.orchestrator.Orchestrator",
            "pruner": "median (n_startup_trials=4; the double's intermediate values never trigger it)",
        },
        "rows": rows,
        "targets": targets(rows),
    }
    print()
    print_table(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


# ------------------------------------------------------------------------------------------ storages
def storages(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> list[tuple[str, Any, Any]]:
    """(backend label, a function giving a fresh storage URL per configuration, the server or None)."""
    if args.storage:
        url = args.storage
        return [(url.split(":")[0].split("+")[0], lambda: url, None)]
    out: list[tuple[str, Any, Any]] = []
    for b in args.backends.split(","):
        if b == "sqlite":
            out.append(("sqlite", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex[:8]}.db", None))
        elif b == "postgres":
            from pgserver import PostgresUnavailable, create_database, throwaway_postgres

            try:
                server = stack.enter_context(throwaway_postgres())
            except PostgresUnavailable as e:
                print(f"skipping PostgreSQL: {e}", file=sys.stderr)
                continue
            out.append(("postgres", lambda base=server.url: create_database(base, "scaling"), server))
        else:
            sys.exit(f"unknown backend {b!r} (sqlite, postgres)")
    return out


# ------------------------------------------------------------------------------------------ one run
def run_config(
    backend: str,
    url: str,
    procs: int,
    workers: int,
    n_trials: int,
    seconds: float,
    sampler: dict[str, Any],
    server: Any = None,
    profile: str | None = None,
) -> dict[str, Any]:
    import multiprocessing as mp

    from sleep_runner import orchestrator_process, study_dict

    from hpo.config import validate_study
    from hpo.curves import CurveStore
    from hpo.storage import create_or_resume, open_storage

    name = f"scaling-{procs}x{workers}-{uuid.uuid4().hex[:6]}"
    study = study_dict(name, url, n_trials, sampler)
    storage = open_storage(url, create=True)
    # As the first `hpo run` does (the study, and the curves table); the orchestrators below join it.
    # (Creating the curves table from several processes at once can fail: see benchmarks/README.md.)
    create_or_resume(validate_study(study), storage)
    CurveStore(url, name).close()
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    ps = [
        ctx.Process(target=orchestrator_process, args=(i, study, workers, seconds, go, out, profile))
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    startup: list[float] = []
    done: list[dict[str, Any]] = []
    errors: list[str] = []
    deadline = time.monotonic() + 300
    while len(startup) + len(errors) < procs and time.monotonic() < deadline:
        kind, _i, payload = out.get(timeout=300)
        (startup.append if kind == "ready" else errors.append)(payload)
    load_before = os.getloadavg()[0]
    db_cpu0 = server.cpu_seconds() if server else None
    go.set()
    deadline = time.monotonic() + 120 + 20 * n_trials * seconds / (procs * workers)
    while len(done) + len(errors) < procs and time.monotonic() < deadline:
        try:
            kind, _i, payload = out.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            break
        (done.append if kind == "done" else errors.append)(payload)
    for p in ps:
        p.join(30)
        if p.is_alive():
            errors.append(f"orchestrator process {p.pid} still running: killed")
            p.kill()
            p.join(5)
    db_cpu1 = server.cpu_seconds() if server else None
    load_after = os.getloadavg()[0]
    wall = max(d["t1"] for d in done) - min(d["t0"] for d in done) if done else float("nan")
    row: dict[str, Any] = {
        "backend": backend,
        "study": name,
        "processes": procs,
        "workers": workers,
        "total_workers": procs * workers,
        "n_trials": n_trials,
        "seconds_per_trial": seconds,
        "startup_s": round(max(startup), 2) if startup else None,
        "wall_s": round(wall, 2),
        "trials_per_s": round(n_trials / wall, 3),
        "ideal_trials_per_s": round(procs * workers / seconds, 3),
        "orchestrator_cpu_ms_per_trial": round(1000 * sum(d["cpu_s"] for d in done) / n_trials, 1),
        "db_server_cpu_ms_per_trial": (
            round(1000 * (db_cpu1 - db_cpu0) / n_trials, 1) if db_cpu0 is not None and db_cpu1 is not None else None
        ),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(load_after, 2),
        "errors": errors,
    }
    row.update(audit(url, name, n_trials))
    dispose(storage)
    return row


def audit(url: str, name: str, n_trials: int) -> dict[str, Any]:
    """Lost, extra and duplicated trials, from the study as stored."""
    import optuna
    from optuna.trial import TrialState

    from hpo.accounting import A_DISCARDED, A_RETRY_OF, counted
    from hpo.storage import open_storage

    storage = open_storage(url, create=False)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    ran = [t for t in trials if counted(t)]
    unfinished = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    points = Counter(tuple(sorted(t.params.items())) for t in ran)
    lineage = Counter(t.user_attrs.get(A_RETRY_OF, t.number) for t in trials if t.state == TrialState.COMPLETE)
    states = Counter(t.state.name for t in trials)
    dispose(storage)
    return {
        "trials_in_study": len(trials),
        "counted": len(ran),
        "states": dict(states),
        "discarded": sum(1 for t in trials if t.user_attrs.get(A_DISCARDED)),
        "left_running_or_waiting": len(unfinished),
        "lost": max(0, n_trials - len(ran)) + len(unfinished),
        "extra": max(0, len(ran) - n_trials),
        "duplicated_params": sum(c - 1 for c in points.values() if c > 1),
        "duplicated_retries": sum(c - 1 for c in lineage.values() if c > 1),
    }


def dispose(storage: Any) -> None:
    """Close a storage's connections (a PostgreSQL server counts them)."""
    storage.remove_session()
    storage.engine.dispose()


# ------------------------------------------------------------------------------------------ report
def machine() -> dict[str, Any]:
    import optuna
    import sqlalchemy

    return {
        "cpu_cores": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "load_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def finish_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        base = next((b for b in rows if b["backend"] == r["backend"] and b["total_workers"] == 1), None)
        r["speedup"] = round(r["trials_per_s"] / base["trials_per_s"], 2) if base else None
        r["share_of_ideal"] = round(r["trials_per_s"] / r["ideal_trials_per_s"], 3)


def fmt_row(r: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    base = next((b for b in rows or [] if b["backend"] == r["backend"] and b["total_workers"] == 1), None)
    speed = r.get("speedup") or (r["trials_per_s"] / base["trials_per_s"] if base else None)
    dup = r["duplicated_params"] + r["duplicated_retries"]
    sp = "-" if speed is None else f"{speed:.2f}x"
    db = "-" if r["db_server_cpu_ms_per_trial"] is None else f"{r['db_server_cpu_ms_per_trial']:.1f}"
    return (
        f"{r['backend']:<9}{r['processes']:>3} x{r['workers']:>2}{r['n_trials']:>7}{r['wall_s']:>8.1f}"
        f"{r['trials_per_s']:>9.2f}{sp:>9}{r['trials_per_s'] / r['ideal_trials_per_s']:>7.0%}"
        f"{r['lost']:>6}{r['extra']:>6}{dup:>5}{r['discarded']:>6}{r['orchestrator_cpu_ms_per_trial']:>9.1f}"
        f"{db:>7}{r['startup_s'] or 0:>8.1f}{r['load_1min_after']:>6.1f}"
        + (f"  errors: {r['errors']}" if r["errors"] else "")
    )


HEADER = (
    f"{'backend':<9}{'procs':>5}{'wk':>3}{'trials':>7}{'wall s':>8}{'trial/s':>9}{'speedup':>9}{'ideal':>7}"
    f"{'lost':>6}{'extra':>6}{'dup':>5}{'disc.':>6}{'cpu ms':>9}{'db ms':>7}{'start s':>8}{'load':>6}"
)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["processes"] == 1 and r["workers"] == 8:
            out.append(
                {
                    "backend": r["backend"],
                    "speedup_at_8": r["speedup"],
                    "speedup_target": 7.0,
                    "met": bool(r["speedup"] and r["speedup"] >= 7.0),
                }
            )
    out.append(
        {
            "all_rows_no_lost_or_duplicated": all(
                r["lost"] == 0 and r["extra"] == 0 and r["duplicated_params"] == 0 and r["duplicated_retries"] == 0
                for r in rows
            )
        }
    )
    return out


def print_table(result: dict[str, Any]) -> None:
    m, s = result["machine"], result["settings"]
    print(
        f"scaling: {s['seconds_per_trial']} s/trial, {s['evals_per_trial']} evals, {s['trials_per_worker']} trials"
        f" per worker, sampler {s['sampler']['name']}, {s['orchestrator']}; {m['cpu_cores']} cores,"
        f" load {m['load_1_5_15min_at_end']}"
    )
    print(HEADER)
    for r in result["rows"]:
        print(fmt_row(r))
    print(
        "ideal: share of workers/seconds_per_trial; lost: n_trials minus counted, plus trials left RUNNING/WAITING;"
        "\nextra: counted beyond n_trials; dup: grid points run twice + retries completed twice; disc.: asked, then"
        "\ndiscarded (another process filled n_trials or took the grid point); cpu ms: orchestrator CPU per trial"
        "\n(all orchestrator processes); db ms: PostgreSQL server CPU per trial (throw-away server only)"
    )
    for t in result["targets"]:
        if "speedup_at_8" in t:
            verdict = "met" if t["met"] else "MISSED"
            print(f"target >= 7x at 8 workers on {t['backend']}: {t['speedup_at_8']}x -> {verdict}")
        else:
            ok = t["all_rows_no_lost_or_duplicated"]
            print(f"target 0 lost, 0 duplicated: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
