"""`hpo export`: a study's best trial (or chosen ones) as files a full training run starts from.

For each exported trial, a folder with:

- ``train.yaml``: the fully resolved run configuration (the study's base configuration with the trial's
  parameters applied, and the trial-length cap replaced by the full-run length), plus checkpoint settings
  and provenance. ``hpo train`` runs it as it is; it validates with the same models as the trainer's.
- ``training_args.json``: the training arguments as ``transformers.TrainingArguments(**json)`` takes them.
- ``generation_config.json`` (generation tasks): the decoding, as ``transformers.GenerationConfig`` takes it.
- ``model_config.json``: the model-config overrides (dropout, ...), for ``AutoConfig.from_pretrained(name,
  **overrides)`` or ``AutoConfig.for_model(model_type, **overrides)``.
- ``launch.sh``: ``accelerate launch`` of ``hpo train`` on several GPUs.

Which trials: the best complete one (default), ``--trial N``, or the ``--top K`` complete ones, best first.
For a multi-objective study, "best" is taken from the Pareto front (``study.best_trials``), ordered by
the first objective in its direction (ties: lower trial number); ``--top K`` takes the first K of that
order and never goes past the front.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpo.config import DEFAULT_RUNS_DIR, StudyConfig, _problems, load_study_file, read_yaml_file
from hpo.errors import HpoError, StudyFileError
from hpo.record import TrialAttrs, rank_key, rank_trials
from hpo.storage import load_existing, redact
from trainers.config import GenerationConfig, RunConfig

CONFIG_NAME = "train.yaml"
ARGS_NAME = "training_args.json"
MODEL_NAME = "model_config.json"
LAUNCH_NAME = "launch.sh"
ADAPTER_NAME = "adapter_config.json"  # with model.peft: the LoRA adapter's peft LoraConfig
GENERATION_NAME = "generation_config.json"  # generation tasks: the decoding, as transformers.GenerationConfig
BUNDLE = (CONFIG_NAME, ARGS_NAME, MODEL_NAME, LAUNCH_NAME)

_VERSIONED = ("hpo", "torch", "transformers", "accelerate", "optuna", "tokenizers", "numpy")


# ------------------------------------------------------------------------------------- the train file


class CheckpointSettings(BaseModel):
    """How often `hpo train` checkpoints (Hugging Face names), and how many checkpoints it keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    save_steps: int | None = Field(default=None, ge=1)  # default: at every eval
    save_total_limit: int = Field(default=1, ge=1)


class TrainFile(RunConfig):
    """A file `hpo train` runs: one resolved run configuration, its checkpointing, and where it came from."""

    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    # CPU threads (torch.set_num_threads); null: torch's default. Float sums depend on it: --trial-length
    # exports set the trial worker's count so the trial's metric is reproduced to the last digit.
    threads: int | None = Field(default=None, ge=1)
    provenance: dict[str, Any] | None = None  # informational: copied into the run's metrics.json

    def run_config(self) -> RunConfig:
        """The run configuration alone: its sections as they are (validated already, frozen, so shared)."""
        return RunConfig(**{name: getattr(self, name) for name in RunConfig.model_fields})


def load_train_file(path: str | Path) -> TrainFile:
    """Read and validate a training config; raise StudyFileError with ``FILE: a.b: message`` lines."""
    shown = str(path)
    raw = read_yaml_file(path, kind="training config")
    if not isinstance(raw, dict):
        raise StudyFileError(shown, [("", "a training config must be a YAML mapping (see `hpo export`)")])
    if "search_space" in raw and "study" in raw:
        raise StudyFileError(
            shown, [("", f"this is a study file; export a trial from it first: hpo export {shown} -o DIR")]
        )
    try:
        return TrainFile.model_validate(raw)
    except ValidationError as e:
        raise StudyFileError(shown, _problems(e)) from None


