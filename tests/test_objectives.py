"""Multi-objective studies: validation of the objective list, runs told with a vector of values (a cost the
worker measured), pruning on the first objective (the same decisions as a single-objective study of that
metric), the Pareto front in `hpo best`, `hpo export --trial N` of a front point, and the report's front."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from doubles import CurveRunner, final_loss
from optuna.trial import TrialState
from orchestrators import Orchestrator
from rich.console import Console
from typer.testing import CliRunner

import studies
from hpo.cli import app
from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.errors import StudyFileError
from hpo.storage import create_or_resume, open_storage
from hpo.worker import WorkerSpec
from hpo.yamlio import dumps

TWO = [{"metric": "eval_loss"}, {"metric": "params"}]


@pytest.mark.parametrize(
    "objective, sampler, fragment",
    [
        ({"metric": "latency_ms"}, None, "cost metrics go in a list after a quality metric"),
        ([{"metric": "params"}, {"metric": "eval_loss"}], None, "objective[0].metric: must be a metric the trainer"),
        ([{"metric": "eval_loss"}, {"metric": "eval_loss"}], None, "each metric once"),
        ([{"metric": "eval_loss"}, {"metric": "accuracy"}], None, "objective[1].metric: 'accuracy' is not reported"),
        ([{"metric": "eval_loss"}, {"metric": "params", "direction": "maximize"}], None, "must be 'minimize'"),
        (TWO, {"name": "cmaes"}, "sampler 'cmaes' optimises one objective"),
        ([], None, "give at least one"),
    ],
)
def test_bad_objective_lists_are_one_line_errors(objective: Any, sampler: Any, fragment: str) -> None:
    d = studies.curve(objective=objective, **({"sampler": sampler} if sampler else {}))
    with pytest.raises(StudyFileError) as e:
        validate_study(d, "s.yaml")
    assert fragment in str(e.value) and str(e.value).count("\n") == 0, str(e.value)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "nsga3", "gp", "random"])
def test_multi_objective_samplers_validate_and_fill_directions(sampler: str) -> None:
    objective = [{"metric": "eval_loss"}, {"metric": "latency_ms"}, {"metric": "peak_memory_mb"}]
    cfg = validate_study(studies.curve(objective=objective, sampler={"name": sampler}))
    assert cfg.multi_objective and cfg.directions == ["minimize"] * 3
    assert [o.metric for o in cfg.objectives] == ["eval_loss", "latency_ms", "peak_memory_mb"]
    assert cfg.base_run().measure_latency  # latency_ms asks the worker to time inference
    assert not validate_study(studies.curve()).base_run().measure_latency
    # The list is part of the fingerprint: a changed cost is another study.
    other = validate_study(studies.curve(objective=objective[:2], sampler={"name": sampler}))
    assert other.fingerprints()["objective"] != cfg.fingerprints()["objective"]


def run(tmp_path: Path, name: str, objective: Any, n_trials: int = 8, pruner: Any = None, workers: int = 2) -> Path:
    url = f"sqlite:///{tmp_path}/{name}.db"
    d = studies.curve(name=name, n_trials=n_trials, storage=url, objective=objective)
    if pruner is not None:
        d["pruner"] = pruner
    path = tmp_path / f"{name}.yaml"
    path.write_text(dumps(d))
    cfg = validate_study(d)
    study, _ = create_or_resume(cfg, open_storage(url, create=True))
    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    specs = [WorkerSpec(i, 1, {}, "cpu") for i in range(workers)]
    orch = Orchestrator(cfg, study, specs, CurveRunner(params_from_lr=True), display)
    try:
        orch.run()
    finally:
        orch.close()
    return path


def dominated(a: list[float], b: list[float]) -> bool:
    """Whether ``a`` is dominated by ``b`` (both minimised)."""
    return all(y <= x for x, y in zip(a, b, strict=True)) and any(y < x for x, y in zip(a, b, strict=True))


def test_trials_are_told_their_values_and_best_lists_the_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = run(tmp_path, "mo", TWO, n_trials=10)
    monkeypatch.chdir(tmp_path)
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path}/mo.db")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 10
    for t in done:
        lr = t.params["learning_rate"]
        assert t.values == pytest.approx([final_loss(lr) + 5.0 / 20, int(lr * 1e6)])
    by_hand = sorted(
        (t for t in done if not any(dominated(t.values, o.values) for o in done)), key=lambda t: (t.values[0], t.number)
    )
    res = CliRunner().invoke(app, ["best", str(path), "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert [r["number"] for r in body["front"]] == [t.number for t in by_hand] and len(by_hand) >= 2
    assert (
        body["objectives"] == ["eval_loss", "params"] and body["front"][0]["values"]["params"] == by_hand[0].values[1]
    )
    text = CliRunner().invoke(app, ["best", str(path)]).output
    assert f"Pareto front of study 'mo': {len(by_hand)} trials" in text and "--trial N" in text
    # Any point of the front exports, the cheapest too (not the first objective's best).
    cheapest = by_hand[-1]
    exp = CliRunner().invoke(app, ["export", str(path), "--trial", str(cheapest.number), "-o", "out"])
    assert exp.exit_code == 0, exp.output
    train = (tmp_path / "out" / "train.yaml").read_text()
    assert f"trial {cheapest.number}" in train.splitlines()[0]
    assert f"learning_rate: {cheapest.params['learning_rate']}" in train
    # The report draws the front, and the other figures on the first objective.
    from dashboards.report import build, load

    report = build([load(path)])
    keys = [f.key for f in report.figures]
    assert "mo-pareto" in keys and "mo-history" in keys
    front = next(f.fig for f in report.figures if f.key == "mo-pareto")
    # Optuna's plot: the dominated trials first, then the front (the last trace)
    on_front = sorted(zip(front.data[-1].x, front.data[-1].y, strict=True))
    assert on_front == sorted(tuple(t.values) for t in by_hand)


def test_pruning_follows_the_first_objective_as_a_single_objective_study_would(tmp_path: Path) -> None:
    pruner = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}
    # One worker: trials run one after another, so both studies see the same history at each decision.
    single = run(tmp_path, "one", {"metric": "eval_loss"}, n_trials=10, pruner=pruner, workers=1)
    multi = run(tmp_path, "two", TWO, n_trials=10, pruner=pruner, workers=1)
    s1 = optuna.load_study(study_name="one", storage=f"sqlite:///{single.parent}/one.db").get_trials()
    s2 = optuna.load_study(study_name="two", storage=f"sqlite:///{multi.parent}/two.db").get_trials()
    assert [t.params for t in s1] == [t.params for t in s2]  # the same seeded draws
    assert [t.state for t in s1] == [t.state for t in s2]
    assert any(t.state == TrialState.PRUNED for t in s2)
    for a, b in zip(s1, s2, strict=True):
        # hpo kept the first objective's evals itself (Optuna refuses to in a multi-objective study)
        kept = {int(k): v for k, v in b.user_attrs["objective_curve"].items()}
        assert kept == a.intermediate_values and not b.intermediate_values
        assert ("pruned by median pruner" in b.user_attrs.get("reason", "")) == (b.state == TrialState.PRUNED)


def test_latency_is_the_median_forward_time_per_row_without_labels() -> None:
    import time

    import torch

    from trainers.latency import latency_ms

    seen: list[set[str]] = []

    class Slow(torch.nn.Module):
        def forward(self, **inputs: Any) -> None:
            seen.append(set(inputs))
            time.sleep(0.02)

    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)}
    ms = latency_ms(Slow(), batch, torch.device("cpu"), repeats=3)
    assert 20.0 / 4 <= ms < 20.0 / 4 * 3  # 20 ms a pass over 4 rows: at least 5 ms a row
    assert len(seen) == 4 and all(s == {"input_ids"} for s in seen)  # warm-up + 3 timed; no labels


@pytest.mark.slow
def test_real_trainer_measures_every_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    studies.write_sentiment_csv(tmp_path / "data" / "train.csv")
    objective = [{"metric": "accuracy"}, {"metric": "latency_ms"}, {"metric": "params"}, {"metric": "peak_memory_mb"}]
    d = studies.classification(n_trials=2, objective=objective)
    (tmp_path / "s.yaml").write_text(dumps(d))
    res = CliRunner().invoke(app, ["run", "s.yaml"])
    assert res.exit_code == 0, res.output
    assert "Pareto front:" in res.output
    study = optuna.load_study(study_name="cls", storage="sqlite:///runs/cls.db")
    for t in study.get_trials():
        assert t.state == TrialState.COMPLETE
        a = t.user_attrs
        assert t.values == [a["metrics"]["accuracy"], a["latency_ms"], a["total_params"], a["peak_memory_mb"]]
        assert a["latency_ms"] > 0


def test_dashboard_study_note_names_every_objective() -> None:
    from dashboards.notes import study_note

    config = {
        "objective": [
            {"metric": "f1_macro", "direction": "maximize"},
            {"metric": "latency_ms", "direction": "minimize"},
        ]
    }
    note = study_note(config, "s.yaml", "sqlite:///x.db")
    assert "| objective | maximize **f1_macro**, minimize **latency_ms** (Pareto front) |" in note
