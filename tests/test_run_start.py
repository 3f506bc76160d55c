"""How a run starts and what it says: a changed study file is refused before any worker starts, the counts in
the header and the final line agree (grids used up, n_trials lowered, one trial), and a second run on the
same host plans its workers on the cores the first one leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from doubles import CurveRunner
from optuna.trial import TrialState
from test_cli import runner, tiny, write

import hpo.api
import hpo.resources
from hpo.cli import app
from hpo.config import ResourcesSection, load_study_file
from hpo.display import fmt_counts
from hpo.errors import StudyMismatchError
from hpo.hostload import HostRun, HostRuns
from hpo.resources import cpu_cores, plan_workers
from hpo.storage import create_or_resume, open_storage
from hpo.worker import WorkerSpec


@pytest.fixture(autouse=True)
def own_host_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs here register in the test's own runtime directory, not among the machine's real hpo runs."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


@pytest.fixture
def curve_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hpo run` with the trainer double in its workers: real processes, no torch."""
    monkeypatch.setattr(hpo.api, "TrainerRunner", lambda *a, **k: CurveRunner())


def grid_study(tmp_path: Path, n_trials: int) -> dict[str, Any]:
    d = tiny(tmp_path, sampler={"name": "grid"}, pruner={"name": "none"})
    d["study"]["n_trials"] = n_trials
    d["search_space"] = {
        "training.learning_rate": {"type": "categorical", "choices": [1.0e-4, 1.0e-3]},
        "model.dropout": {"type": "categorical", "choices": [0.0, 0.1]},
    }
    return d


# ------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize(
    ("counted", "n_trials", "grid", "text"),
    [
        (0, 5, None, "0/5 trials counted"),
        (1, 1, None, "1/1 trial counted"),
        (5, 5, None, "5/5 trials counted"),
        (8, 5, None, "8 trials counted, more than n_trials 5 (it was lowered)"),
        (0, 10, 4, "0/4 grid points counted (n_trials 10 asks for more)"),
        (4, 10, 4, "4/4 grid points counted; the grid is used up (n_trials 10 asks for more)"),
        (4, 4, 4, "4/4 grid points counted; the grid is used up"),
        (2, 3, 8, "2/3 trials counted"),  # fewer trials than grid points: n_trials is the target
    ],
)
def test_counts_are_worded_once(counted: int, n_trials: int, grid: int | None, text: str) -> None:
    assert fmt_counts(counted, n_trials, grid) == text


def said(output: str) -> str:
    return " ".join(output.split())  # the console wraps long lines


def test_header_and_final_line_agree_on_a_grid_smaller_than_n_trials(tmp_path: Path, curve_workers: None) -> None:
    path = write(tmp_path, grid_study(tmp_path, 10))
    first = runner.invoke(app, ["run", str(path)])
    assert first.exit_code == 0, first.output
    text = said(first.output)
    assert "e2e — new study: 0/4 grid points counted (n_trials 10 asks for more)" in text
    assert "(4 complete); 4/4 grid points counted; the grid is used up (n_trials 10 asks for more) in the study" in text
    again = runner.invoke(app, ["run", str(path)])
    assert again.exit_code == 0, again.output
    text = said(again.output)
    assert "e2e — resuming: 4/4 grid points counted; the grid is used up (n_trials 10 asks for more)" in text
    assert "ran 0 trials in" in text
    assert "; 4/4 grid points counted; the grid is used up (n_trials 10 asks for more) in the study" in text


def test_one_trial_is_singular_and_a_lowered_n_trials_is_said(tmp_path: Path, curve_workers: None) -> None:
    d = tiny(tmp_path, sampler={"name": "random", "seed": 0}, pruner={"name": "none"})
    d["study"]["n_trials"] = 1
    one = said(runner.invoke(app, ["run", str(write(tmp_path, d))]).output)
    assert "ran 1 trial in" in one and "; 1/1 trial counted in the study" in one
    d["study"]["n_trials"] = 3
    runner.invoke(app, ["run", str(write(tmp_path, d))])
    d["study"]["n_trials"] = 2  # lowered below what the study already has
    lowered = said(runner.invoke(app, ["run", str(write(tmp_path, d))]).output)
    assert "resuming: 3 trials counted, more than n_trials 2 (it was lowered)" in lowered
    assert "; 3 trials counted, more than n_trials 2 (it was lowered) in the study" in lowered


# ------------------------------------------------------------------------------------ changed file


def test_a_changed_study_is_refused_before_any_worker_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, tiny(tmp_path))
    cfg = load_study_file(path)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))  # an earlier run...
    study.tell(study.ask(), state=TrialState.FAIL)  # ...with a trial (a study with none takes a fixed file)
    changed = tiny(tmp_path)
    changed["search_space"]["model.dropout"]["high"] = 0.5
    changed_path = write(tmp_path, changed, "changed.yaml")
    started: list[Any] = []
    monkeypatch.setattr(hpo.api, "WorkerHandle", lambda *a, **k: started.append(a))
    before = sorted(p for p in tmp_path.rglob("*") if "-wal" not in p.name and "-shm" not in p.name)
    with pytest.raises(StudyMismatchError, match="different search_space"):
        hpo.api.run(changed_path)
    assert started == []  # refused before the seconds of worker start-up
    after = sorted(p for p in tmp_path.rglob("*") if "-wal" not in p.name and "-shm" not in p.name)
    assert after == before  # nothing written: no cache, no host registry entry


