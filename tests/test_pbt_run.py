"""A PBT population run by `hpo run` (real workers, the real trainer): lineage in the storage, bounded
checkpoints, the winner's schedule exported and replayed to its exact value, and a `kill -9` of the run
resumed to exactly the result of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from procs import send, worker_pids

import studies
from hpo.pbt import ATTR, MemberRecord, params_at

ROOT = Path(__file__).resolve().parents[1]
HPO = str(Path(sys.executable).with_name("hpo"))

pytestmark = pytest.mark.slow


def pbt_study(folder: Path) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder}/pbt.db"
    spec = studies.causal_lm(
        "pbt",
        4,
        storage,
        fidelity={"max_steps": 48, "eval_every": 8, "eval_batches": 2},
        resources={"workers": 2, "threads_per_worker": 1},
        pbt={"population": 4, "interval_steps": 16, "quantile": 0.25},
    )
    path = folder / "pbt.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, storage


def hpo(*args: str, cache: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPO_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([HPO, *args], cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def members(storage: str) -> dict[int, tuple[optuna.trial.FrozenTrial, MemberRecord]]:
    study = optuna.load_study(study_name="pbt", storage=storage)
    out = {}
    for t in study.get_trials():
        rec = MemberRecord.from_json(t.user_attrs[ATTR])
        out[rec.member] = (t, rec)
    return out


def outcome(storage: str) -> dict[int, Any]:
    """What a population computed: per member, its trial, state, value, schedule and lineage."""
    return {
        m: (t.number, t.state, t.value, rec.schedule, rec.lineage, dict(t.intermediate_values))
        for m, (t, rec) in members(storage).items()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    root = tmp_path_factory.mktemp("pbt-run")
    path, storage = pbt_study(root / "a")
    cache = root / "cache"
    hpo("run", str(path), cache=cache)
    return path, storage, cache


def test_population_records_lineage_and_keeps_one_checkpoint_per_member(finished: tuple[Path, str, Path]) -> None:
    _, storage, _ = finished
    got = members(storage)
    assert sorted(got) == [0, 1, 2, 3]
    exploits = [e for _, rec in got.values() for e in rec.lineage]
    assert exploits, "no member copied another in two boundaries"
    for t, rec in got.values():
        assert t.state == TrialState.COMPLETE and rec.status == "done" and rec.step == 48
        assert t.value == rec.value
        assert sorted(t.intermediate_values) == [8, 16, 24, 32, 40, 48]
        for e in rec.lineage:
            assert e.step in (16, 32) and e.member == rec.member and e.parent != rec.member
            parent_trial, _ = got[e.parent]
            assert e.parent_trial == parent_trial.number
            assert e.value is None or e.parent_value <= e.value  # minimized: the parent was better
        if rec.lineage:  # its schedule from the last copy on is what that copy's explore chose
            last = rec.lineage[-1]
            assert all(params_at(rec.schedule, last.step)[k] == new for k, (_, new) in last.changed.items())
        assert rec.schedule[0][0] == 0
    # Bounded: one checkpoint per member (its last), next to the storage.
    pop = Path(storage.removeprefix("sqlite:///")).parent / "pbt-pbt"
    assert sorted(p.name for p in pop.iterdir()) == [f"member-{m}" for m in range(4)]
    for m in range(4):
        assert [p.name for p in (pop / f"member-{m}").iterdir()] == ["checkpoint-48"]


def test_winner_schedule_exports_and_replays_to_its_value(finished: tuple[Path, str, Path], tmp_path: Path) -> None:
    path, storage, cache = finished
    best = optuna.load_study(study_name="pbt", storage=storage).best_trial
    rec = MemberRecord.from_json(best.user_attrs[ATTR])
    hpo("export", str(path), "--trial-length", "-o", str(tmp_path / "check"), cache=cache)
    written = yaml.safe_load((tmp_path / "check" / "train.yaml").read_text())
    assert [s["step"] for s in written["schedule"]] == [s for s, _ in rec.schedule]
    assert [s["set"]["training.learning_rate"] for s in written["schedule"]] == [
        p["learning_rate"] for _, p in rec.schedule
    ]
    hpo("train", str(tmp_path / "check" / "train.yaml"), cache=cache)
    metrics = json.loads((tmp_path / "check" / "model" / "metrics.json").read_text())["metrics"]
    assert metrics["perplexity"] == best.value  # from scratch, one run: the winner's value to the last digit
    # At full length, the boundaries stretch with the run.
    hpo("export", str(path), "--steps", "96", "-o", str(tmp_path / "full"), cache=cache)
    full = yaml.safe_load((tmp_path / "full" / "train.yaml").read_text())
    assert [s["step"] for s in full["schedule"]] == [2 * s for s, _ in rec.schedule]


def _start(path: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [HPO, "run", str(path)], cwd=ROOT, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for_step(storage: str, step: int, timeout: float = 300.0) -> None:
    """Until some member reported an eval at ``step`` (the population is then inside the next interval)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = members(storage)
        except Exception:  # the study or its attributes are not written yet
            got = {}
        if len(got) == 4 and any(step in t.intermediate_values for t, _ in got.values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"the population never reached step {step}")


