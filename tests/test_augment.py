"""Data augmentation: reproducible per (seed, epoch, example), what each operation does to a row, training
batches changed and eval batches not, and augmentation of eval data refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.config import validate_study
from hpo.errors import StudyFileError
from studies import causal_lm, classification
from trainers.augment import AugmentConfig, Augmenter, eda
from trainers.data import PreparedData

CLS, SEP, PAD = 101, 102, 0
# Two rows: [CLS] w0 w1(2 tokens) w2 w3 [SEP] pad..., and [CLS] w0 [SEP] pad...
IDS = np.array([[CLS, 11, 12, 13, 14, 15, SEP, PAD], [CLS, 21, SEP, PAD, PAD, PAD, PAD, PAD]], dtype=np.int32)
WORDS = np.array([[-1, 0, 1, 1, 2, 3, -1, -1], [-1, 0, -1, -1, -1, -1, -1, -1]], dtype=np.int32)


def _data(n_copies: int = 8) -> PreparedData:
    ids = np.concatenate([IDS] * n_copies)
    return PreparedData(
        path=Path("."),
        train_ids=ids,
        eval_ids=IDS.copy(),
        train_lengths=(ids != PAD).sum(1).astype(np.int32),
        eval_lengths=(IDS != PAD).sum(1).astype(np.int32),
        train_labels=np.zeros(len(ids), np.int64),
        eval_labels=np.zeros(2, np.int64),
        label_names=["a"],
        vocab_size=200,
        pad_id=PAD,
        eos_id=None,
        train_words=np.concatenate([WORDS] * n_copies),
    )


def _words(tokens: list[int]) -> list[tuple[int, ...]]:
    """The row's words as token tuples (12, 13 is one word), without the special tokens."""
    out: list[tuple[int, ...]] = []
    for t in tokens[1:-1]:
        if t == 13 and out and out[-1] == (12,):
            out[-1] = (12, 13)
        else:
            out.append((t,))
    return out


ROW_WORDS = [(11,), (12, 13), (14,), (15,)]


@pytest.mark.parametrize("op", ["delete", "swap", "insert"])
@pytest.mark.parametrize("seed", range(6))
def test_each_operation_moves_whole_words_and_keeps_special_tokens(op: str, seed: int) -> None:
    n = int((IDS[0] != PAD).sum())
    out = eda(IDS[0, :n], WORDS[0, :n], np.random.default_rng(seed), op, 0.5, width=8)
    assert out[0] == CLS and out[-1] == SEP and len(out) <= 8
    words = _words(out)
    if op == "delete":
        assert 1 <= len(words) <= 4 and all(w in ROW_WORDS for w in words)
        assert words == [w for w in ROW_WORDS if w in words]  # order kept
    elif op == "swap":
        assert Counter(words) == Counter(ROW_WORDS)
    else:  # insertion by copy, cut back to the width with [SEP] kept
        assert set(words) <= set(ROW_WORDS) and len(out) == 8


def test_classification_augmentation_is_reproducible_per_seed_epoch_and_row() -> None:
    data, rows = _data(), np.arange(16)
    aug = Augmenter(AugmentConfig(p=0.5, n_aug=3), "sequence_classification", seed=42)
    a, la = aug.rows(data, rows, epoch=0)
    b, lb = aug.rows(data, rows, epoch=0)
    assert np.array_equal(a, b) and lb is not None and la is not None and np.array_equal(la, lb)
    assert not np.array_equal(a, aug.rows(data, rows, epoch=1)[0])  # a fresh variant each epoch
    other = Augmenter(AugmentConfig(p=0.5, n_aug=3), "sequence_classification", seed=7)
    assert not np.array_equal(a, other.rows(data, rows, epoch=0)[0])
    # A row's augmentation depends on that row only, not on the batch it is drawn in.
    single, _ = aug.rows(data, np.array([5]), epoch=0)
    assert np.array_equal(single[0], a[5])
    assert not np.array_equal(a, data.train_ids)  # something changed
    none, _ = Augmenter(AugmentConfig(p=0.5, n_aug=0), "sequence_classification", 42).rows(data, rows, 0)
    assert np.array_equal(none, data.train_ids)  # n_aug 0: no augmented copies


