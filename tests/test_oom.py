"""Out of memory in a trial (injected on CPU): retried with half the micro-batch and twice the
accumulation, or pruned / failed with reason "oom", per the study's policy. The study goes on."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import optuna
import pytest
from doubles import train_oom_above
from rich.console import Console

import studies
from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.orchestrator import Orchestrator
from hpo.storage import create_or_resume, open_storage
from hpo.worker import TrainerRunner, WorkerSpec


def study(policy: str, retries: int) -> dict[str, Any]:
    return studies.causal_lm(
        "oom",
        3,
        sampler={"name": "grid"},
        fidelity={"max_steps": 4, "eval_every": 2, "eval_batches": 1},
        data={"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 12, "max_eval_samples": 4},
        search_space={"training.per_device_train_batch_size": {"type": "categorical", "choices": [4, 8, 16]}},
        resources={"oom_policy": policy, "oom_retries": retries},
    )


def run(tmp_path: Path, policy: str, retries: int = 3) -> dict[int, optuna.trial.FrozenTrial]:
    cfg = validate_study(study(policy, retries))
    st, _ = create_or_resume(cfg, open_storage(f"sqlite:///{tmp_path}/oom.db", create=True))
    # Micro-batches above 4 "run out" of memory.
    runner = TrainerRunner(str(tmp_path / "cache"), oom=cfg.oom, train_fn=functools.partial(train_oom_above, 4))
    spec = WorkerSpec(0, 1, {}, "cpu")
    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, st, [spec], runner, display)
    try:
        orch.run()
    finally:
        orch.close()
    return {t.params["per_device_train_batch_size"]: t for t in st.get_trials()}


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_retry_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path: Path) -> None:
    trials = run(tmp_path, "retry")
    assert {bs: t.state.name for bs, t in trials.items()} == {4: "COMPLETE", 8: "COMPLETE", 16: "COMPLETE"}
    assert "oom_retries" not in trials[4].user_attrs
    assert (trials[8].user_attrs["oom_retries"], trials[8].user_attrs["micro_batch"]) == (1, [4, 2])
    assert (trials[16].user_attrs["oom_retries"], trials[16].user_attrs["micro_batch"]) == (2, [4, 4])
    assert trials[16].user_attrs["steps"] == 4


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_retries_exhausted_fail_with_reason_oom(tmp_path: Path) -> None:
    trials = run(tmp_path, "retry", retries=1)
    assert trials[8].state.name == "COMPLETE"
    assert trials[16].state.name == "FAIL" and trials[16].user_attrs["reason"] == "oom"
    assert trials[16].user_attrs["oom_detail"] == "out of memory at micro-batch 8 after 1 retries"


@pytest.mark.parametrize(("policy", "state"), [("prune", "PRUNED"), ("fail", "FAIL")])
@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_prune_or_fail_policy(tmp_path: Path, policy: str, state: str) -> None:
    trials = run(tmp_path, policy)
    assert trials[4].state.name == "COMPLETE"
    for bs in (8, 16):
        assert trials[bs].state.name == state and trials[bs].user_attrs["reason"] == "oom"
