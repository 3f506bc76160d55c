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
from dash_fixtures import CONFIG, TRIALS, fixed_study, sqlite_study_file
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from dashboards import data as D
from dashboards import figures as F
from dashboards import report as R
from dashboards.notes import study_note, trial_note
from hpo.cli import app
from hpo.curves import CurvePoint, CurveStore
from hpo.storage import redact
from hpo.store import study_store

runner = CliRunner()


@pytest.fixture
def sd() -> D.StudyData:
    return D.collect(fixed_study())


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
    assert D.history(sd) == D.HistoryData("objective", "maximize", (), (), ())
    assert D.compute(sd).steps_without_pruning == 0
    assert D.timeline(sd) == D.TimelineData((), ())
    assert D.contour_pairs(sd) == []


def test_history(sd: D.StudyData) -> None:
    assert D.history(sd) == D.HistoryData(
        metric="perplexity",
        direction="minimize",
        complete=((0, 10.0), (2, 5.0), (4, 8.0)),
        pruned=((1, 30.0),),
        best=((0, 10.0), (2, 5.0), (4, 5.0)),
    )


def test_history_maximize() -> None:
    study = optuna.create_study(direction="maximize")
    for v in (0.5, 0.4, 0.9):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        study.tell(t, v)
    assert D.history(D.collect(study, importances=False)).best == ((0, 0.5), (1, 0.5), (2, 0.9))


def test_importance_ranks_and_keeps_the_note(sd: D.StudyData) -> None:
    fixed = dataclasses.replace(sd, importances={"a": 0.2, "b": 0.7, "c": 0.1})
    assert D.importance(fixed) == D.ImportanceData(("b", "a", "c"), (0.7, 0.2, 0.1), 3, None)
    none = dataclasses.replace(sd, importances={}, importance_note="why")
    assert D.importance(none) == D.ImportanceData((), (), 3, "why")


def test_parallel_maps_categories_to_indices(sd: D.StudyData) -> None:
    assert D.parallel(sd) == D.ParallelData(
        axes=(
            D.Axis("learning_rate", True, None),
            D.Axis("per_device_train_batch_size", False, ("8", "16", "32")),
            D.Axis("dropout", False, None),
        ),
        columns=((1e-3, 1e-2, 3e-3), (1.0, 2.0, 0.0), (0.1, 0.0, 0.05)),
        values=(10.0, 5.0, 8.0),
        numbers=(0, 2, 4),
        metric="perplexity",
        direction="minimize",
    )


def test_slices_keep_pruned_trials_apart(sd: D.StudyData) -> None:
    lr = D.slices(sd)[0]
    assert lr == D.SliceData(
        axis=D.Axis("learning_rate", True, None),
        x=(1e-3, 1e-2, 3e-3),
        y=(10.0, 5.0, 8.0),
        numbers=(0, 2, 4),
        pruned_x=(1e-4,),
        pruned_y=(30.0,),
        pruned_numbers=(1,),
    )


def test_contour_learning_rate_by_batch_size(sd: D.StudyData) -> None:
    assert D.contour_pairs(sd)[0] == ("learning_rate", "per_device_train_batch_size")
    c = D.contour(sd, "learning_rate", "per_device_train_batch_size", resolution=5)
    assert c is not None
    assert c.grid_x == (0.001, 0.001778279410, 0.003162277660, 0.005623413252, 0.01)  # log-spaced over the trials
    assert c.grid_y == (0.0, 1.0, 2.0)  # the three batch sizes
    assert (c.points_x, c.points_y, c.values, c.numbers) == (
        (1e-3, 1e-2, 3e-3),
        (1.0, 2.0, 0.0),
        (10.0, 5.0, 8.0),
        (0, 2, 4),
    )
    assert c.z[1][0] == 10.0 and c.z[2][4] == 5.0  # exact at the trials
    assert all(5.0 <= v <= 10.0 for row in c.z for v in row)  # interpolation stays within the values
    few = D.collect(fixed_study(rows=TRIALS[:2]))
    assert D.contour(few, "learning_rate", "per_device_train_batch_size") is None
    assert D.contour(sd, "learning_rate", "nope") is None


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


def test_timeline_lanes_per_device_and_worker(sd: D.StudyData) -> None:
    w0, w1 = "cpu · worker 0", "cpu · worker 1"
    assert D.timeline(sd) == D.TimelineData(
        lanes=(w0, w1),
        bars=(
            D.TimelineBar(w0, 0, "COMPLETE", 0.0, 2.0, False),
            D.TimelineBar(w1, 1, "PRUNED", 0.0, 1.0, False),
            D.TimelineBar(w1, 2, "COMPLETE", 1.0, 3.5, False),
            D.TimelineBar(w0, 3, "FAIL", 2.0, 2.5, False),
            D.TimelineBar(w0, 4, "COMPLETE", 2.5, 4.5, False),
        ),
    )


