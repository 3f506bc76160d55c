"""Model soups: averaging the weights of fine-tuned models that share architecture and initialisation.

Averaging weights only makes sense for models that started from the same point and stayed in one basin
(Wortsman et al., 2022). hpo decides that from the run configs the members were trained with: the same
``model.name_or_path`` (fine-tuned from the same pretrained weights) or the same ``model.from_config``
(built from scratch), the same ``training.seed`` (the seed draws every new weight: a from-scratch model, a
new classification head), no LoRA adapter, and equal parameter names and shapes. Searched settings that
change no weight at initialisation (learning rate, dropout, weight decay, batch size) may differ. Two
from-scratch models with the same config and seed start from identical weights, so they count as sharing
initialisation like fine-tuned ones; whether averaging them helps is what the selection split measures.

``uniform_soup`` averages every member; ``greedy_soup`` adds members best-first and keeps each one only
when the soup's score on the selection split does not get worse. Both work on state dicts (tensors), so
they are tested without training anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from trainers.config import RunConfig


def incompatibility(runs: Sequence[RunConfig], state_dicts: Sequence[dict[str, torch.Tensor]]) -> str | None:
    """Why these members cannot be souped, or None when they can."""
    if len(runs) < 2:
        return "a soup needs at least 2 members"
    first = runs[0]
    for r in runs:
        if r.model.peft is not None:
            return "LoRA members: their saved weights are adapters, not whole models"
    for name, get in (
        ("model.name_or_path", lambda r: r.model.name_or_path),
        ("model.from_config", lambda r: r.model.from_config),
        ("training.seed", lambda r: r.training.seed),
        ("task", lambda r: r.task),
    ):
        values = {repr(get(r)) for r in runs}
        if len(values) > 1:
            return f"members differ in {name} ({', '.join(sorted(values))}): they do not share initialisation"
    shapes = [{k: tuple(v.shape) for k, v in sd.items()} for sd in state_dicts]
    for other in shapes[1:]:
        if other != shapes[0]:
            diff = sorted(set(other.items()) ^ set(shapes[0].items()))
            return f"members differ in architecture (parameter {diff[0][0]!r} differs)"
    del first
    return None


def average(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None) -> dict[str, Any]:
    """The weighted mean of floating-point tensors; other tensors (integer buffers) come from the first."""
    w = list(weights) if weights is not None else [1.0] * len(state_dicts)
    total = float(sum(w))
    out: dict[str, Any] = {}
    for key, first in state_dicts[0].items():
        if not torch.is_floating_point(first):
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for sd, wi in zip(state_dicts, w, strict=True):
            if wi:
                acc += sd[key].to(torch.float64) * (wi / total)
        out[key] = acc.to(first.dtype)
    return out


def uniform_soup(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    return average(state_dicts)


def greedy_soup(
    state_dicts: Sequence[dict[str, torch.Tensor]],
    order: Sequence[int],
    score: Callable[[dict[str, Any]], float],
    better_or_equal: Callable[[float, float], bool],
) -> tuple[list[int], float]:
    """Wortsman's greedy soup: members in ``order`` (best first); keep each that does not lower the score.

    ``score`` evaluates a state dict on the selection split; returns the members kept and their score.
    """
    kept = [order[0]]
    best = score(dict(state_dicts[order[0]]))
    for i in order[1:]:
        trial = [*kept, i]
        s = score(average([state_dicts[j] for j in trial]))
        if better_or_equal(s, best):
            kept, best = trial, s
    return kept, best
