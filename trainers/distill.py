"""Knowledge distillation: the ``distillation`` section, the teacher, and the loss a student trains on.

The training loop knows nothing of teachers: it asks a loss function for each micro-batch's loss
(``trainers.loop.train(..., loss_fn)``). Without distillation that is the model's own loss
(``label_loss``); with it, a :class:`Distiller` runs the frozen teacher on the same batch and mixes

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * label loss
           [+ hidden_loss_weight * MSE(student's last hidden states, teacher's)]

(Hinton et al. 2015: the T^2 keeps the soft gradients' scale independent of T). The KL is taken per
position over the last axis of the logits: one position per example for sequence classification, every
token for a causal LM (``soft_loss`` takes a position mask, which is how a seq2seq decoder's padded
labels plug in). Teacher and student must share the tokenizer (the teacher reads the student's input ids)
and, for classification, the label names in the same order.

The teacher is loaded once per process (``load_teacher``, kept by its folder and device), in eval mode,
with ``requires_grad`` off, and never handed to the optimizer; its forward time is counted in
``Distiller.teacher_time`` (part of the training time) so the cost of distilling is visible.

Config models import nothing heavy (torch is imported inside the functions): ``trainers.config`` imports
them, and the CLI imports that.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainers.base import ConfigError

if TYPE_CHECKING:
    import torch


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class TeacherRef(_Strict):
    """A trial of an earlier study as the teacher: ``{study: FILE_OR_NAME, trial: best | N}``.

    Resolved by ``hpo.teacher`` to the folder ``hpo export`` + ``hpo train`` wrote for that trial.
    """

    study: str = Field(min_length=1)  # a study file (relative to this file's folder) or a study name
    trial: int | Literal["best"] = "best"


class DistillationConfig(_Strict):
    """``distillation``: train the student on a teacher's softened outputs as well as on the labels."""

    teacher: str | TeacherRef  # a model folder (hpo train output, any save_pretrained folder) or a trial
    temperature: float = Field(default=2.0, gt=0.0)  # softens both distributions; searchable
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # weight of the soft (teacher) loss; searchable
    hidden_loss_weight: float = Field(default=0.0, ge=0.0)  # MSE of last hidden states (same hidden size)
    enabled: bool = True  # a switch for the search (`when:` conditions); false trains on labels alone