def test_timeline_running_trial_reaches_the_latest_time() -> None:
    study = fixed_study()
    study.ask()  # a RUNNING trial, started now
    sd = D.collect(study, importances=False)
    running = [b for b in D.timeline(sd).bars if b.running]
    assert len(running) == 1 and running[0].end == running[0].start  # nothing later than its own start
    assert running[0].lane == "unknown device"


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


def _types(fig: go.Figure) -> list[str]:
    return [t.type for t in fig.data]


def test_figures_have_the_expected_traces(sd: D.StudyData) -> None:
    assert _types(F.history_figure(D.history(sd))) == ["scatter", "scatter", "scatter"]
    best_line = F.history_figure(D.history(sd)).data[1]
    assert list(best_line.x) == [0, 2, 4] and list(best_line.y) == [10.0, 5.0, 5.0]
    assert _types(F.importance_figure(D.importance(sd))) == ["bar"]
    par = F.parallel_figure(D.parallel(sd))
    assert _types(par) == ["parcoords"]
    assert [d.label for d in par.data[0].dimensions] == [
        "learning_rate (log)",
        "per_device_train_batch_size",
        "dropout",
        "perplexity",
    ]
    assert list(par.data[0].dimensions[1].ticktext) == ["8", "16", "32"]
    sl = F.slice_figure(D.slices(sd), sd.metric)
    assert _types(sl) == ["scatter"] * 6  # complete + pruned for each of 3 parameters
    assert sl.layout.xaxis.type == "log"
    con = F.contour_figure(D.contour(sd, "learning_rate", "per_device_train_batch_size"))
    assert _types(con) == ["contour", "scatter"] and con.layout.xaxis.type == "log"
    assert list(con.layout.yaxis.ticktext) == ["8", "16", "32"]
    cur = F.curves_figure(D.curves(sd))
    assert [t.name for t in cur.data] == ["#0 10", "#1 pruned@50", "#4 8", "#2 best 5"]  # best drawn last
    assert cur.data[1].line.dash == "dot" and cur.data[1].marker.symbol[-1] == "x"
    comp = F.compute_figure(D.compute(sd))
    assert _types(comp) == ["bar"] * 4  # totals; steps run by complete, pruned trials (the failed one ran 0); saved
    assert list(comp.data[0].y) == [400, 350] and list(comp.data[-1].y) == [0, 50, 0, 0, 0]
    tl = F.timeline_figure(D.timeline(sd))
    assert [t.name for t in tl.data] == ["complete", "pruned", "fail"] and tl.data[0].orientation == "h"
    assert list(tl.data[0].base) == [0.0, 1.0, 2.5]
    cmp = D.comparison([sd, dataclasses.replace(sd, name="b")])
    assert _types(F.comparison_figure(cmp)) == ["scatter"] * 4
    assert _types(F.importance_comparison_figure(cmp)) == ["bar", "bar"]


def test_figures_of_an_empty_study_say_why() -> None:
    sd = D.collect(optuna.create_study())
    for fig in (
        F.history_figure(D.history(sd)),
        F.importance_figure(D.importance(sd)),
        F.parallel_figure(D.parallel(sd)),
        F.curves_figure(D.curves(sd)),
        F.compute_figure(D.compute(sd)),
        F.timeline_figure(D.timeline(sd)),
        F.contour_figure(None),
    ):
        assert fig.data == () and fig.layout.annotations[0].text


def test_log_ticks() -> None:
    assert F.log_ticks(2e-4, 4e-3) == [2e-4, 5e-4, 1e-3, 2e-3]


# ---------------------------------------------------------------------------------------------- notes


def test_trial_note_for_a_pruned_trial() -> None:
    _, _, value, (lr, bs, dropout), _, attrs, _, _ = TRIALS[1]
    params = {"learning_rate": lr, "per_device_train_batch_size": bs, "dropout": dropout}
    note = trial_note(1, "PRUNED", value, params, attrs, "perplexity", 100)
    assert note.splitlines()[0] == "### Trial 1: pruned, perplexity = 30 (last reported)"
    assert "**Why it stopped:** pruned by median pruner at step 50 (perplexity=30)" in note
    assert "| learning_rate | 0.0001 |" in note and "| per_device_train_batch_size | 8 |" in note
    assert note.rstrip().endswith(
        "**Run:** 50 of 100 steps, 1.0 s in all, train 0.5 s, eval 0.2 s, 900 tokens/s, on cpu (worker 1)"
    )


def test_trial_note_of_a_failure_escapes_table_cells() -> None:
    attrs = {"reason": "error: a|b", "traceback": "Traceback...\nValueError: `bad` value", "requeued": True}
    note = trial_note(3, "FAIL", None, {"choice": "x|y"}, attrs, "accuracy")
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
