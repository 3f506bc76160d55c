"""The trial record: what hpo stores on a trial, which trials count, and which is best.

hpo keeps everything it knows about a trial beyond Optuna's own columns in the trial's user attributes
(``device``, ``steps``, ``reason``, ``requeued`` ...). The orchestrator writes them in pieces (at launch, at
the result, at the end) and the CLI, the API, the export and the dashboards read them back. This module owns
that seam: :class:`TrialAttrs` names every attribute (the field name is the stored key) with its type, and
:class:`TrialRecord` is one trial as hpo reads it (Optuna's facts plus its attributes), built with
``TrialRecord.from_trial(frozen_trial)``. Writers build ``TrialAttrs(...).to_user_attrs()``; readers use
fields, never key strings. The stored names and JSON shapes are the format of existing studies: they do not
change here.

Reading is lenient: studies written by older versions lack keys (the field is None), and a value of the
wrong type (a user's own attribute of the same name) is not trusted but kept as it was in ``extra``, so
``TrialRecord.from_trial(t).to_user_attrs() == t.user_attrs`` for every trial.

Two rules live here because every reader needs the same answer:
- :func:`counts`: a trial counts towards ``n_trials`` when it is finished or running, unless it is a FAIL
  that was re-queued (its parameters ran again as a new trial) or discarded (asked, then found not
  needed). ``hpo.store`` asks the same question in SQL; tests/test_ledger.py keeps the two equal.
- :func:`rank_trials` / :func:`best_of` / :func:`running_best`: complete trials with a value, best first for
  the study's direction, ties to the earlier trial; pruned trials (their value is the last one reported,
  not a result) are never best.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# Stored keys that code outside the record needs as strings: the SQL of hpo.store, and the single
# attribute writes of hpo.orchestrator. Each is the name of a TrialAttrs field (tests/test_record.py).
A_REASON = "reason"
A_REQUEUED = "requeued"
A_DISCARDED = "discarded"
A_RETRY_OF = "retry_of"
A_RETRIES = "retries"
A_HOST = "host"
A_PID = "orchestrator_pid"
# A study user attribute (not a trial's): {rule: {"train": n, "eval": n}} of what data.clean removed.
ATTR_DATA_CLEAN = "data_clean"
ATTR_TOKENIZER_NOTE = "tokenizer_note"  # shown once per study: the study remembers it was


# --------------------------------------------------------------------------------- reading stored values
# JSON gives back what was written; anything else (a user's attribute of the same name) is not trusted.


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _flag(v: Any) -> bool:
    # Exactly ``true``, as the SQL form compares it (hpo.store): a truthy 1 or "yes" is not a marker.
    return v is True


def _ints(v: Any) -> tuple[int, ...] | None:
    if not isinstance(v, list | tuple):
        return None
    out = tuple(x for x in v if _int(x) is not None)
    return out if len(out) == len(v) else None


def _metrics(v: Any) -> dict[str, float] | None:
    if not isinstance(v, dict):
        return None
    out = {k: x for k, x in v.items() if isinstance(k, str) and _float(x) is not None}
    return out if len(out) == len(v) else None


def _examples(v: Any) -> tuple[dict[str, str], ...] | None:
    if not isinstance(v, list | tuple):
        return None
    out = tuple(x for x in v if isinstance(x, dict) and all(isinstance(t, str) for t in x.values()))
    return out if len(out) == len(v) else None


def _attr(parse: Callable[[Any], Any], doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class TrialAttrs:
    """The user attributes hpo writes on a trial; each field name is the stored key. None: not written."""

    # At launch (which process and device runs it: finds orphans of dead processes)
    device: str | None = _attr(_str, "device label, e.g. cpu or cuda:0")
    worker: int | None = _attr(_int, "worker id within its orchestrator")
    host: str | None = _attr(_str, "host name of the orchestrator running it")
    orchestrator_pid: int | None = _attr(_int, "pid of the orchestrator running it")
    worker_pid: int | None = _attr(_int, "pid of the worker process running it (to inspect or stop that process)")
    # With the worker's result
    metrics: Mapping[str, float] | None = _attr(_metrics, "final eval metrics")
    steps: int | None = _attr(_int, "optimizer steps run")
    train_time: float | None = _attr(_float, "seconds in train steps")
    eval_time: float | None = _attr(_float, "seconds in evals")
    setup_time: float | None = _attr(_float, "seconds building model, data, accelerator")
    tokens_per_s: float | None = _attr(_float, "training throughput")
    precision: str | None = _attr(_str, "mixed precision it ran with (no, fp16, bf16)")
    trainable_params: int | None = _attr(_int, "parameters trained (with a LoRA adapter: the adapter's)")
    total_params: int | None = _attr(_int, "parameters of the model, trained or frozen")
    peak_memory_mb: float | None = _attr(_float, "CUDA: peak allocated on the device; CPU: process peak RSS")
    latency_ms: float | None = _attr(_float, "inference ms per example on the first eval batch (when measured)")
    objective_curve: Mapping[str, float] | None = _attr(
        _metrics, "multi-objective: the first objective per eval step (Optuna keeps none), for the pruner"
    )
    teacher_time: float | None = _attr(_float, "distillation: seconds in teacher forward passes (in train_time)")
    processes: int | None = _attr(_int, "processes of a multi-GPU trial (only when more than one)")
    rank_steps: tuple[int, ...] | None = _attr(_ints, "steps each rank ran (multi-process trials)")
    oom_retries: int | None = _attr(_int, "times the batch was split after running out of memory")
    micro_batch: tuple[int, ...] | None = _attr(_ints, "[per-device batch, accumulation] after OOM retries")
    examples: tuple[dict[str, str], ...] | None = _attr(_examples, "generation: source, reference, prediction")
    # When it ended
    duration: float | None = _attr(_float, "seconds from launch to end")
    reason: str | None = _attr(_str, "why it was pruned, failed or not run")
    requeued: bool = _attr(_flag, "this FAIL was re-run as a new trial: it does not count", False)
    discarded: bool = _attr(_flag, "asked, then not needed (n_trials or grid point filled elsewhere)", False)
    oom_detail: str | None = _attr(_str, "the out-of-memory message")
    traceback: str | None = _attr(_str, "the worker's traceback (last 4000 characters)")
    error: str | None = _attr(_str, "the error of a trial that broke while interrupted")
    # Set when enqueued again
    retry_of: int | None = _attr(_int, "the trial number this one re-runs (the first of the line)")
    retries: int | None = _attr(_int, "how many times these parameters were re-queued")

    def to_user_attrs(self) -> dict[str, Any]:
        """The stored form: only what is set (a False marker is not written), lists for tuples."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or v is False:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v
        return out

    @classmethod
    def from_user_attrs(cls, attrs: Mapping[str, Any]) -> TrialAttrs:
        """The typed attributes; a missing key, or a value of another type, reads as not set."""
        return cls(**{f.name: f.metadata["parse"](attrs[f.name]) for f in dataclasses.fields(cls) if f.name in attrs})


