"""The orchestrator with real worker processes and a deterministic trainer double, over in-memory and
SQLite storages: n_trials as a total, pruning, failures, dead workers, orphans, interrupts, grids."""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from doubles import CloseTogether, CurveRunner, final_loss
from optuna.trial import TrialState
from orchestrators import Orchestrator
from rich.console import Console

import studies
from hpo.config import StudyConfig, validate_study
from hpo.display import RunDisplay
from hpo.errors import StudyMismatchError
from hpo.ledger import HOSTNAME
from hpo.record import A_HOST, A_PID, A_REASON, A_REQUEUED, counted
from hpo.storage import create_or_resume, open_storage
from hpo.worker import WorkerSpec


def study_dict(**over: Any) -> dict[str, Any]:
    """``studies.curve`` with dropout searched too; a section given is merged into the base's (one level),
    except ``search_space``, which is replaced."""
    d = studies.curve(
        search_space={
            "training.learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        }
    )
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "search_space" else v
    return d


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return "memory" if request.param == "memory" else f"sqlite:///{tmp_path}/study.db"


class Harness:
    """Builds studies and orchestrators on one storage; closes workers afterwards."""

    def __init__(self, url: str) -> None:
        self.storage = open_storage(url, create=True)
        self.out = io.StringIO()
        self.orchestrators: list[Orchestrator] = []

    def run(self, cfg: StudyConfig, runner: Any = None, workers: int = 2, **kw: Any) -> optuna.Study:
        study, _ = create_or_resume(cfg, self.storage)
        display = RunDisplay(console=Console(file=self.out, width=200), live=False)
        specs = [WorkerSpec(i, 1, {}, "cpu") for i in range(workers)]
        orch = Orchestrator(cfg, study, specs, runner or CurveRunner(), display)
        self.orchestrators.append(orch)
        try:
            self.summary = orch.run(**kw)
        finally:
            orch.close()
        return study


@pytest.fixture
def harness(storage_url: str) -> Iterator[Harness]:
    h = Harness(storage_url)
    yield h
    for o in h.orchestrators:
        o.close()


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_runs_n_trials_and_reports_values(harness: Harness) -> None:
    study = harness.run(validate_study(study_dict()))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        assert t.value == pytest.approx(final_loss(t.params["learning_rate"]) + 5.0 / 20)
        assert sorted(t.intermediate_values) == [5, 10, 15, 20]
        assert t.user_attrs["steps"] == 20
        assert {"metrics", "train_time", "tokens_per_s", "device", "duration"} <= set(t.user_attrs)
    assert study.best_value == min(t.value for t in trials)


def test_n_trials_is_the_total_and_rerun_resumes(harness: Harness) -> None:
    harness.run(validate_study(study_dict(study={"n_trials": 3})))
    study = harness.run(validate_study(study_dict(study={"n_trials": 3})))
    assert len(study.trials) == 3  # already complete: nothing more runs
    study = harness.run(validate_study(study_dict(study={"n_trials": 5})))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert states(study) == {"COMPLETE": 5}


def test_pruner_stops_bad_trials_with_a_reason(harness: Harness) -> None:
    cfg = validate_study(
        study_dict(
            study={"n_trials": 12},
            sampler={"name": "random", "seed": 3},
            pruner={"name": "median", "n_startup_trials": 3},
        )
    )
    study = harness.run(cfg, workers=1)  # one worker: the median always sees finished trials first
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "a median pruner over these curves must prune some trials"
    for t in pruned:
        assert t.user_attrs[A_REASON].startswith("pruned by median pruner at step")
        assert t.user_attrs["steps"] < 20
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # A pruned trial was worse than the median of complete trials at its step.
    assert min(t.value for t in complete) < min(t.value for t in pruned)


def test_crashing_trial_fails_with_reason_and_study_goes_on(harness: Harness) -> None:
    study = harness.run(validate_study(study_dict(study={"n_trials": 8})), CurveRunner(fail_above=1.0e-2))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and all(t.params["learning_rate"] > 1.0e-2 for t in failed)
    for t in failed:
        assert t.user_attrs[A_REASON] == f"error: RuntimeError: simulated crash at lr={t.params['learning_rate']:.3g}"
        assert "Traceback" in t.user_attrs["traceback"]
    assert len(study.trials) == 8  # genuine failures count towards n_trials
    assert states(study).get("COMPLETE", 0) == 8 - len(failed)


def test_non_finite_loss_is_pruned_with_reason(harness: Harness) -> None:
    study = harness.run(validate_study(study_dict(study={"n_trials": 8})), CurveRunner(nan_above=1.0e-2))
    bad = [t for t in study.trials if t.params["learning_rate"] > 1.0e-2]
    assert bad
    for t in bad:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs[A_REASON] == "non-finite training loss (nan) at step 5"


def test_a_worker_that_dies_with_no_trial_is_named_and_replaced(harness: Harness, tmp_path: Path) -> None:
    runner = CurveRunner(die_in_setup=True, marker_dir=str(tmp_path))
    study = harness.run(validate_study(study_dict(study={"n_trials": 3})), runner, workers=1)
    assert states(study) == {"COMPLETE": 3}  # nothing failed: it had no trial
    said = " ".join(harness.out.getvalue().split())
    assert "worker 0 (cpu) died with no trial running (exit code 9); a new one takes its place" in said


def test_dead_worker_fails_trial_and_requeues_same_params(harness: Harness, tmp_path: Path) -> None:
    runner = CurveRunner(die_above=1.0e-1, marker_dir=str(tmp_path))
    study = harness.run(validate_study(study_dict(study={"n_trials": 8})), runner)
    died = [t for t in study.trials if t.state == TrialState.FAIL]
    assert died, "seed 0 samples lr > 0.1 at least once"
    for t in died:
        assert t.user_attrs[A_REASON].startswith("worker process died (exit code 9)")
        assert t.user_attrs[A_REQUEUED] is True
        retry = [r for r in study.trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].params == t.params and retry[0].state == TrialState.COMPLETE
    assert sum(1 for t in study.trials if counted(t)) == 8
    assert states(study)["COMPLETE"] == 8


def test_orphaned_running_trial_is_failed_and_rerun(harness: Harness) -> None:
    cfg = validate_study(study_dict(study={"n_trials": 3}))
    study, _ = create_or_resume(cfg, harness.storage)
    # A trial left RUNNING by an hpo process that was killed (its pid no longer exists).
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = study.ask(
        {
            "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True),
            "dropout": optuna.distributions.FloatDistribution(0.0, 0.3),
        }
    )
    orphan.set_user_attr(A_HOST, HOSTNAME)
    orphan.set_user_attr(A_PID, dead.pid)
    study = harness.run(cfg)
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs[A_REASON] == "orphaned: its hpo process died"
    rerun = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(rerun) == 1 and rerun[0].params == first.params and rerun[0].state == TrialState.COMPLETE
    assert states(study) == {"FAIL": 1, "COMPLETE": 3}


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_live_trial_of_another_process_is_left_alone(harness: Harness) -> None:
    cfg = validate_study(study_dict(study={"n_trials": 2}))
    study, _ = create_or_resume(cfg, harness.storage)
    other = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)})
    other.set_user_attr(A_HOST, HOSTNAME)
    other.set_user_attr(A_PID, os.getpid())  # alive: a concurrent run owns it
    orch_study = harness.run(cfg, timeout=3.0)
    assert orch_study.trials[0].state == TrialState.RUNNING
    assert len(orch_study.trials) == 2  # it counts towards n_trials: only one more trial ran


