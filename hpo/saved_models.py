"""Trial weights kept for later (``fidelity.save_models``): the worker writes them, the orchestrator bounds them.

A worker that finishes a trial (not pruned, not stopped) writes the model and tokenizer with
``save_pretrained`` into ``ROOT/.staging-trial-N-PID/``, then the run config it trained (``train_config.yaml``,
which ``hpo train`` and ``hpo compress`` read) and ``hpo_model.json`` (the mark of a complete folder), and
renames the folder to ``ROOT/trial-N`` in one step: a folder named ``trial-N`` is always whole, whatever
killed the worker on the way. The orchestrator then records ``model_dir`` on the trial (its user attributes)
only when the trial is among the best ``top_k`` complete trials with saved weights, and deletes every other
``trial-N`` folder of a finished trial, so at most ``top_k`` models (plus those of trials still running) are
on disk. A trial that falls out of the best K keeps its ``model_dir`` attribute (Optuna cannot change a
finished trial), so readers take only the folders that exist (``saved_models``).

ROOT is ``fidelity.save_models.dir`` (relative to the working directory) or, by default, next to the
storage: ``<folder of the SQLite file>/<study>-models``, or ``runs/<study>-models`` for a server database.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import DEFAULT_RUNS_DIR, StudyConfig
from hpo.record import rank_key

A_MODEL_DIR = "model_dir"  # trial user attribute: the folder name of its saved weights under ROOT
MARK = "hpo_model.json"  # written last into a saved folder: what the trial was, and that the folder is whole
TRAIN_CONFIG = "train_config.yaml"  # the run config the weights were trained with (what `hpo train` reads)
STAGING_PREFIX = ".staging-"


def models_root(cfg: StudyConfig) -> Path:
    """Where a study's saved trial weights go (see the module docstring)."""
    sm = cfg.fidelity.save_models
    if sm is not None and sm.dir is not None:
        return Path(sm.dir)
    url = cfg.storage_url
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / f"{cfg.study.name}-models"
    return Path(DEFAULT_RUNS_DIR) / f"{cfg.study.name}-models"


@dataclass(frozen=True)
class SaveSpec:
    """What a worker needs to save a finished trial's weights; travels to the worker process (picklable)."""

    root: str
    study: str
    objective: str

    @classmethod
    def of(cls, cfg: StudyConfig) -> SaveSpec | None:
        if cfg.fidelity.save_models is None:
            return None
        return cls(str(models_root(cfg).resolve()), cfg.study.name, cfg.metric)


def trial_dir_name(number: int) -> str:
    return f"trial-{number}"


def save_trial_model(
    spec: SaveSpec, trial: int, model: Any, tokenizer_dir: Path, run: dict[str, Any], metrics: dict[str, float]
) -> str:
    """Write a finished trial's weights under ``spec.root`` (staged, then renamed whole); return the folder name."""
    from hpo import yamlio

    root = Path(spec.root)
    root.mkdir(parents=True, exist_ok=True)
    name = trial_dir_name(trial)
    staging = root / f"{STAGING_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        for f in tokenizer_dir.iterdir():  # the tokenizer the trial's data was tokenised with
            if f.is_file():
                shutil.copy2(f, staging / f.name)
        prov = {"study": spec.study, "trial": trial, "objective": spec.objective, "value": metrics.get(spec.objective)}
        header = "# The run configuration this trial trained with (hpo fidelity.save_models).\n"
        (staging / TRAIN_CONFIG).write_text(header + yamlio.dumps({**run, "provenance": prov}), encoding="utf-8")
        (staging / MARK).write_text(json.dumps({**prov, "metrics": metrics}, indent=1) + "\n", encoding="utf-8")
        final = root / name
        if final.exists():  # left by an earlier run of the same trial number that was never recorded
            shutil.rmtree(final)
        os.rename(staging, final)  # atomic on one filesystem: `trial-N` is whole or absent
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return name


def is_saved_model(path: Path) -> bool:
    return (path / MARK).is_file() and (path / "config.json").is_file()


def saved_models(study: optuna.Study, root: Path) -> dict[int, Path]:
    """Complete trials whose saved weights are on disk: trial number -> folder."""
    out: dict[int, Path] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.user_attrs.get(A_MODEL_DIR)
        if isinstance(name, str) and is_saved_model(root / name):
            out[t.number] = root / name
    return out


class ModelKeeper:
    """The orchestrator's side: which finished trials keep their weights (the best ``top_k``), and cleaning up."""

    def __init__(self, root: Path, top_k: int, direction: str) -> None:
        self.root = root
        self.top_k = top_k
        self.direction = direction

    def _kept(self, complete: list[FrozenTrial], extra: tuple[int, float] | None = None) -> set[int]:
        ranked: list[tuple[int, float]] = [
            (t.number, t.value)
            for t in complete
            if t.value is not None
            and isinstance(t.user_attrs.get(A_MODEL_DIR), str)
            and is_saved_model(self.root / str(t.user_attrs[A_MODEL_DIR]))
        ]
        if extra is not None:
            ranked.append(extra)
        ranked.sort(key=lambda nv: rank_key(self.direction, nv[1], nv[0]))
        return {n for n, _ in ranked[: self.top_k]}

    def admit(self, study: optuna.Study, number: int, value: float) -> bool:
        """Whether a trial completing now with ``value`` is among the best ``top_k`` with saved weights."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return number in self._kept([t for t in complete if t.number != number], (number, value))

    def prune(self, study: optuna.Study) -> list[str]:
        """Delete the saved weights of every finished trial outside the best ``top_k``; the folders removed."""
        if not self.root.is_dir():
            return []
        trials = study.get_trials(deepcopy=False)
        finished = {t.number for t in trials if t.state.is_finished()}
        keep = self._kept([t for t in trials if t.state == TrialState.COMPLETE])
        removed: list[str] = []
        for p in self.root.iterdir():
            if not p.name.startswith("trial-") or not p.name.removeprefix("trial-").isdigit():
                continue
            number = int(p.name.removeprefix("trial-"))
            if number in finished and number not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


def keeper_of(cfg: StudyConfig) -> ModelKeeper | None:
    sm = cfg.fidelity.save_models
    return None if sm is None else ModelKeeper(models_root(cfg), sm.top_k, cfg.direction)
