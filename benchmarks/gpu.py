"""GPU check: hpo's trial throughput against a bare loop, GPU utilisation during a study, a multi-GPU trial.

On a machine with NVIDIA GPUs (issue 13 §4):

(a) **throughput**: one trial through hpo's trainer (``trainers.loop.train``: accelerate, hpo's batch order,
    evals, reporting) against a bare torch loop (the same model built by hpo, ``torch.optim.AdamW``,
    ``torch.autocast`` at the same precision, the same batches, no evals), on the same GPU, batch and
    steps; training tokens/s of each, timed over the optimizer steps after ``--warmup`` steps (CUDA
    synchronised). Target: hpo >= 90% of the bare loop.
(b) **utilisation**: ``hpo run`` of a small study with one worker per GPU (hpo's default plan), the GPUs'
    utilisation sampled every 0.5 s (pynvml when installed, else ``nvidia-smi``) from the first trial's
    start to the last trial's end. Target: >= 90% busy.
(c) **multi-GPU trial**, with more than one GPU: ``accelerate launch --num_processes N -m hpo.cli train``
    of the study's best trial (``hpo export --trial-length``), tokens/s against one process.

``--dry-run`` runs all of it on CPU with a tiny model, a 2-trial study and (c) as a 1-process launch, and
samples "utilisation" from /proc/stat: it tests the script end to end (CI runs it; tests/test_bench_gpu.py),
it measures nothing about GPUs.

Usage: python benchmarks/gpu.py [--dry-run] [--steps N] [--batch B] [--json PATH]
Prints a table and writes JSON (default benchmarks/results/gpu.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_THROUGHPUT = 0.90
TARGET_BUSY = 0.90


def study_spec(dry: bool, steps: int, batch: int, n_trials: int) -> dict[str, Any]:
    """A GPT-2 on the pydoc topics (offline): big enough to keep a GPU busy, tiny for the dry run."""
    model = (
        {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 64}
        if dry
        else {"model_type": "gpt2", "n_layer": 8, "n_head": 8, "n_embd": 512, "n_positions": 256}
    )
    return {
        "study": {"name": "gpu-check", "n_trials": n_trials},
        "task": "causal_lm",
        "objective": {"metric": "eval_loss"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "fidelity": {"max_steps": steps, "eval_every": max(1, steps // 2), "eval_batches": 2},
        "model": {"from_config": model, "tokenizer": {"train_vocab_size": 2048}},
        "data": {"builtin": "pydoc_topics", "max_length": 64 if dry else 256},
        "training": {"per_device_train_batch_size": batch, "per_device_eval_batch_size": batch},
        "search_space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
    }


# ------------------------------------------------------------------------------------------ (a) throughput


def throughput(cfg: Any, cache_dir: Path, warmup: int) -> dict[str, Any]:
    import torch

    from trainers.base import NullReporter, quiet_libraries
    from trainers.data import prepare
    from trainers.loop import train
    from trainers.models import build_model

    quiet_libraries()
    run = cfg.trial_run({"learning_rate": 3e-4})
    data = prepare(run, cache_dir)

    class StepTimes(NullReporter):
        """Wall time of each optimizer step, CUDA-synchronised: the same clock as the bare loop's."""

        def __init__(self) -> None:
            self.t: list[float] = []

        def on_start(self, step: int, total_steps: int) -> None:
            _sync()
            self.t.append(time.perf_counter())

        def on_step(self, step: int) -> None:
            _sync()
            self.t.append(time.perf_counter())

    rep = StepTimes()
    res = train(run, rep, cache_dir, data)
    steps = res.steps
    tokens_per_step = res.tokens / steps
    hpo_s = rep.t[-1] - rep.t[min(warmup, len(rep.t) - 1)]
    hpo_tps = tokens_per_step * (steps - warmup) / hpo_s if hpo_s > 0 else float("nan")

    # The bare loop: hpo's model, AdamW, autocast at the trial's precision, the same batches in order.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(run.training.seed)
    model = build_model(run, data).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=run.training.weight_decay)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(res.precision)
    bs = run.training.per_device_train_batch_size
    ids = torch.as_tensor(data.train_ids[: bs * max(1, len(data.train_ids) // bs)], dtype=torch.long)
    n_batches = len(ids) // bs
    times: list[float] = []
    for step in range(steps):
        batch = ids[(step % n_batches) * bs : (step % n_batches + 1) * bs].to(device, non_blocking=True)
        _sync()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t)
    bare_s = sum(times[warmup:])
    bare_tps = tokens_per_step * (steps - warmup) / bare_s if bare_s > 0 else float("nan")
    return {
        "device": res.device,
        "precision": res.precision,
        "steps": steps,
        "warmup_steps_excluded": warmup,
        "batch": bs,
        "tokens_per_step": tokens_per_step,
        "hpo_tokens_per_s": round(hpo_tps, 1),
        "bare_tokens_per_s": round(bare_tps, 1),
        "ratio": round(hpo_tps / bare_tps, 3) if bare_tps else None,
        "met": bool(bare_tps) and hpo_tps / bare_tps >= TARGET_THROUGHPUT,
    }


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- (b) utilisation


class Utilisation:
    """GPU busy % of every GPU every ``every`` s (pynvml, else nvidia-smi); the dry run samples CPU busy."""

    def __init__(self, dry: bool, every: float = 0.5) -> None:
        self.dry, self.every = dry, every
        self.samples: list[tuple[float, list[float]]] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._read = self._pick()

    def _pick(self) -> Any:
        if self.dry:
            self.source = "/proc/stat (dry run: CPU busy, not a GPU)"
            last = _cpu_times()

            def cpu() -> list[float]:
                nonlocal last
                now = _cpu_times()
                busy, total = now[0] - last[0], now[1] - last[1]
                last = now
                return [100.0 * busy / total if total else 0.0]

            return cpu
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.source = "pynvml"
            return lambda: [float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in handles]
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"

            def smi() -> list[float]:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                return [float(x) for x in out.split()]

            return smi
        return lambda: []

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append((time.time(), self._read()))
            except Exception:
                pass

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def busy(self, t0: float, t1: float) -> list[float | None]:
        """Mean busy share of each device between t0 and t1."""
        inside = [v for t, v in self.samples if t0 <= t <= t1 and v]
        if not inside:
            return []
        return [round(statistics.fmean(v[i] for v in inside) / 100.0, 3) for i in range(len(inside[0]))]


def _cpu_times() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def utilisation(spec: dict[str, Any], tmp: Path, cache_dir: Path, dry: bool) -> dict[str, Any]:
    import optuna
    import yaml

    spec = json.loads(json.dumps(spec))
    spec["study"]["storage"] = f"sqlite:///{tmp}/gpu-check.db"
    study_file = tmp / "gpu-check.yaml"
    study_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {
        **os.environ,
        "HPO_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with Utilisation(dry) as u, open(tmp / "run.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "hpo.cli", "run", str(study_file)], env=env, stdout=log, stderr=log)
    if rc.returncode != 0:
        sys.exit(f"hpo run failed: see {tmp / 'run.log'}")
    study = optuna.load_study(study_name="gpu-check", storage=spec["study"]["storage"])
    trials = [t for t in study.get_trials() if t.datetime_start and t.datetime_complete]
    t0 = min(t.datetime_start.timestamp() for t in trials if t.datetime_start)
    t1 = max(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)
    busy = u.busy(t0, t1)
    return {
        "source": u.source,
        "trials": len(trials),
        "workers": len({t.user_attrs.get("worker") for t in trials}),
        "devices": sorted({str(t.user_attrs.get("device")) for t in trials}),
        "seconds": round(t1 - t0, 1),
        "samples": sum(1 for t, _ in u.samples if t0 <= t <= t1),
        "busy_per_device": busy,
        "met": bool(busy) and all(b is not None and b >= TARGET_BUSY for b in busy),
        "study_file": str(study_file),
    }


# ------------------------------------------------------------------------------------------- (c) multi-GPU


def multi_gpu(study_file: Path, tmp: Path, cache_dir: Path, n: int, dry: bool) -> dict[str, Any]:
    """``accelerate launch`` of the study's best trial at its own length, N processes against 1."""
    env = {
        **os.environ,
        "HPO_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    export = tmp / "export"
    subprocess.run(
        [sys.executable, "-m", "hpo.cli", "export", str(study_file), "--trial-length", "-o", str(export)],
        env=env,
        check=True,
        capture_output=True,
    )
    out: dict[str, Any] = {"processes": n}
    for procs in sorted({1, n}):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs)]
        cmd += ["--num_machines", "1", "--mixed_precision", "no" if dry else "bf16", "--dynamo_backend", "no"]
        if dry:
            cmd += ["--cpu"]
        cmd += ["-m", "hpo.cli", "train", str(export / "train.yaml"), "-o", str(tmp / f"train-{procs}"), "--force"]
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"accelerate launch ({procs} processes) failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        metrics = json.loads((tmp / f"train-{procs}" / "metrics.json").read_text())
        out[f"{procs}p"] = {"wall_s": round(wall, 1), "metrics": metrics}
    return out


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="everything on CPU with a tiny model (tests the script)")
    ap.add_argument("--steps", type=int, default=None, help="steps per trial (default 200; dry run 6)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 32; dry run 4)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 20; dry 1)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = ap.parse_args()
    dry = args.dry_run
    import torch

    gpus = torch.cuda.device_count()
    if not dry and gpus == 0:
        sys.exit("no CUDA GPU here: run with --dry-run to test the script on CPU")
    steps = args.steps or (6 if dry else 200)
    batch = args.batch or (4 if dry else 32)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 20)
    from hpo.config import validate_study

    tmp = Path(tempfile.mkdtemp(prefix="hpo-gpu-"))
    cache_dir = tmp / "cache"
    spec = study_spec(dry, steps, batch, n_trials=2 if dry else max(2, 2 * gpus))
    cfg = validate_study(json.loads(json.dumps(spec)), "gpu-check.yaml")
    started = dt.datetime.now(dt.timezone.utc)
    result: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "dry_run": dry,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
            "torch": torch.__version__,
        },
        "load_1min_before": round(os.getloadavg()[0], 2),
    }
    print(f"(a) throughput: one trial vs a bare loop, {steps} steps of batch {batch}", flush=True)
    result["throughput"] = a = throughput(cfg, cache_dir, warmup)
    print(f"    hpo {a['hpo_tokens_per_s']} vs bare {a['bare_tokens_per_s']} tokens/s: ratio {a['ratio']}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))  # kept if a later part fails
    print("(b) utilisation during a study, one worker per device", flush=True)
    result["utilisation"] = utilisation(spec, tmp, cache_dir, dry)
    if gpus > 1 or dry:
        n = gpus if gpus > 1 else 1
        print(f"(c) accelerate launch, {n} process(es)", flush=True)
        result["multi_gpu"] = multi_gpu(Path(result["utilisation"]["study_file"]), tmp, cache_dir, n, dry)
    else:
        result["multi_gpu"] = "skipped: one GPU"
    result["load_1min_after"] = round(os.getloadavg()[0], 2)
    b = result["utilisation"]
    print(f"\n{'dry run on CPU: the figures say nothing about GPUs' if dry else 'GPU check'}; {result['machine']}")
    print(
        f"(a) tokens/s hpo {a['hpo_tokens_per_s']} vs bare {a['bare_tokens_per_s']} ({a['device']}, {a['precision']}):"
        f" ratio {a['ratio']} (target >= {TARGET_THROUGHPUT}) -> {'met' if a['met'] else 'MISSED'}"
    )
    print(
        f"(b) busy per device {b['busy_per_device']} over {b['seconds']} s, {b['trials']} trials on "
        f"{b['workers']} worker(s) ({b['source']}; target >= {TARGET_BUSY}) -> {'met' if b['met'] else 'MISSED'}"
    )
    c = result["multi_gpu"]
    if isinstance(c, dict):
        print("(c) " + ", ".join(f"{k}: {v['wall_s']} s" for k, v in c.items() if k.endswith("p")))
    else:
        print(f"(c) {c}")
    print(f"load average (1 min) {result['load_1min_before']} -> {result['load_1min_after']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.json} (files in {tmp})")


if __name__ == "__main__":
    main()