def soft_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over positions (the last axis is the distribution).

    ``mask`` (the logits' shape without the last axis) selects the positions that count: a causal LM's
    every token, a seq2seq decoder's non-padded labels. None: every position.
    """
    import torch.nn.functional as F

    T = temperature
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # per position
    if mask is not None:
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp(min=1.0) * (T * T)
    return kl.mean() * (T * T)


def label_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain loss: the model's own (cross-entropy on the labels)."""
    return model(**batch).loss  # type: ignore[no-any-return]


# (folder, task, device) -> the teacher model, in eval mode, frozen. One per worker process: trials of a
# study share a teacher, and reloading it per trial would cost more than a short trial's training.
_TEACHERS: dict[tuple[str, str, str], Any] = {}


def _auto_class(task: str) -> Any:
    import transformers

    if task == "causal_lm":
        return transformers.AutoModelForCausalLM
    if task == "seq2seq":  # issue 10's task: the same token-level loss over the decoder's positions
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForSequenceClassification


def load_teacher(folder: str, task: str, device: torch.device) -> Any:
    """The teacher from ``folder`` (loaded on the first call in this process), on ``device``, frozen."""
    from trainers.corpora import resolve_model_path

    folder = resolve_model_path(folder)  # builtin:<model> is a folder shipped in a package
    key = (str(Path(folder).resolve()), task, str(device))
    if key not in _TEACHERS:
        if not (Path(folder) / "config.json").is_file():
            raise ConfigError("distillation.teacher", f"{folder} is not a model folder (no config.json)")
        import torch

        try:
            # The checkpoint is complete (a trained model): nothing is drawn at random, but fork the RNG
            # anyway so loading a teacher can never shift the student's seeded initialisation.
            with torch.random.fork_rng(devices=[]):
                model = _auto_class(task).from_pretrained(folder)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError("distillation.teacher", f"cannot load the teacher from {folder}: {first}") from e
        model.eval()
        model.requires_grad_(False)
        _TEACHERS[key] = model.to(device)
    return _TEACHERS[key]


def check_pair(student: Any, teacher: Any, task: str, cfg: DistillationConfig, label_names: list[str] | None) -> None:
    """Refuse a teacher whose outputs cannot be compared with the student's, naming the sizes."""
    s, t = student.config, teacher.config
    if task != "sequence_classification":  # token-level: one vocabulary
        if s.vocab_size != t.vocab_size:
            raise ConfigError(
                "distillation.teacher",
                f"the teacher's vocabulary has {t.vocab_size} tokens and the student's {s.vocab_size}: they must "
                "share the tokenizer (set model.tokenizer.name_or_path to the teacher's folder)",
            )
    else:
        t_labels = [str(t.id2label[i]) for i in range(t.num_labels)] if t.id2label else None
        if t.num_labels != s.num_labels or (label_names is not None and t_labels != list(label_names)):
            raise ConfigError(
                "distillation.teacher",
                f"the teacher has {t.num_labels} labels {t_labels} and the data {s.num_labels} {label_names}: "
                "distillation needs the same labels in the same order",
            )
        t_vocab, s_vocab = getattr(t, "vocab_size", None), getattr(s, "vocab_size", None)
        if t_vocab is not None and s_vocab is not None and t_vocab != s_vocab:
            raise ConfigError(
                "distillation.teacher",
                f"the teacher's vocabulary has {t_vocab} tokens and the student's {s_vocab}: they must share the "
                "tokenizer (set model.tokenizer.name_or_path to the teacher's folder)",
            )
    if cfg.hidden_loss_weight > 0 and hidden_size(s) != hidden_size(t):
        raise ConfigError(
            "distillation.hidden_loss_weight",
            f"the teacher's hidden size is {hidden_size(t)} and the student's {hidden_size(s)}: the hidden-state "
            "loss needs them equal (set it to 0)",
        )


def hidden_size(config: Any) -> int | None:
    for k in ("hidden_size", "n_embd", "d_model", "dim"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            return v
    return None


class Distiller:
    """The loss function of a distilled run: ``loss = distiller(model, batch)`` for each micro-batch."""

    def __init__(self, teacher: Any, cfg: DistillationConfig, task: str, autocast: Any = None) -> None:
        self.teacher = teacher
        self.cfg = cfg
        self.task = task
        self.autocast = autocast  # accelerator.autocast: the teacher runs in the student's precision
        self.teacher_time = 0.0  # seconds in teacher forward passes (part of the training time)

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import contextlib

        import torch

        c = self.cfg
        hidden = c.hidden_loss_weight > 0
        out = model(**batch, output_hidden_states=hidden) if hidden else model(**batch)
        if c.alpha == 0.0 and not hidden:
            return out.loss  # type: ignore[no-any-return]
        t0 = time.perf_counter()
        # The teacher sees the inputs only; a seq2seq teacher also needs the labels, from which it builds its
        # decoder inputs (its own loss is not used).
        inputs = batch if self.task == "seq2seq" else {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad(), self.autocast() if self.autocast is not None else contextlib.nullcontext():
            t_out = self.teacher(**inputs, output_hidden_states=hidden) if hidden else self.teacher(**inputs)
        self.teacher_time += time.perf_counter() - t0
        loss = (1.0 - c.alpha) * out.loss
        if c.alpha > 0:
            loss = loss + c.alpha * soft_loss(out.logits, t_out.logits.detach(), c.temperature, self._mask(batch))
        if hidden:
            loss = loss + c.hidden_loss_weight * hidden_mse(
                out.hidden_states[-1], t_out.hidden_states[-1].detach(), batch.get("attention_mask")
            )
        return loss  # type: ignore[no-any-return]

    def _mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.task == "causal_lm":
            return batch.get("attention_mask")  # blocks of a causal LM have no padding: None, every token
        if self.task == "seq2seq":
            return batch["labels"] != -100  # the decoder's real target positions
        return None  # classification: one distribution per example


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared difference of hidden states over the real (unpadded) positions."""
    sq = (student.float() - teacher.float()).pow(2).mean(-1)
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1.0)


def _vocab(folder: Path) -> dict[str, int] | None:
    import json

    try:
        vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return vocab if isinstance(vocab, dict) else None


def check_tokenizer(teacher_dir: str, student_tokenizer: Path) -> None:
    """Refuse a teacher whose tokenizer maps tokens to other ids than the student's (same size or not)."""
    t, s = _vocab(Path(teacher_dir)), _vocab(student_tokenizer)
    if t is not None and s is not None and t != s:
        same = sum(1 for k, v in s.items() if t.get(k) == v)
        raise ConfigError(
            "distillation.teacher",
            f"the teacher's vocabulary has {len(t)} tokens and the student's {len(s)}, {same} of them with the same "
            "ids: teacher and student must share the tokenizer (set model.tokenizer.name_or_path to the teacher's "
            "folder)",
        )


def distiller_for(run: Any, model: Any, device: torch.device, data: Any, autocast: Any) -> Any:
    """The run's loss function: a :class:`Distiller` with its teacher, or ``label_loss``."""
    cfg: DistillationConfig | None = run.distillation
    if cfg is None or not cfg.enabled:
        return label_loss
    if not isinstance(cfg.teacher, str):  # resolved to a folder by the study (hpo.teacher) before any run
        raise ConfigError("distillation.teacher", "a study reference must be resolved to a model folder first")
    check_tokenizer(cfg.teacher, data.tokenizer_dir)
    teacher = load_teacher(cfg.teacher, run.task, device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA student
    check_pair(base, teacher, run.task, cfg, data.label_names)
    return Distiller(teacher, cfg, run.task, autocast)
