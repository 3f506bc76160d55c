"""The resolved configuration of one training run: task, model, data and training arguments.

These models are shared by the study file (``hpo.config``) and the trainers. They know nothing of Optuna:
a trial's configuration is a validated copy of the study's base configuration with the sampled values
written into it (``hpo.space.apply_params``). Frozen: passed between functions as they are, never edited.
Training arguments use Hugging Face ``TrainingArguments`` names and defaults, so an exported configuration
loads into ``transformers.TrainingArguments(**training)`` as it is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from trainers.augment import AugmentConfig
from trainers.clean import CleanConfig
from trainers.distill import DistillationConfig

Task = Literal["causal_lm", "sequence_classification", "seq2seq"]

# Built-in offline corpora (see trainers/corpora.py). A closed set: a study file never names code to import.
BuiltinCorpus = Literal["pydoc_topics", "bbc_news", "bbc_headlines"]

# Per-architecture names of the dropout probabilities that `model.dropout` sets. Anything else can be set
# by its own name under `model.config`.
DROPOUT_KEYS: dict[str, tuple[str, ...]] = {
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "gpt_neo": ("resid_dropout", "embed_dropout", "attention_dropout"),
    "gptj": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "xlm-roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "electra": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "deberta-v2": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "mpnet": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "distilbert": ("dropout", "attention_dropout", "seq_classif_dropout"),
    "llama": ("attention_dropout",),
    "mistral": ("attention_dropout",),
    "qwen2": ("attention_dropout",),
    "opt": ("dropout", "attention_dropout"),
    "t5": ("dropout_rate",),
    "mt5": ("dropout_rate",),
    "bart": ("dropout", "attention_dropout"),
}


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored. Frozen: a run is never edited in
    # place (one trial's values cannot leak into the next); a variant is a copy (`model_copy(update=...)`).
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class TokenizerConfig(_Strict):
    """Where the tokenizer comes from: a hub name / local folder, or trained here on the training split."""

    name_or_path: str | None = None  # default: the model's name_or_path
    train_vocab_size: int | None = Field(default=None, ge=64, le=1_000_000)  # train a byte-level BPE here
    train_min_frequency: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerConfig:
        if self.name_or_path is not None and self.train_vocab_size is not None:
            raise ValueError("give either `name_or_path` or `train_vocab_size`, not both")
        return self


class PeftConfig(_Strict):
    """A LoRA adapter trained with the ``peft`` library instead of every weight (``model.peft``).

    Keys are peft's ``LoraConfig`` ones (``alpha`` is ``lora_alpha``, ``dropout`` is ``lora_dropout``).
    ``target_modules`` is a list of module names, a comma-separated string of them (``"c_attn,c_proj"``: the
    form a ``search_space`` categorical uses, since Optuna's choices are scalars) or ``all-linear``; unset:
    peft's default for the architecture. For sequence classification, peft trains and saves the new head
    too (``modules_to_save`` adds others).
    """

    type: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # names; ["all-linear"] is peft's every-linear-layer shorthand
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    quantize: Literal["4bit", "8bit"] | None = None  # QLoRA: base weights in 4/8 bits (CUDA + bitsandbytes)

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, str):  # "c_attn,c_proj" or "all-linear": a categorical choice names a set
            v = [n.strip() for n in v.split(",")]
        if isinstance(v, list):
            if not v or any(not isinstance(n, str) or not n for n in v):
                raise ValueError('give module names (e.g. [c_attn, c_proj]), a string "c_attn,c_proj" or all-linear')
            if "all-linear" in v and len(v) > 1:
                raise ValueError("`all-linear` stands alone: it already targets every linear layer")
        return v

    def lora_kwargs(self) -> dict[str, Any]:
        """peft ``LoraConfig`` arguments (without ``task_type``)."""
        targets: str | list[str] | None = self.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return {
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets,
            "bias": self.bias,
            "modules_to_save": list(self.modules_to_save) if self.modules_to_save else None,
        }


class ModelConfig(_Strict):
    """The model: a pretrained one by hub name or local path, or one built from a config (from scratch)."""

    name_or_path: str | None = None  # hub name or local folder, loaded with from_pretrained
    from_config: dict[str, Any] | None = None  # {model_type: gpt2, n_layer: 2, ...}: built from scratch
    revision: str | None = None
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)  # sets every dropout of the architecture
    config: dict[str, Any] = Field(default_factory=dict)  # any other model-config key, by its own name
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    trust_remote_code: bool = False  # off unless the study file turns it on
    peft: PeftConfig | None = None  # train a LoRA adapter instead of every weight

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset `peft` is left out of every dump: the fingerprint (and export) of a file without it stays
        # what it was before the section existed.
        out: dict[str, Any] = handler(self)
        if out.get("peft", 0) is None:
            del out["peft"]
        return out

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("give exactly one of `name_or_path` (pretrained) or `from_config` (from scratch)")
        if self.from_config is not None:
            if not isinstance(self.from_config.get("model_type"), str):
                raise ValueError("`from_config` needs a `model_type` (e.g. gpt2, bert)")
            if self.tokenizer.name_or_path is None and self.tokenizer.train_vocab_size is None:
                raise ValueError(
                    "a model built `from_config` needs `tokenizer.name_or_path` or `tokenizer.train_vocab_size`"
                )
        if self.name_or_path is not None and self.name_or_path.startswith("builtin:"):
            known = ("all-minilm-l6-v2",)  # trainers.corpora.BUILTIN_MODELS
            if self.name_or_path.removeprefix("builtin:") not in known:
                raise ValueError(
                    f"`name_or_path`: unknown built-in model {self.name_or_path!r} (known: "
                    + ", ".join(f"builtin:{k}" for k in known)
                    + ")"
                )
        if self.dropout is not None and self.model_type is not None and self.model_type not in DROPOUT_KEYS:
            raise ValueError(
                f"`dropout` is not mapped for model_type {self.model_type!r}; set its keys under `config` "
                f"(known: {', '.join(sorted(DROPOUT_KEYS))})"
            )
        return self

    @property
    def model_type(self) -> str | None:
        """The architecture when it is known without loading anything (from_config only)."""
        if self.from_config is not None:
            return str(self.from_config["model_type"])
        return None


class DataConfig(_Strict):
    """The data: a built-in offline corpus, a `datasets` name (hub or local folder), or local files."""

    builtin: BuiltinCorpus | None = None
    dataset: str | None = None  # load_dataset(dataset, dataset_config)
    dataset_config: str | None = None
    files: dict[str, str | list[str]] | None = None  # {train: a.csv, validation: b.csv}
    format: Literal["text", "csv", "json"] | None = None  # for `files`; default: from the extension
    train_split: str = "train"
    eval_split: str | None = None  # default: "validation" if the data has it, else `eval_fraction` of train
    eval_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = Field(default=128, ge=8, le=1_000_000)  # LM block size / classification truncation
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)
    seed: int = 0  # for the train/eval split and sample limits; fixed so all trials see the same data
    # Generation tasks (trainers/generation.py): seq2seq reads source -> target; causal_lm with a
    # `prompt_column` learns prompt -> completion (loss on the completion only). Unset keys are left out of
    # every dump, so fingerprints and cache keys of studies without them stay what they were.
    source_column: str | None = None  # seq2seq input; default "source"
    target_column: str | None = None  # the text to generate; default "target"
    prompt_column: str | None = None  # causal_lm: prompt -> completion instead of plain-text blocks
    source_prefix: str | None = None  # prepended to every source / prompt (T5's "summarize: ")
    source_suffix: str | None = None  # appended to every source / prompt (a decoder's "\nHeadline:")
    max_source_length: int | None = Field(default=None, ge=4)  # default: max_length (causal: the rest of it)
    max_target_length: int | None = Field(default=None, ge=1)  # longer targets are truncated and counted
    clean: CleanConfig | None = None  # rules applied before tokenising (trainers/clean.py)
    augment: AugmentConfig | None = None  # training batches changed on the fly (trainers/augment.py)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset keys and sections are left out of every dump: the cache key and fingerprint of a file
        # without them stay what they were before they existed.
        out: dict[str, Any] = handler(self)
        for k in (*GENERATION_DATA_KEYS, "clean", "augment"):
            if out.get(k, 0) is None:
                del out[k]
        return out

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [n for n in ("builtin", "dataset", "files") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `builtin`, `dataset` or `files`")
        if self.files is not None and "train" not in self.files:
            raise ValueError("`files` needs a `train` entry")
        return self


GENERATION_DATA_KEYS = (
    "source_column",
    "target_column",
    "prompt_column",
    "source_prefix",
    "source_suffix",
    "max_source_length",
    "max_target_length",
)


class GenerationConfig(_Strict):
    """How a generation task decodes at its final eval (``generation``); every key is searchable.

    Names and defaults are ``transformers.GenerationConfig``'s (``max_new_tokens`` excepted). ``eval_samples``
    eval examples, drawn once with ``seed``, are decoded for every trial (the same ones); ``examples`` of
    them are stored with each trial (source, reference, prediction). ``at_steps``: evals that decode too
    (recorded, never shown to the pruner), besides the final one.
    """

    num_beams: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    eval_samples: int = Field(default=200, ge=1)
    examples: int = Field(default=3, ge=0, le=50)
    seed: int = 0  # which eval examples are decoded, and the sampling seed with do_sample
    # Steps whose eval decodes and scores too (the final eval always does); a step with no eval never decodes.
    at_steps: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)

    def generate_kwargs(self) -> dict[str, Any]:
        """``model.generate`` arguments (sampling ones only when sampling: greedy/beam ignore them)."""
        out: dict[str, Any] = {
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "length_penalty": self.length_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "repetition_penalty": self.repetition_penalty,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out


class TrainingConfig(_Strict):
    """Training arguments, by their Hugging Face ``TrainingArguments`` names and defaults."""

    learning_rate: float = Field(default=5.0e-5, gt=0.0)
    per_device_train_batch_size: int = Field(default=8, ge=1)
    per_device_eval_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    adam_epsilon: float = Field(default=1.0e-8, gt=0.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0)  # 0 disables clipping
    num_train_epochs: float = Field(default=3.0, gt=0.0)
    max_steps: int = Field(default=-1, ge=-1)  # > 0 overrides num_train_epochs
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0)  # > 0 overrides warmup_ratio
    eval_steps: int | None = Field(default=None, ge=1)  # evaluate every N optimizer steps
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 42
    bf16: bool | None = None  # None: bf16 where the accelerator supports it
    fp16: bool = False
    use_cpu: bool = False
    # Samples per optimizer step over all processes, kept fixed when the batch size is searched: hpo
    # derives gradient_accumulation_steps from it for each trial (hpo.batching). Not a TrainingArguments
    # name; left out of dumps when unset, so older studies keep their fingerprint.
    effective_batch_size: int | None = Field(default=None, ge=1)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("effective_batch_size", 0) is None:
            del out["effective_batch_size"]
        return out

    @model_validator(mode="after")
    def _precision(self) -> TrainingConfig:
        if self.bf16 and self.fp16:
            raise ValueError("`bf16` and `fp16` cannot both be true")
        if self.max_steps == 0:
            raise ValueError("`max_steps` must be -1 (use num_train_epochs) or > 0, but got 0.")
        return self


# Training settings a run may change at given steps (``RunConfig.schedule``): the loop writes them into the
# optimizer and scheduler, or reads them every step. Nothing that changes the model or the batches.
SCHEDULABLE = ("training.learning_rate", "training.weight_decay", "training.max_grad_norm")


class ScheduleStep(_Strict):
    """From optimizer step ``step`` on, these settings (``training.learning_rate``: a new peak of the same
    warm-up/decay curve, at the same position in it). A population-based-training winner's schedule."""

    step: int = Field(ge=0)
    set: dict[str, float]

    @field_validator("set")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if key not in SCHEDULABLE:
                raise ValueError(f"{key!r} cannot change during a run (schedulable: {', '.join(SCHEDULABLE)})")
            if not value >= 0.0:
                raise ValueError(f"{key} must be >= 0, but got {value}")
        return v


class RunConfig(_Strict):
    """One resolved training run: what a trainer takes."""

    task: Task
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval_batches: int | None = Field(default=None, ge=1)  # cap on eval batches per evaluation
    generation: GenerationConfig | None = None  # generation tasks: decoding at the final eval
    decode_only: bool = False  # evaluate (and decode) the model as loaded: no training step
    measure_latency: bool = False  # time inference on the first eval batch after training (trainers.latency)
    distillation: DistillationConfig | None = None  # a teacher's softened outputs (trainers/distill.py)
    schedule: list[ScheduleStep] = Field(default_factory=list)  # settings that change at given steps (PBT)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when unset: run configs (and exports, checkpoint digests) of other studies stay what they were.
        out: dict[str, Any] = handler(self)
        for key in ("generation", "distillation"):
            if out.get(key, 0) is None:
                del out[key]
        for flag in ("decode_only", "measure_latency"):
            if out.get(flag) is False:
                del out[flag]
        if out.get("schedule", 0) == []:
            del out["schedule"]
        return out

    @property
    def generates(self) -> bool:
        """Whether the task decodes text at its final eval (seq2seq, or causal_lm prompt -> completion)."""
        return self.task == "seq2seq" or (self.task == "causal_lm" and self.data.prompt_column is not None)

    @model_validator(mode="after")
    def _task_fits(self) -> RunConfig:
        if self.task != "sequence_classification" and self.data.text_pair_column is not None:
            raise ValueError("`data.text_pair_column` only applies to sequence_classification")
        if self.task != "causal_lm" and self.data.prompt_column is not None:
            raise ValueError("`data.prompt_column` only applies to causal_lm (prompt -> completion)")
        if not self.generates:
            set_keys = [k for k in GENERATION_DATA_KEYS if getattr(self.data, k) is not None]
            if set_keys:
                raise ValueError(
                    f"`data.{set_keys[0]}` only applies to generation tasks (seq2seq, or causal_lm with "
                    "data.prompt_column)"
                )
            if self.generation is not None:
                raise ValueError(
                    "`generation` only applies to generation tasks (seq2seq, or causal_lm with data.prompt_column)"
                )
        elif self.task == "causal_lm":
            target = self.data.max_target_length or 0
            if target >= self.data.max_length - 3:
                raise ValueError(
                    f"`data.max_target_length` ({target}) must leave room for the prompt in data.max_length "
                    f"({self.data.max_length})"
                )
        steps = [s.step for s in self.schedule]
        if steps != sorted(set(steps)):
            raise ValueError(f"`schedule` steps must be increasing, but got {steps}")
        return self

    def settings_at(self, step: int) -> dict[str, float]:
        """The scheduled settings in force after ``step`` optimizer steps (empty without a schedule)."""
        out: dict[str, float] = {}
        for s in self.schedule:
            if s.step <= step:
                out.update(s.set)
        return out
