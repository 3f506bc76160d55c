"""Dashboards: pure data functions by equality on fixed studies, figures, notes, the report file, the
dashboard server (in-process) and its notes. No browser here (see test_browser.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import pytest
from dash_fixtures import CONFIG, DISTS, TRIALS, fixed_study, frozen, sqlite_study_file
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from plotly.colors import sample_colorscale
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from dashboards import data as D
from dashboards import figures as F
from dashboards import report as R
from dashboards.notes import study_note, trial_note
from hpo.cli import app
from hpo.curves import CurvePoint, CurveStore
from hpo.record import TrialAttrs, TrialRecord
from hpo.storage import redact
from hpo.store import study_store

runner = CliRunner()


@pytest.fixture
def study() -> optuna.Study:
    return fixed_study()


@pytest.fixture
def sd(study: optuna.Study) -> D.StudyData:
    return D.collect(study)


# ------------------------------------------------------------------------------------------ pure data


def test_collect_reads_trials_and_config(sd: D.StudyData) -> None:
    assert (sd.name, sd.direction, sd.metric, sd.task, sd.sampler, sd.pruner) == (
        "fixed",
        "minimize",
        "perplexity",
        "causal_lm",
        "tpe",
        "median",
    )
    assert (sd.max_steps, sd.eval_every) == (100, 50)
    assert sd.params == (
        D.ParamInfo("learning_rate", "float", log=True),
        D.ParamInfo("per_device_train_batch_size", "categorical", choices=(8, 16, 32)),
        D.ParamInfo("dropout", "float"),
    )
    assert sd.trials[1] == D.TrialInfo(
        number=1,
        state="PRUNED",
        value=30.0,
        params={"learning_rate": 1e-4, "per_device_train_batch_size": 8, "dropout": 0.2},
        intermediate={50: 30.0},
        steps=50,
        start=0.0,
        end=1.0,
        duration=1.0,
        device="cpu",
        worker=1,
        reason="pruned by median pruner at step 50 (perplexity=30)",
        tokens_per_s=900.0,
        train_time=0.5,
        eval_time=0.25,
    )
    failed = sd.trials[3]
    assert (failed.state, failed.value, failed.steps, failed.reason) == (
        "FAIL",
        None,
        None,
        "error: CUDA out of memory",
    )
    assert [t.number for t in sd.complete] == [0, 2, 4]
    assert sd.best() is not None and sd.best().number == 2  # type: ignore[union-attr]
    assert set(sd.importances) == {"learning_rate", "per_device_train_batch_size", "dropout"}
    assert sum(sd.importances.values()) == pytest.approx(1.0)


def test_collect_without_hpo_config_and_too_few_trials() -> None:
    study = optuna.create_study(study_name="plain", direction="maximize")
    sd = D.collect(study)
    assert (sd.metric, sd.direction, sd.max_steps, sd.trials, sd.importances) == ("objective", "maximize", None, (), {})
    assert sd.importance_note == "needs at least 2 complete trials (has 0)"
    assert D.compute(sd).steps_without_pruning == 0
    assert D.contour_pairs(sd) == []


def test_importance_ranks_and_keeps_the_note(sd: D.StudyData) -> None:
    fixed = dataclasses.replace(sd, importances={"a": 0.2, "b": 0.7, "c": 0.1})
    assert D.importance(fixed) == D.ImportanceData(("b", "a", "c"), (0.7, 0.2, 0.1), 3, None)
    none = dataclasses.replace(sd, importances={}, importance_note="why")
    assert D.importance(none) == D.ImportanceData((), (), 3, "why")


def test_contour_pairs_learning_rate_by_batch_size_first(sd: D.StudyData) -> None:
    assert D.contour_pairs(sd) == [("learning_rate", "per_device_train_batch_size"), ("learning_rate", "dropout")]
    ranked = dataclasses.replace(sd, importances={"dropout": 0.6, "per_device_train_batch_size": 0.3})
    assert D.contour_pairs(ranked) == [
        ("learning_rate", "per_device_train_batch_size"),
        ("dropout", "per_device_train_batch_size"),
    ]


def test_curves_fall_back_to_reported_values(sd: D.StudyData) -> None:
    c = D.curves(sd)
    assert c.panels == ("perplexity",)
    assert c.from_intermediate and c.best == 2
    assert c.series["perplexity"][1] == D.CurveSeries(1, "PRUNED", (50,), (30.0,), 30.0)
    assert [s.number for s in c.series["perplexity"]] == [0, 1, 2, 4]  # the failed trial reported nothing


def test_curves_from_stored_points() -> None:
    store = CurveStore(None, "fixed")
    store.add(0, 10, "train", {"train_loss": 3.0, "learning_rate": 1e-3})
    store.add(0, 50, "eval", {"perplexity": 21.0, "eval_loss": 3.04})
    store.add(1, 10, "train", {"train_loss": 3.5, "learning_rate": 1e-4})
    sd = D.collect(fixed_study(), store.read(), importances=False)
    c = D.curves(sd)
    assert c.panels == ("perplexity", "eval_loss", "train_loss", "learning_rate")
    assert not c.from_intermediate
    # Trial 0's stored eval wins over its reported values; trial 1 has none stored: its reported value is used.
    assert [(s.number, s.steps, s.values) for s in c.series["perplexity"]] == [
        (0, (50,), (21.0,)),
        (1, (50,), (30.0,)),
        (2, (50, 100), (8.0, 5.0)),
        (4, (50, 100), (12.0, 8.0)),
    ]
    assert [(s.number, s.values) for s in c.series["train_loss"]] == [(0, (3.0,)), (1, (3.5,))]


def test_compute_spent_and_saved(sd: D.StudyData) -> None:
    assert D.compute(sd) == D.ComputeData(
        trials=(
            D.ComputeTrial(0, "COMPLETE", 100, 100, 1.75),
            D.ComputeTrial(1, "PRUNED", 50, 100, 0.75),
            D.ComputeTrial(2, "COMPLETE", 100, 100, 2.25),
            D.ComputeTrial(3, "FAIL", 0, 0, None),
            D.ComputeTrial(4, "COMPLETE", 100, 100, 1.75),
        ),
        max_steps=100,
        steps_run=350,
        steps_without_pruning=400,
        steps_saved=50,
        saved_fraction=0.125,
        seconds_run=6.5,
        seconds_saved=0.5,  # trial 1: 50 more steps at 0.5 s / 50 steps
        n_pruned=1,
    )


def test_top_trials(sd: D.StudyData) -> None:
    rows = D.top_trials(sd, n=2)
    assert rows == (
        D.TopRow(1, 2, 5.0, {"learning_rate": 1e-2, "per_device_train_batch_size": 32, "dropout": 0.0}, 100, 2.5,
                 1100.0, "cpu · worker 1"),
        D.TopRow(2, 4, 8.0, {"learning_rate": 3e-3, "per_device_train_batch_size": 8, "dropout": 0.05}, 100, 2.0,
                 None, "cpu · worker 0"),
    )  # fmt: skip


def test_summary_and_comparison(sd: D.StudyData) -> None:
    s = D.summary(dataclasses.replace(sd, importances={"learning_rate": 0.9, "dropout": 0.1}))
    assert (s.states, s.best_number, s.best_value, s.most_important, s.most_important_value) == (
        {"COMPLETE": 3, "FAIL": 1, "PRUNED": 1},
        2,
        5.0,
        "learning_rate",
        0.9,
    )
    assert (s.steps_run, s.steps_saved, s.saved_fraction, s.wall_time) == (350, 50, 0.125, 4.5)
    other = dataclasses.replace(sd, name="other", trials=sd.trials[:2])
    cmp = D.comparison([sd, other])
    assert cmp.comparable and cmp.metric == "perplexity"
    # Finished order (by end time): 1 (pruned, 50 steps), 0 (100), 3 (failed, 0), 2 (100), 4 (100).
    assert cmp.series[0] == D.ComparisonSeries("fixed", (0, 2, 4), (150, 250, 350), (10.0, 5.0, 5.0))
    assert cmp.series[1] == D.ComparisonSeries("other", (0,), (150,), (10.0,))
    assert not D.comparison([sd, dataclasses.replace(sd, metric="accuracy")]).comparable


# -------------------------------------------------------------------------------------------- figures
# Optuna draws history, importances, parallel coordinates, slice, contour and timeline; these tests check what
# a reader sees on them: every trial where it belongs, pruned trials at their last reported value, the
# objective's name, the best trial marked.


def _types(fig: go.Figure) -> list[str]:
    return [t.type for t in fig.data]


def _named(fig: go.Figure, name: str) -> Any:
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def _points(trace: Any) -> list[tuple[Any, Any]]:
    return list(zip(trace.x, trace.y, strict=True))


def test_history_figure_shows_pruned_trials_and_marks_the_best(study: optuna.Study, sd: D.StudyData) -> None:
    fig = F.history_figure(study, sd)
    assert _points(_named(fig, "complete trial")) == [(0, 10.0), (2, 5.0), (4, 8.0)]
    assert _points(_named(fig, "pruned (last reported value)")) == [(1, 30.0)]
    best_line = dict(_points(_named(fig, "best so far")))
    assert [best_line[n] for n in (0, 2, 4)] == [10.0, 5.0, 5.0]  # best so far after each complete trial
    assert _points(_named(fig, "best: trial 2")) == [(2, 5.0)]
    assert fig.layout.yaxis.title.text == "perplexity" and fig.layout.yaxis.type == "log"
    assert "Objective Value" not in fig.to_json()  # Optuna's default name is replaced by the objective's
    assert fig.layout.title.text == "Optimization history — perplexity, lower is better"


@pytest.mark.parametrize(
    ("direction", "values", "best_so_far", "best"),
    [
        ("maximize", (0.5, 0.4, 0.9), [0.5, 0.5, 0.9], (2, 0.9)),
        ("minimize", (0.5, 0.4, 0.9), [0.5, 0.4, 0.4], (1, 0.4)),
    ],
)
def test_history_figure_follows_the_direction(
    direction: str, values: tuple[float, ...], best_so_far: list[float], best: tuple[int, float]
) -> None:
    study = optuna.create_study(direction=direction)
    for v in values:
        t = study.ask()
        t.suggest_float("x", 0, 1)
        study.tell(t, v)
    fig = F.history_figure(study, D.collect(study, importances=False))
    assert list(_named(fig, "best so far").y) == best_so_far
    assert _points(_named(fig, f"best: trial {best[0]}")) == [best]
    assert fig.layout.yaxis.title.text == "objective" and fig.layout.yaxis.type is None


def test_history_figure_with_only_pruned_trials(study: optuna.Study) -> None:
    sd = D.collect(fixed_study(rows=[TRIALS[1]]))
    fig = F.history_figure(fixed_study(rows=[TRIALS[1]]), sd)
    assert [t.name for t in fig.data] == ["pruned (last reported value)"]


def test_importance_figure_draws_the_reported_importances(study: optuna.Study, sd: D.StudyData) -> None:
    fig = F.importance_figure(study, sd)
    assert _types(fig) == ["bar"]
    bars = dict(zip(fig.data[0].y, fig.data[0].x, strict=True))
    assert bars == pytest.approx(sd.importances)  # the same numbers as the report's findings
    assert fig.layout.title.text == "Hyperparameter importances — from 3 complete trials — few trials: treat as a hint"


def test_parallel_figure_one_line_per_complete_trial(study: optuna.Study, sd: D.StudyData) -> None:
    fig = F.parallel_figure(study, sd)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 3  # trials 0, 2, 4: the pruned and the failed trial have no line
    assert list(fig.layout.xaxis.ticktext) == ["perplexity", "dropout", "learning_rate", "per_device_train_..."]
    # Each line's hover names the axes and the trial's values on them; darkest (Viridis' start) = lowest.
    by_value = {line.customdata[0][1]: line.line.color for line in lines}
    assert set(by_value) == {"10", "5", "8"}
    assert by_value["5"] == sample_colorscale("Viridis", [0.0])[0]
    assert by_value["10"] == sample_colorscale("Viridis", [1.0])[0]


def _slice_panels(fig: go.Figure) -> dict[str, list[Any]]:
    """Parameter -> the traces drawn on its subplot."""
    axes = {fig.layout[k].title.text: "x" + k[len("xaxis") :] for k in fig.layout.to_plotly_json() if k[:5] == "xaxis"}
    return {name: [t for t in fig.data if (t.xaxis or "x") == ref] for name, ref in axes.items()}


def test_slice_figure_shows_pruned_trials_and_marks_the_best(study: optuna.Study, sd: D.StudyData) -> None:
    fig = F.slice_figure(study, sd)
    panels = _slice_panels(fig)
    assert set(panels) == {"learning_rate", "per_device_train_batch_size", "dropout"}
    names = {name: {t.name: _points(t) for t in traces} for name, traces in panels.items()}
    assert names["learning_rate"] == {
        "Feasible Trial": [(1e-3, 10.0), (1e-2, 5.0), (3e-3, 8.0)],
        "pruned (last reported value)": [(1e-4, 30.0)],
        "best: trial 2": [(1e-2, 5.0)],
    }
    # A categorical parameter: the pruned and the best trial sit on the categories Optuna drew.
    batch = names["per_device_train_batch_size"]
    assert batch["pruned (last reported value)"] == [("8", 30.0)] and batch["best: trial 2"] == [("32", 5.0)]
    assert {x for x, _ in batch["Feasible Trial"]} == {"8", "16", "32"}
    lr_axis = next(
        k for k in fig.layout.to_plotly_json() if k[:5] == "xaxis" and fig.layout[k].title.text == "learning_rate"
    )
    assert fig.layout[lr_axis].type == "log"
    assert fig.layout.yaxis.title.text == "perplexity" and fig.layout.width is None


def test_slice_figure_of_one_parameter() -> None:
    study = optuna.create_study(direction="maximize")
    rows = ((0.2, 0.5, TrialState.COMPLETE), (0.7, 0.9, TrialState.COMPLETE), (0.4, 0.1, TrialState.PRUNED))
    for x, value, state in rows:
        study.add_trial(
            optuna.trial.create_trial(
                state=state, value=value, params={"x": x}, distributions={"x": FloatDistribution(0, 1)},
                intermediate_values={10: value},
            )
        )  # fmt: skip
    fig = F.slice_figure(study, D.collect(study, importances=False))
    assert {t.name: _points(t) for t in fig.data} == {
        "Feasible Trial": [(0.2, 0.5), (0.7, 0.9)],
        "pruned (last reported value)": [(0.4, 0.1)],
        "best: trial 1": [(0.7, 0.9)],
    }


@pytest.mark.parametrize(
    ("name", "choices", "best_at"),
    [
        ("per_device_train_batch_size", [8, 16, 32], 32),  # numeric choices: Optuna draws a numeric axis
        ("optimizer", ["adamw", "sgd"], "sgd"),  # text choices: a category axis
    ],
)
def test_contour_figure_marks_the_trials_and_the_best(name: str, choices: list[Any], best_at: Any) -> None:
    as_choice = {8: choices[0], 16: choices[1], 32: choices[-1]}  # the fixed trials' batch sizes, renamed
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("hpo:config", CONFIG)
    for _, state, value, (lr, bs, _), inter, _, _, _ in TRIALS:
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params={"learning_rate": lr, name: as_choice[bs]},
                distributions={"learning_rate": DISTS["learning_rate"], name: CategoricalDistribution(choices)},
                intermediate_values=inter,
            )
        )
    fig = F.contour_figure(study, D.collect(study), "learning_rate", name)
    assert _types(fig)[0] == "contour" and fig.layout.xaxis.type == "log"
    assert fig.data[0].colorbar.title.text == "perplexity"
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("learning_rate", name)
    assert len(_named(fig, "Feasible Trial").x) == 3  # the complete trials, marked
    assert _points(_named(fig, "best: trial 2")) == [(1e-2, best_at)]
    assert fig.layout.title.text.startswith(f"Contour — perplexity over learning_rate × {name}")


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        (TRIALS[:3], "needs at least 3 complete trials with both parameters"),  # two complete trials
        ([(*r[:3], (r[3][0], r[3][1], 0.1), *r[4:]) for r in TRIALS], "every complete trial has the same dropout"),
    ],
)
def test_contour_figure_says_when_there_is_nothing_to_draw(rows: list[Any], why: str) -> None:
    study = fixed_study(rows=rows)
    fig = F.contour_figure(study, D.collect(study), "learning_rate", "dropout")
    assert fig.data == () and why in fig.layout.annotations[0].text


def test_timeline_figure_puts_trials_on_their_device_and_worker(study: optuna.Study, sd: D.StudyData) -> None:
    fig = F.timeline_figure(study, sd)
    assert [t.name for t in fig.data] == ["complete", "fail", "pruned"] and fig.data[0].orientation == "h"
    lanes = {label: lane for t in fig.data for label, lane in zip(t.text, t.y, strict=True)}
    w0, w1 = "cpu · worker 0", "cpu · worker 1"
    assert lanes == {"#0": w0, "#1": w1, "#2": w1, "#3": w0, "#4": w0}
    assert list(fig.layout.yaxis.categoryarray) == [w1, w0] and fig.layout.barmode == "overlay"
    assert [b[-8:] for b in fig.data[0].base] == ["12:00:00", "12:00:01", "00:02.500000"[-8:]]
    assert "traceback" not in fig.to_json() and "user_attrs" not in fig.to_json()  # hpo's hover, not every attribute


def test_timeline_figure_skips_waiting_trials_and_shows_running_ones() -> None:
    study = fixed_study()
    study.ask()  # a RUNNING trial, started now, on no known device
    study.enqueue_trial({"dropout": 0.1})  # WAITING: it never ran
    fig = F.timeline_figure(study, D.collect(study, importances=False))
    running = _named(fig, "running")
    assert list(running.text) == ["#5"] and list(running.y) == ["unknown device"]
    assert "#6" not in [label for t in fig.data for label in t.text]


def test_hpo_own_figures(sd: D.StudyData) -> None:
    cur = F.curves_figure(D.curves(sd))
    assert [t.name for t in cur.data] == ["#0 10", "#1 pruned@50", "#4 8", "#2 best 5"]  # best drawn last
    assert cur.data[1].line.dash == "dot" and cur.data[1].marker.symbol[-1] == "x"
    comp = F.compute_figure(D.compute(sd))
    assert _types(comp) == ["bar"] * 4  # totals; steps run by complete, pruned trials (the failed one ran 0); saved
    assert list(comp.data[0].y) == [400, 350] and list(comp.data[-1].y) == [0, 50, 0, 0, 0]
    cmp = D.comparison([sd, dataclasses.replace(sd, name="b")])
    assert _types(F.comparison_figure(cmp)) == ["scatter"] * 4
    assert _types(F.importance_comparison_figure(cmp)) == ["bar", "bar"]


def test_figures_of_an_empty_study_say_why() -> None:
    study = optuna.create_study()
    sd = D.collect(study)
    for fig in (
        F.history_figure(study, sd),
        F.importance_figure(study, sd),
        F.parallel_figure(study, sd),
        F.slice_figure(study, sd),
        F.contour_figure(study, sd, "a", "b"),
        F.curves_figure(D.curves(sd)),
        F.compute_figure(D.compute(sd)),
        F.timeline_figure(study, sd),
    ):
        assert fig.data == () and fig.layout.annotations[0].text


# ---------------------------------------------------------------------------------------------- notes


def test_trial_note_for_a_pruned_trial() -> None:
    note = trial_note(TrialRecord.from_trial(frozen(TRIALS[1])), "perplexity", 100)
    assert note.splitlines()[0] == "### Trial 1: pruned, perplexity = 30 (last reported)"
    assert "**Why it stopped:** pruned by median pruner at step 50 (perplexity=30)" in note
    assert "| learning_rate | 0.0001 |" in note and "| per_device_train_batch_size | 8 |" in note
    assert note.rstrip().endswith(
        "**Run:** 50 of 100 steps, 1.0 s in all, train 0.5 s, eval 0.2 s, 900 tokens/s, on cpu (worker 1)"
    )


def test_trial_note_of_a_failure_escapes_table_cells() -> None:
    attrs = TrialAttrs(reason="error: a|b", traceback="Traceback...\nValueError: `bad` value", requeued=True)
    note = trial_note(TrialRecord(number=3, state=TrialState.FAIL, params={"choice": "x|y"}, attrs=attrs), "accuracy")
    assert note.splitlines()[0] == "### Trial 3: failed"
    assert "error: a\\|b" in note and "| choice | x\\|y |" in note
    assert "Re-queued" in note and "ValueError: 'bad' value" in note


def test_study_note_says_what_and_how_to_export() -> None:
    config = {
        **CONFIG,
        "study": {"name": "s1", "n_trials": 20, "description": "two samplers, one task"},
        "model": {"name_or_path": "distilbert-base-uncased", "dropout": 0.1},
        "data": {"dataset": "glue", "dataset_config": "sst2", "max_length": 128},
        "search_space": {"training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
    }
    url = "postgresql+psycopg://bob:s3cret@db.example:5432/hpo"
    note = study_note(config, "studies/s1.yaml", redact(url))
    assert "s3cret" not in note and "bob:***@db.example" in note
    for text in (
        "## s1",
        "two samplers, one task",
        "| task | causal_lm |",
        "| objective | minimize **perplexity** |",
        "| model | `distilbert-base-uncased`, dropout 0.1 |",
        "| data | dataset `glue` (sst2) (max_length 128) |",
        "| sampler | tpe (seed=0) |",
        "| pruner | median |",
        "| `training.learning_rate` | 1e-05 … 0.001, log scale |",
        "`hpo best studies/s1.yaml`",
        "`hpo export studies/s1.yaml`",
        "`hpo train runs/s1-export/train.yaml`",
    ):
        assert text in note, text


# --------------------------------------------------------------------------------------------- report


def test_report_is_one_offline_html_file(tmp_path: Path) -> None:
    a = sqlite_study_file(tmp_path, "alpha")
    b = sqlite_study_file(tmp_path, "beta", sampler="random", curves=False)
    out = tmp_path / "out" / "cmp.html"
    result = runner.invoke(app, ["report", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    assert "1 pruned" in result.output and "50 steps saved (12%)" in result.output
    html = out.read_text()
    assert html.count(get_plotlyjs()[:300]) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)  # no CDN, no external script at all
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']https?:", html)
    ids = re.findall(r'id="fig-([^"]+)"', html)
    assert "comparison-best" in ids and "alpha-curves" in ids and "beta-timeline" in ids
    assert "alpha-contour-learning_rate-per_device_train_batch_size" in ids
    assert len(ids) == len(set(ids)) == 2 + 2 * 9
    assert "Top trials" in html and "All 5 trials" in html
    assert "error: CUDA out of memory" in html  # reasons in the all-trials table


def test_report_reads_stored_curves_without_writing(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha", curves=False)
    db = tmp_path / "runs" / "alpha.db"
    loaded = R.load(path)
    assert not loaded.data.stored_curves
    from sqlalchemy import create_engine, inspect

    assert not inspect(create_engine(f"sqlite:///{db}")).has_table("hpo_curves")  # the report created nothing
    path = sqlite_study_file(tmp_path, "beta")
    loaded = R.load(path)
    assert loaded.data.stored_curves
    assert D.curves(loaded.data).panels == ("perplexity", "eval_loss", "train_loss", "learning_rate")


def test_report_default_output_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "alpha-report.html").exists()
    missing = tmp_path / "missing.yaml"
    missing.write_text(path.read_text().replace("alpha.db", "nothing.db"))
    result = runner.invoke(app, ["report", str(missing)])
    assert result.exit_code == 1 and "no study yet" in result.output
    result = runner.invoke(app, ["report", str(path), "-o", str(tmp_path)])
    assert result.exit_code == 1 and "is a directory" in result.output


def test_png_export_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    result = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html"), "--png", str(tmp_path / "png")])
    assert result.exit_code == 1
    assert "PNG export needs kaleido: pip install 'hpo[report]'" in result.output
    monkeypatch.delitem(sys.modules, "kaleido")
    pytest.importorskip("kaleido")
    monkeypatch.setattr(R, "_browser", lambda: None)
    result = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html"), "--png", str(tmp_path / "png")])
    assert result.exit_code == 1 and "apt-get install chromium" in result.output


# ------------------------------------------------------------------------------------------ dashboard


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _serve(path: Path, **kw: Any) -> Any:
    from dashboards.launch import start

    d = start(path, host="127.0.0.1", port=0, **kw)
    threading.Thread(target=d.serve, daemon=True).start()
    return d


def test_dashboard_serves_the_study_with_notes(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    d = _serve(path)
    try:
        assert d.notes.study and d.notes.trials == 5 and d.notes.metric_name
        assert d.study_url == f"http://127.0.0.1:{d.port}/dashboard/studies/{study_store(d.study).study_id}"
        studies = _get(f"http://127.0.0.1:{d.port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["alpha"]
        detail = _get(f"http://127.0.0.1:{d.port}/api/studies/{study_store(d.study).study_id}")
        assert detail["note"]["body"].startswith("## alpha")
        notes = [t["note"]["body"].splitlines()[0] for t in detail["trials"]]
        assert notes[1] == "### Trial 1: pruned, perplexity = 30 (last reported)"
        assert notes[3] == "### Trial 3: failed"
        assert d.study.metric_names == ["perplexity"]
    finally:
        d.shutdown()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_notes_are_written_once_and_user_edits_are_kept(tmp_path: Path) -> None:
    from optuna_dashboard import get_note, save_note

    from dashboards.launch import refresh_notes
    from hpo.config import load_study_file
    from hpo.storage import load_existing

    path = sqlite_study_file(tmp_path, "alpha")
    cfg = load_study_file(path)
    study = load_existing(cfg)
    first = refresh_notes(study, cfg, str(path))
    assert (first.study, first.trials) == (True, 5)
    again = refresh_notes(study, cfg, str(path))
    assert (again.study, again.trials, again.metric_name) == (False, 0, False)  # nothing changed, nothing written
    save_note(study, "my own words")  # edited in the dashboard
    refresh_notes(study, cfg, "elsewhere.yaml")
    assert get_note(study) == "my own words"
    t = study.ask()  # a new trial finishes: it gets a note at the next refresh
    study.tell(t, state=TrialState.FAIL)
    assert refresh_notes(study, cfg, str(path)).trials == 1


def test_dashboard_without_notes_writes_nothing(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    d = _serve(path, notes=False)
    try:
        attrs = study_store(d.study).study_system_attrs()
        assert not any(k.startswith("dashboard:") for k in attrs)
        assert d.study.metric_names is None
    finally:
        d.shutdown()


_WRITER = """
import sys, time, optuna
from hpo.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="alpha", storage=open_storage(sys.argv[1], create=False))
for i in range(6):
    t = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    t.report(1.0 + i, 50)
    time.sleep(0.05)
    study.tell(t, 1.0 + i)
