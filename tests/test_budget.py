"""fidelity.max_samples / max_tokens: trials of every batch size see the same data, and the pruner compares
them at equal data seen (hpo/budget.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from doubles import CurveRunner
from optuna.trial import TrialState
from orchestrators import Orchestrator
from rich.console import Console

import studies
from hpo.config import _digest, validate_study
from hpo.display import RunDisplay
from hpo.errors import StudyFileError
from hpo.storage import create_or_resume, open_storage
from hpo.worker import WorkerSpec

BATCH = {"training.per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]}}


def study(fidelity: dict[str, Any], **over: Any) -> dict[str, Any]:
    d = studies.curve(fidelity=fidelity, **over)
    d["search_space"] = {**d["search_space"], **BATCH}
    d["data"] = {**d["data"], "max_length": 64}
    return d


@pytest.mark.parametrize(
    ("fidelity", "error"),
    [
        ({"max_samples": 4800, "eval_every": 800}, None),
        ({"max_tokens": 307200, "eval_every": 51200}, None),
        ({"max_steps": 300, "eval_every": 50}, None),
        ({"eval_every": 50}, "give the trial length as one of `max_steps`, `max_samples` or `max_tokens`"),
        ({"max_steps": 300, "max_samples": 4800, "eval_every": 50}, "not max_steps and max_samples"),
        ({"max_samples": 400, "eval_every": 800}, "`eval_every <= max_samples` must hold"),
        ({"max_samples": 0, "eval_every": 1}, "greater than or equal to 1"),
    ],
)
def test_fidelity_takes_exactly_one_length(fidelity: dict[str, Any], error: str | None) -> None:
    if error is None:
        validate_study(study(fidelity), "s.yaml")
        return
    with pytest.raises(StudyFileError) as info:
        validate_study(study(fidelity), "s.yaml")
    assert any(loc.startswith("fidelity") and error in msg for loc, msg in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("fidelity", "batch", "accum", "steps", "eval_steps"),
    [
        ({"max_samples": 4800, "eval_every": 800}, 8, 1, 600, 100),
        ({"max_samples": 4800, "eval_every": 800}, 16, 1, 300, 50),
        ({"max_samples": 4800, "eval_every": 800}, 32, 1, 150, 25),
        ({"max_samples": 4800, "eval_every": 800}, 16, 2, 150, 25),  # gradient accumulation: samples per step
        ({"max_tokens": 4800 * 64, "eval_every": 800 * 64}, 32, 1, 150, 25),  # 64 tokens a block
        ({"max_steps": 300, "eval_every": 50}, 32, 1, 300, 50),  # a step budget: as before
    ],
)
def test_each_trial_gets_the_steps_of_its_batch_size(
    fidelity: dict[str, Any], batch: int, accum: int, steps: int, eval_steps: int
) -> None:
    d = study(fidelity, training={"gradient_accumulation_steps": accum})
    cfg = validate_study(d, "s.yaml")
    run = cfg.trial_run({"learning_rate": 1e-3, "per_device_train_batch_size": batch})
    assert (run.training.max_steps, run.training.eval_steps) == (steps, eval_steps)


def test_evals_report_data_seen_on_one_grid() -> None:
    cfg = validate_study(study({"max_samples": 4800, "eval_every": 800}), "s.yaml")
    for batch in (8, 16, 32):
        length = cfg.fidelity.length(cfg.trial_run({"learning_rate": 1e-3, "per_device_train_batch_size": batch}))
        seen = [length.report_step(s) for s in range(length.eval_steps, length.max_steps + 1, length.eval_steps)]
        assert seen == [800, 1600, 2400, 3200, 4000, 4800]


def test_default_pruner_warms_up_for_a_sixth_of_the_budget() -> None:
    d = study({"max_samples": 4800, "eval_every": 800})
    d.pop("pruner")
    assert validate_study(d, "s.yaml").pruner.n_warmup_steps == 800


def test_step_budget_fingerprint_is_unchanged_and_the_budget_is_fingerprinted() -> None:
    cfg = validate_study(study({"max_steps": 20, "eval_every": 5}), "s.yaml")
    # What a study created before max_samples existed stored: the section's keys of that time.
    assert cfg.fingerprints()["fidelity"] == _digest({"max_steps": 20, "eval_every": 5, "eval_batches": None})
    a = validate_study(study({"max_samples": 4800, "eval_every": 800}), "s.yaml").fingerprints()["fidelity"]
    b = validate_study(study({"max_samples": 9600, "eval_every": 800}), "s.yaml").fingerprints()["fidelity"]
    assert a != b


def test_pruner_sees_samples_and_trials_of_every_batch_size_cost_the_same(tmp_path: Path) -> None:
    d = study(
        {"max_samples": 320, "eval_every": 80},
        pruner={"name": "median", "n_startup_trials": 2},
        sampler={"name": "random", "seed": 1},
    )
    d["study"]["n_trials"] = 8
    cfg = validate_study(d, "s.yaml")
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", create=True)
    st, _ = create_or_resume(cfg, storage)
    display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
    orch = Orchestrator(cfg, st, [WorkerSpec(0, 1, {}, "cpu")], CurveRunner(), display)
    try:
        orch.run()
    finally:
        orch.close()
    trials = st.get_trials(deepcopy=False)
    assert len(trials) == 8
    batches = {t.params["per_device_train_batch_size"] for t in trials}
    assert len(batches) >= 2  # the test means something only with several batch sizes
    for t in trials:
        assert set(t.intermediate_values) <= {80, 160, 240, 320}
        batch = t.params["per_device_train_batch_size"]
        if t.state == TrialState.COMPLETE:
            assert set(t.intermediate_values) == {80, 160, 240, 320}
            assert t.user_attrs["steps"] * batch == 320  # the same data, whatever the batch size
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned  # the median pruner judged at sample counts (the curve double: high learning rates lose)
    for t in pruned:
        assert "samples)" in t.user_attrs["reason"]