# ----------------------------------------------------------------------------------- choosing trials


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best first. Multi-objective: the Pareto front, ordered by the first objective."""
    if len(study.directions) > 1:
        first = study.directions[0]
        return sorted(study.best_trials, key=lambda t: rank_key(first, t.values[0], t.number))
    return rank_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study.direction)


def pick_trials(study: optuna.Study, study_path: str | Path, trial: int | None, top: int | None) -> list[FrozenTrial]:
    name = study.study_name
    if trial is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not found:
            raise HpoError(f"study {name!r} has no trial {trial}; see `hpo status {study_path}`")
        if found[0].state != TrialState.COMPLETE:
            raise HpoError(
                f"trial {trial} of study {name!r} is {found[0].state.name}, not COMPLETE: only a complete trial "
                f"has a result to reproduce; see `hpo status {study_path}`"
            )
        return found
    ranked = ranked_trials(study)
    if not ranked:
        raise HpoError(f"study {name!r} has no complete trial yet; run `hpo run {study_path}`")
    return ranked[: top or 1]


# ----------------------------------------------------------------------------- the run's length


@dataclass
class Length:
    """Which length to export: the study's full run (default), the trial's own, or N steps."""

    trial: bool = False
    steps: int | None = None

    def describe(self, cfg: StudyConfig, run: RunConfig) -> str:
        t = run.training
        if self.trial:
            return f"the trial's own length: {t.max_steps} steps (fidelity.max_steps)"
        if self.steps is not None:
            return f"{t.max_steps} steps (--steps)"
        if not _length_written(cfg):
            return (
                f"{t.max_steps} steps: the trial's length (fidelity.max_steps), since neither full_run nor "
                "training sets max_steps or num_train_epochs"
            )
        src = "full_run" if cfg.full_run.max_steps or cfg.full_run.num_train_epochs else "training"
        if t.max_steps > 0:
            return f"{t.max_steps} steps ({src}.max_steps)"
        unit = "epoch" if t.num_train_epochs == 1 else "epochs"
        return f"{t.num_train_epochs:g} {unit} ({src}.num_train_epochs)"


def _length_written(cfg: StudyConfig) -> bool:
    """Whether the study file says how long a full run is (else the trainer's default, 3 epochs, was no one's
    choice: the export uses the trial's own length instead)."""
    full = cfg.full_run
    written = {"max_steps", "num_train_epochs"} & cfg.training.model_fields_set
    return bool(written) or full.max_steps is not None or full.num_train_epochs is not None


def resolve_run(cfg: StudyConfig, params: dict[str, Any], length: Length) -> RunConfig:
    """The trial's run configuration at the chosen length.

    ``trial``: exactly what the trial ran (``cfg.trial_run``). Otherwise the trial-length cap is replaced:
    ``training.max_steps`` / ``eval_steps`` as written in the study's ``training`` section (``base_run``
    overwrote them with ``fidelity``), then ``full_run``'s keys, then ``--steps``; evaluation covers
    ``full_run.eval_batches`` batches (default: the whole eval split).
    """
    trial = cfg.trial_run(params)
    if length.trial:
        return trial
    written, full = cfg.training, cfg.full_run
    # searched parameters never target max_steps / eval_steps; no length written at all: the trial's own
    training: dict[str, Any] = {
        "max_steps": written.max_steps if _length_written(cfg) else trial.training.max_steps,
        "eval_steps": written.eval_steps,
    }
    if full.max_steps is not None:
        training["max_steps"] = full.max_steps
    if full.num_train_epochs is not None:
        training["max_steps"] = -1
        training["num_train_epochs"] = full.num_train_epochs
    if full.eval_steps is not None:
        training["eval_steps"] = full.eval_steps
    if length.steps is not None:
        training["max_steps"] = length.steps
    if training["eval_steps"] is None and training["max_steps"] > 0:
        training["eval_steps"] = max(1, training["max_steps"] // 10)  # what the loop does; written out
    # Every value comes from a validated section (or `--steps`, checked >= 1 by `export`): copies suffice.
    return trial.model_copy(
        update={"training": trial.training.model_copy(update=training), "eval_batches": full.eval_batches}
    )


# ------------------------------------------------------------------------- Hugging Face equivalents


def _ta_fields(task: str = "causal_lm") -> set[str]:
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    cls = Seq2SeqTrainingArguments if task == "seq2seq" else TrainingArguments
    return {f.name for f in dataclasses.fields(cls)}


def training_arguments(
    run: RunConfig, output_dir: str, precision: str | None, save_steps: int | None, save_total_limit: int
) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments`` that describe the same run.

    ``precision`` is what the trial ran with ("bf16", "fp16", "no"): hpo's default ``bf16: null`` (bf16
    where the GPU has it) has no TrainingArguments equivalent, so the trial's choice is written. hpo's
    ``eval_batches`` cap has no equivalent either (see the README).
    """
    t = run.training
    fields = _ta_fields(run.task)
    args: dict[str, Any] = {
        "output_dir": output_dir,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "weight_decay": t.weight_decay,
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "max_grad_norm": t.max_grad_norm,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "logging_steps": t.logging_steps,
        "seed": t.seed,
        "bf16": bool(t.bf16) if t.bf16 is not None else precision == "bf16",
        "fp16": t.fp16,
        "use_cpu": t.use_cpu,
    }
    # Warmup: exact steps where the run's length is known (as the loop computes them), else the ratio.
    if t.warmup_steps > 0:
        args["warmup_steps"] = t.warmup_steps
    elif t.warmup_ratio > 0 and t.max_steps > 0:
        args["warmup_steps"] = math.ceil(t.warmup_ratio * t.max_steps)
    elif t.warmup_ratio > 0:
        if "warmup_ratio" in fields:
            args["warmup_ratio"] = t.warmup_ratio
        else:  # transformers >= 5.x: a float in [0, 1) is a ratio
            args["warmup_steps"] = min(t.warmup_ratio, 0.999)
    else:
        args["warmup_steps"] = 0
    args["eval_strategy" if "eval_strategy" in fields else "evaluation_strategy"] = "steps"
    args["eval_steps"] = t.eval_steps if t.eval_steps is not None else 0.1  # a float < 1: ratio of the run
    args["save_strategy"] = "steps"
    args["save_steps"] = save_steps or args["eval_steps"]
    args["save_total_limit"] = save_total_limit
    if run.task == "seq2seq":  # Seq2SeqTrainingArguments: evaluate by generating, with the trial's decoding
        gen = run.generation or GenerationConfig()
        args.update(predict_with_generate=True, generation_max_length=gen.max_new_tokens + 1)
        args["generation_num_beams"] = gen.num_beams
    return {k: v for k, v in args.items() if k in fields}


def generation_settings(run: RunConfig) -> dict[str, Any]:
    """The run's decoding as ``transformers.GenerationConfig(**json)`` takes it (``generate`` keyword names)."""
    return (run.generation or GenerationConfig()).generate_kwargs()


def model_overrides(run: RunConfig) -> dict[str, Any]:
    """The model-config keys the run sets, by their architecture's names where the architecture is known."""
    from trainers.models import config_overrides

    model_type = run.model.model_type
    if model_type is None and run.model.name_or_path is not None:
        try:
            from transformers import AutoConfig

            from trainers.corpora import resolve_model_path

            model_type = AutoConfig.from_pretrained(
                resolve_model_path(run.model.name_or_path),
                revision=run.model.revision,
                trust_remote_code=run.model.trust_remote_code,
            ).model_type
        except Exception:
            model_type = None  # offline and not cached: keep `dropout` unexpanded
    out: dict[str, Any] = {
        "model": run.model.name_or_path or "from_config",
        "model_type": model_type,
        "from_config": run.model.from_config,
    }
    if model_type is not None:
        out["overrides"] = config_overrides(run, model_type)
    else:
        out["overrides"] = dict(run.model.config)
        if run.model.dropout is not None:
            out["dropout"] = run.model.dropout  # every dropout probability of the architecture
    return out


# -------------------------------------------------------------------------------------- provenance


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(where: Path) -> dict[str, Any] | None:
    """The commit of the git work tree holding ``where`` and whether tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty)}


def trial_threads(cfg: StudyConfig, trial: FrozenTrial) -> int | None:
    """The CPU threads the trial's worker had (as `hpo run` plans them on this machine); None on a GPU."""
    if (TrialAttrs.from_user_attrs(trial.user_attrs).device or "cpu") != "cpu":
        return None
    from hpo.resources import plan_workers

    try:
        specs = plan_workers(cfg.resources.model_copy(update={"devices": "cpu"}), max_workers=cfg.study.n_trials)
    except ValueError:
        return None
    return specs[0].threads if specs else None


def provenance(
    cfg: StudyConfig, study: optuna.Study, study_path: Path, trial: FrozenTrial, rank: int, length: str
) -> dict[str, Any]:
    a = TrialAttrs.from_user_attrs(trial.user_attrs)
    multi = len(study.directions) > 1
    return {
        "study": cfg.study.name,
        "study_file": str(study_path),
        "storage": redact(cfg.storage_url),
        "trial": trial.number,
        "rank": rank,
        "objective": cfg.metric,
        "direction": [d.name.lower() for d in study.directions] if multi else cfg.direction,
        "value": list(trial.values) if multi else trial.value,
        "trial_metrics": None if a.metrics is None else dict(a.metrics),
        "trial_steps": a.steps,
        "trial_device": a.device,
        "trial_precision": a.precision,
        "trial_threads": trial_threads(cfg, trial),
        "params": dict(trial.params),
        "fingerprint": cfg.fingerprint(),
        "length": length,
        "versions": versions(),
        "git": git_state(study_path.resolve().parent),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------ launch script


def launch_script(study: str, trial: int) -> str:
    return f"""#!/usr/bin/env bash
# Full training of trial {trial} of study '{study}' on several GPUs (one process per GPU):
#   ./launch.sh [-o OUTDIR] [--force]             (arguments go to `hpo train`)
#   NUM_PROCESSES=4 ./launch.sh                    (default: the GPUs nvidia-smi lists, or 1)
# Run it from the directory you ran the study from: the tokenised data cache (runs/cache, or
# $HPO_CACHE_DIR) is found relative to it.
#
# Each process draws its own shard of every shuffled batch order: the trainer splits the indices by
# accelerator.process_index (trainers/loop.py, BatchOrder). The effective batch is therefore
# per_device_train_batch_size x gradient_accumulation_steps x NUM_PROCESSES, and the trials ran with
# one process: to keep the trial's effective batch, divide per_device_train_batch_size (or
# gradient_accumulation_steps) in train.yaml by NUM_PROCESSES. With max_steps, each process takes that
# many optimizer steps; with num_train_epochs, the steps shrink with NUM_PROCESSES. A checkpoint
# resumes only with the NUM_PROCESSES that wrote it.
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
if [ -z "${{NUM_PROCESSES:-}}" ]; then
  NUM_PROCESSES="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  [ "${{NUM_PROCESSES:-0}}" -ge 1 ] || NUM_PROCESSES=1
fi
MULTI=()
[ "$NUM_PROCESSES" -gt 1 ] && MULTI=(--multi_gpu)
exec accelerate launch "${{MULTI[@]}}" --num_processes "$NUM_PROCESSES" -m hpo.cli train "$HERE/{CONFIG_NAME}" "$@"
"""


# ------------------------------------------------------------------------------------------- export


@dataclass
class Exported:
    trial: int
    value: float | list[float] | None
    dir: Path
    length: str
    files: list[Path]
    note: str | None = None  # e.g. that the trial is the confirmed winner (`hpo confirm`), not the search's best


def _header(prov: dict[str, Any], out: Path) -> str:
    return (
        f"# Exported by `hpo export` from study {prov['study']!r}, trial {prov['trial']} "
        f"({prov['objective']} = {prov['value']}).\n"
        f"# Length: {prov['length']}.\n"
        f"# Run it with: hpo train {out / CONFIG_NAME}\n"
        "# Every key is validated by `hpo train` (unknown keys are errors); `provenance` is informational.\n"
    )


def export(
    study_path: str | Path,
    out_dir: str | Path | None = None,
    trial: int | None = None,
    top: int | None = None,
    steps: int | None = None,
    trial_length: bool = False,
    force: bool = False,
) -> list[Exported]:
    """Write the export bundle(s); everything is checked before the first file is written."""
    from hpo import yamlio

    if trial is not None and top is not None:
        raise HpoError("give --trial or --top, not both")
    if steps is not None and trial_length:
        raise HpoError("give --steps or --trial-length, not both")
    if top is not None and top < 1:
        raise HpoError(f"--top must be at least 1, but got {top}")
    if steps is not None and steps < 1:
        raise HpoError(f"--steps must be at least 1, but got {steps}")
    path = Path(study_path)
    cfg = load_study_file(path)
    study = load_existing(cfg)
    cfg.resolve_teacher(str(path))  # a teacher named by study and trial: its folder goes into train.yaml
    trials = pick_trials(study, path, trial, top)
    note = None
    if trial is None and top is None:  # "the best": after `hpo confirm`, its winner
        from hpo.confirm import describe, winner_trial

        confirmed = winner_trial(cfg, study)
        if confirmed is not None:
            trials = [t for t in study.get_trials(deepcopy=False) if t.number == confirmed[0].number]
            note = describe(confirmed[1])
    root = Path(out_dir) if out_dir is not None else Path(DEFAULT_RUNS_DIR) / f"{cfg.study.name}-export"
    length = Length(trial=trial_length, steps=steps)

    plans: list[tuple[Exported, dict[str, str]]] = []
    for rank, t in enumerate(trials, start=1):
        out = root / f"trial-{t.number}" if top is not None else root
        run = resolve_run(cfg, t.params, length)
        if cfg.pbt is not None:  # a PBT member: the schedule its weights trained with, stretched to the length
            from hpo.pbt_run import export_run

            run = export_run(cfg, t, lambda params: resolve_run(cfg, params, length))
        what = length.describe(cfg, run)
        prov = provenance(cfg, study, path, t, rank, what)
        full = cfg.full_run
        save_steps = None if trial_length else full.save_steps
        body: dict[str, Any] = {
            **run.model_dump(mode="json"),
            "checkpoints": CheckpointSettings(save_steps=save_steps).model_dump(),
            "threads": prov["trial_threads"] if trial_length else None,
            "provenance": prov,
        }
        TrainFile.model_validate(body)  # what `hpo train` will read back
        precision = TrialAttrs.from_user_attrs(t.user_attrs).precision
        args = training_arguments(run, str(out / "hf-trainer"), precision, save_steps, 1)
        contents = {
            CONFIG_NAME: _header(prov, out) + yamlio.dumps(body),
            ARGS_NAME: json.dumps(args, indent=2) + "\n",
            MODEL_NAME: json.dumps(model_overrides(run), indent=2) + "\n",
            LAUNCH_NAME: launch_script(cfg.study.name, t.number),
        }
        if run.generates:  # the trial's decoding: transformers.GenerationConfig.from_pretrained(dir)
            contents[GENERATION_NAME] = json.dumps(generation_settings(run), indent=2) + "\n"
        if run.model.peft is not None:
            from trainers.models import lora_config

            # peft holds target module names as a set: written sorted, so the file is the same every time.
            adapter = lora_config(run).to_dict()
            contents[ADAPTER_NAME] = json.dumps(adapter, indent=2, sort_keys=True, default=sorted) + "\n"
        value = list(t.values) if len(study.directions) > 1 else t.value
        plans.append((Exported(t.number, value, out, what, [out / n for n in contents], note), contents))

    for e, _ in plans:
        for d in (e.dir, *e.dir.parents):
            if d.exists() and not d.is_dir():
                raise HpoError(f"{d} exists and is not a directory; give -o a directory")
    existing = [f for e, _ in plans for f in e.files if f.exists() or f.is_symlink()]
    if existing and not force:
        raise HpoError(
            f"{existing[0].parent} already holds an export ({existing[0].name}); "
            "use --force to overwrite it, or -o another directory"
        )
    for e, contents in plans:
        e.dir.mkdir(parents=True, exist_ok=True)
        for name, text in contents.items():
            (e.dir / name).write_text(text, encoding="utf-8")
        (e.dir / LAUNCH_NAME).chmod(0o755)
    return [e for e, _ in plans]
