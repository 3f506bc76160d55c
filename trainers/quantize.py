"""QLoRA: the frozen base model's linear layers in 4 or 8 bits (``model.peft.quantize``), through bitsandbytes.

The seam: ``trainers.models.build_model`` builds the full-precision model exactly as without quantisation
(seeded new weights, pretrained weights loaded), then :func:`quantised` re-loads that state dict into the same
class with transformers' ``BitsAndBytesConfig`` and prepares it with peft's ``prepare_model_for_kbit_training``;
peft then adds the adapter as usual. :func:`unavailable` is the validation side: whether bitsandbytes can
quantise here, in the library's own words when it cannot.

Recent bitsandbytes (multi-backend, 0.48+) runs 4-bit and 8-bit layers on the CPU too, so this is not
CUDA-only; on the CPU it saves memory but not time (the layers dequantise for every matmul).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from trainers.base import ConfigError
from trainers.config import RunConfig

# The heads peft trains in full for sequence classification (peft's SEQ_CLS ``modules_to_save``): kept out
# of quantisation, since a quantised layer cannot be trained or copied for training.
CLASSIFIER_HEADS = ("classifier", "score")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def unavailable(bits: str) -> str | None:
    """Why ``bits`` ("4bit" / "8bit") base weights cannot be used on this machine, or None when they can.

    Probes the library with the operation a run needs, on the device a run would use, rather than guessing
    from versions: the message is what bitsandbytes (or transformers' check of it) said.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'hpo[qlora]')"
    try:
        import bitsandbytes as bnb
    except Exception as e:  # a broken install raises anything at import
        return f"bitsandbytes cannot be imported: {_first_line(e)}"
    try:
        from transformers.integrations import validate_bnb_backend_availability

        validate_bnb_backend_availability(raise_exception=True)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        x = torch.randn(4, 64, device=device)
        if bits == "4bit":
            w = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to(device)
        else:
            w = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to(device)
        w(x)
    except Exception as e:
        # transformers' message goes on with a link to the install docs: its first sentence says it.
        said = _first_line(e).split(". ", 1)[0].rstrip(".")
        return f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run {bits} layers here: {said}"
    return None


def bnb_config(model: Any, run: RunConfig) -> Any:
    """transformers' ``BitsAndBytesConfig`` for the run: which layers stay in full precision and why."""
    from transformers import BitsAndBytesConfig

    peft = run.model.peft
    assert peft is not None and peft.quantize is not None
    # Naming skips replaces transformers' defaults (the output embedding / lm_head), so they are named too.
    out = model.get_output_embeddings()
    skip = {n for n, m in model.named_modules() if out is not None and m is out}
    if run.task == "sequence_classification":
        skip.update(CLASSIFIER_HEADS)  # a new, randomly initialised head that peft trains in full
    skip.update(peft.modules_to_save or ())  # trained in full: a quantised copy could not be
    if peft.quantize == "4bit" and not torch.cuda.is_available():
        skip.update(_narrow_on_cpu(model))
    if peft.quantize == "4bit":
        # NF4 with double quantisation is the QLoRA paper's recipe; compute in fp32, the loop's own
        # mixed precision (bf16/fp16 autocast) applies on top where it is on.
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=sorted(skip),
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=sorted(skip))


BLOCK = 64  # transformers' 4-bit block size (bitsandbytes' default): absmax scales per 64 values


def _narrow_on_cpu(model: Any) -> list[str]:
    """Linear layers whose input width is not a multiple of the 4-bit block, kept in full precision on the CPU.

    bitsandbytes 0.50.2's CPU kernel computes such layers with the wrong scales: measured on nf4 weights of
    N(0, 0.02), a 32-wide layer's output is 16% off the full-precision one and a 96-wide layer's 24%, against
    9% for 64-, 128- and 384-wide layers (the format's own error); the quantised values themselves are right.
    Real models' widths are multiples of 64, so this only spares tiny models a silently wrong base.
    """
    out = []
    for name, m in model.named_modules():
        width = getattr(m, "in_features", None) if isinstance(m, torch.nn.Linear) else getattr(m, "nx", None)
        if isinstance(width, int) and width % BLOCK != 0:  # nx: transformers' Conv1D (GPT-2) input width
            out.append(name)
    return out


def quantised(model: Any, run: RunConfig) -> Any:
    """``model`` (full precision, weights in place) re-loaded with its linear layers quantised and frozen."""
    from peft import prepare_model_for_kbit_training

    assert run.model.peft is not None
    bits = run.model.peft.quantize
    cfg = bnb_config(model, run)
    # Loading the model's own state dict through from_pretrained is transformers' public way to quantise:
    # the new weights drawn after the run's seed (a new head, a from-config model) stay what they were.
    # device_map is left to transformers: the current CUDA device (accelerate has set it for this process)
    # or the CPU.
    state = model.state_dict()
    try:
        q = type(model).from_pretrained(None, config=model.config, state_dict=state, quantization_config=cfg)
    except Exception as e:  # validation probed this machine; a worker elsewhere, or `hpo train`, meets it here
        raise ConfigError("model.peft.quantize", f"cannot load the base in {bits}: {_first_line(e)}") from e
    del state
    for m in q.modules():
        if getattr(m, "support_avx512bf16_for_cpu", False):
            # bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a 4-bit weight in place into an inference
            # layout the first time the layer runs in eval mode without gradients; a training step after that
            # eval then fails ("a view of a leaf Variable that requires grad is being used in an in-place
            # operation"), and a layer narrower than the 64-value block fails at once. Keeping the training
            # layout costs eval speed only, and evals compute as training does (fp32, not bf16).
            m.support_avx512bf16_for_cpu = False
    # Gradient checkpointing (peft's default here) trades time for activation memory: a separate choice,
    # off so that a quantised study differs from an unquantised one in its base weights only.
    return prepare_model_for_kbit_training(q, use_gradient_checkpointing=False)


def parameter_numel(p: torch.nn.Parameter) -> int:
    """Elements a parameter stands for: a 4-bit weight is stored packed (two per byte) in fewer elements."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    if shape is not None:
        return int(torch.Size(shape).numel())
    return p.numel()
