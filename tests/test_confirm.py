"""`hpo confirm`: statistics against a hand computation, runs stored apart from the search, resumable after
kill -9, bad input refused with nothing written, and `hpo best` / `hpo export` preferring the confirmed winner.

The runs use ``doubles.CurveRunner`` (value from the learning rate, plus a fixed offset per seed)."""

from __future__ import annotations

import io
import math
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
from doubles import CurveRunner, final_loss, run_confirmation, seed_offset
from optuna.trial import TrialState
from orchestrators import Orchestrator
from rich.console import Console
from typer.testing import CliRunner

import studies
from hpo import confirm
from hpo.cli import app
from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.errors import HpoError
from hpo.storage import create_or_resume, open_storage
from hpo.worker import WorkerSpec
from hpo.yamlio import dumps

TESTS = Path(__file__).parent


# ------------------------------------------------------------------------------------------ statistics


def test_t_interval_by_hand() -> None:
    mean, std, lo, hi = confirm.t_interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, t(0.975, 2) = 4.302653: 2 ± 4.302653 / sqrt(3)
    half = 4.302653 / math.sqrt(3)
    assert (mean, std) == (2.0, 1.0)
    assert lo == pytest.approx(2 - half, abs=1e-5) and hi == pytest.approx(2 + half, abs=1e-5)
    one = confirm.t_interval([5.0])
    assert one[0] == 5.0 and all(math.isnan(x) for x in one[1:])


@pytest.mark.parametrize(
    "groups, direction, expected",
    [
        # every run of the first is better than every run of the second: always best
        ([[1.0, 1.1, 0.9], [2.0, 2.1, 1.9]], "minimize", [1.0, 0.0]),
        ([[1.0, 1.1, 0.9], [2.0, 2.1, 1.9]], "maximize", [0.0, 1.0]),
        # [1, 3] resamples to mean 1 (1/4), 2 (1/2), 3 (1/4); [2, 2] is always 2: the first wins 1/4 of the
        # rounds outright and ties half of them (shared): 1/4 + 1/2 * 1/2 = 1/2 each
        ([[1.0, 3.0], [2.0, 2.0]], "minimize", [0.5, 0.5]),
        # three identical configurations: a third each
        ([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], "minimize", [1 / 3, 1 / 3, 1 / 3]),
    ],
)
def test_p_best_by_hand(groups: list[list[float]], direction: str, expected: list[float]) -> None:
    got = confirm.p_best(groups, direction)
    assert got == pytest.approx(expected, abs=0.02)
    assert sum(got) == pytest.approx(1.0)
    assert confirm.p_best(groups, direction) == got  # seeded: the same answer every time


def test_winner_is_the_best_mean_not_the_search_best() -> None:
    stats = confirm.summarize([(3, {}, 0.5, [2.0, 2.2]), (7, {}, 0.9, [1.0, 1.2])], "minimize")
    assert [s.trial for s in stats] == [3, 7]
    assert stats[1].mean == pytest.approx(1.1)
    assert confirm.winner_of(stats, "minimize").trial == 7  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ runs


def search(tmp_path: Path, n_trials: int = 6, **over: Any) -> Path:
    """A CurveRunner study run to the end in a SQLite file; returns its study file."""
    url = f"sqlite:///{tmp_path}/study.db"
    d = studies.curve(n_trials=n_trials, storage=url, **over)
    path = tmp_path / "study.yaml"
    path.write_text(dumps(d))
    cfg = validate_study(d)
    study, _ = create_or_resume(cfg, open_storage(url, create=True))
    display = RunDisplay(console=Console(file=io.StringIO()), live=False)
    orch = Orchestrator(cfg, study, [WorkerSpec(i, 1, {}, "cpu") for i in range(2)], CurveRunner(), display)
    try:
        orch.run()
    finally:
        orch.close()
    return path


def load(path: Path, name: str) -> optuna.Study:
    cfg = validate_study(yaml.safe_load(path.read_text()))
    return optuna.load_study(study_name=name, storage=open_storage(cfg.storage_url, create=False))


