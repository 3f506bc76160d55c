"""The README's SLURM-array recipe, run for real: a single-node SLURM cluster (slurmctld, slurmd, munged on
127.0.0.1, all in a temporary folder) runs ``studies/slurm-array.sh`` -- the script README.md shows -- as an
array of 3 tasks on one PostgreSQL study. Skipped, with the reason, where SLURM is not installed or cannot
start (`.ci/run` installs Debian's slurmctld, slurmd and munge)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import studies
from hpo.record import TrialRecord

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "studies" / "slurm-array.sh"
STUDY = "slurm-array"
KILL_WAIT = 10  # seconds between scancel's SIGTERM and its SIGKILL (SLURM's default is 30)
FAKE_GPUS = 32  # the script asks for --gres=gpu:8 per task; 4 tasks fit on the one node
DONE = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class Slurm:
    env: dict[str, str]  # SLURM_CONF for the clients (sbatch, squeue, scancel, scontrol)

    def cmd(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            args, cwd=cwd, env={**(env or os.environ), **self.env}, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr.strip()}"
        return out.stdout

    def sbatch(self, script: Path, *opts: str, cwd: Path, env: dict[str, str]) -> str:
        """Submit as a user would, from `cwd` with `env` (sbatch passes the environment on); the job id."""
        return self.cmd("sbatch", "--parsable", *opts, str(script), cwd=cwd, env=env).strip().split(";")[0]

    def tasks(self, job: str) -> dict[int, dict[str, str]]:
        """Each array task's fields (JobState, ExitCode, ...) from `scontrol show job`."""
        out = self.cmd("scontrol", "-o", "show", "job", job)
        tasks = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("ArrayTaskId", "").isdigit():
                tasks[int(fields["ArrayTaskId"])] = fields
        return tasks

    def wait_done(self, job: str, timeout: float) -> dict[int, dict[str, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            tasks = self.tasks(job)
            if tasks and all(t["JobState"] in DONE for t in tasks.values()):
                return tasks
            time.sleep(1.0)
        raise AssertionError(f"job {job} still running after {timeout:.0f} s: {self.cmd('squeue', '-j', job)}")


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    """A one-node SLURM cluster on 127.0.0.1 (munge authentication), torn down afterwards."""
    tools = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"SLURM is not installed (no {', '.join(missing)}; apt-get install slurmctld slurmd munge)")
    if os.geteuid() != 0:
        pytest.skip("a SLURM test cluster needs root: slurmd starts every job as its user")
    d = Path(tempfile.mkdtemp(prefix="hpo-slurm-"))
    d.chmod(0o755)  # munged refuses a socket folder others cannot enter
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with open(d / f"{name}.out", "wb") as out:
            procs.append(subprocess.Popen([name, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    # Fake GPUs, so the script's `--gres=gpu:8` is scheduled as written: device files slurmd accepts
    # (character devices with /dev/null's numbers where mknod is allowed; plain files otherwise, which
    # slurmd logs as an error but still counts). No nvidia-smi here, so hpo still trains on the CPU.
    for i in range(FAKE_GPUS):
        try:
            os.mknod(d / f"gpu{i}", 0o666 | 0o020000, os.makedev(1, 3))
        except OSError:
            (d / f"gpu{i}").touch()
    conf = d / "slurm.conf"
    conf.write_text(
        f"""ClusterName=hpotest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
# No cgroups in a container: processes are tracked through their parents, and not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait={KILL_WAIT}
ReturnToService=2
GresTypes=gpu
# One node; OverSubscribe lets the array's tasks share its CPUs, as on N nodes they would not need to.
SelectType=select/linear
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 Gres=gpu:{FAKE_GPUS}
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
    )
    (d / "gres.conf").write_text(f"NodeName=localhost Name=gpu File={d}/gpu[0-{FAKE_GPUS - 1}]\n")
    cluster = Slurm({"SLURM_CONF": str(conf)})
    try:
        key = subprocess.run(["mungekey", "-c", "-k", str(d / "munge.key")], capture_output=True, text=True)
        if key.returncode:
            pytest.skip(f"munge cannot make a key: {key.stderr.strip()[:200]}")
        start(
            "munged", "-F", "--force", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
            f"--log-file={d}/munged.log", f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed",
        )  # fmt: skip
        for _ in range(50):
            if (d / "munge.sock").exists():
                break
            time.sleep(0.1)
        start("slurmctld", "-D", "-c", "-f", str(conf))
        start("slurmd", "-D", "-N", "localhost", "-f", str(conf))
        state = ""
        for _ in range(60):
            try:
                state = subprocess.run(
                    ["sinfo", "-h", "-o", "%t"], env={**os.environ, **cluster.env}, capture_output=True, text=True
                ).stdout.strip()
            except OSError:
                state = ""
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(
                f"SLURM did not start (node state {state!r}): slurmctld: {_tail(d / 'slurmctld.log')}; "
                f"slurmd: {_tail(d / 'slurmd.log')}; munged: {_tail(d / 'munged.log')}"
            )
        yield cluster
    finally:
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], env={**os.environ, **cluster.env}, capture_output=True)
        for job in set(jobs.stdout.split()):
            subprocess.run(["scancel", job.decode()], env={**os.environ, **cluster.env}, capture_output=True)
        end = time.monotonic() + KILL_WAIT + 10
        while (
            time.monotonic() < end
            and subprocess.run(["squeue", "-h"], env={**os.environ, **cluster.env}, capture_output=True).stdout.strip()
        ):
            time.sleep(0.5)
        for p in reversed(procs):  # slurmd, slurmctld, munged
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------------- the study
def write_study(folder: Path, storage: str, n_trials: int, max_steps: int) -> None:
    """The smallest real study: a tiny GPT-2 from scratch on the Python help topics, one worker per task."""
    spec = studies.causal_lm(
        STUDY,
        n_trials,
        storage,
        sampler={"name": "tpe", "seed": 0},  # seeded, as a reproducible study is: processes must still differ
        fidelity={"max_steps": max_steps, "eval_every": 50, "eval_batches": 1},
        search_space={
            "training.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        resources={"workers": 1, "threads_per_worker": 1},
    )
    (folder / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def job_env(folder: Path) -> dict[str, str]:
    """The submitting shell's environment: hpo's venv on PATH, offline, one data cache for every task."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HPO_CACHE_DIR": str(folder / "cache"),
        "OMP_NUM_THREADS": "1",
    }


def submit(slurm: Slurm, folder: Path, tasks: int) -> str:
    # The README's script as the user sees it; the array size on the command line, as its comment says.
    assert SCRIPT.read_text() in (ROOT / "README.md").read_text(), "README.md must show studies/slurm-array.sh"
    return slurm.sbatch(SCRIPT, f"--array=0-{tasks - 1}", cwd=folder, env=job_env(folder))


def logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("slurm-*")))


def array_task(pid: int) -> int | None:
    """The SLURM array task a process on this machine belongs to."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"SLURM_ARRAY_TASK_ID="):
            return int(kv.split(b"=", 1)[1])
    return None


def check_study(storage: str, n_trials: int, why: str) -> list[optuna.trial.FrozenTrial]:
    """n_trials counted, all COMPLETE; nothing RUNNING; every FAIL has a reason and was re-run once."""
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    table = "\n".join(f"{t.number} {t.state.name} {t.params} {t.user_attrs}" for t in trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], f"{table}\n{why}"
    counted = [t for t in trials if TrialRecord.from_trial(t).counted]  # re-queued and discarded FAILs do not
    assert len(counted) == n_trials and all(t.state == TrialState.COMPLETE for t in counted), f"{table}\n{why}"
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("reason"), f"trial {t.number} failed without a reason\n{table}"
            if TrialRecord.from_trial(t).attrs.discarded:
                continue  # asked, then not needed: it never ran, its parameters need no re-run
            retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
            assert len(retries) == 1 and retries[0].params == t.params, f"trial {t.number} not re-run once\n{table}"
    return trials


def assert_no_repeats(trials: list[optuna.trial.FrozenTrial]) -> None:
    """No parameter set drawn twice: only a deliberate re-run of a failed trial (retry_of) repeats one."""
    drawn = [t for t in trials if "retry_of" not in t.user_attrs]
    seen: dict[tuple[Any, ...], int] = {}
    repeats = []
    for t in drawn:
        key = tuple(sorted(t.params.items()))
        if key in seen:
            repeats.append(f"trial {t.number} = trial {seen[key]} ({t.params})")
        seen.setdefault(key, t.number)
    assert not repeats, "parameter sets drawn twice: " + "; ".join(repeats)


# -------------------------------------------------------------------------------------------------- tests
OPEN_ON_GO = """
import sys
from hpo.storage import open_storage
print("ready", flush=True)
sys.stdin.readline()
open_storage(sys.argv[1], create=True)
"""


def test_processes_starting_together_on_an_empty_database_all_open_it(postgres_url: str) -> None:
    """An array's tasks start at the same moment and all find the database empty: each creates Optuna's
    tables, and none may fail on the others' duplicates (PostgreSQL's UniqueViolation on pg_type)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_ON_GO, postgres_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:  # every one has imported hpo: the opens below start within a millisecond
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    errors = [err.strip().splitlines()[-1] for p in procs if (err := p.communicate(timeout=120)[1]) and p.returncode]
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slurm_array_of_3_tasks_completes_one_study(slurm: Slurm, postgres_url: str, tmp_path: Path) -> None:
    n_trials = 9
    write_study(tmp_path, postgres_url, n_trials, max_steps=300)
    job = submit(slurm, tmp_path, tasks=3)
    tasks = slurm.wait_done(job, timeout=600)
    out = logs(tmp_path)
    trials = check_study(postgres_url, n_trials, out)
    assert {i: (t["JobState"], t["ExitCode"]) for i, t in tasks.items()} == {
        i: ("COMPLETED", "0:0") for i in range(3)
    }, out
    assert "Traceback" not in out, out
    hosts = {(t.user_attrs.get("host"), t.user_attrs.get("orchestrator_pid")) for t in trials}
    assert len(hosts) >= 2, f"one task ran every trial: {hosts}"  # the tasks shared the study
    assert_no_repeats(trials)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scancel_of_one_task_mid_trial_loses_nothing(slurm: Slurm, postgres_url: str, tmp_path: Path) -> None:
    n_trials = 9
    write_study(tmp_path, postgres_url, n_trials, max_steps=500)
    job = submit(slurm, tmp_path, tasks=3)
    # A trial of one task that has reported an eval and is still training, while the other tasks run.
    victim: optuna.trial.FrozenTrial | None = None
    task: int | None = None
    end = time.monotonic() + 300
    while victim is None and time.monotonic() < end:
        time.sleep(0.5)
        try:
            running = optuna.load_study(study_name=STUDY, storage=postgres_url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # not created yet
            continue
        states = slurm.tasks(job)
        for t in running:
            pid = t.user_attrs.get("orchestrator_pid")
            task = array_task(pid) if isinstance(pid, int) else None
            others = [i for i, s in states.items() if i != task and s["JobState"] == "RUNNING"]
            if t.intermediate_values and task is not None and others:
                victim = t
                break
    assert victim is not None and task is not None, f"no task was mid-trial\n{logs(tmp_path)}"
    pid = victim.user_attrs["orchestrator_pid"]
    slurm.cmd("scancel", f"{job}_{task}")  # SIGTERM to every process of the task, SIGKILL KillWait later
    tasks = slurm.wait_done(job, timeout=600)
    out = logs(tmp_path)
    assert not Path(f"/proc/{pid}").exists(), "the cancelled task's hpo run outlived its job"
    trials = check_study(postgres_url, n_trials, out)  # the others re-ran its trial; nothing lost
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL and killed.user_attrs.get("requeued"), out
    assert tasks[task]["JobState"] == "CANCELLED"
    others = {i: (t["JobState"], t["ExitCode"]) for i, t in tasks.items() if i != task}
    assert others == {i: ("COMPLETED", "0:0") for i in others} and len(others) == 2, out
    assert_no_repeats(trials)
    # SIGTERM is Ctrl-C (issue 14, point 6): the cancelled task stops its trial itself and records why,
    # rather than dying and leaving it for the other tasks to find orphaned.
    assert killed.user_attrs.get("reason") == "interrupted", killed.user_attrs
