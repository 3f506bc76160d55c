"""The library calls behind each CLI command: one call per command, no printing of tables here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo import warmstart
from hpo.config import DEFAULT_RUNS_DIR, StudyConfig, build_problems, load_study_file
from hpo.curves import CurvePoint, CurveStore, read_curves
from hpo.display import RunDisplay, fmt_counts, plural
from hpo.errors import HpoError, StudyFileError, WorkerSetupError
from hpo.hostload import HostRun, HostRuns
from hpo.orchestrator import Orchestrator, RunSummary
from hpo.record import TrialRecord, best_of
from hpo.references import validate_file
from hpo.resources import cpu_cores, detect_gpus, plan_workers
from hpo.status import StudyStatus as StudyStatus  # the public API keeps its names
from hpo.status import TrialRow as TrialRow
from hpo.status import status as status
from hpo.storage import (
    check_fingerprint,
    create_or_resume,
    load_existing,
    open_storage,
    redact,
    storage_exists,
)
from hpo.store import study_store
from hpo.worker import TrainerRunner, WorkerHandle, WorkerSpec, close_all, mp_context


def cache_dir() -> str:
    """Where tokenised data and trained tokenizers are cached (shared by all studies)."""
    return os.environ.get("HPO_CACHE_DIR", str(Path(DEFAULT_RUNS_DIR) / "cache"))


def validate(path: str | Path) -> StudyConfig:
    """Validate a study file and what it refers to (data files, model folders, sizes); raises StudyFileError.

    Reads only headers and configs, and writes nothing: ``hpo run`` calls it before anything exists.
    """
    cfg = validate_file(path)
    problems = build_problems(cfg)  # Optuna's constructors, for real: hpo.api imports Optuna anyway
    if problems:
        raise StudyFileError(str(path), problems)
    return cfg


def run(
    path: str | Path,
    display: RunDisplay | None = None,
    join_only: bool = False,
    enqueue: str | Path | None = None,
    config: StudyConfig | None = None,
) -> RunSummary:
    """Run or resume the study of a file until its n_trials total (or timeout, or Ctrl-C).

    ``join_only``: work on a study another `hpo run` created (e.g. on another machine); never create it.
    ``enqueue``: a YAML file of configurations to run first (``hpo.warmstart``), once per study.
    ``config``: run this study instead of the file's, already validated (`hpo confirm`'s runs).
    """
    cfg = validate(path) if config is None else config  # a bad file stops here: nothing started, nothing written
    # Warm-start configurations are checked (and an earlier study read) before anything is written too; a
    # confirmation study (``config``) runs only its own fixed configurations.
    warm = None if join_only or config is not None else warmstart.plan(cfg, str(path), enqueue)
    if join_only:
        load_existing(cfg, strict=True)  # raises, naming `hpo run`, when there is nothing to join
    display = display or RunDisplay()
    host = HostRuns()

    def plan(busy: int) -> list[WorkerSpec]:
        try:
            return plan_workers(cfg.resources, max_workers=cfg.study.n_trials, busy_cores=busy)
        except ValueError as e:
            raise HpoError(f"{path}: {e}") from None

    plan(sum(r.cores for r in host.others()))  # a bad `resources` section stops here, before anything is written
    # A study whose file changed is refused before any worker starts (their imports take seconds); the
    # check only reads. Creating or resuming it then overlaps with the workers' start-up.
    fresh = not storage_exists(cfg.storage_url)  # a SQLite file this run creates (and may remove again)
    storage = open_storage(cfg.storage_url, create=True)
    _refuse_changed(cfg, storage)
    # Workers go on the cores other hpo runs on this host leave (a second `hpo worker` here, say).
    specs, others = host.claim(cfg.study.name, plan)
    ctx = mp_context()
    results = ctx.Queue()
    from hpo.saved_models import SaveSpec

    runner = TrainerRunner(cache_dir(), warm_run=cfg.base_run(), oom=cfg.oom, save_models=SaveSpec.of(cfg))
    orchestrator: type[Orchestrator] = Orchestrator
    if cfg.pbt is not None:  # population-based training: members train in intervals (hpo.pbt_run)
        from hpo.pbt_run import PbtOrchestrator
        from hpo.pbt_worker import PbtRunner

        runner, orchestrator = PbtRunner(cache_dir(), warm_run=cfg.base_run(), oom=cfg.oom), PbtOrchestrator
    workers: list[WorkerHandle] = []
    orch: Orchestrator | None = None
    created = False
    try:
        workers.extend(WorkerHandle(s, runner, results, ctx) for s in specs)
        study, created = create_or_resume(cfg, storage)
        curves = CurveStore(cfg.storage_url, cfg.study.name)
        orch = orchestrator(cfg, study, specs, runner, display, workers=workers, results=results, curves=curves)
        # One source for every count shown: the header, the progress bar and the final line.
        ledger = orch.ledger
        done, left = ledger.counted(), ledger.budget_left()
        counts = fmt_counts(done, cfg.study.n_trials, ledger.grid_points)
        header = _header(cfg, specs, created, counts, others)
        if warm is not None:
            header += warmstart.enqueue(study, warm)
        display.start(cfg.study.name, cfg.metric, done, done + left, header)
        summary = orch.run(timeout=cfg.study.timeout)
        summary.created = created
        summary.counted, summary.n_trials, summary.grid_points = ledger.counted(), ledger.n_trials, ledger.grid_points
        return summary
    except WorkerSetupError as e:
        # A mistake only a worker could see (a dirty data row, a model that does not load): name the file
        # and the setting like validation does, and keep the worker's traceback for --debug.
        if created:
            _drop_if_empty(study, cfg.storage_url if fresh else None)
        err: HpoError = StudyFileError(str(path), [(e.key, e.message)]) if e.key else HpoError(f"{path}: {e}")
        err.worker_traceback = e.worker_traceback
        raise err from None
    finally:
        display.stop()
        close_all(workers if orch is None else orch.workers)
        host.release()


def _refuse_changed(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> None:
    try:
        study = optuna.load_study(study_name=cfg.study.name, storage=storage)
    except KeyError:
        return  # a new study: nothing to compare
    check_fingerprint(cfg, study)


def _drop_if_empty(study: optuna.Study, new_file_url: str | None) -> None:
    """Delete a study this run created when it failed before any trial, so the name stays free; and the
    SQLite file this run created, when nothing else is in it."""
    store = study_store(study)
    storage = store.storage
    try:
        if study.get_trials(deepcopy=False):
            return
        optuna.delete_study(study_name=study.study_name, storage=storage)
        if new_file_url is None or optuna.study.get_all_study_names(storage):
            return
        store.dispose()
        db = make_url(new_file_url).database
        if db:
            for suffix in ("", "-wal", "-shm"):
                Path(db + suffix).unlink(missing_ok=True)
    except Exception:  # best effort: a study with no trials is re-fingerprinted by the next run anyway
        pass


def _header(cfg: StudyConfig, specs: list[Any], created: bool, counts: str, others: list[HostRun]) -> list[str]:
    devices = sorted({s.device_label for s in specs})
    threads = specs[0].threads
    cores = cpu_cores()
    shared = ""
    if others:
        busy = sum(r.cores for r in others)
        runs = ", ".join(f"pid {r.pid} ({r.study})" for r in others)
        shared = f"; {busy} in use by {plural(len(others), 'other hpo run')} here: {runs}"
        if busy >= cores:
            shared += " [yellow]— no core left: this run shares them[/]"
    what = f"new study: {counts}" if created else f"resuming: {counts}"
    return [
        f"[bold]{cfg.study.name}[/] — {what}",
        f"  storage  {redact(cfg.storage_url)}",
        f"  task     {cfg.task}, objective "
        + ", ".join(f"{o.metric} ({o.direction})" for o in cfg.objectives)
        + (": a Pareto front, pruned on the first" if cfg.multi_objective else ""),
        f"  sampler  {cfg.sampler.name}, "
        + (f"pruner {cfg.pruner.name}" if cfg.pbt is None else f"PBT every {cfg.pbt.interval_steps} steps")
        + f", {cfg.fidelity.budget} {cfg.fidelity.unit}/trial,"
        f" eval every {cfg.fidelity.eval_every}",
        f"  workers  {len(specs)} x {threads} thread(s) on {', '.join(devices)} ({cores} CPU cores{shared})",
    ]


def best(path: str | Path) -> tuple[StudyConfig, TrialRecord]:
    """The best complete trial of a file's study (ties: the earlier trial, as `hpo export` ranks them)."""
    cfg = load_study_file(path)
    study = load_existing(cfg)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trial = best_of((TrialRecord.from_trial(t) for t in complete), study.direction)
    if trial is None:
        raise HpoError(f"study {cfg.study.name!r} has no complete trial yet; run `hpo run {path}`")
    return cfg, trial