ATTR_KEYS = frozenset(f.name for f in dataclasses.fields(TrialAttrs))


def counts(state: TrialState, requeued: bool, discarded: bool) -> bool:
    """The rule: whether a trial counts towards ``n_trials``."""
    if state == TrialState.WAITING:
        return False
    return not (state == TrialState.FAIL and (requeued or discarded))


def counted(trial: FrozenTrial) -> bool:
    """:func:`counts` for an Optuna trial (reads only the two markers: the orchestrator calls it per launch)."""
    ua = trial.user_attrs
    return counts(trial.state, _flag(ua.get(A_REQUEUED)), _flag(ua.get(A_DISCARDED)))


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial as hpo reads it: Optuna's facts and hpo's attributes."""

    number: int
    state: TrialState
    values: tuple[float, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    intermediate: Mapping[int, float] = field(default_factory=dict)  # reported to the pruner, by step
    datetime_start: dt.datetime | None = None
    datetime_complete: dt.datetime | None = None
    attrs: TrialAttrs = field(default_factory=TrialAttrs)
    extra: Mapping[str, Any] = field(default_factory=dict)  # user attributes that are not hpo's, as stored

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        ua = t.user_attrs
        attrs = TrialAttrs.from_user_attrs(ua)
        typed = attrs.to_user_attrs()
        # What the typed form would not write back as it is (foreign keys, values of another type).
        extra = {k: v for k, v in ua.items() if k not in typed or not _same(typed[k], v)}
        return cls(
            number=t.number,
            state=t.state,
            values=tuple(t.values) if t.values is not None else None,
            params=dict(t.params),
            intermediate=dict(t.intermediate_values),
            datetime_start=t.datetime_start,
            datetime_complete=t.datetime_complete,
            attrs=attrs,
            extra=extra,
        )

    def to_user_attrs(self) -> dict[str, Any]:
        """The trial's user attributes as stored (``extra`` as it was read)."""
        return {**self.attrs.to_user_attrs(), **self.extra}

    @property
    def value(self) -> float | None:
        """The objective value (a pruned trial: its last reported one); None without one or multi-objective."""
        return self.values[0] if self.values is not None and len(self.values) == 1 else None

    @property
    def counted(self) -> bool:
        """Whether it counts towards ``n_trials`` (see :func:`counts`)."""
        return counts(self.state, self.attrs.requeued, self.attrs.discarded)

    @property
    def steps(self) -> int | None:
        """Steps run: as the worker said, else the last step reported to the pruner (older studies)."""
        if self.attrs.steps is not None:
            return self.attrs.steps
        return max(self.intermediate) if self.intermediate else None

    @property
    def duration(self) -> float | None:
        """Seconds it ran: as the orchestrator measured it, else from Optuna's start and end times."""
        if self.attrs.duration is not None:
            return self.attrs.duration
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return (self.datetime_complete - self.datetime_start).total_seconds()


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


