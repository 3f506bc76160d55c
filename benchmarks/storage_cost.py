"""Storage cost per trial as a study grows: the orchestrator's own work per trial at trial 100, 1 000, 10 000.

For each storage (SQLite, PostgreSQL) the study is filled up to each point in bulk (rows written straight
into Optuna's tables in one transaction: ``study.add_trials`` costs ~60 ms a trial here, 10 minutes for
10 000), then a window of trials is driven through hpo's real ``Orchestrator`` code paths without worker
processes: a stand-in worker takes the run config, and the orchestrator gets the messages a worker would
send (4 evals with train logs, then "done"). Each window trial pays exactly what a trial pays in
``hpo run``: ``ledger.budget_left``, ``_launch`` (ask on the quickstart's 4-parameter space, ``ledger.not_needed``,
run config, user attrs, heartbeat), report + ``should_prune`` per eval (median pruner), the finishing
attrs + tell + curve flush + best trial, and housekeeping.

Rows: RandomSampler (the reference: sampling costs nothing, so its time is storage + hpo's bookkeeping)
and TPE (hpo's default, seeded) on the same study. The time is split by phase (exclusive time: a phase's
time excludes the phases it calls): sampler, pruner, Optuna storage calls, hpo's own trial scans, ...;
SQL statements and their time per trial come from SQLAlchemy's cursor events.

Usage: python benchmarks/storage_cost.py [--quick] [--storage URL] [--profile] [--json PATH]
``--profile`` also writes cProfiles of an extra window at the last point (next to the JSON file);
Prints a table and writes JSON (default benchmarks/results/storage_cost.json).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import io
import json
import math
import os
import pstats
import queue
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from scaling import machine  # noqa: E402
from sleep_runner import study_dict  # noqa: E402

STEPS = (10, 20, 30, 40)  # eval steps per trial (max_steps 40, eval_every 10)
PHASES = {
    "sampler": "sampler (infer/sample/before/after)",
    "pruner": "pruner.prune",
    "ask": "study.ask storage (create trial, set params, queue)",
    "scans": "hpo scans: ledger.budget_left + not_needed",
    "launch": "_launch rest: run config, 4 user attrs, heartbeat",
    "eval": "report (+ should_prune storage side)",
    "finish": "finish: ~9 user attrs, tell, get_trial",
    "best": "_update_best: study.best_trial",
    "curves": "curve flush (hpo_curves insert)",
    "other": "message handling, housekeeping",
}


# ------------------------------------------------------------------------------------------ timing
class Phases:
    """Exclusive time per phase: wrapped calls push a frame; a parent's time excludes its children's."""

    def __init__(self) -> None:
        self.excl: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []
        self.sql_n = 0
        self.sql_s = 0.0
        self.sql_by_phase: dict[str, int] = defaultdict(int)
        self.pings = 0  # pool_pre_ping round trips (not cursor executes)
        self.gc_s = 0.0
        self._gc_t0 = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_t0

    def close(self) -> None:
        gc.callbacks.remove(self._gc)

    def wrap(self, obj: Any, name: str, key: str) -> None:
        fn = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            self.stack.append([key, time.perf_counter(), 0.0])
            try:
                return fn(*a, **k)
            finally:
                key_, t0, child = self.stack.pop()
                took = time.perf_counter() - t0
                self.excl[key_] += took - child
                if self.stack:
                    self.stack[-1][2] += took

        setattr(obj, name, timed)

    def count_sql(self, engine: Any) -> None:
        from sqlalchemy import event

        starts: list[float] = []
        dialect = engine.dialect
        do_ping = dialect.do_ping

        def counted_ping(conn: Any) -> Any:
            self.pings += 1
            return do_ping(conn)

        dialect.do_ping = counted_ping

        @event.listens_for(engine, "before_cursor_execute")
        def _before(*_a: Any) -> None:
            starts.append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def _after(*_a: Any) -> None:
            self.sql_n += 1
            self.sql_s += time.perf_counter() - starts.pop()
            self.sql_by_phase[self.stack[-1][0] if self.stack else "other"] += 1


class StandInWorker:
    """What the orchestrator needs of a WorkerHandle, without a process."""

    def __init__(self) -> None:
        from hpo.worker import WorkerSpec

        self.spec = WorkerSpec(0, 1, {}, "cpu")
        self.ready = True
        self.trial: int | None = None
        self.stop_code = 0

    def alive(self) -> bool:
        return True

    def send(self, trial: int, run: dict[str, Any]) -> None:
        self.trial = trial
        self.stop_code = 0

    def ack(self, trial: int, step: int) -> None:
        pass

    def request_stop(self, trial: int, code: int) -> None:
        self.stop_code = code

    def request_close(self) -> None:
        pass

    def close(self, timeout: float = 0.0) -> None:
        pass


def objective(params: dict[str, Any], step: int) -> float:
    """A synthetic learning curve: best near lr 1e-3, little dropout; the median pruner prunes some."""
    lr, dropout = float(params["learning_rate"]), float(params["dropout"])
    return 1.0 + 0.3 * (math.log10(lr) + 3.0) ** 2 + dropout + 5.0 / step


def make_orchestrator(cfg: Any, storage: Any, curves_url: str | None) -> Any:
    from rich.console import Console

    from hpo.curves import CurveStore
    from hpo.display import RunDisplay
    from hpo.orchestrator import Orchestrator
    from hpo.storage import create_or_resume

    study, _ = create_or_resume(cfg, storage)  # a resumed `hpo run`: a fresh study object, a cold cache
    w = StandInWorker()
    display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
    curves = CurveStore(curves_url, cfg.study.name)
    return Orchestrator(cfg, study, [w.spec], None, display, workers=[w], results=queue.Queue(), curves=curves)


def instrument(orch: Any, ph: Phases) -> None:
    study = orch.study
    for name in ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial", "after_trial"):
        ph.wrap(study.sampler, name, "sampler")
    ph.wrap(study.pruner, "prune", "pruner")
    ph.wrap(study, "ask", "ask")
    ph.wrap(orch.ledger, "budget_left", "scans")
    ph.wrap(orch.ledger, "not_needed", "scans")
    ph.wrap(orch, "_launch", "launch")
    ph.wrap(orch, "_on_eval", "eval")
    ph.wrap(orch, "_on_done", "finish")
    ph.wrap(orch, "_update_best", "best")
    ph.wrap(orch.curves, "flush", "curves")
    ph.wrap(orch, "_handle", "other")
    ph.wrap(orch, "_housekeeping", "other")
    ph.count_sql(orch.store.backend.engine)  # an RDBStudyStore: the benchmark measures SQL storages
    if orch.curves.engine is not None:
        ph.count_sql(orch.curves.engine)


def one_trial(orch: Any) -> str:
    """One trial as `hpo run` handles it, with the worker's messages simulated. Returns its final state."""
    from hpo.orchestrator import RunSummary

    summary = RunSummary(orch.study, created=False)
    w = orch.workers[0]
    if orch.ledger.budget_left() < 1:
        raise RuntimeError("study budget exhausted")
    orch._launch(w)
    number = w.trial
    if number is None or number not in orch.running:
        raise RuntimeError("the orchestrator did not launch a trial")
    params = orch.running[number].params
    done, stopped, metrics = 0, None, {}
    for step in STEPS:
        if w.stop_code:
            stopped = "pruned"
            break
        v = objective(params, step)
        done = step
        metrics = {"eval_loss": v, "perplexity": math.exp(v)}
        orch._handle(("log", 0, number, step, {"loss": v, "learning_rate": params["learning_rate"]}), summary)
        orch._handle(("eval", 0, number, step, metrics), summary)
    result = {
        "metrics": metrics,
        "steps": done,
        "train_time": 0.5,
        "eval_time": 0.05,
        "setup_time": 0.01,
        "tokens_per_s": 1000.0,
        "precision": "no",
        "stopped": stopped,
    }
    orch._handle(("done", 0, number, result), summary)
    orch._housekeeping()
    return next(iter(summary.states))


