"""What the machine has, and how many workers with how many threads to start on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from hpo.config import ResourcesSection
from hpo.worker import WorkerSpec


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int


def cpu_cores() -> int:
    """Cores this process may use (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def detect_gpus() -> list[Gpu]:
    """CUDA GPUs through nvidia-smi: no torch import (seconds) in the orchestrator just to count them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        idx, name, mem = (s.strip() for s in line.split(","))
        gpus.append(Gpu(int(idx), name, int(float(mem))))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        keep = {int(v) for v in visible.split(",") if v.strip().isdigit()}
        gpus = [g for g in gpus if g.index in keep]
    return gpus


# Environment of every worker: passive OpenMP waiting avoids 1.7-5x slowdowns when workers share cores,
# and the tokenizers library must not start its own thread pool inside a worker.
_BASE_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    # Library chatter, per trial and per worker, that says nothing about the user's study.
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def plan_workers(res: ResourcesSection, max_workers: int | None = None, busy_cores: int = 0) -> list[WorkerSpec]:
    """One worker per selected GPU, or CPU workers such that workers x threads <= cores.

    ``busy_cores``: cores other hpo runs on this host already use (``hpo.hostload``); planned around.
    """
    cores = max(1, cpu_cores() - busy_cores)
    gpus = [] if res.devices == "cpu" else detect_gpus()
    if isinstance(res.devices, list):
        known = {g.index for g in gpus}
        gpus = [g for g in gpus if g.index in set(res.devices)]
        missing = sorted(set(res.devices) - known)
        if missing:
            raise ValueError(f"resources.devices: no CUDA device {missing} on this machine (found {sorted(known)})")
    if gpus:
        per = res.gpus_per_trial
        if per > len(gpus):
            raise ValueError(f"resources.gpus_per_trial: {per} GPUs per trial, but the machine has {len(gpus)}")
        groups = [gpus[i : i + per] for i in range(0, len(gpus) - per + 1, per)]
        slots = [g for g in groups for _ in range(res.trials_per_gpu)]  # several small trials per GPU
        n = len(slots) if res.workers == "auto" else min(res.workers, len(slots))
        if max_workers is not None:
            n = max(1, min(n, max_workers))
        threads = res.threads_per_worker if res.threads_per_worker != "auto" else max(1, cores // n)
        specs = []
        for i, group in enumerate(slots[:n]):
            ids = ",".join(str(g.index) for g in group)
            env = {**_BASE_ENV, "CUDA_VISIBLE_DEVICES": ids, "OMP_NUM_THREADS": str(threads)}
            specs.append(WorkerSpec(i, threads, env, f"cuda:{ids}", processes=per))
        return specs
    # CPU: small models train faster as N one-thread workers than as one N-thread worker (measured: two
    # 1-thread workers do 2x the steps of one 2-thread worker on a tiny GPT-2).
    # On CPU, gpus_per_trial > 1 means that many 1-thread processes per trial (the multi-process path
    # without GPUs: for testing it, rarely faster).
    per = res.gpus_per_trial
    threads = 1 if res.threads_per_worker == "auto" else min(res.threads_per_worker, cores)
    threads = 1 if per > 1 else threads
    # More CPU workers than cores only adds contention (each one trains): cap at the cores.
    n = max(1, cores // (threads * per)) if res.workers == "auto" else min(res.workers, max(1, cores // per))
    if max_workers is not None:
        n = max(1, min(n, max_workers))
    if n * threads > cores:
        threads = max(1, cores // n)
    env = {**_BASE_ENV, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return [WorkerSpec(i, threads, dict(env), "cpu", processes=per) for i in range(n)]
