"""`hpo compress`: smaller, faster variants of a trained model, each measured, one kept under a quality guard.

The model folder is one hpo wrote (``hpo train``, ``fidelity.save_models``, a soup of ``hpo ensemble``): its
``train_config.yaml`` names the study's data, eval split and objective, so every variant is evaluated on
the study's eval split with the study's metric. Variants:

- ``int8 dynamic``: torch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``) of the
  linear layers: int8 weights, activations quantized on the fly; CPU inference. GPT-2's transformers
  ``Conv1D`` layers are turned into the equal ``nn.Linear`` first. The output layer (often tied to the input
  embedding: quantizing it would store a second copy) and a classification head are left alone. A model
  without other linear layers skips it, with that reason.
- ``prune unstructured S``: L1 magnitude pruning of each linear layer's weights (``torch.nn.utils.prune``)
  at sparsity S; ``prune structured S``: whole output units by L2 norm. Embeddings and the output layer
  are not pruned. The zeros stay in dense tensors: the file on disk is as large as before (the zipped
  size shows what a sparse format could gain) and dense CPU kernels run no faster; the table says so.
- combinations: pruning, then int8.

Each variant's quality drop is relative to the unchanged model (``(base - v) / base`` for a metric to
maximise, ``(v - base) / base`` to minimise); ``max_drop`` keeps the smallest file whose drop is within it
(ties: fewer non-zero parameters, then lower latency); the unchanged model always qualifies.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpo.errors import HpoError

RESULT_FILE = "compress.json"
QUANTIZED_FILE = "quantized_model.pt"  # int8 variants: the state dict of the quantized model (torch.save)
TRAIN_CONFIG = "train_config.yaml"
UNSTRUCTURED = (0.3, 0.5, 0.7)
STRUCTURED = (0.25, 0.5)


def parse_drop(text: str | float) -> float:
    """``1%`` or ``0.01`` -> 0.01; refuses a negative or unreadable value."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise HpoError(f"--max-drop must be a fraction or a percentage (0.01 or 1%), but got {text!r}") from None
    if value < 0 or value != value:
        raise HpoError(f"--max-drop must be at least 0, but got {text!r}")
    return value


@dataclass
class Variant:
    name: str
    quantize: bool = False
    prune: str | None = None  # "unstructured" | "structured"
    sparsity: float = 0.0
    skipped: str | None = None
    metric: float | None = None
    drop: float | None = None  # relative quality loss against the unchanged model (negative: better)
    size_mb: float | None = None  # the file(s) this variant is saved as
    zipped_mb: float | None = None  # the same bytes through zlib: what zeros could save in a sparse format
    params: int | None = None
    nonzero: int | None = None
    latency_ms: float | None = None  # CPU, per example


@dataclass
class CompressResult:
    model_dir: Path
    metric: str
    direction: str
    rows: int
    threads: int
    max_drop: float
    variants: list[Variant]
    chosen: str
    out_dir: Path | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "metric": self.metric,
            "direction": self.direction,
            "eval_rows": self.rows,
            "torch_threads": self.threads,
            "max_drop": self.max_drop,
            "chosen": self.chosen,
            "variants": [asdict(v) for v in self.variants],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------- the model folder


def _find_config(model_dir: Path) -> Path:
    if not model_dir.is_dir():
        raise HpoError(f"{model_dir}: no such model folder")
    ens = model_dir / "hpo_ensemble.json"
    if ens.is_file() and json.loads(ens.read_text()).get("kind") == "ensemble":
        raise HpoError(
            f"{model_dir}: an ensemble of several models, not one model: compress a member (members/trial-N) "
            "or a soup (hpo ensemble --kind soup)"
        )
    if not (model_dir / "config.json").is_file():
        if (model_dir / "adapter_config.json").is_file():
            raise HpoError(f"{model_dir}: a LoRA adapter, not a whole model: compress the merged model (--merge)")
        raise HpoError(f"{model_dir}: not a model folder (no config.json)")
    for d in (model_dir, model_dir.parent):  # `hpo train --merge` writes merged/ inside the run's folder
        if (d / TRAIN_CONFIG).is_file():
            return d / TRAIN_CONFIG
    raise HpoError(
        f"{model_dir}: no {TRAIN_CONFIG} (hpo train, fidelity.save_models and hpo ensemble write one): "
        "it names the study's eval split and metric"
    )


