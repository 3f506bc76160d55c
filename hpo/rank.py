"""Trials that span several processes (``resources.gpus_per_trial > 1``): data parallel with accelerate.

The worker launches ``accelerate launch --num_processes N -m hpo.rank CONTROL_DIR`` for such a trial.
Every rank runs the same training function; rank 0 writes the trial's events (logs, evals, result) to
``CONTROL_DIR/events.jsonl``, which the worker forwards to the orchestrator. A stop (pruned, interrupted)
arrives as the file ``CONTROL_DIR/stop``: rank 0 reads it between optimizer steps and broadcasts the
decision, so every rank stops on the same step.

This module is also the worker-side launcher (``launch``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

STOP_CODES = {"pruned": 1, "interrupted": 2}
STOP_NAMES = {v: k for k, v in STOP_CODES.items()}


class RankReporter:
    """Reporter of one rank: rank 0 writes events; all ranks agree on stops through a broadcast."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.rank = int(os.environ.get("RANK", "0"))
        self._events = open(control / "events.jsonl", "a", buffering=1) if self.rank == 0 else None
        self._flag: Any = None

    def _emit(self, *event: Any) -> None:
        if self._events is not None:
            self._events.write(json.dumps(event) + "\n")

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self._emit("log", step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._emit("eval", step, metrics)

    def stop_reason(self) -> str | None:
        import torch
        import torch.distributed as dist

        code = 0
        if self.rank == 0:
            stop = self.control / "stop"
            if stop.exists():
                code = STOP_CODES.get(stop.read_text().strip(), 1)
        if dist.is_available() and dist.is_initialized():
            if self._flag is None:
                device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
                self._flag = torch.zeros(1, dtype=torch.int32, device=device)
            self._flag.fill_(code)
            dist.broadcast(self._flag, src=0)  # every rank learns rank 0's decision on the same step
            code = int(self._flag.item())
        return STOP_NAMES.get(code) if code else None

    def finish(self, *event: Any) -> None:
        self._emit(*event)
        if self._events is not None:
            self._events.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of each rank (run by ``accelerate launch -m hpo.rank CONTROL_DIR``)."""
    control = Path((argv or sys.argv[1:])[0])
    reporter = RankReporter(control)
    from trainers.base import quiet_libraries

    quiet_libraries()
    from trainers.base import NonFiniteLoss
    from trainers.config import RunConfig
    from trainers.loop import train

    spec = json.loads((control / "run.json").read_text())
    try:
        run = RunConfig.model_validate(spec["run"])
        result = train(run, reporter, spec["cache_dir"])
        # Each rank records where it stopped: a prune must stop all of them on the same step.
        (control / f"rank-{reporter.rank}.json").write_text(json.dumps({"steps": result.steps}))
        reporter.finish("done", result.to_dict())
    except NonFiniteLoss as e:
        reporter.finish("nonfinite", str(e))
    except BaseException as e:
        reporter.finish("error", f"{type(e).__name__}: {e}".splitlines()[0], traceback.format_exc(limit=-8))
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(run: dict[str, Any], cache_dir: str, processes: int, reporter: Any, cpu: bool) -> dict[str, Any]:
    """Run one trial as ``processes`` data-parallel ranks; forward events to ``reporter``; return the result.

    Raises the trainer's error (NonFiniteLoss, RuntimeError) the same way a one-process trial does.
    """
    from trainers.base import NonFiniteLoss

    with tempfile.TemporaryDirectory(prefix="hpo-trial-") as tmp:
        control = Path(tmp)
        (control / "run.json").write_text(json.dumps({"run": run, "cache_dir": cache_dir}))
        (control / "events.jsonl").touch()
        precision = "no"
        if not cpu:
            t = run["training"]
            precision = "fp16" if t.get("fp16") else ("no" if t.get("bf16") is False else "bf16")
        port = str(_free_port())
        if cpu:
            # accelerate's own CPU launcher needs MPI; torch's launcher (what `accelerate launch
            # --multi_gpu` runs underneath) starts the ranks, and accelerate sees MULTI_CPU from the env.
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(processes),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                "-m",
                "hpo.rank",
                str(control),
            ]
        else:
            cmd = [
                sys.executable, "-m", "accelerate.commands.launch",
                "--num_processes", str(processes), "--num_machines", "1", "--multi_gpu",
                "--main_process_port", port, "--mixed_precision", precision,
                "-m", "hpo.rank", str(control),
            ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if cpu:
            env["ACCELERATE_USE_CPU"] = "true"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr: list[str] = []
        drain = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
        drain.start()
        final: list[Any] | None = None
        with open(control / "events.jsonl") as events:
            while True:
                line = events.readline()
                if line:
                    ev = json.loads(line)
                    if ev[0] == "log":
                        reporter.on_log(ev[1], ev[2])
                    elif ev[0] == "eval":
                        reporter.on_eval(ev[1], ev[2])
                    else:
                        final = ev
                    continue
                reason = reporter.stop_reason()
                if reason is not None and not (control / "stop").exists():
                    (control / "stop").write_text(reason)
                if proc.poll() is not None:
                    rest = events.read()
                    for extra in rest.splitlines():
                        ev = json.loads(extra)
                        if ev[0] in ("done", "nonfinite", "error"):
                            final = ev
                    break
                time.sleep(0.05)
        drain.join(5)
        if final is None:
            tail = "".join(stderr[-20:]).strip().splitlines()
            raise RuntimeError(f"multi-process trial exited with code {proc.returncode}: {tail[-1] if tail else ''}")
        if final[0] == "nonfinite":
            msg = final[1]
            raise NonFiniteLoss(-1, float("nan"), message=msg)  # rank 0's words (non-finite, or diverged)
        if final[0] == "error":
            raise RuntimeError(final[1])
        result: dict[str, Any] = final[1]
        result["processes"] = processes
        result["rank_steps"] = [json.loads(p.read_text())["steps"] for p in sorted(control.glob("rank-*.json"))]
        return result


if __name__ == "__main__":
    main()
