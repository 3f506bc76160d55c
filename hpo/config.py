"""The study file: typed, validated before anything runs, fingerprinted for safe resuming.

A validated ``StudyConfig`` is frozen, defaults included (those that depend on another section are filled
in before validation). Its sections are passed around as they are; a trial's run is a new ``RunConfig``
(``base_run``, ``trial_run``), and a variant of anything is a ``model_copy``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from hpo import yamlio
from hpo.batching import check_effective, derive
from hpo.budget import TrialLength, trial_length, with_length
from hpo.conditional import check_conditions, is_conditional
from hpo.errors import StudyFileError
from hpo.modelchoice import NAME, PRESET, check_presets, chosen_model
from hpo.pbt import PbtSection, check_section
from hpo.pruners import PRUNER_NAMES, WRAPPABLE_PRUNERS, MedianPrunerConfig, PrunerConfig, default_pruner
from hpo.references import resolve_file, resolve_local
from hpo.samplers import SAMPLER_NAMES, SamplerConfig, TPESamplerConfig
from hpo.space import SPEC_TYPES, TARGET_ROOTS, ParamSpec, apply_params, grid_values, param_name, with_values
from hpo.warmstart import WarmStartSection, to_params
from trainers.clean import EVAL_KEYS
from trainers.config import DataConfig, GenerationConfig, ModelConfig, RunConfig, Task, TrainingConfig
from trainers.distill import DistillationConfig, TeacherRef
from trainers.textmetrics import GENERATION_METRICS

DEFAULT_RUNS_DIR = "runs"  # default home of SQLite files and data caches, relative to the working directory

# The metrics each task reports, and which way is better.
TASK_METRICS: dict[str, dict[str, Literal["minimize", "maximize"]]] = {
    "causal_lm": {"eval_loss": "minimize", "perplexity": "minimize"},
    "sequence_classification": {"eval_loss": "minimize", "accuracy": "maximize", "f1_macro": "maximize"},
    "seq2seq": {"eval_loss": "minimize", "perplexity": "minimize", **GENERATION_METRICS},
}
# causal_lm decodes (and so reports the generation metrics) only as prompt -> completion (data.prompt_column).
GENERATING_CAUSAL_METRICS = {**TASK_METRICS["causal_lm"], **GENERATION_METRICS}


# Costs every trial's worker measures the same way (multi-objective studies): lower is better. ``params``
# counts every parameter of the model, ``trainable_params`` those the optimizer updates; ``latency_ms`` is
# inference per example on the first eval rows (trainers/latency.py), ``train_time`` seconds in train steps.
COST_METRICS: dict[str, Literal["minimize", "maximize"]] = {
    "params": "minimize",
    "trainable_params": "minimize",
    "peak_memory_mb": "minimize",
    "train_time": "minimize",
    "latency_ms": "minimize",
}
# Samplers that handle several objectives (the others are refused in a multi-objective study).
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "grid", "qmc")


class _Strict(BaseModel):
    # Frozen: a validated study is never edited; a variant is a copy (`model_copy(update=...)`).
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    storage: str | None = None  # SQLAlchemy URL; default sqlite:///runs/<name>.db
    n_trials: int = Field(ge=1)  # total for the study: rerunning resumes up to it
    timeout: float | None = Field(default=None, gt=0.0)  # seconds for this invocation
    description: str | None = None


class ObjectiveSection(_Strict):
    metric: Literal[
        "eval_loss", "perplexity", "accuracy", "f1_macro",
        "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match",
        "params", "trainable_params", "peak_memory_mb", "train_time", "latency_ms",
    ]  # fmt: skip
    direction: Literal["minimize", "maximize"] | None = None  # default: the metric's natural direction


# One section or a list, told apart by the shape written (so an error names only the form the file used).
Objectives = Annotated[
    Union[Annotated[ObjectiveSection, Tag("one")], Annotated[list[ObjectiveSection], Tag("many")]],
    Discriminator(lambda v: "many" if isinstance(v, list) else "one"),
]


class SaveModelsSection(_Strict):
    """Keep the final weights of the best ``top_k`` complete trials (``hpo.saved_models``); others are deleted."""

    top_k: int = Field(ge=1)
    dir: str | None = None  # default: `<study>-models` next to the SQLite file (runs/ for a server database)


class FidelitySection(_Strict):
    # A trial's length: one of optimizer steps, training samples, or tokens (hpo/budget.py: with samples or
    # tokens, trials of every batch size see the same data and `eval_every` counts in the same unit).
    # `max_steps: 0`: a decode-only study (a generation task whose trials only decode the model as loaded).
    max_steps: int | None = Field(default=None, ge=0)  # the full run's length lives in `training`
    max_samples: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    eval_every: int = Field(ge=1)  # report to the pruner every N steps (samples, tokens)
    eval_batches: int | None = Field(default=None, ge=1)  # cap eval cost; the same batches every time
    # Not fingerprinted: keeping weights changes no result, so it may be added to a study that already ran.
    save_models: SaveModelsSection | None = None

    @model_validator(mode="after")
    def _check(self) -> FidelitySection:
        given = [k for k in ("max_steps", "max_samples", "max_tokens") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give the trial length as one of `max_steps`, `max_samples` or `max_tokens`"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.budget > 0 and self.eval_every > self.budget:
            raise ValueError(
                f"`eval_every <= {given[0]}` must hold, but got (eval_every={self.eval_every}, "
                f"{given[0]}={self.budget})."
            )
        return self

    @property
    def unit(self) -> Literal["steps", "samples", "tokens"]:
        return "samples" if self.max_samples is not None else "tokens" if self.max_tokens is not None else "steps"

    @property
    def budget(self) -> int:
        """The trial length in ``unit``."""
        return self.max_samples or self.max_tokens or self.max_steps or 0

    def length(self, run: RunConfig) -> TrialLength:
        """A trial's optimizer steps and eval cadence, and the pruner's step of each eval."""
        return trial_length(self.unit, self.budget, self.eval_every, run)


class FullRunSection(_Strict):
    """How `hpo train` runs an exported trial at full length. Trials never read it, so it is not part of the
    fingerprint: it may change (or be added) after the study ran. Unset keys fall back to `training`."""

    max_steps: int | None = Field(default=None, ge=1)  # default: training.max_steps as written
    num_train_epochs: float | None = Field(default=None, gt=0.0)  # default: training.num_train_epochs
    eval_steps: int | None = Field(default=None, ge=1)  # default: training.eval_steps, else a tenth of the run
    eval_batches: int | None = Field(default=None, ge=1)  # default: the whole eval split
    save_steps: int | None = Field(default=None, ge=1)  # checkpoint every N steps; default: at every eval

    @model_validator(mode="after")
    def _check(self) -> FullRunSection:
        if self.max_steps is not None and self.num_train_epochs is not None:
            raise ValueError("give `max_steps` or `num_train_epochs`, not both")
        return self


class ResourcesSection(_Strict):
    workers: int | Literal["auto"] = "auto"  # CPU: one per core; GPU: one per device
    threads_per_worker: int | Literal["auto"] = "auto"  # CPU threads; workers x threads <= cores
    devices: Literal["auto", "cpu"] | list[int] = "auto"
    gpus_per_trial: int = Field(default=1, ge=1)  # > 1: data-parallel trials (accelerate launch)
    trials_per_gpu: int = Field(default=1, ge=1)  # small models: several workers share one GPU
    max_retries: int = Field(default=1, ge=0)  # re-runs of a trial whose worker process died
    # Out of memory in a trial: `retry` the same parameters with half the micro-batch and twice the
    # gradient accumulation (same effective batch), up to `oom_retries` times, then fail with reason
    # "oom"; or `prune` / `fail` at once.
    oom_policy: Literal["retry", "prune", "fail"] = "retry"
    oom_retries: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ResourcesSection:
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError(f"`workers >= 1` must hold, but got (workers={self.workers}).")
        if isinstance(self.threads_per_worker, int) and self.threads_per_worker < 1:
            raise ValueError(f"`threads_per_worker >= 1` must hold, but got ({self.threads_per_worker}).")
        if self.gpus_per_trial > 1 and self.trials_per_gpu > 1:
            raise ValueError(
                "`gpus_per_trial` and `trials_per_gpu` cannot both be > 1, but got "
                f"(gpus_per_trial={self.gpus_per_trial}, trials_per_gpu={self.trials_per_gpu})."
            )
        return self


class StudyConfig(_Strict):
    """A whole study file."""

    study: StudySection
    task: Task
    # One objective, or a list (multi-objective: the first must be a metric the trainer reports at each
    # eval, since pruning follows it; costs such as latency_ms come after).
    objective: Objectives
    sampler: SamplerConfig = Field(default_factory=lambda: TPESamplerConfig(name="tpe"))
    # No pruner in the file: the median pruner warmed up for a sixth of a trial (`_fill_defaults`, from
    # fidelity); this default only stands in while an invalid fidelity section is reported.
    pruner: PrunerConfig = Field(default_factory=lambda: MedianPrunerConfig(name="median"))
    fidelity: FidelitySection
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    search_space: dict[str, ParamSpec] = Field(min_length=1)
    # Named partial `model` sections that `model.preset` in search_space chooses between (hpo.modelchoice).
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    warm_start: WarmStartSection | None = None  # configurations run first (hpo.warmstart); not fingerprinted
    generation: GenerationConfig | None = None  # generation tasks: decoding (default: GenerationConfig())
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    full_run: FullRunSection = Field(default_factory=FullRunSection)  # `hpo export`/`hpo train` only: not fingerprinted
    distillation: DistillationConfig | None = None  # a teacher for the student (trainers/distill.py)
    pbt: PbtSection | None = None  # population-based training instead of independent trials (hpo.pbt)
    # The study file's folder: relative paths in the file are relative to it (None: as written, i.e. the
    # working directory). Not part of the file, so not fingerprinted: a moved study keeps its results.
    _base_dir: Path | None = PrivateAttr(default=None)
    # A teacher given as a trial of another study: the model folder it resolves to (hpo.teacher), set by
    # `resolve_teacher` where runs are made (validate, run, worker, export); read-only commands never need it.
    _teacher_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        """Defaults that depend on other sections, filled in before validation so the model is complete (and
        frozen) once built: the pruner of a file that names none (warmed up from ``fidelity.max_steps``) and
        the objective's natural direction. A section that is itself invalid gets nothing here: its own
        errors are reported as they are."""
        if not isinstance(data, dict):
            return data
        data = dict(data)  # the caller's mapping stays as it is
        if "pruner" not in data:
            fidelity = _valid(FidelitySection, data.get("fidelity"))
            if fidelity is not None:
                data["pruner"] = default_pruner(fidelity.budget)
        task = data.get("task")
        raw = data.get("objective")

        def filled(value: Any) -> Any:
            objective = _valid(ObjectiveSection, value)
            if objective is None or objective.direction is not None or not isinstance(task, str):
                return value
            natural = {**_task_metrics(task, data.get("data")), **COST_METRICS}.get(objective.metric)
            if natural is None:  # a metric the task does not report is an error below
                return value
            return objective.model_copy(update={"direction": natural})

        data["objective"] = [filled(o) for o in raw] if isinstance(raw, list) else filled(raw)
        if raw is None:
            del data["objective"]
        return data

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> StudyConfig:
        # Where relative paths start: given by the loader (not a key of the file, so not fingerprinted).
        # A private attribute, set while the model is built; fields stay frozen.
        if info.context is not None:
            self._base_dir = info.context.get("base_dir")
        metrics = _task_metrics(self.task, self.data)
        if self.fidelity.save_models is not None and self.model.peft is not None:
            raise ValueError("fidelity.save_models keeps whole models; LoRA trials (model.peft) are not supported yet")
        objectives = self.objectives
        many = isinstance(self.objective, list)
        if many and not objectives:
            raise ValueError("objective: give at least one {metric: ...}")
        for i, o in enumerate(objectives):
            where = f"objective[{i}]" if many else "objective"
            natural = {**metrics, **COST_METRICS}.get(o.metric)
            if o.metric in GENERATION_METRICS and self.task == "causal_lm" and natural is None:
                raise ValueError(
                    f"{where}.metric: {o.metric!r} needs generated text: task causal_lm generates "
                    "only as prompt -> completion (set data.prompt_column and data.target_column)"
                )
            if natural is None or (o.metric in COST_METRICS and not many):
                choose = ", ".join(metrics) + (", " + ", ".join(COST_METRICS) if many else "")
                raise ValueError(
                    f"{where}.metric: {o.metric!r} is not reported by task {self.task!r} (choose from {choose})"
                    + ("; cost metrics go in a list after a quality metric" if o.metric in COST_METRICS else "")
                )
            if o.direction != natural:
                raise ValueError(
                    f"{where}.direction: must be {natural!r} for metric {o.metric!r}, but got {o.direction!r}"
                )
        if many:
            names = [o.metric for o in objectives]
            if len(set(names)) != len(names):
                raise ValueError(f"objective: each metric once, but got {names}")
            if objectives[0].metric in COST_METRICS:
                raise ValueError(
                    f"objective[0].metric: must be a metric the trainer reports at each eval ({', '.join(metrics)}): "
                    f"pruning follows the first objective, and {objectives[0].metric!r} is measured only at the end"
                )
            if len(objectives) > 1 and self.sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
                raise ValueError(
                    f"sampler {self.sampler.name!r} optimises one objective; with several use one of "
                    f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}"
                )
        return self

    @property
    def objectives(self) -> list[ObjectiveSection]:
        """Every objective, in the file's order (one for a single-objective study)."""
        return list(self.objective) if isinstance(self.objective, list) else [self.objective]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metric(self) -> str:
        """The (first) objective's metric: what is reported at each eval and pruned on."""
        return self.objectives[0].metric

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        out = []
        for o in self.objectives:
            assert o.direction is not None  # filled in by validation
            out.append(o.direction)
        return out

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """The (first) objective's direction."""
        return self.directions[0]

    @property
    def storage_url(self) -> str:
        return self.study.storage or f"sqlite:///{DEFAULT_RUNS_DIR}/{self.study.name}.db"

    def base_run(self, model: ModelConfig | None = None) -> RunConfig:
        """The run configuration every trial starts from, with the trial-length cap.

        A new object each call, sharing no mutable value (``from_config``, ``files``) with this study.
        ``model``: another model section as written (a preset a trial chose) in place of the file's.
        """
        steps = self.fidelity.max_steps
        decode_only = steps == 0  # trains nothing: the length only has to be valid
        training = self.training.model_copy(
            # None with a sample or token budget: `with_length` below sets the steps from the batch size.
            update={"max_steps": None if steps is None else max(steps, 1), "eval_steps": self.fidelity.eval_every}
        )
        generates = self.task == "seq2seq" or (self.task == "causal_lm" and self.data.prompt_column is not None)
        run = RunConfig(
            task=self.task,
            model=self._resolved_model(model),
            data=self._resolved_data(),
            training=training,
            eval_batches=self.fidelity.eval_batches,
            # Filled in for every generation task, so `generation.<key>` is a path search_space can set.
            generation=(self.generation or GenerationConfig()) if generates else self.generation,
            decode_only=decode_only,
            measure_latency=any(o.metric == "latency_ms" for o in self.objectives),
            distillation=self._resolved_distillation(),
        )
        return run if self.fidelity.unit == "steps" else with_length(run, self.fidelity.length(run))

    def resolve_teacher(self, source: str) -> None:
        """Find the model folder of a teacher given as a trial of another study (reads that study's storage,
        read-only); a StudyFileError naming ``distillation.teacher`` when there is none."""
        d = self.distillation
        if d is not None and isinstance(d.teacher, TeacherRef) and self._teacher_dir is None:
            from hpo.teacher import resolve_teacher

            self._teacher_dir = resolve_teacher(d.teacher, self, source)

    def _resolved_distillation(self) -> DistillationConfig | None:
        """The distillation section with its teacher as an absolute model folder (what workers load)."""
        d = self.distillation
        if d is None:
            return None
        if isinstance(d.teacher, TeacherRef):  # unresolved (validation alone): workers refuse it
            return d if self._teacher_dir is None else d.model_copy(update={"teacher": str(self._teacher_dir)})
        local = resolve_local(d.teacher, self._base_dir)
        return d.model_copy(update={"teacher": str(local)}) if local is not None else d

    def _resolved_data(self) -> DataConfig:
        """The data section with local paths made absolute, so every worker and the cache key see one file."""
        data, base = self.data, self._base_dir
        update: dict[str, Any] = {}
        if data.files is not None:
            update["files"] = {
                k: resolve_file(v, base) if isinstance(v, str) else [resolve_file(f, base) for f in v]
                for k, v in data.files.items()
            }
        if data.dataset is not None:
            local = resolve_local(data.dataset, base)
            update["dataset"] = str(local) if local is not None else data.dataset
        return data.model_copy(update=update, deep=True)

    def _resolved_model(self, model: ModelConfig | None = None) -> ModelConfig:
        """The model section with local folders made absolute: a local folder never reaches the hub as a repo id."""
        model, base = model or self.model, self._base_dir

        def resolved(name: str | None) -> dict[str, str]:
            local = resolve_local(name, base) if name is not None else None
            return {"name_or_path": str(local)} if local is not None else {}

        tokenizer = model.tokenizer.model_copy(update=resolved(model.tokenizer.name_or_path))
        return model.model_copy(update={**resolved(model.name_or_path), "tokenizer": tokenizer}, deep=True)

    @property
    def oom(self) -> dict[str, Any]:
        """What a worker does on out-of-memory (passed to the runner, not part of the run config)."""
        return {"policy": self.resources.oom_policy, "retries": self.resources.oom_retries}

    def trial_run(self, params: dict[str, Any]) -> RunConfig:
        """The resolved run configuration of a trial with these sampled parameters."""
        chosen = chosen_model(self.model, self.models, self.search_space, params)
        space = {p: s for p, s in self.search_space.items() if p != PRESET}
        run = apply_params(self.base_run(chosen), space, params)
        if NAME in space:  # a searched model folder is relative to the study file, like the model section's
            run = run.model_copy(update={"model": self._resolved_model(run.model)})
        run = derive(run, self.resources.gpus_per_trial)  # gradient accumulation from effective_batch_size
        # A sample or token budget: the steps follow the trial's own batch size (accumulation included).
        return run if self.fidelity.unit == "steps" else with_length(run, self.fidelity.length(run))

    def grid(self) -> dict[str, list[Any]] | None:
        """The grid of every parameter, or None when some parameter has none."""
        out: dict[str, list[Any]] = {}
        for path, spec in self.search_space.items():
            values = grid_values(spec)
            if values is None:
                return None
            out[param_name(path, spec)] = values
        return out

    def fingerprints(self) -> dict[str, str]:
        """A short hash of each section that must not change when a study is resumed."""
        from hpo.genstudy import generates
        from trainers.versions import CACHE_VERSION, PAIRS_VERSION

        # The budget keys only when given: studies from before they existed keep their fingerprint.
        unset = {k for k in ("max_samples", "max_tokens") if getattr(self.fidelity, k) is None}
        # Pairs tokenised by a pretrained tokenizer with its own special tokens (BOS...) since PAIRS_VERSION 2.
        pretrained_pairs = generates(self) and self.model.tokenizer.train_vocab_size is None
        pairs = {"pairs": PAIRS_VERSION} if pretrained_pairs else {}
        parts = {
            "task": self.task,
            "objective": [o.model_dump() for o in self.objective]
            if isinstance(self.objective, list)
            else self.objective.model_dump(),
            "fidelity": self.fidelity.model_dump(exclude=unset | {"save_models"}),
            "model": self.model.model_dump(),
            "data": {**self.data.model_dump(), "cache_version": CACHE_VERSION, **pairs},  # same data, same results
            "training": self.training.model_dump(),
            "search_space": {k: v.model_dump() for k, v in self.search_space.items()},
        }
        if self.models:  # absent when unset: older studies keep their fingerprint
            parts["models"] = self.models
        if self.generation is not None:  # only where set: fingerprints of other studies stay what they were
            # at_steps only adds decoded evals to the record (their RNG forked): no result changes with it
            parts["generation"] = self.generation.model_dump(exclude={"at_steps"})
        if self.distillation is not None:  # absent: the fingerprint of older files stays as it was
            parts["distillation"] = self.distillation.model_dump()
        if self.pbt is not None:  # only then: the fingerprints of studies without PBT stay as they were
            parts["pbt"] = self.pbt.fingerprint()
        return {k: _digest(v) for k, v in parts.items()}

    def fingerprint(self) -> str:
        return _digest(self.fingerprints())