def _check_out(out: Path, force: bool) -> None:
    for d in (out, *out.parents):
        if d.exists() and not d.is_dir():
            raise HpoError(f"{d} exists and is not a directory; give -o a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise HpoError(f"{out} is not empty; use --force to replace it, or -o another directory")


# ---------------------------------------------------------------------------------------------- methods


def _excluded(model: Any) -> set[int]:
    """Modules never pruned or quantized: the output layer (often tied to the embedding) and embeddings."""
    out = set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        out.add(id(head))
    for name in ("classifier", "score"):  # a classification head: small, and every weight of it counts
        m = getattr(model, name, None)
        if m is not None:
            out.update(id(x) for x in m.modules())
    return out


def prunable(model: Any) -> list[tuple[str, Any, int]]:
    """(name, module, output dim) of every linear layer: ``nn.Linear`` (out, in), transformers ``Conv1D`` (in, out)."""
    skip = _excluded(model)
    found = []
    for name, m in model.named_modules():
        if id(m) in skip:
            continue
        if isinstance(m, torch.nn.Linear):
            found.append((name, m, 0))
        elif type(m).__name__ == "Conv1D" and hasattr(m, "weight"):
            found.append((name, m, 1))
    return found


def quantizable(model: Any) -> list[str]:
    """Names of the layers int8 takes: ``nn.Linear`` and transformers ``Conv1D`` (made a Linear first)."""
    return [n for n, _, _ in prunable(model)]


def why_no_int8(model: Any) -> str | None:
    if quantizable(model):
        return None
    return f"{getattr(model.config, 'model_type', 'this model')} has no linear layers outside the output layer"


def _conv1d_as_linear(model: Any) -> None:
    """Replace each transformers ``Conv1D`` (GPT-2's blocks; weight [in, out], y = x W + b) by the equal
    ``nn.Linear`` (weight [out, in]): torch's dynamic quantization only knows ``nn.Linear``."""
    for name, m, out_dim in prunable(model):
        if out_dim != 1:
            continue
        n_in, n_out = m.weight.shape
        lin = torch.nn.Linear(n_in, n_out, bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.weight.t())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, lin)


def apply_pruning(model: Any, how: str, sparsity: float) -> None:
    from torch.nn.utils import prune

    for _, m, out_dim in prunable(model):
        if how == "unstructured":
            prune.l1_unstructured(m, "weight", amount=sparsity)
        else:
            prune.ln_structured(m, "weight", amount=sparsity, n=2, dim=out_dim)
        prune.remove(m, "weight")  # make the zeros permanent: a plain weight tensor again