def front(path: str | Path) -> tuple[StudyConfig, list[TrialRecord]] | None:
    """The Pareto front of a file's multi-objective study, ordered by the first objective; None when the
    study has one objective."""
    from hpo.objectives import front as pareto

    cfg = load_study_file(path)
    if not cfg.multi_objective:
        return None
    study = load_existing(cfg)
    trials = [TrialRecord.from_trial(t) for t in pareto(study)]
    if not trials:
        raise HpoError(f"study {cfg.study.name!r} has no complete trial yet; run `hpo run {path}`")
    return cfg, trials


def curves(path: str | Path, trial: int | None = None) -> list[CurvePoint]:
    """The learning curves of a file's study (or one trial) from the study's database."""
    cfg = load_study_file(path)
    study = load_existing(cfg)
    if trial is not None and not any(t.number == trial for t in study.get_trials(deepcopy=False)):
        raise HpoError(f"study {cfg.study.name!r} has no trial {trial}; see `hpo status {path}`")
    return read_curves(cfg.storage_url, cfg.study.name, trial)


def devices() -> dict[str, Any]:
    """What this machine offers to workers."""
    return {"cpu_cores": cpu_cores(), "gpus": [g.__dict__ for g in detect_gpus()]}


__all__ = ["TrialState", "best", "devices", "run", "status", "validate"]


def to_param_names(cfg: StudyConfig) -> list[str]:
    """The Optuna parameter names of a study's search space, in file order."""
    from hpo.space import param_name

    return [param_name(p, s) for p, s in cfg.search_space.items()]
