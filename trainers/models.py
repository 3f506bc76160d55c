"""Model building: from a config (from scratch) or from pretrained weights, with config overrides.

Pretrained weights are read from disk once per process and kept in memory; every run then builds its
model from the (overridden) config and loads those weights. The first run and the hundredth take the same
path, so a run's result does not depend on which worker ran it or what it ran before.

With ``model.peft``, the built model is wrapped by peft (``get_peft_model``): only the LoRA adapter (and
the modules peft saves with it, e.g. a new classification head) is trained; the base weights stay frozen.
With ``model.peft.quantize`` (QLoRA), the base is first re-loaded in 4 or 8 bits (``trainers.quantize``).
"""

from __future__ import annotations

from typing import Any

import torch

from trainers.base import ConfigError
from trainers.config import DROPOUT_KEYS, RunConfig
from trainers.corpora import resolve_model_path
from trainers.data import PreparedData

# (name_or_path, revision, task, num_labels) -> weights found in the checkpoint, on CPU
_WEIGHTS: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}


def auto_class(task: str) -> Any:
    """The transformers auto class that builds a model for ``task``."""
    import transformers

    if task == "causal_lm":
        return transformers.AutoModelForCausalLM
    if task == "seq2seq":
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForSequenceClassification


def config_overrides(run: RunConfig, model_type: str) -> dict[str, Any]:
    """Model-config keys a run sets: ``model.dropout`` spread over the architecture's keys, then ``model.config``."""
    out: dict[str, Any] = {}
    if run.model.dropout is not None:
        keys = DROPOUT_KEYS.get(model_type)
        if keys is None:
            raise ConfigError(
                "model.dropout", f"not mapped for model_type {model_type!r}; set its dropout keys under model.config"
            )
        out.update(dict.fromkeys(keys, run.model.dropout))
    out.update(run.model.config)
    return out


def build_config(run: RunConfig, data: PreparedData) -> Any:
    """The transformers config of the run's model, overrides applied."""
    from transformers import AutoConfig

    extra: dict[str, Any] = {}
    if run.task == "sequence_classification":
        assert data.label_names is not None
        extra["num_labels"] = len(data.label_names)
        extra["id2label"] = dict(enumerate(data.label_names))
        extra["label2id"] = {n: i for i, n in enumerate(data.label_names)}
    if run.model.from_config is not None:
        spec = dict(run.model.from_config)
        model_type = spec.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **spec)
        # A from-scratch model must match the tokenizer trained for it.
        cfg.vocab_size = data.vocab_size
        cfg.pad_token_id = data.pad_id
        if data.eos_id is not None:
            cfg.bos_token_id = cfg.eos_token_id = data.eos_id
        if run.task == "seq2seq":  # the decoder starts from pad, as T5 does
            cfg.decoder_start_token_id = data.pad_id
    else:
        assert run.model.name_or_path is not None
        try:
            cfg = AutoConfig.from_pretrained(
                resolve_model_path(run.model.name_or_path),
                revision=run.model.revision,
                trust_remote_code=run.model.trust_remote_code,
            )
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError("model.name_or_path", f"cannot load {run.model.name_or_path!r}: {first}") from e
        model_type = cfg.model_type
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = data.pad_id
    for k, v in {**extra, **config_overrides(run, model_type)}.items():
        setattr(cfg, k, v)
    return cfg


def pretrained_weights(run: RunConfig, cfg: Any) -> dict[str, torch.Tensor]:
    name = run.model.name_or_path
    assert name is not None
    key = (name, run.model.revision, run.task, getattr(cfg, "num_labels", None))
    if key not in _WEIGHTS:
        # from_pretrained draws random initial values for what the checkpoint lacks (a new classification
        # head): with the global RNG, the model built next would depend on whether this process had loaded
        # the weights before its seed was set (a worker warms up before its first trial; `hpo train` loads
        # after seeding). Its random draws are thrown away anyway: the new keys are left out below.
        with torch.random.fork_rng(devices=[]):
            model, info = _load_pretrained(run, cfg)
        missing = set(info.get("missing_keys", ()))  # e.g. a new classification head: seeded init per run
        _WEIGHTS[key] = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in missing}
        del model
    return _WEIGHTS[key]


def _load_pretrained(run: RunConfig, cfg: Any) -> tuple[Any, dict[str, Any]]:
    name = run.model.name_or_path
    assert name is not None
    return auto_class(run.task).from_pretrained(  # type: ignore[no-any-return]
        resolve_model_path(name),
        config=cfg,
        revision=run.model.revision,
        trust_remote_code=run.model.trust_remote_code,
        output_loading_info=True,
    )


def build_model(run: RunConfig, data: PreparedData) -> torch.nn.Module:
    """A fresh model for one run; call after seeding so new weights are reproducible."""
    cfg = build_config(run, data)
    auto = auto_class(run.task)
    if run.model.from_config is not None:
        model = auto.from_config(cfg)
    else:
        weights = pretrained_weights(run, cfg)
        model = auto.from_config(cfg, trust_remote_code=run.model.trust_remote_code)
        model.load_state_dict(weights, strict=False)
    if run.model.peft is not None:
        if run.model.peft.quantize is not None:
            from trainers.quantize import quantised

            model = quantised(model, run)
        model = with_adapter(model, run)
    return model  # type: ignore[no-any-return]


PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}


def lora_config(run: RunConfig) -> Any:
    """The peft ``LoraConfig`` of the run's ``model.peft``."""
    from peft import LoraConfig

    assert run.model.peft is not None
    return LoraConfig(task_type=PEFT_TASK_TYPES[run.task], **run.model.peft.lora_kwargs())


def with_adapter(model: Any, run: RunConfig) -> Any:
    """``model`` wrapped by peft with the run's LoRA adapter; its base weights frozen."""
    from peft import get_peft_model

    assert run.model.peft is not None
    try:
        return get_peft_model(model, lora_config(run))
    except ValueError as e:  # a target module the model lacks: validation lists the ones it has
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError("model.peft.target_modules", first) from e


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of a model; with an adapter, trainable is the adapter's (and saved heads')."""
    from trainers.quantize import parameter_numel

    trainable = total = 0
    for p in model.parameters():
        n = parameter_numel(p)  # a 4-bit weight counts as the weights it holds, not its packed bytes
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