def apply_int8(model: Any) -> Any:
    from torch.ao.quantization import quantize_dynamic

    names = set(quantizable(model))
    _conv1d_as_linear(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.x marks torch.ao.quantization deprecated (torchao is next)
        return quantize_dynamic(model, names, dtype=torch.qint8)


def nonzero_params(model: Any) -> tuple[int, int]:
    total = nz = 0
    for p in model.parameters():
        total += p.numel()
        nz += int(torch.count_nonzero(p))
    return total, nz


def _saved_bytes(model: Any, quantized: bool) -> bytes:
    """The bytes the variant is saved as: safetensors of a float model; torch.save of a quantized one."""
    if quantized:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return b"".join(p.read_bytes() for p in sorted(Path(tmp).glob("*.safetensors")))


# ------------------------------------------------------------------------------------------ the command


def variants_for(model: Any) -> list[Variant]:
    int8_reason = why_no_int8(model)
    vs = [Variant("unchanged (fp32)")]
    vs.append(Variant("int8 dynamic", quantize=True, skipped=int8_reason))
    vs += [Variant(f"prune unstructured {s:.0%}", prune="unstructured", sparsity=s) for s in UNSTRUCTURED]
    vs += [Variant(f"prune structured {s:.0%}", prune="structured", sparsity=s) for s in STRUCTURED]
    vs.append(Variant("prune unstructured 50% + int8", True, "unstructured", 0.5, skipped=int8_reason))
    vs.append(Variant("prune structured 25% + int8", True, "structured", 0.25, skipped=int8_reason))
    if not prunable(model):
        for v in vs:
            if v.prune is not None and v.skipped is None:
                v.skipped = "no linear layers to prune outside the embeddings and the output layer"
    return vs


def compress(
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    max_drop: str | float = "1%",
    max_examples: int | None = None,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> CompressResult:
    """Build, measure and choose; everything is checked before anything is written."""
    from hpo.api import cache_dir
    from hpo.config import TASK_METRICS
    from hpo.ensemble import metrics_of, model_class, outputs_of
    from hpo.export import load_train_file
    from trainers.data import prepare

    tolerance = parse_drop(max_drop)
    if max_examples is not None and max_examples < 1:
        raise HpoError(f"--max-examples must be at least 1, but got {max_examples}")
    src = Path(model_dir)
    config_file = _find_config(src)
    out = Path(out_dir) if out_dir is not None else src.parent / f"{src.name}-compressed"
    _check_out(out, force)
    tf = load_train_file(config_file)
    run = tf.run_config()
    task = run.task
    metric = str((tf.provenance or {}).get("objective") or ("perplexity" if task == "causal_lm" else "f1_macro"))
    direction = TASK_METRICS[task].get(metric, "minimize")
    data = prepare(run, cache_dir())
    rows = np.arange(len(data.eval_ids))[: max_examples or None]
    labels = None if data.eval_labels is None else data.eval_labels[rows]
    n_classes = len(data.label_names) if data.label_names else None
    bs = run.training.per_device_eval_batch_size
    timing = rows[: min(32, len(rows))]
    cls = model_class(task)
    base = cls.from_pretrained(str(src))
    base.eval()

    def quality(m: Any) -> float:
        return metrics_of(outputs_of(m, data, rows, task, bs), labels, task, n_classes)[metric]

    def latency(m: Any) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            outputs_of(m, data, timing, task, bs)
            times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.median(times)) / max(len(timing), 1)

    variants = variants_for(base)
    built: dict[str, Any] = {}
    base_value: float | None = None
    for v in variants:
        if v.skipped is not None:
            continue
        if say is not None:
            say(f"measuring {v.name}")
        m = copy.deepcopy(base)
        if v.prune is not None:
            apply_pruning(m, v.prune, v.sparsity)
        v.params, v.nonzero = nonzero_params(m)
        if v.quantize:
            m = apply_int8(m)
        v.metric = quality(m)
        if base_value is None:
            base_value = v.metric
        sign = 1.0 if direction == "maximize" else -1.0
        v.drop = (sign * (base_value - v.metric) / abs(base_value) if base_value else 0.0) + 0.0  # no -0.0
        blob = _saved_bytes(m, v.quantize)
        v.size_mb = len(blob) / 1e6
        v.zipped_mb = len(zlib.compress(blob, 1)) / 1e6
        v.latency_ms = latency(m)
        built[v.name] = m
    chosen = _choose(variants, tolerance)
    notes = [
        "pruned weights stay dense: the file keeps its size (zipped_mb shows what a sparse format could gain)",
        "latency: CPU, per example, median of 3 passes; dense kernels do not skip zeros",
    ]
    result = CompressResult(
        src, metric, direction, len(rows), torch.get_num_threads(), tolerance, variants, chosen.name, out, notes
    )
    _write(out, result, chosen, built[chosen.name], src, config_file, force)
    return result


def _choose(variants: list[Variant], tolerance: float) -> Variant:
    ok = [v for v in variants if v.skipped is None and v.drop is not None and v.drop <= tolerance + 1e-12]
    return min(ok, key=lambda v: (v.size_mb or 0.0, v.nonzero or 0, v.latency_ms or 0.0))


def _write(out: Path, r: CompressResult, v: Variant, model: Any, src: Path, config_file: Path, force: bool) -> None:
    from hpo.ensemble import TOKENIZER_FILES

    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        if v.quantize:
            model.config.save_pretrained(staging)
            torch.save(model.state_dict(), staging / QUANTIZED_FILE)
        else:
            model.save_pretrained(staging)
        for f in src.iterdir():  # the tokenizer
            if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES):
                shutil.copy2(f, staging / f.name)
        shutil.copy2(config_file, staging / TRAIN_CONFIG)
        info = {**r.to_json(), "quantized": v.quantize, "load": "hpo.compress.load(DIR)"}
        (staging / RESULT_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load(path: str | Path) -> Any:
    """A folder `hpo compress` wrote, as a model (an int8 variant is rebuilt, then its weights loaded)."""
    from transformers import AutoConfig

    from hpo.ensemble import model_class

    root = Path(path)
    info = json.loads((root / RESULT_FILE).read_text())
    cfg = AutoConfig.from_pretrained(str(root))
    archs = cfg.architectures or []
    task = "causal_lm" if any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in archs) else "classification"
    cls = model_class(task)
    if not info.get("quantized"):
        return cls.from_pretrained(str(root))
    model = apply_int8(cls.from_config(cfg))
    # Our own file, written by `_write`: quantized packed weights are not plain tensors, so weights_only is off.
    model.load_state_dict(torch.load(root / QUANTIZED_FILE, weights_only=False))
    return model


def render(r: CompressResult) -> list[str]:
    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = [
        f"{r.model_dir}: {r.metric} on {r.rows} eval rows; CPU latency with {r.threads} thread(s); "
        f"--max-drop {r.max_drop:.2%}",
        f"{'variant':32} {r.metric:>10} {'drop':>8} {'MB':>8} {'zip MB':>8} {'nonzero':>10} {'ms/ex':>8}",
    ]
    for v in r.variants:
        if v.skipped is not None:
            lines.append(f"{v.name:32} skipped: {v.skipped}")
            continue
        nz = f"{(v.nonzero or 0) / max(v.params or 1, 1):.0%}"
        lines.append(
            f"{v.name:32} {f(v.metric, '.4g'):>10} {f(v.drop, '+.2%'):>8} {f(v.size_mb, '.2f'):>8} "
            f"{f(v.zipped_mb, '.2f'):>8} {nz:>10} {f(v.latency_ms, '.3g'):>8}"
        )
    lines += [f"note: {n}" for n in r.notes]
    lines.append(f"chosen: {r.chosen} (the smallest within --max-drop)")
    if r.out_dir is not None:
        lines.append(f"wrote {r.out_dir}/ ({RESULT_FILE}: the table as JSON)")
    return lines
