"""Scores of generated text against references, from the libraries practitioners cite, offline.

ROUGE comes from Google's ``rouge-score`` (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``; Porter stemming,
F-measure, averaged over examples, like Hugging Face's summarisation examples); BLEU and chrF from
``sacrebleu`` (corpus-level, its default tokenisation); ``exact_match`` is the share of predictions equal to
their reference after whitespace normalisation. Every score is on a 0-100 scale.

``rougeLsum`` needs one sentence per line. Hugging Face's examples split with nltk's punkt model, which is
a download; here sentences end at ``.``, ``!`` or ``?`` followed by whitespace (a regular expression), which
needs nothing and agrees with punkt on ordinary prose (abbreviations such as "Mr." split differently).
"""

from __future__ import annotations

import re
from typing import Literal

# Every generation metric, and which way is better (all of them: higher).
GENERATION_METRICS: dict[str, Literal["minimize", "maximize"]] = {
    "rouge1": "maximize",
    "rouge2": "maximize",
    "rougeL": "maximize",
    "rougeLsum": "maximize",
    "bleu": "maximize",
    "chrf": "maximize",
    "exact_match": "maximize",
}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """``text`` with one sentence per line (what ``rougeLsum`` compares): no model, no download."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every generation metric of ``predictions`` against ``references`` (same length, one reference each)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return dict.fromkeys(GENERATION_METRICS, 0.0)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        # rougeLsum reads "\n" as the sentence boundary; the other types ignore newlines.
        scores = scorer.score(split_sentences(ref), split_sentences(pred))
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    n = len(references)
    out = {k: 100.0 * v / n for k, v in sums.items()}
    out["bleu"] = float(sacrebleu.corpus_bleu(predictions, [references]).score)
    out["chrf"] = float(sacrebleu.corpus_chrf(predictions, [references]).score)
    out["exact_match"] = (
        100.0 * sum(_normalise(p) == _normalise(r) for p, r in zip(predictions, references, strict=False)) / n
    )
    return out
