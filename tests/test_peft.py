"""LoRA adapters (`model.peft`): only the adapter trains, the search over rank/alpha/targets runs, the saved
adapter and the merged model give the reported metric, and bad input is one line that writes nothing.

The models are tiny (a 1-layer GPT-2 from config, a 1-layer pretrained BERT made here) and train a few steps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_export import one_line_error, pretrained_classifier, trials, write
from typer.testing import CliRunner

from hpo.cli import app
from hpo.export import ADAPTER_NAME, CONFIG_NAME, load_train_file
from hpo.train import MERGED, METRICS, OUT_CONFIG
from trainers.base import NullReporter
from trainers.config import RunConfig

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}


# in + out of the tiny GPT-2's layers each target set adapts (n_embd 32): c_attn 32 -> 96, attn.c_proj 32 -> 32,
# mlp.c_fc 32 -> 128, mlp.c_proj 128 -> 32; peft's all-linear leaves the output layer (lm_head) out.
ADAPTED_WIDTHS = {"c_attn": 128, "c_attn,c_proj": 128 + 64 + 160, "all-linear": 128 + 64 + 160 + 160}


def lm_study(root: Path, peft: dict[str, Any] | None = None, **space: Any) -> dict[str, Any]:
    return {
        "study": {"name": "lora", "n_trials": 3, "storage": f"sqlite:///{root}/runs/lora.db"},
        "task": "causal_lm",
        "objective": {"metric": "perplexity"},
        "sampler": {"name": "random", "seed": 5},
        "pruner": {"name": "none"},
        "fidelity": {"max_steps": 8, "eval_every": 4, "eval_batches": 2},
        "model": {
            "from_config": GPT2,
            "tokenizer": {"train_vocab_size": 300},
            "peft": peft if peft is not None else {"r": 4, "alpha": 8},
        },
        "data": {"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 24, "max_eval_samples": 4},
        "training": {"per_device_eval_batch_size": 8, "learning_rate": 1.0e-2},
        "search_space": space
        or {
            "model.peft.r": {"type": "int", "low": 2, "high": 8},
            "model.peft.alpha": {"type": "float", "low": 4.0, "high": 32.0},
            "model.peft.target_modules": {"type": "categorical", "choices": ["c_attn", "c_attn,c_proj", "all-linear"]},
        },
        "resources": {"workers": 1},
    }


def lm_run(peft: dict[str, Any]) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "causal_lm",
            "model": {"from_config": GPT2, "tokenizer": {"train_vocab_size": 300}, "peft": peft},
            "data": {"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 24, "max_eval_samples": 4},
            "training": {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1.0e-2},
        }
    )


def initial_and_trained(run: RunConfig, cache: Path) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """The model's weights before training (built as the loop builds it), the result, and the data."""
    from transformers import set_seed

    from trainers.data import prepare
    from trainers.loop import train
    from trainers.models import build_model

    data = prepare(run, cache)
    set_seed(run.training.seed)
    before = {k: v.detach().clone() for k, v in build_model(run, data).state_dict().items()}
    return before, train(run, NullReporter(), cache, data=data), data


def test_only_the_adapter_of_a_causal_lm_trains(tmp_path: Path) -> None:
    before, result, _ = initial_and_trained(lm_run({"r": 4, "target_modules": "c_attn,c_proj"}), tmp_path)
    after = result.model.state_dict()
    assert set(after) == set(before)
    lora = [k for k in after if "lora_" in k]
    base = [k for k in after if "lora_" not in k]
    # lora_A starts random, lora_B at zero (peft's init: the adapted model starts as the base model).
    assert lora and all(not torch.equal(before[k], after[k]) for k in lora if "lora_B" in k)
    assert all(torch.equal(before[k], after[k]) for k in base)
    assert any(".c_proj.lora_A" in k for k in lora) and not any(".c_fc.lora_A" in k for k in lora)
    n_lora = sum(after[k].numel() for k in lora)
    assert result.trainable_params == n_lora
    # Total: the base model's parameters (the tied lm_head counted once, as model.parameters() does) + LoRA's.
    assert result.total_params == sum(p.numel() for p in result.model.get_base_model().parameters())
    assert result.total_params - n_lora == sum(before[k].numel() for k in base if "lm_head" not in k)
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 0


