"""The worker protocol: every message between the orchestrator, its workers and the ranks of a multi-process trial.

Commands go from the orchestrator to a worker's task queue (``RunTrial``, ``Close``); events come back on
the shared result queue (``Ready``, ``Fatal``, then per trial ``Log``/``Eval`` and one end: ``Done``,
``NonFinite``, ``Oom`` or ``Error``). The orchestrator dispatches on them with ``match``. A stop (pruned,
interrupted) is a ``Stop`` code in shared memory, polled by the trainer between optimizer steps. The ranks
of a multi-process trial (``hpo.rank``) write the same events as JSON lines (``to_json`` / ``from_json``).

Errors travel as data (``ErrorInfo``: the exception's type name, its message, its traceback, and the
study-file setting at fault when the trainer named one), never as text to parse again.

Imported by every worker and rank at start: stdlib and ``trainers.base`` only (no torch, no Optuna).
"""

from __future__ import annotations

import dataclasses
import json
import traceback as tb
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeAlias, get_type_hints

from trainers.base import ConfigError, TrainResult


class Stop(IntEnum):
    """Why the orchestrator asks a trial to stop: the code in a worker's shared stop array and a rank's stop file."""

    NONE = 0
    PRUNE = 1
    INTERRUPT = 2

    @property
    def reason(self) -> str | None:
        """What the trainer's ``reporter.stop_reason()`` says (and ``TrainResult.stopped`` records)."""
        return _REASONS.get(self)

    @classmethod
    def from_reason(cls, reason: str | None) -> Stop:
        """The code of a trainer's stop reason; an unknown reason stops the trial as a prune would."""
        if reason is None:
            return cls.NONE
        return next((code for code, name in _REASONS.items() if name == reason), cls.PRUNE)


_REASONS = {Stop.PRUNE: "pruned", Stop.INTERRUPT: "interrupted"}


@dataclass(frozen=True)
class ErrorInfo:
    """An exception raised in a worker or a rank, as data.

    ``key`` is the study-file setting at fault when the trainer named one (``trainers.base.ConfigError``):
    the orchestrator reports it as ``FILE: key: message``, like a mistake found by validation.
    """

    type: str  # the exception's class name
    message: str
    traceback: str = ""
    key: str | None = None

    @classmethod
    def from_exception(cls, e: BaseException, limit: int = -8) -> ErrorInfo:
        """``limit``: the innermost frames kept (a deep trainer stack says little beyond them)."""
        trace = "".join(tb.format_exception(e, limit=limit))
        if isinstance(e, ConfigError):
            return cls(type(e).__name__, e.message, trace, e.key)
        return cls(type(e).__name__, str(e), trace)

    @property
    def line(self) -> str:
        """One line for a reason or an error message: ``Type: message``; an error naming its setting says
        only its message (the setting goes beside it)."""
        text = self.message if self.key is not None else f"{self.type}: {self.message}"
        return (text.splitlines() or [""])[0]


@dataclass(frozen=True)
class TrialResult:
    """What a finished trial did: the trainer's ``TrainResult`` plus what the worker adds (OOM retries, ranks).

    Times are seconds of wall clock inside the run. ``stopped`` is the trainer's stop reason ("pruned",
    "interrupted") when the run ended early.
    """

    metrics: dict[str, float]  # last eval's metrics
    steps: int  # optimizer steps done
    train_time: float
    eval_time: float
    setup_time: float
    tokens_per_s: float
    precision: str
    tokens: int = 0
    device: str = ""
    stopped: str | None = None
    processes: int = 1  # > 1: a data-parallel trial of this many ranks
    rank_steps: list[int] = field(default_factory=list)  # the step each rank stopped at (multi-process)
    oom_retries: int = 0  # times the micro-batch was halved after running out of memory
    micro_batch: list[int] | None = None  # [per-device batch, accumulation] it ran with, after OOM retries
    trainable_params: int | None = None  # parameters the optimizer updates (with LoRA: the adapter's)
    total_params: int | None = None
    peak_memory_mb: float | None = None  # see TrainResult.peak_memory_mb: what each device can measure
    examples: list[dict[str, str]] | None = None  # generation: (source, reference, prediction) of the final eval
    latency_ms: float | None = None  # see TrainResult.latency_ms
    model_dir: str | None = None  # fidelity.save_models: the folder (under the models root) the weights went to
    teacher_time: float | None = None  # distillation: seconds in teacher forward passes (inside train_time)
    data_clean: dict[str, Any] | None = None  # data.clean: rows each rule removed (trainers/clean.py)
    tokenizer_note: str | None = None  # what hpo changed in the tokenizer: shown once per study

    @classmethod
    def from_train(cls, r: TrainResult, **extra: Any) -> TrialResult:
        return cls(
            metrics=dict(r.metrics),
            steps=r.steps,
            train_time=r.train_time,
            eval_time=r.eval_time,
            setup_time=r.setup_time,
            tokens_per_s=r.tokens_per_s,
            precision=r.precision,
            tokens=r.tokens,
            device=r.device,
            stopped=r.stopped,
            trainable_params=r.trainable_params,
            total_params=r.total_params,
            peak_memory_mb=r.peak_memory_mb,
            examples=r.examples,
            latency_ms=r.latency_ms,
            teacher_time=r.teacher_time,
            data_clean=r.data_clean,
            tokenizer_note=r.tokenizer_note,
            **extra,
        )