# ------------------------------------------------------------------------------------------ bulk fill
def bulk_fill(storage: Any, study_name: str, n: int, rng: random.Random) -> float:
    """Append ``n`` finished trials (60% COMPLETE, 40% PRUNED at step 20) with hpo's user attrs, in one
    transaction, straight into Optuna's tables. Returns seconds taken."""
    from optuna.distributions import distribution_to_json
    from sqlalchemy import func, insert, select

    from hpo.config import validate_study
    from hpo.space import to_distributions
    from hpo.store import rdb_backend
    from hpo.store import rdb_models as models

    dists = to_distributions(validate_study(study_dict("x", "memory", 1, {"name": "random"})).search_space)
    djson = {k: distribution_to_json(d) for k, d in dists.items()}
    backend = rdb_backend(storage)
    assert backend is not None
    engine = backend.engine
    t0 = time.perf_counter()
    tt = models.TrialModel.__table__
    with engine.begin() as conn:
        sid = conn.execute(
            select(models.StudyModel.study_id).where(models.StudyModel.study_name == study_name)
        ).scalar_one()
        start = conn.execute(select(func.count()).select_from(tt).where(tt.c.study_id == sid)).scalar_one()
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        trials, specs = [], []
        for i in range(n):
            p = {
                "learning_rate": 10 ** rng.uniform(-5, -2),
                "per_device_train_batch_size": rng.choice([8, 16, 32]),
                "dropout": rng.uniform(0.0, 0.35),
                "weight_decay": rng.uniform(0.0, 0.1),
            }
            pruned = rng.random() < 0.4
            steps = STEPS[:2] if pruned else STEPS
            state = TrialState.PRUNED if pruned else TrialState.COMPLETE
            trials.append(
                {
                    "number": start + i,
                    "study_id": sid,
                    "state": state,
                    "datetime_start": now - dt.timedelta(seconds=2),
                    "datetime_complete": now,
                }
            )
            specs.append((p, steps, pruned))
        ids = [
            r[0] for r in conn.execute(insert(tt).returning(tt.c.trial_id, sort_by_parameter_order=True), trials).all()
        ]
        params: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        inter: list[dict[str, Any]] = []
        attrs: list[dict[str, Any]] = []
        for tid, (p, steps, pruned) in zip(ids, specs, strict=True):
            for k, v in p.items():
                params.append(
                    {
                        "trial_id": tid,
                        "param_name": k,
                        "param_value": dists[k].to_internal_repr(v),
                        "distribution_json": djson[k],
                    }
                )
            curve = [objective(p, s) for s in steps]
            for s, v in zip(steps, curve, strict=True):  # the objective (perplexity) as hpo reports it
                inter.append(
                    {
                        "trial_id": tid,
                        "step": s,
                        "intermediate_value": math.exp(v),
                        "intermediate_value_type": models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE,
                    }
                )
            if not pruned:
                values.append(
                    {
                        "trial_id": tid,
                        "objective": 0,
                        "value": math.exp(curve[-1]),
                        "value_type": models.TrialValueModel.TrialValueType.FINITE,
                    }
                )
            ua: dict[str, Any] = {
                "device": "cpu",
                "worker": tid % 8,
                "host": "bench",
                "orchestrator_pid": 1,
                "metrics": {"eval_loss": curve[-1], "perplexity": math.exp(curve[-1])},
                "steps": steps[-1],
                "train_time": 0.5,
                "eval_time": 0.05,
                "setup_time": 0.01,
                "tokens_per_s": 1000.0,
                "precision": "no",
                "duration": 0.6,
            }
            if pruned:
                ua["reason"] = "pruned by median pruner at step 20"
            attrs.extend({"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in ua.items())
        conn.execute(insert(models.TrialParamModel.__table__), params)
        if values:
            conn.execute(insert(models.TrialValueModel.__table__), values)
        conn.execute(insert(models.TrialIntermediateValueModel.__table__), inter)
        conn.execute(insert(models.TrialUserAttributeModel.__table__), attrs)
    if engine.dialect.name == "postgresql":  # as autovacuum would soon after: planner statistics for n trials
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    took = time.perf_counter() - t0
    if ids:  # read the last one back through Optuna: the rows must make a valid trial
        t = backend.get_trial(ids[-1])
        p, steps, pruned = specs[-1]
        assert t.number == start + n - 1 and set(t.params) == set(p) and t.last_step == steps[-1], t
        assert t.state == (TrialState.PRUNED if pruned else TrialState.COMPLETE) and t.user_attrs["device"] == "cpu"
    return took


def count_trials(storage: Any, study_name: str) -> int:
    from sqlalchemy import func, select

    from hpo.store import rdb_backend
    from hpo.store import rdb_models as models

    backend = rdb_backend(storage)
    assert backend is not None
    tt = models.TrialModel.__table__
    with backend.engine.connect() as conn:
        sid = conn.execute(
            select(models.StudyModel.study_id).where(models.StudyModel.study_name == study_name)
        ).scalar_one()
        return int(conn.execute(select(func.count()).select_from(tt).where(tt.c.study_id == sid)).scalar_one())


# ------------------------------------------------------------------------------------------ one backend
def measure_backend(
    backend: str,
    url: str,
    points: list[int],
    window: int,
    warmup: int,
    samplers: list[str],
    profile_dir: Path | None,
) -> list[dict[str, Any]]:
    from hpo.config import validate_study
    from hpo.storage import create_or_resume, open_storage

    name = f"storage-cost-{uuid.uuid4().hex[:6]}"
    rng = random.Random(0)
    rows: list[dict[str, Any]] = []
    storage = open_storage(url, create=True)
    curves_url = None if url == "memory" else url
    variants: list[tuple[str, Any]] = [("hpo", storage)]
    create_or_resume(validate_study(study_dict(name, url, 10**7, {"name": "random", "seed": 0})), storage)
    for point in points:
        have = count_trials(storage, name)
        fill_s = bulk_fill(storage, name, max(0, point - have), rng)
        for sampler in samplers:
            for variant, vstorage in variants:
                sampler_cfg: dict[str, Any] = {"name": sampler, "seed": 0}
                cfg = validate_study(study_dict(name, url, 10**7, sampler_cfg))
                orch = make_orchestrator(cfg, vstorage, curves_url)
                for _ in range(warmup):  # the resumed study reads every trial once; not part of the window
                    one_trial(orch)
                start_at = len(orch.study.get_trials(deepcopy=False))
                ph = Phases()
                instrument(orch, ph)
                load0 = os.getloadavg()[0]
                states: dict[str, int] = defaultdict(int)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(window):
                    states[one_trial(orch)] += 1
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                ph.close()
                if profile_dir and point == points[-1]:  # an extra window: profiling slows Python ~2x
                    prof = cProfile.Profile()
                    prof.enable()
                    for _ in range(window):
                        one_trial(orch)
                    prof.disable()
                    path = profile_dir / f"storage_cost-{backend}-{point}-{sampler}-{variant}.prof"
                    prof.dump_stats(path)
                    text = io.StringIO()
                    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(60)
                    path.with_suffix(".txt").write_text(text.getvalue())
                orch.close()
                ms = {k: round(1000 * ph.excl.get(k, 0.0) / window, 2) for k in PHASES}
                row = {
                    "backend": backend,
                    "study": name,
                    "point": point,
                    "trials_before_window": start_at,
                    "sampler": sampler,
                    "variant": variant,
                    "window": window,
                    "ms_per_trial": round(1000 * wall / window, 2),
                    "cpu_ms_per_trial": round(1000 * cpu / window, 2),
                    "phases_ms": ms,
                    "sql_statements_per_trial": round(ph.sql_n / window, 1),
                    "sql_ms_per_trial": round(1000 * ph.sql_s / window, 2),
                    "sql_statements_by_phase": {k: round(v / window, 1) for k, v in ph.sql_by_phase.items()},
                    "gc_ms_per_trial": round(1000 * ph.gc_s / window, 2),
                    "pre_ping_round_trips_per_trial": round(ph.pings / window, 1),
                    "window_states": dict(states),
                    "fill_s": round(fill_s, 2),
                    "load_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
                }
                rows.append(row)
                print(f"  {fmt_row(row)}", flush=True)
    for _v, vstorage in variants:
        vstorage.remove_session()
        vstorage.engine.dispose()
    return rows


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="points 100 and 1000, windows of 20 trials (~2 min)")
    ap.add_argument("--points", help="comma-separated study sizes (default 100,1000,10000)")
    ap.add_argument("--window", type=int, help="trials timed at each point (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed trials first at each point (default 3)")
    ap.add_argument("--samplers", default="random,tpe")
    ap.add_argument("--storage", help="measure only this storage URL (a database the benchmark may write to)")
    ap.add_argument("--backends", default="sqlite,postgres", help="without --storage: which to measure")
    ap.add_argument("--profile", action="store_true", help="cProfile an extra window at the last point")
    ap.add_argument("--json", default=str(HERE / "results" / "storage_cost.json"))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    points = [int(p) for p in (args.points or ("100,1000" if args.quick else "100,1000,10000")).split(",")]
    window = args.window or (20 if args.quick else 50)
    samplers = args.samplers.split(",")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="hpo-storage-cost-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        for backend, url in storages(args, tmp, stack):
            print(f"{backend}:", flush=True)
            rows += measure_backend(
                backend, url, points, window, args.warmup, samplers, out.parent if args.profile else None
            )
            if args.storage:
                from sleep_runner import delete_study

                for name in {str(r["study"]) for r in rows}:
                    delete_study(url, name)

    result = {
        "benchmark": "storage_cost",
        "command": " ".join(["python", "benchmarks/storage_cost.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"points": points, "window": window, "warmup": args.warmup, "evals_per_trial": len(STEPS)},
        "phases": PHASES,
        "rows": rows,
        "targets": targets(rows),
    }
    print()
    print_table(result)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def storages(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> list[tuple[str, str]]:
    if args.storage:
        return [(args.storage.split(":")[0].split("+")[0], args.storage)]
    out: list[tuple[str, str]] = []
    for b in args.backends.split(","):
        if b == "sqlite":
            out.append(("sqlite", f"sqlite:///{tmp}/cost.db"))
        elif b == "postgres":
            from pgserver import PostgresUnavailable, create_database, throwaway_postgres

            try:
                server = stack.enter_context(throwaway_postgres())
            except PostgresUnavailable as e:
                print(f"skipping PostgreSQL: {e}", file=sys.stderr)
                continue
            out.append(("postgres", create_database(server.url, "cost")))
        else:
            sys.exit(f"unknown backend {b!r} (sqlite, postgres)")
    return out


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slowdown from the first point to the last, in all and without the sampler's own time."""
    out = []
    by: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by[(r["backend"], r["sampler"], r["variant"])][r["point"]] = r
    for (backend, sampler, variant), pts in by.items():
        lo, hi = min(pts), max(pts)
        if lo == hi:
            continue
        a, b = pts[lo], pts[hi]
        ratio = b["ms_per_trial"] / a["ms_per_trial"]
        a_ns = a["ms_per_trial"] - a["phases_ms"]["sampler"]
        b_ns = b["ms_per_trial"] - b["phases_ms"]["sampler"]
        out.append(
            {
                "backend": backend,
                "sampler": sampler,
                "variant": variant,
                "from": lo,
                "to": hi,
                "slowdown": round(ratio, 2),
                "slowdown_without_sampler": round(b_ns / a_ns, 2),
                "target": 2.0,
                "met": ratio <= 2.0,
            }
        )
    return out


SHORT = {
    "sampler": "sampler",
    "pruner": "pruner",
    "ask": "ask",
    "scans": "scans",
    "launch": "launch",
    "eval": "report",
    "finish": "finish",
    "best": "best",
    "curves": "curves",
    "other": "other",
}
HEADER = (
    f"{'backend':<9}{'trials':>7} {'sampler':<8}{'variant':<10}{'ms/trial':>9}{'cpu ms':>8}"
    + "".join(f"{v:>8}" for v in SHORT.values())
    + f"{'SQL n':>7}{'SQL ms':>8}{'GC ms':>7}{'load':>6}"
)


def fmt_row(r: dict[str, Any]) -> str:
    return (
        f"{r['backend']:<9}{r['trials_before_window']:>7} {r['sampler']:<8}{r['variant']:<10}"
        f"{r['ms_per_trial']:>9.1f}{r['cpu_ms_per_trial']:>8.1f}"
        + "".join(f"{r['phases_ms'][k]:>8.1f}" for k in SHORT)
        + f"{r['sql_statements_per_trial']:>7.0f}{r['sql_ms_per_trial']:>8.1f}"
        + f"{r['gc_ms_per_trial']:>7.1f}{r['load_1min']:>6.1f}"
    )


def print_table(result: dict[str, Any]) -> None:
    m, s = result["machine"], result["settings"]
    print(
        f"storage cost per trial (ms), window of {s['window']} trials after {s['warmup']} untimed, "
        f"{s['evals_per_trial']} evals/trial; {m['cpu_cores']} cores, load {m['load_1_5_15min_at_end']}"
    )
    print(HEADER)
    for r in result["rows"]:
        print(fmt_row(r))
    print("phases (exclusive ms/trial): " + "; ".join(f"{SHORT[k]} = {v}" for k, v in result["phases"].items()))
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        print(
            f"target <= 2x from trial {t['from']} to {t['to']}, {t['backend']} {t['sampler']} {t['variant']}: "
            f"{t['slowdown']}x -> {verdict} (without the sampler's time: {t['slowdown_without_sampler']}x)"
        )


if __name__ == "__main__":
    main()