"""


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_dashboard_keeps_working_while_another_process_writes(tmp_path: Path) -> None:
    path = sqlite_study_file(tmp_path, "alpha")
    url = f"sqlite:///{tmp_path}/runs/alpha.db"
    d = _serve(path, notes_every=0.2)
    try:
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, url])
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            detail = _get(f"http://127.0.0.1:{d.port}/api/studies/{study_store(d.study).study_id}")
            seen.append(len(detail["trials"]))
            if writer.poll() is not None and seen[-1] == 11:
                break
            time.sleep(0.05)
        assert writer.wait(30) == 0
        assert seen[-1] == 11 and seen == sorted(seen)  # every answer was served, trials only ever added
        time.sleep(0.6)  # the note refresher picks up the new trials
        detail = _get(f"http://127.0.0.1:{d.port}/api/studies/{study_store(d.study).study_id}")
        assert all(t["note"]["body"] for t in detail["trials"])
    finally:
        d.shutdown()


def test_dashboard_cli_prints_the_url_and_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards.launch import Dashboard

    path = sqlite_study_file(tmp_path, "alpha")
    served: list[Dashboard] = []
    monkeypatch.setattr(Dashboard, "serve", lambda self: served.append(self) or self.server.server_close())
    result = runner.invoke(app, ["dashboard", str(path), "--port", "0"])
    assert result.exit_code == 0, result.output
    port = served[0].port
    assert f"http://127.0.0.1:{port}/dashboard/studies/1" in result.output
    assert "notes written: 5 trials, study note" in result.output
    busy = served[0]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        result = runner.invoke(app, ["dashboard", str(path), "--port", str(taken)])
    assert result.exit_code == 1 and f"port {taken} on 127.0.0.1 is already in use" in result.output
    del busy
    result = runner.invoke(app, ["dashboard", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_dashboard_never_prints_a_postgres_password(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboards.launch import Dashboard

    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth: any password works
    path = sqlite_study_file(tmp_path, "pg", storage=url)
    monkeypatch.setattr(Dashboard, "serve", lambda self: self.server.server_close())
    result = runner.invoke(app, ["dashboard", str(path), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and "postgres:***@" in result.output
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in out.read_text() and "s3cret-pw" not in result.output


def test_read_curves_point_type() -> None:
    assert R.read_curves("sqlite://", "x") == []  # an empty in-memory database: no table, nothing created
    assert CurvePoint(0, 1, "eval", "perplexity", 2.0).name == "perplexity"


def test_a_big_backlog_of_notes_is_written_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dashboards.launch as L

    monkeypatch.setattr(L, "FOREGROUND_NOTES", 2)
    path = sqlite_study_file(tmp_path, "alpha")
    d = _serve(path, notes_every=0)
    try:
        assert (d.notes.trials, d.notes.pending) == (2, 3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            detail = _get(f"http://127.0.0.1:{d.port}/api/studies/{study_store(d.study).study_id}")
            if all(t["note"]["body"] for t in detail["trials"]):
                break
            time.sleep(0.1)
        assert all(t["note"]["body"] for t in detail["trials"])
    finally:
        d.shutdown()
