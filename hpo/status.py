"""`hpo status`: every trial of a file's study with its state, value, parameters and reasons, and the best.

Read through a plain-SQL snapshot (``hpo.snapshot``) where the storage allows, else through Optuna: this is
the command people run in a loop while a study runs, so it imports neither hpo's orchestrator nor Optuna's
storage classes (benchmarks/cli_latency.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from hpo.config import StudyConfig, load_study_file
from hpo.fingerprint import ATTR_N_TRIALS, StudyView, check_fingerprint
from hpo.genstudy import uses_proxy
from hpo.modelchoice import ModelGroup, group_by_model
from hpo.record import ATTR_DATA_CLEAN, TrialRecord, best_of
from hpo.snapshot import snapshot
from hpo.urls import redact


def read(cfg: StudyConfig) -> StudyView:
    """The file's study as it is now: a snapshot, or (other storages, any doubt) the study through Optuna,
    which names a missing study or a storage fault. A changed study file is a warning, as for every reader."""
    view = snapshot(cfg.storage_url, cfg.study.name) if cfg.storage_url != "memory" else None
    if view is None:
        from hpo.storage import load_existing

        return load_existing(cfg)
    check_fingerprint(cfg, view, strict=False)
    return view


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


def row(r: TrialRecord, proxied: bool = False) -> TrialRow:
    return TrialRow(
        number=r.number,
        state=r.state.name,
        # A generation objective's pruned trial last reported the pruning proxy, not the objective (hpo.genstudy);
        # several objectives: the first.
        value=None
        if proxied and r.state == TrialState.PRUNED
        else (r.value if r.value is not None or not r.values else r.values[0]),
        params=dict(r.params),
        steps=r.steps,
        duration=r.duration,
        reason=r.attrs.reason,
        device=r.attrs.device,
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
    by_model: list[ModelGroup] = field(default_factory=list)  # a study that chooses its model: per model
    data_clean: dict[str, Any] | None = None  # what data.clean removed (trainers/clean.py)


def status(path: str | Path) -> StudyStatus:
    """The trials of a file's study, oldest first, and the best one."""
    cfg = load_study_file(path)
    study = read(cfg)
    trials = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    best = best_of(trials, study.directions[0])  # several objectives: no one best (`hpo best` lists the front)
    return StudyStatus(
        name=cfg.study.name,
        storage=redact(cfg.storage_url),
        direction=cfg.direction,
        metric=cfg.metric,
        n_trials=int(study.user_attrs.get(ATTR_N_TRIALS, cfg.study.n_trials)),
        counted=sum(1 for t in trials if t.counted),
        rows=[row(t, uses_proxy(cfg.metric)) for t in trials],
        best=row(best) if best is not None else None,
        by_model=group_by_model(
            ((t.number, t.state.name, t.value, t.params) for t in trials if t.counted),
            {"search_space": {k: v.model_dump() for k, v in cfg.search_space.items()}},
            cfg.direction,
        ),
        data_clean=study.user_attrs.get(ATTR_DATA_CLEAN),
    )
