"""A trainer double that only sleeps, and the pieces a benchmark needs to run hpo's real orchestrator with it.

Spawned worker processes import this module by name (the benchmark scripts' folder is on their
``sys.path``), so its top level stays light: no torch, no Optuna.
"""

from __future__ import annotations

import io
import math
import os
import time
from typing import Any

from hpo.protocol import Fatal, Ready, TrialResult


class SleepRunner:
    """Runs a "trial" by sleeping ``seconds`` in all, reporting an eval every ``eval_every`` steps.

    The intermediate values are the same for every trial (so no pruner ever prunes and every trial costs
    the same time); the last value depends on the learning rate, so samplers see a real objective.
    Stop requests are honoured at the next eval, as the real trainer honours them at the next step.
    """

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def setup(self, spec: Any) -> None:
        pass

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        lr = float(run["training"]["learning_rate"])
        steps = int(run["training"]["max_steps"])
        every = int(run["training"]["eval_steps"])
        n_evals = math.ceil(steps / every)
        done, stopped = 0, None
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(1, n_evals + 1):
            stopped = reporter.stop_reason()
            if stopped is not None:
                break
            time.sleep(self.seconds / n_evals)
            done = min(i * every, steps)
            loss = 1.0 + 1.0 / done + (0.1 * (math.log10(lr) + 3.0) ** 2 if done == steps else 0.0)
            reporter.on_log(done, {"loss": loss, "learning_rate": lr})
            metrics = {"eval_loss": loss, "perplexity": math.exp(loss)}
            reporter.on_eval(done, metrics)
        took = time.perf_counter() - t0
        return TrialResult(
            metrics=metrics,
            steps=done,
            train_time=took,
            eval_time=0.0,
            setup_time=0.0,
            tokens=done,
            tokens_per_s=done / took if took else 0.0,
            device="cpu",
            precision="no",
            stopped=stopped if stopped is not None else reporter.stop_reason(),
        )


def study_dict(name: str, url: str, n_trials: int, sampler: dict[str, Any], evals: int = 4) -> dict[str, Any]:
    """A study file (as a dict) with the quickstart's 4-parameter space; every parameter has a grid too.

    Grid: 8 learning rates x 3 batch sizes x 8 dropouts x 4 weight decays = 768 points.
    """
    lrs = [float(f"{10 ** (-5 + 3 * i / 7):.3g}") for i in range(8)]
    return {
        "study": {"name": name, "storage": url, "n_trials": n_trials},
        "task": "causal_lm",
        "objective": {"metric": "perplexity"},
        "sampler": sampler,
        "pruner": {"name": "median", "n_startup_trials": 4},
        "fidelity": {"max_steps": 10 * evals, "eval_every": 10},
        "model": {"from_config": {"model_type": "gpt2", "n_layer": 2}, "tokenizer": {"train_vocab_size": 256}},
        "data": {"builtin": "pydoc_topics"},
        "search_space": {
            "training.learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True, "grid": lrs},
            "training.per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.35, "grid": [i / 20 for i in range(8)]},
            "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "grid": [0.0, 0.01, 0.03, 0.1]},
        },
        "resources": {"workers": 1, "max_retries": 1},
    }


def start_workers(n: int, runner: Any, timeout: float = 300.0) -> tuple[list[Any], Any, float]:
    """Start ``n`` hpo worker processes and wait until all are ready; returns (workers, results, seconds)."""
    from hpo.worker import WorkerHandle, WorkerSpec, mp_context

    ctx = mp_context()
    results = ctx.Queue()
    t0 = time.monotonic()
    workers = [WorkerHandle(WorkerSpec(i, 1, {}, "cpu"), runner, results, ctx) for i in range(n)]
    ready = 0
    while ready < n:
        msg = results.get(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        if isinstance(msg, Fatal):  # typed events (hpo.protocol) since the protocol rework
            raise RuntimeError(msg.error.line)
        if isinstance(msg, Ready):
            workers[msg.worker].ready = True
            ready += 1
    return workers, results, time.monotonic() - t0


def build_orchestrator(study: dict[str, Any], workers: list[Any], results: Any, runner: Any) -> Any:
    """hpo's Orchestrator as `hpo run` builds it (storage, study, curve store), with a silent display."""
    from rich.console import Console

    from hpo.config import validate_study
    from hpo.curves import CurveStore
    from hpo.display import RunDisplay
    from hpo.orchestrator import Orchestrator
    from hpo.storage import create_or_resume, open_storage

    cfg = validate_study(study)
    url = cfg.storage_url
    storage = open_storage(url, create=True)
    study_obj, _ = create_or_resume(cfg, storage)
    curves = CurveStore(None if url == "memory" else url, cfg.study.name)
    display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
    specs = [w.spec for w in workers]
    return Orchestrator(cfg, study_obj, specs, runner, display, workers=workers, results=results, curves=curves)


def orchestrator_process(
    index: int,
    study: dict[str, Any],
    n_workers: int,
    seconds: float,
    go: Any,
    out: Any,
    profile: str | None = None,
) -> None:
    """One `hpo run`-like process: start workers, say ready, wait for ``go``, run, report timings on ``out``.

    ``profile``: write a cProfile of ``run()`` to ``{profile}-{index}.prof``.
    """
    try:
        runner = SleepRunner(seconds)
        workers, results, startup = start_workers(n_workers, runner)
        orch = build_orchestrator(study, workers, results, runner)
        out.put(("ready", index, startup))
        go.wait()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        c0, t0 = time.process_time(), time.monotonic()
        summary = orch.run()
        t1, c1 = time.monotonic(), time.process_time()
        if prof is not None:
            prof.disable()
            prof.dump_stats(f"{profile}-{index}.prof")
        orch.close()
        out.put(("done", index, {"t0": t0, "t1": t1, "cpu_s": c1 - c0, "ran": summary.ran, "pid": os.getpid()}))
    except BaseException as e:
        out.put(("error", index, f"{type(e).__name__}: {e}"))
        raise


def delete_study(url: str, name: str) -> None:
    """Remove a benchmark study (and its curves) from a user's database."""
    import optuna
    from sqlalchemy import delete

    from hpo.curves import CurveStore, curves_table
    from hpo.storage import open_storage

    optuna.delete_study(study_name=name, storage=open_storage(url, create=False))
    store = CurveStore(url, name)
    assert store.engine is not None
    with store.engine.begin() as conn:
        conn.execute(delete(curves_table).where(curves_table.c.study_name == name))
    store.close()