# ------------------------------------------------------------------------------------------ commands
@dataclass(frozen=True)
class RunTrial:
    """Run trial ``trial`` with this resolved run config (``RunConfig.model_dump(mode="json")``)."""

    trial: int
    run: dict[str, Any]


@dataclass(frozen=True)
class Close:
    """Exit after the current trial."""


Command: TypeAlias = RunTrial | Close


# -------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Ready:
    """The worker finished its set-up (imports, data, weights) and takes trials."""

    worker: int
    pid: int


@dataclass(frozen=True)
class Fatal:
    """The worker's set-up failed: the run cannot go on (it would fail the same way in every worker)."""

    worker: int
    error: ErrorInfo


@dataclass(frozen=True)
class Log:
    """Training curves at ``step``: train loss, learning rate, tokens/s."""

    worker: int
    trial: int
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Eval:
    """Eval metrics at ``step``: the orchestrator reports the objective and decides on pruning."""

    worker: int
    trial: int
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Done:
    """The trial's run returned (to the end, or stopped early as ``result.stopped`` says)."""

    worker: int
    trial: int
    result: TrialResult


@dataclass(frozen=True)
class NonFinite:
    """The training loss became NaN/inf or diverged (``trainers.base.NonFiniteLoss``, ``Diverged``)."""

    worker: int
    trial: int
    message: str


@dataclass(frozen=True)
class Oom:
    """Out of accelerator memory, and the study's OOM policy (``policy``: retry, prune, fail) gives up."""

    worker: int
    trial: int
    message: str
    policy: str


@dataclass(frozen=True)
class Error:
    """The trial raised."""

    worker: int
    trial: int
    error: ErrorInfo


WorkerEvent: TypeAlias = Ready | Fatal
TrialEnd: TypeAlias = Done | NonFinite | Oom | Error
TrialEvent: TypeAlias = Log | Eval | TrialEnd
Event: TypeAlias = WorkerEvent | TrialEvent
TRIAL_ENDS = (Done, NonFinite, Oom, Error)  # for isinstance: the events that close a trial


class TrialEnded(Exception):
    """Raised by a runner whose trial ended on an event of its own (a multi-process trial's ranks sent it):
    the worker sends ``event`` on as it is, instead of describing the exception."""

    def __init__(self, event: NonFinite | Oom | Error) -> None:
        self.event = event
        super().__init__(event)


# ---------------------------------------------------------------------------------------------- JSONL
_KINDS: dict[str, type[Any]] = {
    c.__name__: c for c in (RunTrial, Close, Ready, Fatal, Log, Eval, Done, NonFinite, Oom, Error)
}


def to_json(message: Event | Command) -> str:
    """One line of JSON: the message's fields and its ``kind`` (the class name)."""
    return json.dumps({"kind": type(message).__name__, **dataclasses.asdict(message)})


def from_json(line: str) -> Event | Command:
    """The message ``to_json`` wrote; raises ValueError for a line that is not one."""
    data = json.loads(line)
    try:
        cls = _KINDS[data.pop("kind")]
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"not a protocol message: {line.strip()[:200]}") from None
    return _build(cls, data)  # type: ignore[no-any-return]


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    args = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # a default applies
        value, hint = data[f.name], hints[f.name]
        nested = isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict)
        args[f.name] = _build(hint, value) if nested else value
    return cls(**args)
