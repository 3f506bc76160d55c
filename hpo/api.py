"""The library calls behind each CLI command: one call per command, no printing of tables here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import DEFAULT_RUNS_DIR, StudyConfig, load_study_file
from hpo.curves import CurvePoint, CurveStore, read_curves
from hpo.display import RunDisplay
from hpo.errors import HpoError
from hpo.orchestrator import A_REASON, Orchestrator, RunSummary, counted
from hpo.resources import cpu_cores, detect_gpus, plan_workers
from hpo.storage import ATTR_N_TRIALS, create_or_resume, load_existing, open_storage, redact
from hpo.worker import TrainerRunner, WorkerHandle, close_all, mp_context

# Optuna's INFO lines ("A new study created ...") repeat what hpo's own display says.
optuna.logging.set_verbosity(optuna.logging.WARNING)


def cache_dir() -> str:
    """Where tokenised data and trained tokenizers are cached (shared by all studies)."""
    return os.environ.get("HPO_CACHE_DIR", str(Path(DEFAULT_RUNS_DIR) / "cache"))


def validate(path: str | Path) -> StudyConfig:
    """Validate a study file; raises StudyFileError."""
    return load_study_file(path)


def run(path: str | Path, display: RunDisplay | None = None, join_only: bool = False) -> RunSummary:
    """Run or resume the study of a file until its n_trials total (or timeout, or Ctrl-C).

    ``join_only``: work on a study another `hpo run` created (e.g. on another machine); never create it.
    """
    cfg = load_study_file(path)  # a bad file stops here: nothing started, nothing written
    if join_only:
        load_existing(cfg, strict=True)  # raises, naming `hpo run`, when there is nothing to join
    display = display or RunDisplay()
    try:
        specs = plan_workers(cfg.resources, max_workers=cfg.study.n_trials)
    except ValueError as e:
        raise HpoError(f"{path}: {e}") from None
    ctx = mp_context()
    results = ctx.Queue()
    # Workers start first: their library imports (seconds) overlap with opening the storage.
    runner = TrainerRunner(cache_dir(), warm_run=cfg.base_run(), oom=cfg.oom)
    workers = [WorkerHandle(s, runner, results, ctx) for s in specs]
    orch: Orchestrator | None = None
    try:
        storage = open_storage(cfg.storage_url, create=True)
        study, created = create_or_resume(cfg, storage)
        curves = CurveStore(cfg.storage_url, cfg.study.name)
        orch = Orchestrator(cfg, study, specs, runner, display, workers=workers, results=results, curves=curves)
        done = cfg.study.n_trials - orch.budget_left()
        display.start(
            cfg.study.name, cfg.objective.metric, done, cfg.study.n_trials, _header(cfg, specs, created, done)
        )
        summary = orch.run(timeout=cfg.study.timeout)
        summary.created = created
        return summary
    finally:
        display.stop()
        close_all(workers if orch is None else orch.workers)


def _header(cfg: StudyConfig, specs: list[Any], created: bool, done: int) -> list[str]:
    devices = sorted({s.device_label for s in specs})
    threads = specs[0].threads
    what = "new study" if created else f"resuming: {done}/{cfg.study.n_trials} trials already counted"
    return [
        f"[bold]{cfg.study.name}[/] — {what}",
        f"  storage  {redact(cfg.storage_url)}",
        f"  task     {cfg.task}, objective {cfg.objective.metric} ({cfg.direction})",
        f"  sampler  {cfg.sampler.name}, pruner {cfg.pruner.name}, {cfg.fidelity.max_steps} steps/trial,"
        f" eval every {cfg.fidelity.eval_every}",
        f"  workers  {len(specs)} x {threads} thread(s) on {', '.join(devices)} ({cpu_cores()} CPU cores)",
    ]


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    steps: int | None
    duration: float | None
    reason: str | None
    device: str | None


def _row(t: FrozenTrial) -> TrialRow:
    ua = t.user_attrs
    duration = ua.get("duration")
    if duration is None and t.datetime_start is not None and t.datetime_complete is not None:
        duration = (t.datetime_complete - t.datetime_start).total_seconds()
    return TrialRow(
        number=t.number,
        state=t.state.name,
        value=t.value if t.values else None,
        params=dict(t.params),
        steps=ua.get("steps", t.last_step + 0 if t.last_step is not None else None),
        duration=duration,
        reason=ua.get(A_REASON),
        device=ua.get("device"),
    )


@dataclass
class StudyStatus:
    name: str
    storage: str
    direction: str
    metric: str
    n_trials: int
    counted: int
    rows: list[TrialRow]
    best: TrialRow | None


def status(path: str | Path) -> StudyStatus:
    """The trials of a file's study, oldest first, and the best one."""
    cfg = load_study_file(path)
    study = load_existing(cfg)
    trials = study.get_trials(deepcopy=False)
    best = _best(study)
    return StudyStatus(
        name=cfg.study.name,
        storage=redact(cfg.storage_url),
        direction=cfg.direction,
        metric=cfg.objective.metric,
        n_trials=int(study.user_attrs.get(ATTR_N_TRIALS, cfg.study.n_trials)),
        counted=sum(1 for t in trials if counted(t)),
        rows=[_row(t) for t in trials],
        best=_row(best) if best is not None else None,
    )


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def best(path: str | Path) -> tuple[StudyConfig, FrozenTrial]:
    """The best complete trial of a file's study."""
    cfg = load_study_file(path)
    study = load_existing(cfg)
    trial = _best(study)
    if trial is None:
        raise HpoError(f"study {cfg.study.name!r} has no complete trial yet; run `hpo run {path}`")
    return cfg, trial


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
