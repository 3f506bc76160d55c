"""The worker protocol (``hpo.protocol``) and the orchestrator's handling of it, without processes.

A fake worker plays a script of events for each trial it is sent; the orchestrator runs for real against an
in-memory study. Each case takes milliseconds. The JSON-lines form the ranks of a multi-process trial write
is checked to give back every message as it was.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

import studies
from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.errors import WorkerSetupError
from hpo.orchestrator import Orchestrator, RunSummary
from hpo.protocol import (
    Close,
    Done,
    Error,
    ErrorInfo,
    Eval,
    Event,
    Fatal,
    Log,
    NonFinite,
    Oom,
    Ready,
    RunTrial,
    Stop,
    TrialResult,
    from_json,
    to_json,
)
from hpo.record import A_REASON, A_REQUEUED
from hpo.storage import create_or_resume, open_storage
from hpo.worker import QueueReporter, WorkerSpec
from trainers.base import ConfigError

UNSET = -1  # worker and trial of a scripted event: the fake worker puts in its own


def study_dict(n_trials: int, pruner: dict[str, Any] | None = None, policy: str = "retry") -> dict[str, Any]:
    return studies.curve("proto", n_trials, pruner=pruner or {"name": "none"}, resources={"oom_policy": policy})


def result(steps: int = 20, loss: float | None = 1.5, stopped: str | None = None, **extra: Any) -> TrialResult:
    metrics = {} if loss is None else {"eval_loss": loss, "perplexity": math.exp(loss)}
    return TrialResult(metrics, steps, 1.0, 0.25, 0.5, 1000.0, "no", stopped=stopped, **extra)


def ev(kind: type[Any], *fields: Any) -> Event:
    """A scripted trial event: ``ev(Eval, 5, {...})``."""
    return kind(UNSET, UNSET, *fields)  # type: ignore[no-any-return]


class Interrupt:
    """In a script: Ctrl-C arrives while the orchestrator waits for the next event."""


class Results:
    """The result queue: what the fake workers put, in order; empty at once (no waiting), and loud when the
    orchestrator waits on an empty queue for long (a script that never ends its trial)."""

    def __init__(self) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.empty_gets = 0

    def put(self, item: Any) -> None:
        self.items.append(item)

    def get(self, timeout: float | None = None) -> Any:
        if not self.items:
            self.empty_gets += 1
            assert self.empty_gets < 200, "the orchestrator waits for events the script does not send"
            raise queue.Empty
        item = self.items.popleft()
        if isinstance(item, Interrupt):
            raise KeyboardInterrupt
        return item


class FakeWorker:
    """A ``WorkerHandle`` without a process: on each trial it is sent, it puts that trial's scripted events
    (worker and trial filled in) on the result queue, as a worker would while training."""

    def __init__(self, worker_id: int, results: Results, scripts: Callable[[int], Sequence[Any]]) -> None:
        self.spec = WorkerSpec(worker_id, 1, {}, "cpu")
        self.results = results
        self.scripts = scripts
        self.ready = False
        self.pid: int | None = None
        self.trial: int | None = None
        self.sent: list[int] = []
        self.stops: list[tuple[int, Stop]] = []
        results.put(Ready(worker_id, 12345))

    def send(self, trial: int, run: dict[str, Any]) -> None:
        self.trial = trial
        self.sent.append(trial)
        for item in self.scripts(trial):
            if isinstance(item, Interrupt):
                self.results.put(item)
            else:
                self.results.put(dataclasses.replace(item, worker=self.spec.worker_id, trial=trial))

    def request_stop(self, trial: int, code: Stop) -> None:
        self.stops.append((trial, code))

    def alive(self) -> bool:
        return True

    def request_close(self) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass


COMPLETE = [ev(Eval, 5, {"eval_loss": 3.0}), ev(Eval, 10, {"eval_loss": 2.0}), ev(Done, result(10, 2.0))]


class Run:
    """One orchestrator run on an in-memory study: trial 0 plays ``first``, any later trial ``rest``."""

    def __init__(
        self,
        first: Sequence[Any],
        rest: Sequence[Any] = COMPLETE,
        n_trials: int = 1,
        display: type[RunDisplay] = RunDisplay,
        **study: Any,
    ) -> None:
        cfg = validate_study(study_dict(n_trials, **study))
        self.study, _ = create_or_resume(cfg, open_storage("memory", create=True))
        self.results = Results()
        self.worker = FakeWorker(0, self.results, lambda n: first if n == 0 else rest)
        self.out = io.StringIO()
        shown = display(console=Console(file=self.out, width=200), live=False)
        self.orch = Orchestrator(
            cfg,
            self.study,
            [self.worker.spec],
            None,
            shown,
            workers=[self.worker],
            results=self.results,  # type: ignore[list-item]
        )

    def __call__(self) -> RunSummary:
        try:
            return self.orch.run()
        finally:
            self.orch.close()

    def trial(self, number: int = 0) -> optuna.trial.FrozenTrial:
        return self.study.get_trials(deepcopy=False)[number]


# ------------------------------------------------------------------------------------------- endings
NAN_MSG = "non-finite training loss (nan) at step 5"
DIVERGED = "diverged: training loss 40 (mean of the last 5 steps) at step 10 is over 3x the first step's 7.6"
OOM_MSG = "out of memory at micro-batch 8 after 0 retries"
TB = 'Traceback (most recent call last):\n  File "loop.py", line 1\nRuntimeError: boom\n'
CASES: list[tuple[str, list[Any], dict[str, Any], str, str | None, float | None]] = [
    # (id, script of trial 0, study settings, state, reason, value)
    ("done", COMPLETE, {}, "COMPLETE", None, 2.0),
    ("done-without-the-metric", [ev(Done, result(20, None))], {}, "FAIL", "no eval_loss reported", None),
    ("non-finite-loss", [ev(Eval, 5, {"eval_loss": 3.0}), ev(NonFinite, NAN_MSG)], {}, "PRUNED", NAN_MSG, 3.0),
    ("diverged", [ev(NonFinite, DIVERGED)], {}, "PRUNED", DIVERGED, None),
    ("oom-prune", [ev(Oom, OOM_MSG, "prune")], {"policy": "prune"}, "PRUNED", "oom", None),
    ("oom-fail", [ev(Oom, OOM_MSG, "fail")], {"policy": "fail"}, "FAIL", "oom", None),
    ("error", [ev(Error, ErrorInfo("RuntimeError", "boom\nmore", TB))], {}, "FAIL", "error: RuntimeError: boom", None),
    (
        "error-naming-a-setting",
        [ev(Error, ErrorInfo("ConfigError", "no column 'text'", TB, "data.text_column"))],
        {},
        "FAIL",
        "error: data.text_column: no column 'text'",
        None,
    ),
    (
        "stopped-by-the-trainer",  # a trainer that stopped on its own: the orchestrator never sent a stop
        [ev(Eval, 5, {"eval_loss": 3.0}), ev(Done, result(5, 3.0, stopped="pruned"))],
        {},
        "PRUNED",
        "pruned",
        3.0,
    ),
    (
        "non-finite-eval",
        [ev(Eval, 5, {"eval_loss": math.nan}), ev(Done, result(6, math.nan, stopped="pruned"))],
        {},
        "PRUNED",
        "non-finite eval_loss at step 5",
        None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "study", "state", "reason", "value"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_way_a_trial_ends_is_recorded(
    script: list[Any], study: dict[str, Any], state: str, reason: str | None, value: float | None
) -> None:
    run = Run(script, **study)
    summary = run()
    t = run.trial()
    assert t.state.name == state
    assert t.user_attrs.get(A_REASON) == reason
    assert t.value == value
    assert summary.states == {state: 1} and summary.ran == 1
    assert not run.results.items  # every event was read


def test_a_completed_trial_keeps_its_result_and_curves() -> None:
    script = [
        ev(Log, 5, {"train_loss": 3.5, "learning_rate": 1e-3}),
        ev(Eval, 5, {"eval_loss": 3.0}),
        ev(Eval, 10, {"eval_loss": 2.0}),
        ev(Done, result(10, 2.0, processes=2, rank_steps=[10, 10], oom_retries=1, micro_batch=[4, 2])),
    ]
    run = Run(script)
    summary = run()
    t = run.trial()
    assert t.intermediate_values == {5: 3.0, 10: 2.0}
    attrs = t.user_attrs
    assert attrs["metrics"] == {"eval_loss": 2.0, "perplexity": math.exp(2.0)} and attrs["steps"] == 10
    assert (attrs["train_time"], attrs["eval_time"], attrs["setup_time"], attrs["tokens_per_s"]) == (
        1.0,
        0.25,
        0.5,
        1000.0,
    )
    assert (attrs["processes"], attrs["rank_steps"]) == (2, [10, 10])
    assert (attrs["oom_retries"], attrs["micro_batch"]) == (1, [4, 2])
    assert attrs["worker_pid"] == 12345  # as its worker announced it when ready
    assert summary.compute_time == 1.25
    points = {(p.kind, p.step, p.name): p.value for p in run.orch.curves.read(0)}
    assert points[("train", 5, "train_loss")] == 3.5 and points[("eval", 10, "eval_loss")] == 2.0


def test_an_error_keeps_its_traceback_and_goes_into_the_summary() -> None:
    long_tb = "Traceback (most recent call last):\n" + "x" * 5000
    run = Run([ev(Error, ErrorInfo("ConfigError", "no column 'text'", long_tb, "data.text_column"))])
    summary = run()
    assert run.trial().user_attrs["traceback"] == long_tb[-4000:]
    assert summary.failures == [("data.text_column", "no column 'text'")]


# ------------------------------------------------------------------------------------------ pruning
PRUNE_CASES = [
    # (id, eval values at steps 5, 10, 15, pruner upper, the step a stop is sent at)
    ("below-the-threshold", [3.0, 2.0, 1.5], 10.0, None),
    ("above-at-the-first-eval", [30.0, 2.0, 1.5], 10.0, 5),
    ("above-later", [3.0, 20.0, 1.5], 10.0, 10),
]


@pytest.mark.parametrize(("values", "upper", "stop_at"), [c[1:] for c in PRUNE_CASES], ids=[c[0] for c in PRUNE_CASES])
def test_evals_are_reported_and_judged(values: list[float], upper: float, stop_at: int | None) -> None:
    # The worker goes on for an eval after the stop, as a real one may (the stop lands a step later).
    evals = [ev(Eval, step, {"eval_loss": v}) for step, v in zip((5, 10, 15), values, strict=True)]
    last = len(evals) if stop_at is None else stop_at // 5 + 1
    done = result(last * 5, values[last - 1], stopped=None if stop_at is None else "pruned")
    run = Run([*evals[:last], ev(Done, done)], pruner={"name": "threshold", "upper": upper})
    run()
    t = run.trial()
    if stop_at is None:
        assert run.worker.stops == [] and t.state == TrialState.COMPLETE
        assert t.intermediate_values == dict(zip((5, 10, 15), values, strict=True))
    else:
        assert run.worker.stops == [(0, Stop.PRUNE)]  # once, though another eval came after it
        assert t.state == TrialState.PRUNED
        assert (
            t.user_attrs[A_REASON]
            == f"pruned by threshold pruner at step {stop_at} (eval_loss={values[stop_at // 5 - 1]:.4g})"
        )
        assert max(t.intermediate_values) == stop_at  # evals after the stop are not reported


def test_an_eval_at_or_before_the_last_one_is_not_reported_again() -> None:
    script = [ev(Eval, 10, {"eval_loss": 2.0}), ev(Eval, 10, {"eval_loss": 9.0}), ev(Eval, 5, {"eval_loss": 9.0})]
    run = Run([*script, ev(Done, result(10, 2.0))])
    run()
    assert run.trial().intermediate_values == {10: 2.0}


# ------------------------------------------------------------------------------------- late events
LATE = [
    # (id, script of trial 0, its state, value, an attribute the late event must not have written)
    ("eval-after-done", [*COMPLETE, ev(Eval, 15, {"eval_loss": 9.0})], "COMPLETE", 2.0, A_REASON),
    ("done-after-non-finite", [ev(NonFinite, NAN_MSG), ev(Done, result(20, 1.0))], "PRUNED", None, "steps"),
    ("error-after-done", [*COMPLETE, ev(Error, ErrorInfo("RuntimeError", "late", TB))], "COMPLETE", 2.0, "traceback"),
]  # fmt: skip


@pytest.mark.parametrize(("script", "state", "value", "absent"), [c[1:] for c in LATE], ids=[c[0] for c in LATE])
def test_a_late_event_of_a_closed_trial_is_ignored(
    script: list[Any], state: str, value: float | None, absent: str
) -> None:
    run = Run(script, n_trials=2)  # a second trial, so that the orchestrator reads on past trial 0's end
    summary = run()
    first = run.trial(0)
    assert first.state.name == state and first.value == value
    assert absent not in first.user_attrs and 15 not in first.intermediate_values
    assert run.trial(1).state == TrialState.COMPLETE
    assert summary.ran == 2 and not run.results.items


# ----------------------------------------------------------------------------------------- interrupt
INTERRUPTED = [
    # (id, what trial 0 sends after Ctrl-C, state, reason, requeued)
    ("done-stopped", [ev(Done, result(7, 2.5, stopped="interrupted"))], "FAIL", "interrupted", True),
    ("done-anyway", [ev(Done, result(20, 1.0))], "FAIL", "interrupted", True),  # the stop was sent: not a result
    ("error-while-stopping", [ev(Error, ErrorInfo("RuntimeError", "rank 1 got SIGTERM", TB))], "FAIL", "interrupted",
     True),
    ("oom-while-stopping", [ev(Oom, OOM_MSG, "prune")], "PRUNED", "oom", None),
    ("ctrl-c-again", [Interrupt()], "FAIL", "interrupted", True),  # no more waiting: closed as interrupted
]  # fmt: skip


@pytest.mark.parametrize(
    ("after", "state", "reason", "requeued"), [c[1:] for c in INTERRUPTED], ids=[c[0] for c in INTERRUPTED]
)
def test_ctrl_c_stops_running_trials_and_records_how_they_ended(
    after: list[Any], state: str, reason: str, requeued: bool | None
) -> None:
    run = Run([ev(Eval, 5, {"eval_loss": 3.0}), Interrupt(), *after], n_trials=3)
    summary = run()
    assert summary.interrupted
    assert set(run.worker.stops) == {(0, Stop.INTERRUPT)}
    assert run.worker.sent == [0]  # nothing new starts after Ctrl-C
    t = run.trial()
    assert (t.state.name, t.user_attrs[A_REASON], t.user_attrs.get(A_REQUEUED)) == (state, reason, requeued)
    if state == "FAIL" and after:
        assert "error" not in t.user_attrs or t.user_attrs["error"] == "RuntimeError: rank 1 got SIGTERM"
    if requeued:  # its parameters wait in the queue for the next run
        waiting = run.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        assert [w.user_attrs["retry_of"] for w in waiting] == [0]
        assert run.study.ask(run.orch.distributions).params == t.params


# -------------------------------------------------------------------------------------- worker set-up
@pytest.mark.parametrize(
    ("error", "message", "key"),
    [
        (ErrorInfo("OSError", "no model\nsecond line", "TB"), "worker 0 failed to start: OSError: no model", None),
        (ErrorInfo("ConfigError", "row 3 has no 'text'", "TB", "data.text_column"), "row 3 has no 'text'",
         "data.text_column"),
    ],
)  # fmt: skip
def test_a_worker_that_fails_to_start_stops_the_run_naming_the_setting(
    error: ErrorInfo, message: str, key: str | None
) -> None:
    run = Run([])
    run.results.items.clear()
    run.results.put(Fatal(0, error))
    with pytest.raises(WorkerSetupError) as e:
        run()
    assert (e.value.message, e.value.key, e.value.worker_traceback) == (message, key, "TB")
    assert str(e.value) == (f"{key}: {message}" if key else message)
    assert run.worker.sent == []


# ------------------------------------------------------------------------------------- the messages
def test_an_exception_travels_as_data() -> None:
    def raised(e: BaseException) -> ErrorInfo:
        try:
            raise e
        except BaseException as caught:
            return ErrorInfo.from_exception(caught)

    plain = raised(RuntimeError("boom\nat step 3"))
    assert (plain.type, plain.message, plain.key, plain.line) == (
        "RuntimeError",
        "boom\nat step 3",
        None,
        "RuntimeError: boom",
    )
    assert plain.traceback.startswith("Traceback") and "raise e" in plain.traceback
    setting = raised(ConfigError("data.text_column", "no column 'text'"))
    assert (setting.type, setting.message, setting.key, setting.line) == (
        "ConfigError",
        "no column 'text'",
        "data.text_column",
        "no column 'text'",
    )


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        ([-1, Stop.NONE], None),
        ([7, Stop.PRUNE], "pruned"),
        ([7, Stop.INTERRUPT], "interrupted"),
        ([8, Stop.PRUNE], None),  # another trial's stop
    ],
)
def test_a_worker_reads_its_trial_s_stop_code(stop: list[int], reason: str | None) -> None:
    assert QueueReporter(0, 7, queue.Queue(), stop).stop_reason() == reason


@pytest.mark.parametrize("reason", [None, "pruned", "interrupted"])
def test_stop_codes_and_reasons_are_one_table(reason: str | None) -> None:
    assert Stop.from_reason(reason).reason == reason
    assert Stop.from_reason("something else") == Stop.PRUNE  # a stop nobody knows still stops


TRACE = "Traceback (most recent call last):\n  ...\nValueError: bad\n"
MESSAGES = [
    RunTrial(3, {"training": {"learning_rate": 1e-3}, "model": {"dropout": 0.1}}),
    Close(),
    Ready(1, 4242),
    Fatal(1, ErrorInfo("OSError", "no model", TRACE)),
    Fatal(1, ErrorInfo("ConfigError", "dirty row", TRACE, "data.text_column")),
    Log(1, 3, 10, {"train_loss": 2.5, "learning_rate": 1e-3, "tokens_per_s": 900.0}),
    Eval(1, 3, 10, {"eval_loss": 2.25, "perplexity": 9.49}),
    Done(1, 3, result()),
    Done(1, 3, result(7, 3.0, stopped="pruned", processes=2, rank_steps=[7, 7], oom_retries=2, micro_batch=[2, 4])),
    Done(1, 3, result(0, None)),
    NonFinite(1, 3, NAN_MSG),
    Oom(1, 3, "out of memory at micro-batch 8 after 1 retries", "fail"),
    Error(1, 3, ErrorInfo("ValueError", "bad", TRACE)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_its_json_line(message: Any) -> None:
    line = to_json(message)
    assert "\n" not in line and f'"kind": "{type(message).__name__}"' in line
    assert from_json(line) == message


def test_the_kinds_of_messages_are_all_tested() -> None:
    from hpo import protocol

    kinds = {type(m) for m in MESSAGES}
    assert kinds == {protocol.RunTrial, protocol.Close, *protocol.Event.__args__}  # type: ignore[attr-defined]


def test_a_line_that_is_not_a_message_is_refused() -> None:
    for line in ['{"kind": "Nope"}', '{"step": 3}', "[1, 2]"]:
        with pytest.raises(ValueError, match="not a protocol message"):
            from_json(line)


def test_rank_zero_writes_the_trial_s_events_as_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.rank import RankReporter

    monkeypatch.setenv("RANK", "0")
    reporter = RankReporter(tmp_path)
    reporter.on_log(2, {"train_loss": 3.0})
    reporter.on_eval(2, {"eval_loss": 2.5})
    reporter.finish(Done(UNSET, UNSET, result(2, 2.5)))
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [from_json(line) for line in lines] == [
        Log(UNSET, UNSET, 2, {"train_loss": 3.0}),
        Eval(UNSET, UNSET, 2, {"eval_loss": 2.5}),
        Done(UNSET, UNSET, result(2, 2.5)),
    ]


@pytest.mark.parametrize(
    ("text", "code"), [("1", Stop.PRUNE), ("2", Stop.INTERRUPT), ("", Stop.PRUNE), ("x", Stop.PRUNE)]
)
def test_a_rank_reads_the_stop_code_the_launcher_wrote(tmp_path: Path, text: str, code: Stop) -> None:
    from hpo.rank import _read_stop

    (tmp_path / "stop").write_text(text)
    assert _read_stop(tmp_path / "stop") == code