def test_confirm_runs_top_k_on_fresh_seeds_stored_apart_from_the_search(tmp_path: Path) -> None:
    path = search(tmp_path)
    before = load(path, "t").get_trials(deepcopy=False)
    conf = run_confirmation(str(path), top=2, seeds=3, seed_noise=0.2)
    after = load(path, "t")
    # The search study is untouched: same trials, nothing counted, nothing its sampler could see.
    assert [(t.number, t.state, t.values) for t in after.get_trials()] == [
        (t.number, t.state, t.values) for t in before
    ]
    runs = load(path, "t:confirm").get_trials()
    assert len(runs) == 6 and all(t.state == TrialState.COMPLETE for t in runs)
    ranked = sorted((t for t in before if t.state == TrialState.COMPLETE), key=lambda t: (t.value, t.number))[:2]
    assert [c.trial for c in conf.configs] == [t.number for t in ranked]
    assert conf.seeds == [43, 44, 45]  # training.seed 42, then fresh ones
    for c, t in zip(conf.configs, ranked, strict=True):
        lr = t.params["learning_rate"]
        expected = [final_loss(lr) + 5.0 / 20 + 0.2 * seed_offset(s) for s in conf.seeds]
        assert list(c.values) == pytest.approx(expected)  # each run at the trial's fidelity, with its own seed
        mean, std, lo, hi = confirm.t_interval(expected)
        assert (c.mean, c.std, c.ci_low, c.ci_high) == pytest.approx((mean, std, lo, hi))
        assert c.search_value == t.value
    assert conf.complete and conf.winner == min(conf.configs, key=lambda c: c.mean).trial
    stored = confirm.Confirmation.from_json(load(path, "t:confirm").user_attrs[confirm.ATTR_SUMMARY])
    assert stored.winner == conf.winner and stored.configs[0].values == conf.configs[0].values
    # A second call has nothing left to run.
    again = run_confirmation(str(path), top=2, seeds=3, seed_noise=0.2)
    assert len(load(path, "t:confirm").get_trials()) == 6 and again.winner == conf.winner
    # More seeds later: only the new pairs run.
    run_confirmation(str(path), top=2, seeds=4, seed_noise=0.2)
    assert len(load(path, "t:confirm").get_trials()) == 8


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_confirm_resumes_after_kill_9_without_repeating_a_result(tmp_path: Path) -> None:
    path = search(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = f"import doubles; doubles.run_confirmation({str(path)!r}, top=3, seeds=3, workers=1, step_sleep=0.05)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                runs = load(path, "t:confirm").get_trials(deepcopy=False)
            except (KeyError, Exception):
                runs = []
            if sum(t.state == TrialState.COMPLETE for t in runs) >= 2 and any(
                t.state == TrialState.RUNNING for t in runs
            ):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the confirmation never got two runs done")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the confirmation and its worker, without warning
        proc.wait()
    runs = load(path, "t:confirm").get_trials(deepcopy=False)
    assert any(t.state == TrialState.RUNNING for t in runs), "the kill left a run RUNNING"
    done_before = {t.number: t.values for t in runs if t.state == TrialState.COMPLETE}
    conf = run_confirmation(str(path), top=3, seeds=3)
    runs = load(path, "t:confirm").get_trials(deepcopy=False)
    complete = [t for t in runs if t.state == TrialState.COMPLETE]
    pairs = [(t.params["learning_rate"], t.params[confirm.SEED_PARAM]) for t in complete]
    assert len(pairs) == 9 and len(set(pairs)) == 9  # every pair once: none lost, none repeated
    assert {n: v for n, v in ((t.number, t.values) for t in complete) if n in done_before} == done_before
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in runs)
    assert conf.complete and all(len(c.values) == 3 for c in conf.configs)


def test_failed_runs_are_run_again_by_the_next_confirm(tmp_path: Path) -> None:
    path = search(tmp_path, n_trials=4)
    failed = run_confirmation(str(path), top=2, seeds=2, fail_above=0.0)  # every run crashes
    assert not failed.complete and len(failed.missing) == 4
    assert confirm.ATTR_SUMMARY not in load(path, "t:confirm").user_attrs  # nothing to prefer yet
    fixed = run_confirmation(str(path), top=2, seeds=2)
    runs = load(path, "t:confirm").get_trials()
    assert [t.state for t in runs] == [TrialState.FAIL] * 4 + [TrialState.COMPLETE] * 4
    assert fixed.complete and all(len(c.values) == 2 for c in fixed.configs)


def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = search(tmp_path, n_trials=3)
    db = tmp_path / "study.db"
    # (The file's mtime is no witness: the first reader of a WAL database checkpoints the search's log.)
    files = {p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))}
    n_complete = sum(t.state == TrialState.COMPLETE for t in load(path, "t").get_trials())
    cases = [
        (["--top", str(n_complete + 1)], f"--top {n_complete + 1} is larger than the study's {n_complete} complete"),
        (["--top", "0"], "--top must be at least 1"),
        (["--seeds", "1"], "--seeds must be at least 2"),
        (["--steps", "0"], "--steps must be at least 1"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(app, ["confirm", str(path), *args])
        assert res.exit_code == 1, res.output
        assert message in res.output.replace("\n", " ")
        assert "Traceback" not in res.output
    assert {p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))} == files
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["t"]  # no confirmation study created
    with pytest.raises(KeyError):
        load(path, "t:confirm")
    run_confirmation(str(path), top=1, seeds=2)
    with pytest.raises(HpoError, match="was confirmed at 20 steps"):
        confirm.prepare(confirm.plan(path, 1, 2, steps=10), open_storage(f"sqlite:///{db}", create=False))


