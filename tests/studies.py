"""The tiny studies the tests build: one base per kind, and the overrides each test needs.

- ``causal_lm``: a one-layer GPT-2 built from scratch on the built-in Python help topics; a 16-step trial
  trains in about a second, so tests that run the real trainer use it.
- ``classification``: a one-layer BERT built from scratch on a CSV of sentences (``write_sentiment_csv``
  writes one).
- ``curve``: the study run with ``doubles.CurveRunner``, which trains nothing: only its search space,
  fidelity and policies matter.

Each builder returns a fresh dict. A section passed as a keyword replaces the base's section whole (so a
test's study reads as "the base, with these sections"); ``None`` removes the section (hpo's default then
applies). Tests that change one key inside a section do it on the returned dict.

The studies whose fingerprints tests/test_config.py pins stay there, unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Study = dict[str, Any]

TINY_GPT2: dict[str, Any] = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}
TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
LEARNING_RATE: dict[str, Any] = {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}


def _study(base: Study, name: str, n_trials: int, storage: str | None, over: dict[str, Any]) -> Study:
    head: dict[str, Any] = {"name": name, "n_trials": n_trials}
    if storage is not None:
        head["storage"] = storage
    d: Study = {"study": head, **base}
    for key, value in over.items():
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value
    return d


def tiny_gpt2(**from_config: Any) -> dict[str, Any]:
    """The ``model`` section of ``causal_lm``: a fresh copy, with ``from_config`` keys changed."""
    return {"from_config": {**TINY_GPT2, **from_config}, "tokenizer": {"train_vocab_size": 300}}


def causal_lm(name: str = "tiny", n_trials: int = 3, storage: str | None = None, **over: Any) -> Study:
    """A tiny GPT-2 on pydoc_topics: random sampler, no pruner, 16 steps with an eval every 8."""
    base: Study = {
        "task": "causal_lm",
        "objective": {"metric": "perplexity"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "fidelity": {"max_steps": 16, "eval_every": 8, "eval_batches": 2},
        "model": tiny_gpt2(),
        "data": {"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 16, "max_eval_samples": 4},
        "search_space": {"training.learning_rate": dict(LEARNING_RATE)},
    }
    return _study(base, name, n_trials, storage, over)


def classification(
    name: str = "cls", n_trials: int = 2, storage: str | None = None, csv: str = "data/train.csv", **over: Any
) -> Study:
    """A tiny BERT classifying the ``sentence`` column of ``csv`` (see ``write_sentiment_csv``)."""
    base: Study = {
        "task": "sequence_classification",
        "objective": {"metric": "accuracy"},
        "sampler": {"name": "random", "seed": 0},
        "fidelity": {"max_steps": 4, "eval_every": 2},
        "model": {"from_config": dict(TINY_BERT), "tokenizer": {"train_vocab_size": 300}},
        "data": {"files": {"train": csv}, "text_column": "sentence", "max_length": 32},
        "training": {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4},
        "search_space": {"training.learning_rate": dict(LEARNING_RATE)},
        "resources": {"workers": 1},
    }
    return _study(base, name, n_trials, storage, over)


def curve(name: str = "t", n_trials: int = 6, storage: str | None = None, **over: Any) -> Study:
    """The study a ``doubles.CurveRunner`` runs: 20 steps with an eval every 5, learning rate up to 1."""
    base: Study = {
        "task": "causal_lm",
        "objective": {"metric": "eval_loss"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "fidelity": {"max_steps": 20, "eval_every": 5},
        "model": {"from_config": {"model_type": "gpt2"}, "tokenizer": {"train_vocab_size": 256}},
        "data": {"builtin": "pydoc_topics"},
        "search_space": {"training.learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True}},
    }
    return _study(base, name, n_trials, storage, over)


POS = "good great fine lovely superb".split()
NEG = "bad awful poor dull boring".split()


def sentiment_rows(n: int) -> list[tuple[str, str]]:
    """``n`` sentences of four words, alternately all positive ("pos") and all negative ("neg")."""
    out = []
    for i in range(n):
        words = POS if i % 2 == 0 else NEG
        out.append((" ".join(words[(i + k) % len(words)] for k in range(4)), "pos" if i % 2 == 0 else "neg"))
    return out


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "sentence,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def write_sentiment_csv(path: Path, n: int = 40) -> Path:
    """The CSV ``classification`` reads: a ``sentence,label`` header and ``n`` rows."""
    return write_csv(path, sentiment_rows(n))