def test_interrupt_marks_running_trials_and_resume_reruns_them(harness: Harness) -> None:
    cfg = validate_study(study_dict(study={"n_trials": 4}))

    class Interrupting(RunDisplay):
        def trial_eval(self, number: int, step: int, value: float) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while trials were running

    study, _ = create_or_resume(cfg, harness.storage)
    display = Interrupting(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, study, [WorkerSpec(0, 1, {}, "cpu")], CurveRunner(block=True), display)
    try:
        summary = orch.run()
    finally:
        orch.close()
    assert summary.interrupted
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert len(interrupted) == 1 and interrupted[0].user_attrs[A_REASON] == "interrupted"
    assert not study.get_trials(states=(TrialState.RUNNING,))
    study = harness.run(cfg)
    rerun = [t for t in study.trials if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert len(rerun) == 1 and rerun[0].params == interrupted[0].params
    assert states(study) == {"FAIL": 1, "COMPLETE": 4}


@pytest.mark.parametrize("storage_url", ["sqlite", "postgres"], indirect=True)
def test_a_trial_another_process_closed_meanwhile_is_dropped_with_a_note(harness: Harness, storage_url: str) -> None:
    # This orchestrator was paused (SIGSTOP, a suspended VM) past the heartbeat grace: another process failed
    # and re-queued its trial 0. When it comes back with trial 0's result, it must go on, not crash.
    cfg = validate_study(study_dict(study={"n_trials": 3}))
    study = harness.run(cfg, CurveRunner(close_elsewhere=(storage_url, "t", 0)), workers=1)
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs[A_REASON] == "orphaned: no heartbeat"
    assert "steps" not in first.user_attrs  # the late result did not overwrite the other process's record
    assert not first.intermediate_values  # its eval came after the trial was closed: not reported
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == first.params and retry[0].state == TrialState.COMPLETE
    assert states(study) == {"FAIL": 1, "COMPLETE": 3}
    out = " ".join(harness.out.getvalue().split())
    assert "result of trial 0 dropped: another process had already closed it (orphaned: no heartbeat;" in out
    assert harness.summary.states == {"DROPPED": 1, "COMPLETE": 3}


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_heartbeats_go_on_while_the_main_loop_waits(storage_url: str) -> None:
    # The main loop can wait on the storage for minutes (busy timeout, retries on a lost connection). Other
    # processes must not find its trials without heartbeat meanwhile. Here: a 1 s heartbeat, a 2 s grace,
    # and a main loop that stalls 4 s while a trial runs.
    from hpo.store import RetryingRDBStorage, study_store

    storage = RetryingRDBStorage.connect(storage_url, {}, readonly=False, heartbeat=(1, 2))
    cfg = validate_study(study_dict(study={"n_trials": 1}))
    study, _ = create_or_resume(cfg, storage)
    stale: list[set[int]] = []

    def stall() -> bool:
        if not stale and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(4.0)  # as in a storage call that waits
            stale.append(study_store(study).stale_trial_ids())
        return False

    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, study, [WorkerSpec(0, 1, {}, "cpu")], CurveRunner(step_sleep=0.4), display)
    try:
        orch.run(should_stop=stall)
    finally:
        orch.close()
    assert stale == [set()]
    assert states(study) == {"COMPLETE": 1}


