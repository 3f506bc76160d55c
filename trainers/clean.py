"""Data cleaning (``data.clean``): rules applied to the raw records before tokenisation, with counts.

``clean_records(train, evals, rules)`` takes the column dicts ``trainers.data.load_records`` returns and
gives them back cleaned, with how many rows each rule removed from each split. The rules, in order:

1. ``unicode``: NFC / NFKC normalisation of every text (counted as rows changed, none removed);
2. ``drop_empty``: rows whose text (or pair, or label) is missing, not a string, or only whitespace;
3. ``dedup``: repeated rows within a split, compared ``exact`` (text as is) or ``normalized`` (NFKC,
   case-folded, punctuation removed, whitespace collapsed); the first one stays;
4. ``leakage``: training rows whose text (compared as ``dedup`` compares, exactly if dedup is off) is also
   in the eval split: the eval split is the yardstick, so the copy leaves the training side;
5. ``min_length`` / ``max_length`` (in ``length_unit``: words, or tokens of the run's tokenizer): training
   rows only, so every setting is judged on the same eval rows;
6. ``min_label_count``: labels with fewer training rows than that are dropped from both splits (a class
   the model can barely see is not one to score it on).

The counts (``{rule: {"train": n, "eval": n}}``) go into the data cache's ``meta.json`` and from there into
the trial's result and the study's user attributes (``data_clean``). Pure Python: no torch, no numpy.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RULES = ("unicode", "empty", "duplicates", "leakage", "min_length", "max_length", "rare_labels")
# Keys that change the eval rows: trials that differed in them would be judged on different rows, so they
# are set for a study, never searched (hpo.config refuses them in search_space).
EVAL_KEYS = ("unicode", "drop_empty", "dedup", "min_label_count")


class CleanConfig(BaseModel):
    """``data.clean``: what to remove before tokenising. Every rule is part of the data cache key."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    unicode: Literal["NFC", "NFKC"] | None = "NFKC"
    drop_empty: bool = True  # empty, whitespace-only or non-text rows (else: refused, naming the row)
    dedup: Literal["none", "exact", "normalized"] = "exact"
    leakage: bool = True  # training rows that also appear in the eval split
    min_length: int = Field(default=0, ge=0)  # training rows shorter than this are dropped
    max_length: int | None = Field(default=None, ge=1)  # training rows longer than this are dropped
    length_unit: Literal["words", "tokens"] = "words"
    min_label_count: int = Field(default=0, ge=0)  # classification: labels with fewer training rows

    @model_validator(mode="after")
    def _check(self) -> CleanConfig:
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(
                f"`min_length <= max_length` must hold, but got (min_length={self.min_length}, "
                f"max_length={self.max_length})."
            )
        return self

    @property
    def needs_tokens(self) -> bool:
        return self.length_unit == "tokens" and (self.min_length > 0 or self.max_length is not None)


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+", re.UNICODE)


def normalized(text: str) -> str:
    """The form ``dedup: normalized`` compares: NFKC, case-folded, no punctuation, single spaces."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", t)).strip()


Columns = dict[str, list[Any]]
Counts = dict[str, dict[str, int]]


def _keep(cols: Columns, keep: list[bool]) -> Columns:
    return {k: [v for v, ok in zip(vals, keep, strict=True) if ok] for k, vals in cols.items()}


def _texts(cols: Columns) -> list[tuple[Any, ...]]:
    """Each row's text (and pair): what duplicates and lengths are judged on."""
    pair = cols.get("text_pair")
    return [(t,) if pair is None else (t, pair[i]) for i, t in enumerate(cols["text"])]