def test_best_and_export_prefer_the_confirmed_winner_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = search(tmp_path)
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    plain = cli.invoke(app, ["best", str(path)])
    assert plain.exit_code == 0 and "confirmed" not in plain.output
    # Noise larger than the gap between the top two: the winner is whichever the seeds favour.
    conf = run_confirmation(str(path), top=3, seeds=3, seed_noise=5.0)
    assert conf.winner is not None
    res = cli.invoke(app, ["best", str(path)])
    assert res.exit_code == 0, res.output
    assert f"confirmed winner: trial {conf.winner}" in res.output
    assert f"confirmed best trial {conf.winner}" in res.output
    js = cli.invoke(app, ["best", str(path), "--json"])
    assert f'"number": {conf.winner}' in js.output and '"confirmation"' in js.output
    exp = cli.invoke(app, ["export", str(path), "-o", str(tmp_path / "best")])
    assert exp.exit_code == 0, exp.output
    assert f"confirmed winner: trial {conf.winner}" in exp.output
    assert f"trial {conf.winner}" in (tmp_path / "best" / "train.yaml").read_text().splitlines()[0]


def test_report_shows_the_confirmation_as_intervals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards.report import build, load

    path = search(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert not any(f.key.endswith("-confirm") for f in build([load(path)]).figures)
    conf = run_confirmation(str(path), top=2, seeds=3, seed_noise=0.2)
    report = build([load(path)])
    fig = next(f.fig for f in report.figures if f.key.endswith("-confirm"))
    means = fig.data[0]
    assert list(means.x) == pytest.approx([c.mean for c in conf.configs])
    # the bar is the 95% interval: mean + error = high end
    assert [m + e for m, e in zip(means.x, means.error_x.array, strict=True)] == pytest.approx(
        [c.ci_high for c in conf.configs]
    )
    assert "95% CI" in "".join(report.sections[-1].tables)


@pytest.mark.slow
def test_cli_confirm_with_the_real_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = studies.causal_lm(n_trials=3)
    d["resources"] = {"workers": 1}
    (tmp_path / "s.yaml").write_text(dumps(d))
    cli = CliRunner()
    assert cli.invoke(app, ["run", "s.yaml"]).exit_code == 0
    res = cli.invoke(app, ["confirm", "s.yaml", "--top", "2", "--seeds", "2", "--steps", "8"])
    assert res.exit_code == 0, res.output
    assert "over seeds [43, 44], 8 steps per run" in res.output and "confirmed winner: trial" in res.output
    runs = optuna.load_study(study_name="tiny:confirm", storage="sqlite:///runs/tiny.db").get_trials()
    assert len(runs) == 4 and all(t.state == TrialState.COMPLETE and t.user_attrs["steps"] == 8 for t in runs)
    # the two seeds of one configuration train differently (init and batch order)
    by_config: dict[float, set[float]] = {}
    for t in runs:
        by_config.setdefault(t.params["learning_rate"], set()).add(t.values[0])
    assert all(len(v) == 2 for v in by_config.values())
    assert len(optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny.db").get_trials()) == 3


def test_an_interrupted_run_requeued_by_the_ledger_is_not_enqueued_twice(tmp_path: Path) -> None:
    from hpo.ledger import Reason, TrialLedger
    from hpo.record import TrialAttrs
    from hpo.space import to_distributions
    from hpo.store import study_store

    path = search(tmp_path, n_trials=4)
    plan = confirm.plan(path, 2, 2)
    storage = open_storage(plan.source.storage_url, create=False)
    cfg, study, todo = confirm.prepare(plan, storage)
    assert todo == 4 and cfg.study.n_trials == 4
    # What Ctrl-C does to a running confirmation run: FAIL "interrupted", re-queued with its parameters (the
    # queued copy carries `retry_of`, not the attributes it was first enqueued with).
    trial = study.ask(to_distributions(cfg.search_space))
    ledger = TrialLedger(study, study_store(study), cfg.study.n_trials, None)
    ledger.set_attrs(trial, TrialAttrs(reason=str(Reason.interrupted()), requeued=True).to_user_attrs())
    study.tell(trial, state=TrialState.FAIL)
    ledger.requeue(trial.number, trial.params, trial.user_attrs)
    cfg, study, todo = confirm.prepare(plan, storage)
    assert todo == 4 and cfg.study.n_trials == 4  # 4 waiting (one of them the re-queued run), nothing added
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 4 and sum("retry_of" in t.user_attrs for t in waiting) == 1
