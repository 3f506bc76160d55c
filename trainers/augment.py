"""Data augmentation (``data.augment``): training batches changed on the fly, reproducibly.

Applied where the training batches are cut (the loop's ``collate_fn``), to training examples only: the eval
split is the yardstick every trial is judged on, so it is never augmented (``apply_to`` accepts ``train``
alone, and says so). Each example drawn in epoch ``e`` is augmented with its own generator, seeded from
(``training.seed``, ``e``, the example's row): a trial replayed (or resumed from a checkpoint) sees exactly
the same augmented batches, and every epoch sees a fresh variant.

- Sequence classification, EDA-style (Wei & Zou 2019) on whole words (the tokenizer's word ids, kept in
  the data cache when ``data.augment`` is set): an example is augmented with probability
  ``n_aug / (n_aug + 1)`` (as if the training set held ``n_aug`` augmented copies of each example), by one
  operation drawn from ``ops``: ``delete`` (each word with probability ``p``, at least one word stays),
  ``swap`` (``max(1, round(p * words))`` swaps of two words) or ``insert`` (as many copies of random words
  inserted at random places; the sequence is cut back to ``data.max_length``). Special tokens stay put.
- Causal LM: each input token is replaced, with probability ``p``, by a random token of the vocabulary
  (``lm_mode: replace``) or by the pad token (``mask``: GPT-style tokenizers have no mask token); the
  labels stay the original tokens, so the model learns to predict the real text from a noisy context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # imported where batches are augmented: reading a study file stays light
    import numpy as np
    import torch

    from trainers.data import PreparedData

Op = Literal["delete", "swap", "insert"]
OPS: tuple[Op, ...] = ("delete", "swap", "insert")


class AugmentConfig(BaseModel):
    """``data.augment``: ``p``, ``n_aug``, ``ops`` and ``lm_mode`` are searchable like any key."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    p: float = Field(default=0.1, ge=0.0, le=1.0)  # per word (classification) / per token (LM)
    n_aug: int = Field(default=1, ge=0)  # classification: augmented copies per example (0: none)
    ops: list[Op] = Field(default_factory=lambda: list(OPS), min_length=1)
    lm_mode: Literal["replace", "mask"] = "replace"
    apply_to: list[str] = Field(default_factory=lambda: ["train"])

    @field_validator("ops", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, str):  # "delete,swap": a search-space categorical names a set
            v = [n.strip() for n in v.split(",")]
        return v

    @field_validator("apply_to")
    @classmethod
    def _train_only(cls, v: list[str]) -> list[str]:
        other = [s for s in v if s != "train"]
        if other or not v:
            raise ValueError(
                f"augmentation applies to training examples only; {', '.join(map(repr, other)) or 'nothing'} "
                "cannot be augmented: the eval split is what every trial is judged on (use apply_to: [train])"
            )
        return v


def row_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The generator of one example's augmentation in one epoch."""
    import numpy as np

    return np.random.default_rng([seed, epoch, int(row)])


def _groups(ids: np.ndarray, words: np.ndarray) -> tuple[list[int], list[list[int]], list[int]]:
    """(leading special tokens, the words as token lists, trailing special tokens) of one row."""
    n = len(ids)
    start, end = 0, n
    while start < n and words[start] < 0:
        start += 1
    while end > start and words[end - 1] < 0:
        end -= 1
    groups: list[list[int]] = []
    prev = None
    for i in range(start, end):
        w = int(words[i])
        if w < 0 or w != prev:  # a special token inside (a pair's separator) is a word of its own
            groups.append([])
        groups[-1].append(int(ids[i]))
        prev = w
    return [int(x) for x in ids[:start]], groups, [int(x) for x in ids[end:n]]


def eda(ids: np.ndarray, words: np.ndarray, rng: np.random.Generator, op: str, p: float, width: int) -> list[int]:
    """One EDA operation on one row's real tokens; the result has at most ``width`` tokens."""
    head, groups, tail = _groups(ids, words)
    if groups:
        if op == "delete":
            kept = [g for g in groups if rng.random() >= p]
            groups = kept or [groups[int(rng.integers(len(groups)))]]
        else:
            n_ops = max(1, round(p * len(groups)))
            for _ in range(n_ops):
                if op == "swap" and len(groups) > 1:
                    a, b = rng.choice(len(groups), size=2, replace=False)
                    groups[a], groups[b] = groups[b], groups[a]
                elif op == "insert":
                    word = groups[int(rng.integers(len(groups)))]
                    groups.insert(int(rng.integers(len(groups) + 1)), list(word))
    body = [t for g in groups for t in g]
    body = body[: max(0, width - len(head) - len(tail))]
    return head + body + tail


class Augmenter:
    """Augments the training batches of one run (``collate``): built by the loop when ``data.augment`` is set."""

    def __init__(self, cfg: AugmentConfig, task: str, seed: int) -> None:
        self.cfg, self.task, self.seed = cfg, task, seed

    def rows(self, data: PreparedData, rows: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The (augmented) token ids of training ``rows`` in ``epoch``, and their lengths (classification)."""
        import numpy as np

        c = self.cfg
        ids = data.train_ids[rows].astype(np.int64)
        if self.task == "causal_lm":
            out = ids.copy()
            for i, r in enumerate(rows):
                rng = row_rng(self.seed, epoch, int(r))
                hit = rng.random(ids.shape[1]) < c.p
                if c.lm_mode == "replace":
                    out[i, hit] = rng.integers(0, data.vocab_size, size=int(hit.sum()))
                else:
                    out[i, hit] = data.pad_id
            return out, None
        assert data.train_lengths is not None
        lengths = data.train_lengths[rows].astype(np.int64)
        words = data.train_words[rows] if data.train_words is not None else None
        width = ids.shape[1]
        out = np.full_like(ids, data.pad_id)
        new_lengths = lengths.copy()
        chance = c.n_aug / (c.n_aug + 1)
        for i, r in enumerate(rows):
            n = int(lengths[i])
            toks = ids[i, :n]
            rng = row_rng(self.seed, epoch, int(r))
            if chance > 0 and rng.random() < chance:
                w = words[i, :n] if words is not None else np.arange(n)  # no word ids: each token a word
                op = c.ops[int(rng.integers(len(c.ops)))]
                new = eda(toks, w, rng, op, c.p, width)
            else:
                new = toks.tolist()
            out[i, : len(new)] = new
            new_lengths[i] = len(new)
        return out, new_lengths

    def __call__(
        self, batch: dict[str, torch.Tensor], data: PreparedData, rows: np.ndarray, epoch: int
    ) -> dict[str, torch.Tensor]:
        """``batch`` (cut from ``rows`` as the loop cuts it) with augmented inputs; labels unchanged."""
        import numpy as np
        import torch

        ids, lengths = self.rows(data, rows, epoch)
        if lengths is None:  # causal LM: the labels stay the original tokens
            return {**batch, "input_ids": torch.from_numpy(ids)}
        width = int(lengths.max())
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        return {
            **batch,
            "input_ids": torch.from_numpy(np.ascontiguousarray(ids[:, :width])),
            "attention_mask": torch.from_numpy(mask),
        }