def clean_records(
    train: Columns,
    evals: Columns,
    rules: CleanConfig,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
) -> tuple[Columns, Columns, Counts]:
    """The two splits cleaned by ``rules``, and what each rule did per split (see the module docstring).

    ``count_tokens`` (texts -> token counts) is needed for ``length_unit: tokens``; without it the length
    rules are left for a second call (``length_filter``) once the tokenizer exists.
    """
    counts: Counts = {r: {"train": 0, "eval": 0} for r in RULES}
    splits = {"train": train, "eval": evals}

    if rules.unicode is not None:
        form = rules.unicode
        for name, cols in splits.items():
            for col in ("text", "text_pair"):
                if col not in cols:
                    continue
                new = [unicodedata.normalize(form, v) if isinstance(v, str) else v for v in cols[col]]
                changed = sum(1 for a, b in zip(cols[col], new, strict=True) if a != b)
                counts["unicode"][name] += changed
                splits[name] = cols = {**cols, col: new}

    if rules.drop_empty:
        for name, cols in splits.items():
            keep = [
                all(isinstance(v, str) and v.strip() for v in row)
                and ("label" not in cols or cols["label"][i] is not None)
                for i, row in enumerate(_texts(cols))
            ]
            counts["empty"][name] = keep.count(False)
            splits[name] = _keep(cols, keep)

    key: Callable[[tuple[Any, ...]], Any] = (
        (lambda row: tuple(normalized(str(v)) for v in row)) if (rules.dedup == "normalized") else (lambda row: row)
    )
    if rules.dedup != "none":
        for name, cols in splits.items():
            seen: set[Any] = set()
            keep = []
            for row in _texts(cols):
                k = key(row)
                keep.append(k not in seen)
                seen.add(k)
            counts["duplicates"][name] = keep.count(False)
            splits[name] = _keep(cols, keep)

    if rules.leakage:
        in_eval = {key(row) for row in _texts(splits["eval"])}
        keep = [key(row) not in in_eval for row in _texts(splits["train"])]
        counts["leakage"]["train"] = keep.count(False)
        splits["train"] = _keep(splits["train"], keep)

    if rules.length_unit == "words" or count_tokens is not None:
        splits["train"] = length_filter(splits["train"], rules, counts, count_tokens)

    if rules.min_label_count > 0 and "label" in splits["train"]:
        per_label = Counter(str(v) for v in splits["train"]["label"])
        rare = {lab for lab, n in per_label.items() if n < rules.min_label_count}
        for name, cols in splits.items():
            if "label" in cols:
                keep = [str(v) not in rare for v in cols["label"]]
                counts["rare_labels"][name] = keep.count(False)
                splits[name] = _keep(cols, keep)
    return splits["train"], splits["eval"], counts


def length_filter(
    cols: Columns,
    rules: CleanConfig,
    counts: Counts,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
) -> Columns:
    """Training rows within [min_length, max_length] (words, or tokens through ``count_tokens``)."""
    if rules.min_length == 0 and rules.max_length is None:
        return cols
    joined = [" ".join(str(v) for v in row) for row in _texts(cols)]
    if rules.length_unit == "tokens":
        assert count_tokens is not None
        lengths = count_tokens(joined)
    else:
        lengths = [len(t.split()) for t in joined]
    short = [n < rules.min_length for n in lengths]
    long = [rules.max_length is not None and n > rules.max_length for n in lengths]
    counts["min_length"]["train"] += sum(short)
    counts["max_length"]["train"] += sum(long)
    return _keep(cols, [not (s or lg) for s, lg in zip(short, long, strict=True)])


def summary(counts: Counts) -> str:
    """'duplicates 98 (train 90, eval 8), leakage 12 (train)': the rules that removed or changed rows."""
    parts = []
    for rule in RULES:
        c = counts.get(rule) or {}
        tr, ev = int(c.get("train", 0)), int(c.get("eval", 0))
        if tr + ev == 0:
            continue
        verb = "changed " if rule == "unicode" else ""
        parts.append(f"{rule} {verb}{tr + ev} (train {tr}, eval {ev})")
    kept = counts.get("kept")
    tail = f"; kept train {kept.get('train')}, eval {kept.get('eval')}" if isinstance(kept, dict) else ""
    return (", ".join(parts) or "nothing removed") + tail