def _kill_a_worker_mid_interval(proc: subprocess.Popen[str], storage: str, interval: int) -> int:
    """``kill -9`` the worker of a member inside an interval past the first boundary (its last eval is past
    its checkpoint and not a boundary's); returns the step that interval started at (its checkpoint's).

    A tiny model trains an interval in ~0.15 s, the window between an eval and the interval's end in tens of
    milliseconds: polling a running population misses it (it did, in CI). So once the members train, the
    test is the workers' clock: they are frozen (SIGSTOP), let run for a few milliseconds at a time (about
    one step), and the storage is read while they are stopped, with the orchestrator given time to write
    what they sent. No window is shorter than a burst, so none is missed."""

    def training() -> bool:
        try:
            return any(t.intermediate_values for t, _ in members(storage).values())
        except Exception:  # the study or its attributes are not written yet
            return False

    def mid_interval() -> tuple[int, int] | None:  # (worker pid, the interval's first step)
        for t, rec in members(storage).values():
            pid, steps = t.user_attrs.get("worker_pid"), t.intermediate_values
            if t.state != TrialState.RUNNING or not pid or not steps:
                continue
            last = max(steps)
            if rec.step >= interval and last > rec.step and last % interval:
                return pid, rec.step
        return None

    end = time.monotonic() + 300
    while not training():  # the workers' start-up (seconds) runs at full speed
        assert time.monotonic() < end and proc.poll() is None, "the population never started training"
        time.sleep(0.05)
    workers: list[int] = []
    try:
        while time.monotonic() < end and proc.poll() is None:
            workers = worker_pids(proc.pid)
            send(workers, signal.SIGSTOP)
            time.sleep(0.1)  # the orchestrator writes whatever they sent before they stopped
            found = mid_interval()
            if found is not None and found[0] in workers:
                os.kill(found[0], signal.SIGKILL)
                return found[1]
            send(workers, signal.SIGCONT)
            time.sleep(0.005)
    finally:
        send(workers, signal.SIGCONT)
    raise AssertionError("no worker was caught inside an interval before the run ended")


def test_kill_9_of_the_run_resumes_to_the_uninterrupted_result(
    finished: tuple[Path, str, Path], tmp_path: Path
) -> None:
    _, expected_storage, cache = finished
    path, storage = pbt_study(tmp_path / "b")
    proc = _start(path, cache)
    try:
        # Kill it in the middle of the second interval: the first boundary's copies are done, and some member
        # has evals past step 16 that its checkpoint does not hold yet.
        _wait_for_step(storage, 24)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert all(t.state == TrialState.RUNNING for t, _ in members(storage).values())
    hpo("run", str(path), cache=cache)
    assert outcome(storage) == outcome(expected_storage)


def test_kill_9_of_a_worker_reruns_its_interval_to_the_uninterrupted_result(
    finished: tuple[Path, str, Path], tmp_path: Path
) -> None:
    _, expected_storage, cache = finished
    path, storage = pbt_study(tmp_path / "c")
    proc = _start(path, cache)
    try:
        start = _kill_a_worker_mid_interval(proc, storage, interval=16)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    said = " ".join(out.split())  # the console wraps long lines when it is not a terminal
    assert f"worker died (exit code -9); its interval runs again from step {start}" in said, out
    assert outcome(storage) == outcome(expected_storage)


def test_a_population_on_postgresql_computes_what_it_does_on_sqlite(
    finished: tuple[Path, str, Path], tmp_path: Path, postgres_url: str
) -> None:
    _, expected_storage, cache = finished
    path, _ = pbt_study(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["study"]["storage"] = postgres_url
    spec["pbt"]["checkpoint_dir"] = str(tmp_path / "shared" / "pbt")  # on a filesystem every machine mounts
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    hpo("run", str(path), cache=cache)
    assert outcome(postgres_url) == outcome(expected_storage)
    assert sorted(p.name for p in (tmp_path / "shared" / "pbt").iterdir()) == [f"member-{m}" for m in range(4)]