def test_grid_runs_each_point_once_and_stops_at_grid_size(harness: Harness) -> None:
    cfg = validate_study(
        study_dict(
            study={"n_trials": 10},
            sampler={"name": "grid", "seed": 0},
            search_space={
                "training.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "grid": [1.0e-4, 1.0e-2]},
                "model.dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            },
        )
    )
    study = harness.run(cfg)
    points = sorted((t.params["learning_rate"], t.params["dropout"]) for t in study.trials)
    assert points == [(1.0e-4, 0.0), (1.0e-4, 0.1), (1.0e-2, 0.0), (1.0e-2, 0.1)]


def test_resume_with_changed_search_space_is_refused(harness: Harness) -> None:
    cfg = validate_study(study_dict())
    study, _ = create_or_resume(cfg, harness.storage)
    study.tell(study.ask(), 1.0)  # results to protect (a study with none takes the changed file: test_references)
    changed = study_dict()
    changed["search_space"]["model.dropout"]["high"] = 0.5
    with pytest.raises(StudyMismatchError, match=r"different search_space.*change `study.name`"):
        create_or_resume(validate_study(changed), harness.storage)
    # n_trials and the sampler may change between runs.
    create_or_resume(validate_study(study_dict(study={"n_trials": 9}, sampler={"name": "tpe"})), harness.storage)


@pytest.mark.parametrize("sampler", ["random", "grid"])
@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_processes_sharing_a_study_keep_n_trials_total_and_grid_points_unique(storage_url: str, sampler: str) -> None:
    if storage_url == "memory":
        pytest.skip("an in-memory study cannot be shared between processes")
    grid = {"type": "float", "low": 1.0e-5, "high": 1.0, "grid": [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1, 1.0]}
    space = {"training.learning_rate": grid, "model.dropout": {"type": "categorical", "choices": [0.0, 0.1]}}
    d = study_dict(study={"n_trials": 10}, sampler={"name": sampler, "seed": 0}, search_space=space)
    create_or_resume(validate_study(d), open_storage(storage_url, create=True))  # as the first `hpo run` does
    from doubles import run_orchestrators

    run_orchestrators(storage_url, d, processes=3, workers=2)
    study = optuna.load_study(study_name="t", storage=open_storage(storage_url, create=False))
    ran = [t for t in study.trials if counted(t)]
    assert len(ran) == 10 and all(t.state == TrialState.COMPLETE for t in ran)
    if sampler == "grid":
        points = [(t.params["learning_rate"], t.params["dropout"]) for t in ran]
        assert len(set(points)) == 10  # no grid point run twice


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_postgres_restart_during_a_study_is_waited_out(
    postgres_server: Any, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    h = Harness(postgres_url)
    cfg = validate_study(study_dict(study={"n_trials": 8}))
    restarter = threading.Timer(1.0, postgres_server.restart, args=(3.0,))
    restarter.start()
    try:
        study = h.run(cfg, CurveRunner(step_sleep=0.05))
    finally:
        restarter.join()
    assert states(study) == {"COMPLETE": 8}
    assert "storage unreachable" in caplog.text  # the outage really happened mid-study, and was retried


def test_close_all_stops_every_worker_in_parallel(tmp_path: Path) -> None:
    """Every worker is told to close before the first is waited for: each worker's exit waits until all
    have been told (``CloseTogether``), so a one-by-one close would leave the first killed, not exited 0."""
    from hpo.worker import WorkerHandle, close_all, mp_context

    ctx = mp_context()
    results = ctx.Queue()
    runner = CloseTogether(str(tmp_path), group=3)
    workers = [WorkerHandle(WorkerSpec(i, 1, {}, "cpu"), runner, results, ctx) for i in range(3)]
    assert all(w.alive() for w in workers)
    close_all(workers)
    assert not any(w.alive() for w in workers)
    assert [w.process.exitcode for w in workers] == [0, 0, 0]  # each exited once all were told, not killed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["closing-0", "closing-1", "closing-2"]
    close_all(workers)  # closing again is harmless
