"""The tail of a study: cores of workers with nothing left to run go to the trials still running.

At the end of a study the last trials run while the other workers idle: with 2 CPU workers of 1 thread,
one core sits idle for up to a whole trial (12.8% of the quickstart's machine time in
``benchmarks/overhead.py``). Once no trial is left to start, each idle CPU worker's threads are lent to
the running trials, and each running worker raises its torch thread count at its next optimizer step
(``torch.set_num_threads``: intra-op parallelism grows on the fly; the trial's results do not depend on
the thread count beyond float rounding). A core goes to the trial with the most remaining work per thread,
so the trial that would finish last gets the most help. When a worker starts a trial again (a re-queued
one), it is back to its own threads.

This module decides; ``hpo.orchestrator`` applies the plan through each worker's shared thread count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Busy:
    """A worker running a trial: its own threads and the optimizer steps its trial has left."""

    worker: int
    threads: int
    steps_left: int


def lend_idle_cores(running: list[Busy], idle_threads: int) -> dict[int, int]:
    """Threads for each running worker: its own, plus the idle workers' ``idle_threads`` handed out one at a
    time to the trial with the most steps left per thread (ties: the lower worker id)."""
    plan = {b.worker: b.threads for b in running}
    left = {b.worker: max(b.steps_left, 0) for b in running}
    for _ in range(idle_threads if running else 0):
        w = max(plan, key=lambda k: (left[k] / plan[k], -k))
        if left[w] == 0:
            break  # every trial is at its end: more threads help none
        plan[w] += 1
    return plan
