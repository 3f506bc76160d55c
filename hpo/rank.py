"""Trials that span several processes (``resources.gpus_per_trial > 1``): data parallel with accelerate.

The worker launches ``accelerate launch --num_processes N -m hpo.rank CONTROL_DIR`` for such a trial.
Every rank runs the same training function; rank 0 writes the trial's events (``hpo.protocol``'s ``Log``,
``Eval`` and the trial's end, as JSON lines) to ``CONTROL_DIR/events.jsonl``, which the worker forwards to
the orchestrator. A stop arrives as the file ``CONTROL_DIR/stop`` holding a ``Stop`` code: rank 0 reads it
between optimizer steps and broadcasts the decision, so every rank stops on the same step.

This module is also the worker-side launcher (``launch``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hpo.protocol import (
    Done,
    Error,
    ErrorInfo,
    Eval,
    Event,
    Log,
    NonFinite,
    Stop,
    TrialEnded,
    TrialResult,
    from_json,
    to_json,
)
from trainers.base import Reporter

# The ranks do not know the worker or the trial number: their events carry these, and the worker puts
# its own in before it sends them on.
UNSET = -1


class RankReporter(Reporter):
    """Reporter of one rank: rank 0 writes events; all ranks agree on stops through a broadcast."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.rank = int(os.environ.get("RANK", "0"))
        self._events = open(control / "events.jsonl", "a", buffering=1) if self.rank == 0 else None
        self._flag: Any = None

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events.write(to_json(event) + "\n")

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self._emit(Log(UNSET, UNSET, step, metrics))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._emit(Eval(UNSET, UNSET, step, metrics))

    def stop_reason(self) -> str | None:
        import torch
        import torch.distributed as dist

        code = Stop.NONE
        if self.rank == 0:
            stop = self.control / "stop"
            if stop.exists():
                code = _read_stop(stop)
        if dist.is_available() and dist.is_initialized():
            if self._flag is None:
                device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
                self._flag = torch.zeros(1, dtype=torch.int32, device=device)
            self._flag.fill_(int(code))
            dist.broadcast(self._flag, src=0)  # every rank learns rank 0's decision on the same step
            code = Stop(int(self._flag.item()))
        return code.reason

    def finish(self, event: Event) -> None:
        self._emit(event)
        if self._events is not None:
            self._events.close()


def _read_stop(path: Path) -> Stop:
    """The code in a stop file (``launch`` writes it); anything else there stops the trial as a prune."""
    try:
        return Stop(int(path.read_text().strip()))
    except ValueError:
        return Stop.PRUNE


def main(argv: list[str] | None = None) -> None:
    """Entry point of each rank (run by ``accelerate launch -m hpo.rank CONTROL_DIR``)."""
    control = Path((argv or sys.argv[1:])[0])
    reporter = RankReporter(control)
    from trainers.base import NonFiniteLoss, quiet_libraries

    quiet_libraries()  # this process's own settings: it is the entry point
    from trainers.config import RunConfig
    from trainers.loop import train

    spec = json.loads((control / "run.json").read_text())
    try:
        run = RunConfig.model_validate(spec["run"])
        result = train(run, reporter, spec["cache_dir"])
        # Each rank records where it stopped: a prune must stop all of them on the same step.
        (control / f"rank-{reporter.rank}.json").write_text(json.dumps({"steps": result.steps}))
        reporter.finish(Done(UNSET, UNSET, TrialResult.from_train(result)))
    except NonFiniteLoss as e:
        reporter.finish(NonFinite(UNSET, UNSET, str(e)))
    except BaseException as e:
        reporter.finish(Error(UNSET, UNSET, ErrorInfo.from_exception(e)))
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(run: dict[str, Any], cache_dir: str, processes: int, reporter: Reporter, cpu: bool) -> TrialResult:
    """Run one trial as ``processes`` data-parallel ranks; forward events to ``reporter``; return the result.

    A trial the ranks end otherwise raises ``TrialEnded`` with rank 0's event (its error as it was raised
    there: type, message, traceback, setting); ranks that exit without a word raise RuntimeError.
    """
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
        final: Event | None = None
        with open(control / "events.jsonl") as events:
            while True:
                line = events.readline()
                if line:
                    match from_json(line):
                        case Log(step=step, metrics=metrics):
                            reporter.on_log(step, metrics)
                        case Eval(step=step, metrics=metrics):
                            reporter.on_eval(step, metrics)
                        case Done() | NonFinite() | Error() as end:
                            final = end
                    continue
                reason = reporter.stop_reason()
                if reason is not None and not (control / "stop").exists():
                    # Written whole, then renamed: rank 0 never reads a half-written code.
                    (control / "stop.tmp").write_text(str(int(Stop.from_reason(reason))))
                    os.replace(control / "stop.tmp", control / "stop")
                if proc.poll() is not None:
                    for extra in events.read().splitlines():
                        ev = from_json(extra)
                        if isinstance(ev, (Done, NonFinite, Error)):
                            final = ev
                    break
                time.sleep(0.05)
        drain.join(5)
        match final:
            case Done(result=result):
                steps = [json.loads(p.read_text())["steps"] for p in sorted(control.glob("rank-*.json"))]
                return dataclasses.replace(result, processes=processes, rank_steps=steps)
            case NonFinite() | Error():
                raise TrialEnded(final)  # rank 0's words (non-finite or diverged; the error it raised)
        tail = "".join(stderr[-20:]).strip().splitlines()
        raise RuntimeError(f"multi-process trial exited with code {proc.returncode}: {tail[-1] if tail else ''}")


if __name__ == "__main__":
    main()
