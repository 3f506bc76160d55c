"""Inference latency per example, measured the same way for every trial (the ``latency_ms`` cost metric).

After training, the model runs forward passes (no gradients, eval mode) over one fixed batch — the first
eval rows (up to 8, ``trainers.loop.LATENCY_ROWS``), so every trial of a study is timed on the same rows:
one warm-up pass, then ``repeats`` timed passes; the result is the median pass time divided by the batch's
rows, in milliseconds. On CUDA the device
is synchronised around each pass. The figure includes the worker's CPU threads and the machine's load:
compare trials of one study on one machine, not numbers across machines.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def latency_ms(model: torch.nn.Module, batch: dict[str, Any], device: torch.device, repeats: int = 3) -> float:
    """Median milliseconds per example of a forward pass over ``batch``."""
    rows = int(next(iter(batch.values())).shape[0])
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # inference: no loss
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(repeats + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                model(**inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i > 0:  # the first pass warms caches and allocators
                    times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times) / max(rows, 1)
