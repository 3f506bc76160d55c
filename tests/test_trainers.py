"""The trainer side: data cache, model build with config overrides (dropout really changes the model),
the training loop's determinism and metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import studies
from hpo.config import validate_study
from trainers.base import NullReporter
from trainers.config import RunConfig
from trainers.data import cache_key, prepare
from trainers.loop import BatchOrder, LoopState, evaluate, f1_macro, train
from trainers.models import build_model


def tiny_study(**model: Any) -> dict[str, Any]:
    """``studies.causal_lm`` for in-process training: 6 steps, hpo's default sampler and pruner."""
    return studies.causal_lm(
        "tiny",
        2,
        sampler=None,
        pruner=None,
        fidelity={"max_steps": 6, "eval_every": 3, "eval_batches": 2},
        model=studies.tiny_gpt2() | model,
        data={"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 12, "max_eval_samples": 4},
        training={"per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "learning_rate": 1.0e-3},
        search_space={
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "training.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        },
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def dropouts(model: torch.nn.Module) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


@pytest.mark.parametrize("p", [0.0, 0.27, 0.5])
def test_dropout_in_search_space_sets_every_dropout_of_gpt2(p: float, cache: Path) -> None:
    run = validate_study(tiny_study()).trial_run({"dropout": p, "learning_rate": 1e-3})
    model = build_model(run, prepare(run, cache))
    assert dropouts(model) == {p}
    assert (model.config.resid_pdrop, model.config.embd_pdrop, model.config.attn_pdrop) == (p, p, p)


def test_dropout_changes_what_the_model_computes(cache: Path) -> None:
    x = torch.arange(16).reshape(1, 16)
    outs = {}
    for p in (0.0, 0.5):
        run = validate_study(tiny_study()).trial_run({"dropout": p, "learning_rate": 1e-3})
        torch.manual_seed(0)
        model = build_model(run, prepare(run, cache)).train()
        outs[p] = (model(x).logits, model(x).logits)
    assert torch.equal(*outs[0.0])  # no dropout: training-mode passes agree
    assert not torch.equal(*outs[0.5])  # dropout 0.5: they differ


def test_dropout_override_applies_to_pretrained_models_and_keeps_weights(tmp_path: Path, cache: Path) -> None:
    run0 = validate_study(tiny_study()).trial_run({"dropout": 0.1, "learning_rate": 1e-3})
    data = prepare(run0, cache)
    torch.manual_seed(1)
    saved = build_model(run0, data)
    saved.save_pretrained(tmp_path / "model")
    study = tiny_study()
    study["model"] = {"name_or_path": str(tmp_path / "model"), "tokenizer": {"name_or_path": str(data.tokenizer_dir)}}
    run = validate_study(study).trial_run({"dropout": 0.33, "learning_rate": 1e-3})
    loaded = build_model(run, prepare(run, cache))
    assert dropouts(loaded) == {0.33}
    for (k, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_dropout_for_bert_sets_hidden_and_attention_dropout(cache: Path) -> None:
    study = tiny_study(
        from_config={
            "model_type": "bert",
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        }
    )
    run = validate_study(study).trial_run({"dropout": 0.21, "learning_rate": 1e-3})
    model = build_model(run, prepare(run, cache))
    assert model.config.hidden_dropout_prob == 0.21 and model.config.attention_probs_dropout_prob == 0.21
    assert 0.21 in dropouts(model)


def test_data_is_prepared_once_and_reused(cache: Path) -> None:
    run = validate_study(tiny_study()).trial_run({"dropout": 0.0, "learning_rate": 1e-3})
    a = prepare(run, cache)
    mtime = (a.path / "meta.json").stat().st_mtime_ns
    b = prepare(run, cache)
    assert b.path == a.path and (b.path / "meta.json").stat().st_mtime_ns == mtime
    assert np.array_equal(a.train_ids, b.train_ids) and a.train_ids.shape[1] == 32
    # Search-space values (here dropout, lr) do not change the data; max_length does.
    other = validate_study(tiny_study()).trial_run({"dropout": 0.4, "learning_rate": 1e-2})
    assert cache_key(other) == cache_key(run)
    longer = RunConfig.model_validate({**run.model_dump(), "data": {**run.data.model_dump(), "max_length": 16}})
    assert cache_key(longer) != cache_key(run)


def test_train_is_deterministic_and_reports_each_eval(cache: Path) -> None:
    run = validate_study(tiny_study()).trial_run({"dropout": 0.1, "learning_rate": 3e-3})

    class Rec(NullReporter):
        def __init__(self) -> None:
            self.evals: list[int] = []

        def on_eval(self, step: int, metrics: dict[str, float]) -> None:
            self.evals.append(step)

    rec = Rec()
    a = train(run, rec, cache)
    b = train(run, NullReporter(), cache)
    assert rec.evals == [3, 6]
    assert a.steps == 6 and a.metrics == b.metrics
    assert a.metrics["perplexity"] == pytest.approx(np.exp(a.metrics["eval_loss"]))
    assert a.tokens == 6 * 4 * 32 and a.tokens_per_s > 0 and a.device == "cpu"


def test_train_stops_when_the_reporter_says_so(cache: Path) -> None:
    run = validate_study(tiny_study()).trial_run({"dropout": 0.1, "learning_rate": 3e-3})

    class PruneAfterFirstEval(NullReporter):
        seen = False

        def on_eval(self, step: int, metrics: dict[str, float]) -> None:
            self.seen = True

        def stop_reason(self) -> str | None:
            return "pruned" if self.seen else None

    r = train(run, PruneAfterFirstEval(), cache)
    assert r.stopped == "pruned" and r.steps == 3


@pytest.mark.parametrize(
    ("pred", "true", "expected"),
    [
        ([0, 1, 2], [0, 1, 2], 1.0),
        ([0, 0, 0], [0, 1, 2], (2 / 4 + 0 + 0) / 3),  # class 0: tp=1 fp=2 -> 0.5; classes 1, 2: 0
        ([1, 1], [1, 1], 1.0),  # classes absent from both are not averaged in
    ],
)
def test_f1_macro(pred: list[int], true: list[int], expected: float) -> None:
    assert f1_macro(np.array(pred), np.array(true), 3) == pytest.approx(expected)


def test_eval_split_keeps_a_shuffled_order() -> None:
    # Corpora listed by label must not put one class first in the eval split (eval_batches caps it).
    from trainers.data import _split

    train_idx, eval_idx = _split(1000, 0.1, seed=0)
    assert sorted(set(train_idx) | set(eval_idx)) == list(range(1000)) and not set(train_idx) & set(eval_idx)
    assert list(eval_idx) != sorted(eval_idx)


def test_misspelt_eval_split_is_an_error(tmp_path: Path) -> None:
    from trainers.config import DataConfig
    from trainers.data import load_records

    (tmp_path / "train.txt").write_text("a b c\nd e f\n")
    (tmp_path / "validation.txt").write_text("g h i\n")
    files = {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "validation.txt")}
    _, evals = load_records(DataConfig(files=files), need_labels=False)
    assert evals["text"] == ["g h i"]  # "validation" is used when present
    with pytest.raises(ValueError, match="split 'valid' not found"):
        load_records(DataConfig(files=files, eval_split="valid"), need_labels=False)


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("train_ids.npy", _truncate),
        ("eval_ids.npy", _flip),  # same size, other values: only a checksum sees it
        ("train_ids.npy", Path.unlink),
        ("meta.json", lambda f: f.write_text("{")),
        ("meta.json", Path.unlink),
        ("tokenizer/tokenizer.json", _truncate),  # used to break `hpo train` at its very end
    ],
)
def test_a_damaged_data_cache_is_detected_and_rebuilt(tmp_path: Path, name: str, damage: Any) -> None:
    from transformers import AutoTokenizer

    run = validate_study(tiny_study()).base_run()
    first = prepare(run, tmp_path)
    damage(first.path / name)
    with pytest.warns(UserWarning, match=rf"data cache {first.path} is damaged \(.*\); rebuilding it"):
        again = prepare(run, tmp_path)
    assert again.path == first.path
    assert np.array_equal(again.train_ids, first.train_ids) and np.array_equal(again.eval_ids, first.eval_ids)
    assert len(AutoTokenizer.from_pretrained(str(again.tokenizer_dir))) == first.vocab_size
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [first.path.name]


def test_a_damaged_data_cache_that_cannot_be_rebuilt_is_named_with_the_remedy(tmp_path: Path) -> None:
    from fsfaults import read_only, small_fs

    from trainers.data import CacheDamaged

    run = validate_study(tiny_study()).base_run()
    with small_fs(tmp_path / "fs", 4096) as root:
        path = prepare(run, root).path
        _truncate(path / "eval_ids.npy")
        read_only(root)
        with pytest.raises(CacheDamaged) as err:
            prepare(run, root)
    msg = str(err.value)
    assert msg.startswith(f"data cache {path} is damaged (eval_ids.npy has ") and " bytes instead of " in msg
    assert msg.endswith(f"cannot be rebuilt (Read-only file system); remove it (rm -r {path}) and run again")


# ----------------------------------------------------------------------------- loop state and resume


def tiny_data_run(batch: int, steps: int, accumulation: int = 1) -> RunConfig:
    """One topic of training text (222 blocks of 32 tokens): a few batches make an epoch."""
    d = tiny_study()
    d["data"]["max_train_samples"] = 1
    d["fidelity"] = {"max_steps": steps, "eval_every": 4, "eval_batches": 2}
    d["training"].update(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    return validate_study(d).trial_run({"dropout": 0.2, "learning_rate": 3e-3})


def reference_shards(n: int, batch: int, seed: int, world: int, epochs: int) -> list[list[list[int]]]:
    """Each rank's batches as trials have always drawn them: epoch e's permutation from one seeded
    generator, rank r's share permutation[r::world], cut into full batches."""
    rng = np.random.default_rng(seed)
    out: list[list[list[int]]] = [[] for _ in range(world)]
    for _ in range(epochs):
        order = rng.permutation(n)
        for r in range(world):
            mine = order[r::world]
            out[r] += [mine[i : i + batch].tolist() for i in range(0, len(mine) - batch + 1, batch)]
    return out


@pytest.mark.parametrize(
    ("n", "batch", "world"),
    [
        (20, 4, 1),  # one process: the batch order as it is
        (251, 42, 2),  # rank 0 holds 3 batches per epoch, rank 1 only 2
        (10, 2, 3),  # three ranks of 4, 3 and 3 rows
        (24, 3, 4),  # even shards
    ],
)
def test_batch_order_through_accelerates_sharding_gives_each_rank_its_own_shard(n: int, batch: int, world: int) -> None:
    from accelerate.data_loader import BatchSamplerShard

    epochs = 3
    expected = reference_shards(n, batch, 7, world, epochs)
    for rank in range(world):
        order = BatchOrder(n, batch, 7, world)
        shard = order if world == 1 else BatchSamplerShard(order, world, rank, even_batches=False)
        got: list[list[int]] = []
        for epoch in (0, 1, 2):
            order.epoch = epoch
            got += [list(b) for b in shard]
        assert got == expected[rank]
        assert order.per_rank(rank) * epochs == len(expected[rank])
        order.epoch = 1  # a resumed run may start at any epoch, also one before the last drawn
        assert [list(b) for b in shard] == expected[rank][order.per_rank(rank) : 2 * order.per_rank(rank)]


@pytest.mark.parametrize(
    ("batch", "accumulation", "cut"),
    [
        (37, 1, 6),  # 6 batches an epoch: stopped exactly at the end of the first
        (37, 1, 7),  # inside the second epoch
        (44, 2, 2),  # 5 batches an epoch, 2 a step: the next step straddles the epoch boundary
    ],
)
def test_resume_across_epochs_gives_the_uninterrupted_result(
    batch: int, accumulation: int, cut: int, cache: Path, tmp_path: Path
) -> None:
    run = tiny_data_run(batch, 14, accumulation)
    whole = train(run, NullReporter(), cache)

    class StopAt(NullReporter):
        step = 0

        def on_step(self, step: int) -> None:
            self.step = step

        def stop_reason(self) -> str | None:
            return "interrupted" if self.step >= cut else None

    first = train(run, StopAt(), cache, checkpoint_dir=tmp_path, save_every=100)
    assert (first.steps, first.stopped) == (cut, "interrupted")
    rest = train(run, NullReporter(), cache, checkpoint_dir=tmp_path, save_every=100)
    assert rest.resumed_from == cut and rest.steps == 14
    # Bit for bit: the same batches after the epoch boundary, the same dropout masks.
    assert (rest.metrics, rest.evals, rest.tokens) == (whole.metrics, whole.evals, whole.tokens)


def test_loop_state_round_trips_through_a_checkpoint_file(tmp_path: Path) -> None:
    state = LoopState(
        step=7,
        batches=14,
        tokens=3584,
        train_time=1.5,
        eval_time=0.25,
        metrics={"eval_loss": 5.1},
        evals=[(4, {"eval_loss": 5.4})],
        window_loss=10.5,
        window_steps=3,
        window_tokens=768,
        window_time=0.5,
    )
    torch.save(state.state_dict(), tmp_path / "state.pkl")  # as accelerate's save_state writes it
    restored = LoopState()
    restored.load_state_dict(torch.load(tmp_path / "state.pkl", weights_only=False))
    assert restored == state


def test_train_returns_the_trained_model_with_the_result(cache: Path) -> None:
    run = validate_study(tiny_study()).trial_run({"dropout": 0.1, "learning_rate": 3e-3})
    result = train(run, NullReporter(), cache)
    assert isinstance(result.model, torch.nn.Module)
    # The model as it ended: evaluating it again gives the run's final metrics.
    assert evaluate(result.model, prepare(run, cache), run, torch.device("cpu")) == result.metrics
    # What leaves a worker is plain data: no model in it.
    as_dict = result.to_dict()
    assert "model" not in as_dict and json.loads(json.dumps(as_dict))["steps"] == 6