# ------------------------------------------------------------------------------------ cores on a shared host


@pytest.mark.parametrize(
    ("resources", "busy", "workers"),
    [
        ({}, 0, 4),
        ({}, 1, 3),
        ({}, 3, 1),
        ({}, 4, 1),  # nothing left: one worker still runs (and the header says the cores are shared)
        ({}, 9, 1),
        ({"workers": 4}, 2, 2),  # an explicit count is capped at the free cores, as at the machine's cores
        ({"threads_per_worker": 2}, 0, 2),
        ({"threads_per_worker": 2}, 2, 1),
    ],
)
def test_workers_are_planned_on_the_cores_other_runs_leave(
    resources: dict[str, Any], busy: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hpo.resources, "cpu_cores", lambda: 4)
    specs = plan_workers(ResourcesSection.model_validate({"devices": "cpu", **resources}), busy_cores=busy)
    assert len(specs) == workers
    assert sum(s.threads for s in specs) <= max(1, 4 - busy) or len(specs) == 1


OTHER_RUN = """
import sys, time
from pathlib import Path
from hpo.hostload import HostRuns
from hpo.worker import WorkerSpec
HostRuns(Path(sys.argv[1])).claim("other", lambda busy: [WorkerSpec(i, 1, {}, "cpu") for i in range(int(sys.argv[2]))])
print("claimed", flush=True)
time.sleep(120)
"""


@pytest.fixture
def other_run(own_host_registry: Path) -> Iterator[Any]:
    """Start a real process that registers as an hpo run using ``cores`` cores; yields a starter."""
    procs: list[subprocess.Popen[str]] = []

    def start(cores: int) -> subprocess.Popen[str]:
        d = own_host_registry / f"hpo-{os.getuid()}" / "runs"
        p = subprocess.Popen(
            [sys.executable, "-c", OTHER_RUN, str(d), str(cores)], stdout=subprocess.PIPE, text=True, env=os.environ
        )
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "claimed"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_run_sees_other_live_runs_on_the_host_and_forgets_killed_ones(other_run: Any) -> None:
    other = other_run(2)
    host = HostRuns()
    assert host.others() == [HostRun(other.pid, 2, "other")]
    seen: list[int] = []
    _, others = host.claim("mine", lambda busy: seen.append(busy) or [WorkerSpec(0, 1, {}, "cpu")])
    assert seen == [2] and others == [HostRun(other.pid, 2, "other")]
    os.kill(other.pid, signal.SIGKILL)  # killed: it never removes its entry
    other.wait()
    assert host.others() == []
    assert sorted(p.name for p in host.dir.iterdir()) == [f"{os.getpid()}.json"]  # its entry is gone
    host.release()
    assert list(host.dir.iterdir()) == []


def test_a_second_run_on_the_host_uses_the_cores_left_and_says_so(
    tmp_path: Path, curve_workers: None, other_run: Any
) -> None:
    other = other_run(cpu_cores())  # takes every core of this machine
    d = tiny(tmp_path, sampler={"name": "random", "seed": 0}, pruner={"name": "none"})
    d["study"]["n_trials"] = 2
    d["resources"] = {**d.get("resources", {}), "devices": "cpu"}  # cores are the point (a GPU host plans GPUs)
    result = runner.invoke(app, ["run", str(write(tmp_path, d))])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "workers 1 x 1 thread(s) on cpu" in text
    assert f"{cpu_cores()} in use by 1 other hpo run here: pid {other.pid} (other) — no core left" in text
    assert not HostRuns().dir.joinpath(f"{os.getpid()}.json").exists()  # released at the end


def test_a_bad_resources_section_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = tiny(tmp_path)
    d["resources"] = {"devices": [7]}
    path = write(tmp_path, yaml.safe_dump(d))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no database, no registry


# ------------------------------------------------------------------------------------ relative storage


def test_a_relative_storage_missing_here_names_the_directory_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    d = tiny(tmp_path)
    del d["study"]["storage"]  # the default: runs/<name>.db, relative to the working directory
    path = write(proj, d)
    monkeypatch.chdir(proj)
    cfg = load_study_file(path)
    create_or_resume(cfg, open_storage(cfg.storage_url, create=True))  # `hpo run` in proj/
    assert runner.invoke(app, ["status", str(path)]).exit_code == 0
    monkeypatch.chdir(elsewhere)
    for args in (["status", str(path)], ["report", str(path), str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        text = said(result.output)
        assert f"sqlite:///runs/e2e.db does not exist in {elsewhere}" in text
        assert "run this command from the directory the study ran in" in text
    assert list(elsewhere.iterdir()) == []