def test_lm_replacement_keeps_the_labels() -> None:
    import torch

    ids = np.arange(64 * 20, dtype=np.int32).reshape(20, 64) % 200
    data = PreparedData(Path("."), ids, ids[:2], None, None, None, None, None, 200, 0, 1)
    rows = np.arange(20)
    batch = {"input_ids": torch.from_numpy(ids.astype(np.int64)), "labels": torch.from_numpy(ids.astype(np.int64))}
    for mode in ("replace", "mask"):
        out = Augmenter(AugmentConfig(p=0.25, lm_mode=mode), "causal_lm", 1)(batch, data, rows, 0)
        changed = (out["input_ids"] != batch["input_ids"]).float().mean().item()
        assert 0.15 < changed < 0.3
        assert torch.equal(out["labels"], batch["labels"])
        if mode == "mask":
            assert set(out["input_ids"][out["input_ids"] != batch["input_ids"]].tolist()) == {0}


def test_training_batches_are_augmented_and_eval_is_not(tmp_path: Path) -> None:
    import torch

    from trainers.config import RunConfig
    from trainers.data import prepare
    from trainers.loop import BatchOrder, _train_loader, evaluate
    from trainers.models import build_model

    study = causal_lm()
    base = {
        "task": "causal_lm",
        "model": study["model"],
        "data": study["data"],
        "training": {"max_steps": 2, "per_device_train_batch_size": 4},
        "eval_batches": 2,
    }
    plain = RunConfig.model_validate(base)
    aug = RunConfig.model_validate({**base, "data": {**study["data"], "augment": {"p": 0.3}}})
    data = prepare(aug, tmp_path / "cache")
    assert data.path == prepare(plain, tmp_path / "cache").path  # one cache: augmentation is on the fly

    def first(run: RunConfig) -> dict[str, torch.Tensor]:
        return next(iter(_train_loader(data, run, BatchOrder(len(data.train_ids), 4, 42, 1))))

    p, a = first(plain), first(aug)
    assert torch.equal(p["labels"], a["labels"]) and torch.equal(p["input_ids"], p["labels"])
    assert not torch.equal(a["input_ids"], a["labels"])
    assert torch.equal(first(aug)["input_ids"], a["input_ids"])  # the same batch again
    torch.manual_seed(0)
    model = build_model(plain, data)
    device = torch.device("cpu")
    assert evaluate(model, data, aug, device) == evaluate(model, data, plain, device)


def test_augmenting_eval_data_is_refused() -> None:
    d = causal_lm()
    d["data"]["augment"] = {"p": 0.1, "apply_to": ["train", "eval"]}
    with pytest.raises(StudyFileError) as e:
        validate_study(d, "s.yaml")
    assert str(e.value).startswith(
        "s.yaml: data.augment.apply_to: augmentation applies to training examples only; 'eval' cannot be augmented"
    )


def test_augmentation_keys_are_searchable() -> None:
    d: dict[str, Any] = classification()
    d["data"]["augment"] = {"p": 0.1}
    d["search_space"]["data.augment.p"] = {"type": "float", "low": 0.0, "high": 0.3}
    d["search_space"]["data.augment.ops"] = {"type": "categorical", "choices": ["delete", "delete,swap"]}
    cfg = validate_study(d)
    run = cfg.trial_run({"learning_rate": 1e-3, "p": 0.2, "ops": "delete,swap"})
    assert run.data.augment is not None
    assert (run.data.augment.p, run.data.augment.ops) == (0.2, ["delete", "swap"])
    plain = classification()
    assert (
        validate_study(plain).fingerprint()
        != validate_study({**d, "search_space": plain["search_space"]}).fingerprint()
    )


def test_word_ids_are_cached_for_classification(tmp_path: Path) -> None:
    from studies import write_sentiment_csv
    from trainers.config import RunConfig
    from trainers.data import prepare

    csv = write_sentiment_csv(tmp_path / "train.csv")
    study = classification(csv=str(csv))
    data_cfg = {**study["data"], "files": {"train": str(csv)}, "augment": {"p": 0.1}}
    data = prepare(
        RunConfig.model_validate({"task": study["task"], "model": study["model"], "data": data_cfg}), tmp_path
    )
    assert data.train_words is not None and data.train_words.shape == data.train_ids.shape
    assert data.train_lengths is not None
    for words, n in zip(data.train_words, data.train_lengths, strict=True):
        assert (words[n:] == -1).all()  # padding belongs to no word
        real = words[:n][words[:n] >= 0]
        assert real[0] == 0 and real[-1] == 3 and (np.diff(real) >= 0).all()  # four words, in order
