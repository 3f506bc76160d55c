"""Faults with real processes: Ctrl-C, SIGTERM, kill -9 of a worker, kill -9 of `hpo run`. No result is lost, the
study stays consistent, and a second `hpo run` completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from procs import worker_pids

import studies
from hpo.record import TrialRecord

ROOT = Path(__file__).resolve().parents[1]
HPO = str(Path(sys.executable).with_name("hpo"))

pytestmark = pytest.mark.slow


def study_file(tmp_path: Path, n_trials: int = 4) -> tuple[Path, str]:
    storage = f"sqlite:///{tmp_path}/faults.db"
    spec = studies.causal_lm(
        "faults",
        n_trials,
        storage,
        fidelity={"max_steps": 400, "eval_every": 50, "eval_batches": 1},
        resources={"workers": 2, "threads_per_worker": 1},
    )
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, storage


def start(path: Path, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.Popen(
        [HPO, "run", str(path)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, like a shell job: Ctrl-C goes to the group
        preexec_fn=_ctrl_c_reaches_it,
    )


def _ctrl_c_reaches_it() -> None:
    """A shell starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored, and an ignored signal stays
    ignored across exec: pytest run that way would hand it on, and Ctrl-C would never reach `hpo run`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_to_end(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPO_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([HPO, "run", str(path)], cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)


def wait_running(storage: str, n: int = 1, timeout: float = 90.0) -> optuna.Study:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            study = optuna.load_study(study_name="faults", storage=storage)
            trials = study.get_trials(states=(TrialState.RUNNING,))
            if len(trials) >= n and all(t.intermediate_values for t in trials):
                return study
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError("no running trial with an eval appeared")


def assert_complete_and_consistent(storage: str, n_trials: int) -> optuna.Study:
    study = optuna.load_study(study_name="faults", storage=storage)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    counted = [t for t in trials if TrialRecord.from_trial(t).counted]  # re-queued and discarded FAILs do not
    assert len(counted) == n_trials
    assert all(t.state == TrialState.COMPLETE for t in counted)
    for t in trials:
        if t.state == TrialState.FAIL and not TrialRecord.from_trial(t).attrs.discarded:  # discarded: never ran
            retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
            assert len(retries) == 1 and retries[0].params == t.params  # re-run once, same params
    return study


def test_ctrl_c_marks_running_trials_and_rerun_completes(tmp_path: Path) -> None:
    path, storage = study_file(tmp_path)
    proc = start(path, tmp_path)
    wait_running(storage, n=2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    study = optuna.load_study(study_name="faults", storage=storage)
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert interrupted and all(t.user_attrs["reason"] == "interrupted" for t in interrupted)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    done = run_to_end(path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_complete_and_consistent(storage, 4)


def test_sigterm_does_what_ctrl_c_does(tmp_path: Path) -> None:
    """SLURM's scancel and Kubernetes send SIGTERM to every process of the job before killing it."""
    path, storage = study_file(tmp_path)
    proc = start(path, tmp_path)
    wait_running(storage, n=2)
    workers = worker_pids(proc.pid)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the run and its workers, as scancel does
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20, "SIGTERM must stop the run at the trials' next step"
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    assert "interrupted (SIGTERM): stopping running trials" in err
    study = optuna.load_study(study_name="faults", storage=storage)
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert len(interrupted) == 2
    assert all(t.user_attrs["reason"] == "interrupted" and t.user_attrs["requeued"] for t in interrupted)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # The summary counts the trials closed while stopping (it used to leave them out).
    n_done = len([t for t in study.get_trials() if t.state.is_finished()])
    assert f"interrupted after {n_done} trials" in out and "resume with: hpo run" in out
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]
    complete_before = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    done = run_to_end(path, tmp_path)
    assert done.returncode == 0, done.stderr
    study = assert_complete_and_consistent(storage, 4)
    after = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(after[n] == v for n, v in complete_before.items())


def test_kill_9_of_a_worker_fails_its_trial_and_study_completes(tmp_path: Path) -> None:
    path, storage = study_file(tmp_path)
    proc = start(path, tmp_path)
    # Both workers busy: a worker killed before it is ready has no trial to fail (and is replaced only when
    # the result queue falls silent, which the other worker's events may not let happen before the end).
    study = wait_running(storage, n=2)
    assert len(worker_pids(proc.pid)) == 2
    # The worker of a trial that reported an eval (its own pid, recorded at launch): one between two trials
    # would have none to fail. 400 steps a trial leave seconds to kill it in.
    running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values]
    os.kill(running[0].user_attrs["worker_pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = assert_complete_and_consistent(storage, 4)
    died = study.get_trials(states=(TrialState.FAIL,))
    assert len(died) == 1 and died[0].user_attrs["reason"].startswith("worker process died (exit code -9)")


def test_kill_9_of_hpo_run_loses_nothing_and_rerun_completes(tmp_path: Path) -> None:
    path, storage = study_file(tmp_path, n_trials=5)
    proc = start(path, tmp_path)
    wait_running(storage, n=2)
    workers = worker_pids(proc.pid)
    before = optuna.load_study(study_name="faults", storage=storage).get_trials()
    complete_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1.0)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]  # workers died too
    left = optuna.load_study(study_name="faults", storage=storage).get_trials(states=(TrialState.RUNNING,))
    assert left, "the killed run left trials RUNNING"
    done = run_to_end(path, tmp_path)
    assert done.returncode == 0, done.stderr
    study = assert_complete_and_consistent(storage, 5)
    after = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in complete_before.items())  # no COMPLETE trial lost or changed
    orphans = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert {t.number for t in orphans} == {t.number for t in left}
    assert all(t.user_attrs["reason"] == "orphaned: its hpo process died" for t in orphans)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"