def _task_metrics(task: Any, data: Any) -> dict[str, Literal["minimize", "maximize"]]:
    """The metrics a task reports (causal_lm: the generation ones too when it learns prompt -> completion)."""
    if task == "causal_lm":
        prompt = data.prompt_column if isinstance(data, DataConfig) else None
        if isinstance(data, dict):
            prompt = data.get("prompt_column")
        if prompt is not None:
            return GENERATING_CAUSAL_METRICS
    return TASK_METRICS.get(task, {}) if isinstance(task, str) else {}


_M = TypeVar("_M", bound=BaseModel)


def _valid(model: type[_M], value: Any) -> _M | None:
    """``value`` validated as ``model``, or None where it is not valid (its errors are reported elsewhere)."""
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- loading


def load_study_file(path: str | Path) -> StudyConfig:
    """Read and validate a study file; raise StudyFileError with every problem as ``FILE: a.b: msg``.

    Relative paths in the file (data files, local model folders) are relative to the file's folder.
    """
    return validate_study(read_yaml_file(path), str(path), base_dir=Path(os.path.abspath(path)).parent)


def read_yaml_file(path: str | Path, kind: str = "study file") -> Any:
    """Parse a YAML file; raise StudyFileError (``FILE: message``) when it cannot be read or parsed."""
    p = Path(path)
    shown = str(path)
    try:
        return yamlio.load(p)
    except FileNotFoundError:
        raise StudyFileError(shown, [("", "no such file")]) from None
    except UnicodeDecodeError as e:
        raise StudyFileError(shown, [("", f"not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    except IsADirectoryError:
        raise StudyFileError(shown, [("", f"is a directory, not a {kind}")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise StudyFileError(shown, [("", f"invalid YAML: {where}{problem}")]) from None


def validate_study(raw: Any, source: str = "<study>", base_dir: Path | None = None) -> StudyConfig:
    """Validate plain data (a parsed study file) into a StudyConfig; ``base_dir``: where relative paths start."""
    if not isinstance(raw, dict):
        raise StudyFileError(source, [("", "a study file must be a YAML mapping of sections")])
    try:
        cfg = StudyConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as e:
        raise StudyFileError(source, _problems(e)) from None
    from hpo.genstudy import check_generation  # the generation task's cross-checks

    # Generation keys first: a misplaced one makes the run configuration invalid, which the others build.
    problems = check_generation(cfg) or (_check_space(cfg) + _check_builds(cfg) + _check_pbt(cfg))
    if problems:
        raise StudyFileError(source, problems)
    return cfg


def _check_space(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Cross-checks that need the whole file: targets exist, names are unique, the grid is finite."""
    problems: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    base = cfg.base_run()  # built once; each value tried goes into its own copy
    problems += check_presets(cfg.model, cfg.models, cfg.search_space)
    problems += check_effective(cfg.training, cfg.search_space, cfg.resources.gpus_per_trial)
    for i, config in enumerate(cfg.warm_start.configs if cfg.warm_start else []):
        problems += [(f"warm_start.configs[{i}].{k}", m) for k, m in to_params(cfg.search_space, config)[1]]
    for path, spec in cfg.search_space.items():
        loc = f"search_space[{path}]"
        name = param_name(path, spec)
        if name in names:
            problems.append((loc, f"parameter name {name!r} is also used by [{names[name]}]; give one a `name`"))
        names[name] = path
        root = path.split(".", 1)[0]
        if root not in TARGET_ROOTS or "." not in path:
            problems.append(
                (loc, f"the path must start with one of {', '.join(TARGET_ROOTS)} (e.g. training.learning_rate)")
            )
            continue
        if path == PRESET:
            continue  # checked by check_presets
        if path.split(".")[:2] == ["data", "clean"] and path.rsplit(".", 1)[-1] in EVAL_KEYS:
            problems.append((loc, "changes the eval rows every trial is judged on: set it in data.clean, not searched"))
            continue
        msg = _check_target(base, path, spec)
        if msg:
            problems.append((loc, msg))
    problems += check_conditions(cfg.search_space)
    if cfg.sampler.name == "grid" and is_conditional(cfg.search_space):
        gated = next(p for p, s in cfg.search_space.items() if s.when)
        problems.append(
            (
                f"search_space[{gated}].when",
                "a conditional space is not a grid (the grid sampler would run every point of the gated "
                "parameter whether or not it is used); use another sampler or drop `when`",
            )
        )
    elif cfg.sampler.name == "grid":
        for path, spec in cfg.search_space.items():
            if grid_values(spec) is None:
                problems.append(
                    (f"search_space[{path}]", "the grid sampler needs `grid: [...]` values for this parameter")
                )
    return problems


def _check_pbt(cfg: StudyConfig) -> list[tuple[str, str]]:
    if cfg.pbt is None:
        return []
    f = cfg.fidelity
    if cfg.multi_objective:  # exploit ranks members by one number
        return [("pbt", "population-based training ranks members by one objective: give `objective` one metric")]
    if not f.max_steps:  # intervals, checkpoints and schedules count optimizer steps
        return [("pbt", "population-based training needs the trial length in steps: give fidelity.max_steps "
                 "(not max_samples / max_tokens, and not 0)")]  # fmt: skip
    return check_section(
        cfg.pbt,
        cfg.search_space,
        n_trials=cfg.study.n_trials,
        max_steps=f.max_steps,
        eval_every=f.eval_every,
        sampler=cfg.sampler.name,
        workers=cfg.resources.workers,
    )


def _check_builds(cfg: StudyConfig) -> list[tuple[str, str]]:
    """What Optuna would refuse when the sampler and pruner are built (some argument combinations are checked
    only in its constructors), told by the configs themselves: validating imports no Optuna (~0.1 s)."""
    found = (("sampler", cfg.sampler.refused()), ("pruner", cfg.pruner.refused()))
    return [(section, msg) for section, msg in found if msg is not None]


def build_problems(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Build the sampler and pruner for real (``hpo run``, which imports Optuna anyway): a refusal that
    ``refused()`` did not foresee is still a one-line error before anything is written."""
    problems: list[tuple[str, str]] = []
    # GPSampler's constructor imports torch (seconds) and checks nothing more; a grid without values is
    # reported per parameter already.
    if cfg.sampler.name != "gp" and not (
        cfg.sampler.name == "grid" and (cfg.grid() is None or is_conditional(cfg.search_space))
    ):
        try:
            cfg.sampler.build(cfg.grid() if cfg.sampler.name == "grid" else None)
        except (ValueError, TypeError) as e:
            problems.append(("sampler", str(e).splitlines()[0]))
    try:
        cfg.pruner.build()
    except (ValueError, TypeError) as e:
        problems.append(("pruner", str(e).splitlines()[0]))
    return problems


def _check_target(base: RunConfig, path: str, spec: Any) -> str | None:
    """Try the entry's extreme values at its path: the trial config must stay valid and the path real."""
    keys = path.split(".")
    if keys[0] == "model" and len(keys) >= 3 and keys[1] in ("config", "from_config"):
        if keys[1] == "from_config" and base.model.from_config is None:
            return "`model.from_config` is not set: use `model.config.<key>` for a pretrained model"
    else:
        node: Any = base
        for k in keys:
            if isinstance(node, BaseModel) and k in type(node).model_fields:
                node = getattr(node, k)
            elif isinstance(node, dict) and k in node:
                node = node[k]
            else:
                return f"{'.'.join(keys)!r} is not a setting of the run configuration"
    if keys[0] == "training" and keys[-1] in ("max_steps", "eval_steps"):
        return "a trial's length is set by `fidelity.max_steps` / `fidelity.eval_every`, not searched"
    if spec.type == "categorical":
        samples = list(spec.choices)
    else:
        # The bounds, and an interior point that is rarely a whole number: a float entry aimed at an
        # int setting must fail here, not in every trial.
        mid = spec.low + (spec.high - spec.low) * 0.371
        samples = [spec.low, spec.high, int(mid) if spec.type == "int" else mid]
    for value in samples:
        try:
            with_values(base, {path: value})
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            return f"value {value!r} is not valid there: {msg}"
    return None


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for e in err.errors():
        loc = _format_loc(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] in ("union_tag_not_found", "union_tag_invalid"):
            tag = e.get("ctx", {}).get("discriminator", "").strip("'")
            options = _tag_options(e["loc"], tag)
            got = e.get("ctx", {}).get("tag")
            msg = f"`{tag}` must be one of {options}" + (f", but got {got!r}" if got else " (it is missing)")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        keyed = _KEYED.match(msg) if not loc else None
        if keyed:  # a check across sections names the key it is about ("objective.metric: ...")
            loc, msg = keyed.group(1), keyed.group(2)
        out.append((loc, msg))
    return out


_KEYED = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", re.S)


def _tag_options(loc: tuple[Any, ...], tag: str) -> str:
    if loc and loc[0] == "sampler":
        return ", ".join(SAMPLER_NAMES)
    if len(loc) > 1 and "wrapped" in loc:
        return ", ".join(WRAPPABLE_PRUNERS)
    if loc and loc[0] == "pruner":
        return ", ".join(PRUNER_NAMES)
    return ", ".join(SPEC_TYPES)


_UNION_PARTS = re.compile(r"^(int|float|str|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\])$", re.I)


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """Whether loc[i] was inserted by pydantic (a union's tag or member type), not a key of the file."""
    s, prev = str(loc[i]), loc[i - 1] if i > 0 else None
    if i == 1 and loc[0] == "objective":
        return s in ("one", "many")
    if i == 1 and loc[0] == "sampler":
        return s in SAMPLER_NAMES
    if (i == 1 and loc[0] == "pruner") or prev == "wrapped":
        return s in PRUNER_NAMES
    if i == 2 and loc[0] == "search_space":
        return s in SPEC_TYPES
    # A plain union (e.g. `workers: int | "auto"`) adds the member type as the last element.
    return i == len(loc) - 1 and i >= 2 and bool(_UNION_PARTS.match(s)) and loc[0] != "search_space"


def _format_loc(loc: tuple[Any, ...]) -> str:
    """('search_space', 'training.lr', 'float', 'low') -> 'search_space[training.lr].low'."""
    parts: list[str] = []
    prev: Any = None
    for i, item in enumerate(loc):
        s = str(item)
        if _is_tag(loc, i):
            prev = item
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif prev == "search_space" or (isinstance(item, str) and "." in item):
            parts.append(f"[{s}]")
        else:
            parts.append(("." if parts else "") + s)
        prev = item
    return "".join(parts)