# ------------------------------------------------------------------------------------------------ best


class Ranked(Protocol):
    """What ranking needs of a trial: Optuna's FrozenTrial, a TrialRecord, the dashboards' TrialInfo."""

    @property
    def number(self) -> int: ...

    @property
    def state(self) -> TrialState | str: ...

    @property
    def value(self) -> float | None: ...


R = TypeVar("R", bound=Ranked)


def _sign(direction: str | StudyDirection) -> float:
    if direction in ("minimize", StudyDirection.MINIMIZE):
        return 1.0
    if direction in ("maximize", StudyDirection.MAXIMIZE):
        return -1.0
    raise ValueError(f"direction must be minimize or maximize, not {direction!r}")


def rank_key(direction: str | StudyDirection, value: float, number: int) -> tuple[float, int]:
    """Sort key, best first: by value for the direction, then the earlier trial."""
    return _sign(direction) * value, number


def better(a: float, b: float, direction: str | StudyDirection) -> bool:
    """Whether value ``a`` is strictly better than ``b`` (a tie keeps what was there first)."""
    return _sign(direction) * a < _sign(direction) * b


def _rankable(t: Ranked) -> bool:
    state = t.state
    complete = state is TrialState.COMPLETE or state == "COMPLETE"
    if not complete:
        return False
    value = t.value
    return value is not None and not math.isnan(value)


def rank_trials(trials: Iterable[R], direction: str | StudyDirection) -> list[R]:
    """Complete trials with a value, best first (ties: lower trial number first)."""
    done = [t for t in trials if _rankable(t)]
    return sorted(done, key=lambda t: rank_key(direction, t.value, t.number))  # type: ignore[arg-type]


def best_of(trials: Iterable[R], direction: str | StudyDirection) -> R | None:
    """The best complete trial, or None."""
    ranked = rank_trials(trials, direction)
    return ranked[0] if ranked else None


def running_best(values: Iterable[float], direction: str | StudyDirection) -> list[float]:
    """The best value so far after each of ``values`` (in the order given)."""
    out: list[float] = []
    for v in values:
        out.append(v if not out or better(v, out[-1], direction) else out[-1])
    return out