def test_a_pretrained_classifier_trains_its_adapter_and_new_head_only(tmp_path: Path) -> None:
    spec = pretrained_classifier(tmp_path)
    run = RunConfig.model_validate(
        {
            "task": spec["task"],
            "model": {**spec["model"], "peft": {"r": 2, "target_modules": ["query", "value"]}},
            "data": spec["data"],
            "training": {**spec["training"], "max_steps": 6, "learning_rate": 1.0e-2},
        }
    )
    before, result, _ = initial_and_trained(run, tmp_path / "cache")
    after = result.model.state_dict()
    trained = {k for k in after if not torch.equal(before[k], after[k])}
    head = {k for k in after if ".classifier.modules_to_save." in k}  # peft trains a copy of the new head
    assert head and head <= trained
    assert {k for k in after if "lora_B" in k} <= trained
    assert all("lora_" in k or k in head for k in trained), sorted(trained)
    # The pretrained encoder weights are the checkpoint's, untouched.
    from transformers import BertModel

    enc = BertModel.from_pretrained(tmp_path / "bert").state_dict()
    q = "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(after[q], enc["encoder.layer.0.attention.self.query.weight"])


@pytest.mark.slow
def test_a_search_over_rank_alpha_targets_and_the_exported_adapter_and_merged_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, set_seed

    from trainers.data import prepare
    from trainers.loop import evaluate
    from trainers.models import build_config

    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path / "lora.yaml", lm_study(tmp_path))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    done = trials(path)
    assert len(done) == 3
    assert len({(t.params["r"], t.params["alpha"], t.params["target_modules"]) for t in done}) == 3
    assert len({t.params["target_modules"] for t in done}) >= 2
    base_total = {t.user_attrs["total_params"] - t.user_attrs["trainable_params"] for t in done}
    assert len(base_total) == 1  # one frozen base
    for t in done:  # each trial trained the adapter its parameters describe: r x (in + out) per adapted layer
        a = t.user_attrs
        assert a["trainable_params"] == t.params["r"] * ADAPTED_WIDTHS[t.params["target_modules"]], t.params
        assert a["peak_memory_mb"] > 0 and a["tokens_per_s"] > 0
    best = done[0]

    assert runner.invoke(app, ["export", str(path), "--trial-length", "-o", str(tmp_path / "b")]).exit_code == 0
    exported = load_train_file(tmp_path / "b" / CONFIG_NAME)
    adapter = json.loads((tmp_path / "b" / ADAPTER_NAME).read_text())
    assert (adapter["peft_type"], adapter["task_type"], adapter["r"]) == ("LORA", "CAUSAL_LM", best.params["r"])
    assert adapter["lora_alpha"] == best.params["alpha"]
    assert exported.model.peft is not None and exported.model.peft.r == best.params["r"]
    result = runner.invoke(app, ["train", str(tmp_path / "b" / CONFIG_NAME), "--merge"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "b" / "model"
    metrics = json.loads((out / METRICS).read_text())
    assert metrics["metrics"]["perplexity"] == pytest.approx(best.value, rel=1e-9, abs=0)  # the trial, reproduced
    assert metrics["trainable_params"] == best.user_attrs["trainable_params"]
    assert {"adapter_config.json", "adapter_model.safetensors", MERGED} <= set(metrics["files"])
    assert not (out / "model.safetensors").exists()  # the adapter, not a copy of the base

    run = load_train_file(out / OUT_CONFIG).run_config()
    data = prepare(run, os.environ["HPO_CACHE_DIR"])
    # The merged model: plain from_pretrained, no peft.
    merged = AutoModelForCausalLM.from_pretrained(out / MERGED)
    assert not any("lora" in k for k in merged.state_dict())
    again = evaluate(merged, data, run, merged.device)
    assert again["eval_loss"] == pytest.approx(metrics["metrics"]["eval_loss"], rel=1e-5)
    # The adapter on its base (a from-config base: built after the same seed, as trainers.models builds it).
    set_seed(run.training.seed)
    base = AutoModelForCausalLM.from_config(build_config(run, data))
    adapted = PeftModel.from_pretrained(base, out)
    again = evaluate(adapted, data, run, torch.device("cpu"))
    assert again["eval_loss"] == pytest.approx(metrics["metrics"]["eval_loss"], rel=1e-9)


def test_a_classifier_adapter_and_its_merged_model_load_and_give_the_reported_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hpo train --merge` of a sequence-classification LoRA whose head is in modules_to_save: the merged folder
    loads with plain AutoModelForSequenceClassification, the adapter folder with PeftModel on the pretrained
    base, and both give the metrics hpo train reported."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from trainers.data import prepare
    from trainers.loop import evaluate

    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    spec = pretrained_classifier(tmp_path)
    peft = {"r": 2, "alpha": 8, "target_modules": "query,value", "modules_to_save": ["classifier"]}
    run = {
        "task": spec["task"],
        "model": {**spec["model"], "peft": peft},
        "data": spec["data"],
        "training": {**spec["training"], "max_steps": 12, "learning_rate": 2.0e-2},
    }
    config = write(tmp_path / "train.yaml", run)
    result = runner.invoke(app, ["train", str(config), "-o", str(tmp_path / "out"), "--merge"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    reported = json.loads((out / METRICS).read_text())["metrics"]
    assert {"eval_loss", "accuracy", "f1_macro"} <= set(reported)
    trained = load_train_file(out / OUT_CONFIG).run_config()
    data = prepare(trained, os.environ["HPO_CACHE_DIR"])
    cpu = torch.device("cpu")

    merged = AutoModelForSequenceClassification.from_pretrained(out / MERGED)  # no peft
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert not any("lora" in k or "modules_to_save" in k for k in merged.state_dict())
    assert merged.config.id2label == {0: "0", 1: "1"}
    again = evaluate(merged, data, trained, cpu)
    # Merging adds the adapter into the weights: float sums in another order. On a GPU the reported metrics
    # were computed there (bf16, CUDA kernels), these on the CPU.
    close, exact = (1e-5, 1e-9) if not torch.cuda.is_available() else (1e-3, 1e-3)
    assert again["eval_loss"] == pytest.approx(reported["eval_loss"], rel=close)
    assert (again["accuracy"], again["f1_macro"]) == (reported["accuracy"], reported["f1_macro"])

    # The adapter folder holds the trained head (modules_to_save), so any base with the same encoder
    # weights gives the same classifier: here the pretrained BERT with a fresh, random head.
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", num_labels=2)
    fresh = base.classifier.weight.detach().clone()
    assert not torch.allclose(fresh, merged.classifier.weight)
    adapted = PeftModel.from_pretrained(base, out)
    again = evaluate(adapted, data, trained, cpu)
    assert again["eval_loss"] == pytest.approx(reported["eval_loss"], rel=exact)
    assert (again["accuracy"], again["f1_macro"]) == (reported["accuracy"], reported["f1_macro"])


def test_a_file_without_peft_dumps_no_peft_key() -> None:
    # Fingerprints of existing study files (tests/test_config.py pins them) hash this dump.
    run = lm_run({"r": 2})
    plain = run.model.model_copy(update={"peft": None})
    assert "peft" not in plain.model_dump() and "peft" in run.model.model_dump()


BAD = [
    ({"target_modules": ["c_attn", "q_proj"]}, {}, "model.peft.target_modules: model_type 'gpt2' has no layer named "
     "'q_proj' that LoRA can adapt (it has: c_attn, c_fc, c_proj, lm_head, wpe, wte)"),
    ({"r": 0}, {}, "model.peft.r: Input should be greater than or equal to 1"),
    ({"target_modules": "all-linear,c_attn"}, {}, "model.peft.target_modules: `all-linear` stands alone"),
    ({}, {"model.peft.target_modules": {"type": "categorical", "choices": ["c_attn", "query,value"]}},
     "search_space[model.peft.target_modules]: model_type 'gpt2' has no layer named 'query'"),
    ({}, {"model.peft.r": {"type": "int", "low": 0, "high": 4}},
     "search_space[model.peft.r]: value 0 is not valid there: Input should be greater than or equal to 1"),
]  # fmt: skip


@pytest.mark.parametrize(("peft", "space", "message"), BAD)
def test_bad_peft_input_is_one_line_and_writes_nothing(
    peft: dict[str, Any], space: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = write(tmp_path / "s.yaml", lm_study(tmp_path, peft, **space))
    for cmd in ("validate", "run"):
        line = one_line_error(runner.invoke(app, [cmd, str(path)]))
        assert line.startswith(f"error: {path}: {message}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_peft_without_a_default_for_the_model_type_asks_for_targets(tmp_path: Path) -> None:
    data = lm_study(tmp_path, {"r": 2}, **{"model.peft.r": {"type": "int", "low": 1, "high": 4}})
    data["model"]["from_config"] = {"model_type": "ctrl", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}
    path = write(tmp_path / "s.yaml", data)
    for cmd in ("validate", "run"):
        line = one_line_error(runner.invoke(app, [cmd, str(path)]))
        assert line.startswith(
            f"error: {path}: model.peft.target_modules: peft has no default target modules for model_type 'ctrl'"
        ), line
        assert "(its layers LoRA can adapt: " in line and "Wq" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_a_peft_too_old_for_this_transformers_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.21.0" if name == "peft" else real(name))
    path = write(tmp_path / "s.yaml", lm_study(tmp_path, {"r": 2}))
    for cmd in ("validate", "run"):
        line = one_line_error(runner.invoke(app, [cmd, str(path)]))
        assert (
            line
            == f"error: {path}: model.peft: hpo needs peft >= 0.21.2, this machine has 0.21.0 (pip install -U peft)"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


# The tiny GPT-2's linear layers: three are 32 values wide (n_embd), mlp.c_proj 128 (4 x n_embd).
LINEAR = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
          "transformer.h.0.mlp.c_proj"]  # fmt: skip


def dequantised(layer: Any) -> torch.Tensor:
    """The full-precision weight a bitsandbytes layer stands for."""
    import bitsandbytes as bnb

    layer = getattr(layer, "base_layer", layer)  # under peft's adapter
    w = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    scb = w.SCB if w.SCB is not None else layer.state.SCB  # after a forward pass, the layer state holds it
    return w.data.float() * scb[:, None] / 127  # LLM.int8: row-wise absmax scaling


@pytest.mark.parametrize(("bits", "layer_type"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_qlora_trains_the_adapter_on_a_quantised_frozen_base(bits: str, layer_type: str, tmp_path: Path) -> None:
    from transformers import set_seed

    from trainers.models import build_model, parameter_counts

    peft = {"r": 4, "target_modules": "c_attn,c_proj"}
    run = lm_run({**peft, "quantize": bits})
    before, result, data = initial_and_trained(run, tmp_path)
    set_seed(run.training.seed)  # the same seed: the full-precision model the quantised one was made from
    full = build_model(lm_run(peft), data)
    after = result.model.state_dict()
    assert set(after) == set(before)
    base = result.model.get_base_model()
    layers = dict(base.named_modules())
    # Every linear layer of the block is quantised (the adapted ones under peft's wrapper), the tied embedding /
    # lm_head is not; on the CPU, 4-bit layers narrower than a 64-value block stay full precision
    # (bitsandbytes' CPU kernel gets them wrong: trainers.quantize).
    narrow = bits == "4bit" and not torch.cuda.is_available()
    kinds = {n: type(getattr(layers[n], "base_layer", layers[n])).__name__ for n in LINEAR}  # under the adapter
    assert kinds == {n: "Conv1D" if narrow and "mlp.c_proj" not in n else layer_type for n in LINEAR}
    assert type(layers["lm_head"]).__name__ == "Linear"
    proj = layers["transformer.h.0.mlp.c_proj"]
    assert proj.weight.dtype == (torch.uint8 if bits == "4bit" else torch.int8)
    # ... holding the seeded full-precision weights (GPT-2's Conv1D stores them transposed), to the precision
    # of the format (NF4: ~9% mean error on normal weights; LLM.int8: < 1%).
    ref = full.get_base_model().transformer.h[0].mlp.c_proj.weight.detach().T
    err = (dequantised(proj) - ref).abs().mean() / ref.abs().mean()
    assert 0 < err < (0.12 if bits == "4bit" else 0.01), float(err)
    lora = [k for k in after if "lora_" in k]
    frozen = [k for k in after if "lora_" not in k]  # quantised weights, their quantisation states, the rest
    assert lora and all(not torch.equal(before[k], after[k]) for k in lora if "lora_B" in k)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert result.trainable_params == sum(after[k].numel() for k in lora)
    # Counted as the weights they stand for, not as packed bytes: the same total as the full-precision model.
    assert result.total_params == parameter_counts(full)[1]
    assert base.get_memory_footprint() < full.get_base_model().get_memory_footprint()
    assert math.isfinite(result.metrics["eval_loss"])


def test_a_qlora_study_validates_where_bitsandbytes_runs(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", lm_study(tmp_path, {"r": 2, "quantize": "4bit"}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


BROKEN_BNB = [
    ('raise ImportError("libbitsandbytes_cpu.so: cannot open shared object file")\n',
     "bitsandbytes cannot be imported: libbitsandbytes_cpu.so: cannot open shared object file"),
    # What a CUDA-only build (before the multi-backend releases) tells transformers on a machine without CUDA.
    ('__version__ = "0.42.0"\nsupported_torch_devices = {"cuda"}\n',
     "bitsandbytes 0.42.0 cannot run 4bit layers here: None of the available devices `available_devices = "
     "{'cpu'}` are supported by the bitsandbytes version you have installed: `bnb_supported_devices = {'cuda'}`"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the messages name this machine's devices: CPU only")
@pytest.mark.parametrize(("package", "said"), BROKEN_BNB)
def test_qlora_where_bitsandbytes_cannot_run_is_refused_in_its_words(package: str, said: str, tmp_path: Path) -> None:
    # A real bitsandbytes package that fails, first on the import path of a real `hpo run` process.
    fake = tmp_path / "site" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(package)
    study = tmp_path / "study"
    study.mkdir()
    path = write(study / "s.yaml", lm_study(study, {"r": 2, "quantize": "4bit"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env["HPO_CACHE_DIR"] = str(study / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "run", str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == [f"error: {path}: model.peft.quantize: 4bit base weights (QLoRA) are unavailable: {said}"]
    assert sorted(p.name for p in study.iterdir()) == ["s.yaml"]


@pytest.mark.parametrize(
    ("peft", "message"),
    [
        (None, "model.peft: --merge merges a LoRA adapter, but none is set"),
        ({"r": 2, "quantize": "8bit"}, "model.peft.quantize: --merge needs full-precision base weights"),
    ],
)
def test_merge_without_an_adapter_or_with_a_quantised_base_is_refused(
    peft: dict[str, Any] | None, message: str, tmp_path: Path
) -> None:
    run = lm_run({"r": 2}).model_dump(mode="json")
    if peft is None:
        del run["model"]["peft"]
    else:
        run["model"]["peft"] = peft
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(run))
    line = one_line_error(runner.invoke(app, ["train", str(path), "--merge"]))
    assert line.startswith(f"error: {path}: {message}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yaml"]


def test_a_pretrained_models_layers_are_read_from_its_folder(tmp_path: Path) -> None:
    spec = pretrained_classifier(tmp_path)
    spec["model"]["peft"] = {"target_modules": "query,c_attn"}
    spec["study"]["storage"] = f"sqlite:///{tmp_path}/runs/cls.db"
    path = write(tmp_path / "s.yaml", spec)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_line_error(runner.invoke(app, ["run", str(path)]))
    assert line == (
        f"error: {path}: model.peft.target_modules: model_type 'bert' has no layer named 'c_attn' that LoRA can "
        "adapt (it has: classifier, dense, key, position_embeddings, query, token_type_embeddings, value, "
        "word_embeddings)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/, no cache
