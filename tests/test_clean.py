"""Data cleaning: what each rule removes from a known table (leakage included), the counts on the way to the
study, the data cache key and the fingerprint."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hpo.cli import app
from hpo.config import validate_study
from studies import classification, sentiment_rows, write_csv
from trainers.clean import CleanConfig, clean_records, summary

CAFE_NFD = unicodedata.normalize("NFD", "café au lait")  # "e" + combining accent: NFKC composes it


def _table() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    train_rows: list[tuple[Any, Any]] = [
        ("good great fine lovely", "pos"),  # 0 kept
        ("good great fine lovely", "pos"),  # 1 exact duplicate of 0
        ("Good, great -- FINE lovely!", "pos"),  # 2 normalised duplicate of 0
        ("", "neg"),  # 3 empty
        ("   ", "neg"),  # 4 whitespace only
        (None, "neg"),  # 5 missing
        (7, "neg"),  # 6 not text
        ("bad awful poor dull", "neg"),  # 7 kept
        ("seen in eval too", "neg"),  # 8 leakage (exact)
        ("Seen in EVAL, too", "neg"),  # 9 leakage only when normalised (exact dedup: a distinct row)
        ("short", "neg"),  # 10 one word
        ("one two three four five six seven eight nine ten eleven", "pos"),  # 11 eleven words
        ("rare label row here", "odd"),  # 12 the only "odd" row
        (CAFE_NFD, "pos"),  # 13 changed by NFKC
        ("a lovely day", None),  # 14 no label
    ]
    eval_rows: list[tuple[Any, Any]] = [
        ("seen in eval too", "neg"),
        ("seen in eval too", "neg"),  # duplicate inside eval
        ("", "pos"),  # empty eval row
        ("an odd one", "odd"),  # its label is rare in train
        ("fine fine fine", "pos"),
    ]

    def cols(rows: list[tuple[Any, Any]]) -> dict[str, list[Any]]:
        return {"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}

    return cols(train_rows), cols(eval_rows)


def _counts(c: dict[str, dict[str, int]]) -> dict[str, tuple[int, int]]:
    return {k: (v["train"], v["eval"]) for k, v in c.items() if v["train"] or v["eval"]}


@pytest.mark.parametrize(
    ("rules", "want", "train_left"),
    [
        (
            {},  # the defaults: NFKC, drop empty, exact dedup, leakage
            {"unicode": (1, 0), "empty": (5, 1), "duplicates": (1, 1), "leakage": (1, 0)},
            [0, 2, 7, 9, 10, 11, 12, 13],
        ),
        (
            {"dedup": "normalized"},  # row 9 is now a copy of row 8 (dedup comes first), which leaks
            {"unicode": (1, 0), "empty": (5, 1), "duplicates": (3, 1), "leakage": (1, 0)},
            [0, 7, 10, 11, 12, 13],
        ),
        (
            {"leakage": False, "min_length": 2, "max_length": 10, "min_label_count": 2},
            {
                "unicode": (1, 0),
                "empty": (5, 1),
                "duplicates": (1, 1),
                "min_length": (1, 0),
                "max_length": (1, 0),
                "rare_labels": (1, 1),
            },
            [0, 2, 7, 8, 9, 13],
        ),
        (
            {"unicode": None, "dedup": "none", "leakage": False},
            {"empty": (5, 1)},
            [0, 1, 2, 7, 8, 9, 10, 11, 12, 13],
        ),
    ],
)
def test_each_rule_removes_what_it_says(
    rules: dict[str, Any], want: dict[str, tuple[int, int]], train_left: list[int]
) -> None:
    train, evals = _table()
    original = list(train["text"])
    got_train, got_eval, counts = clean_records(train, evals, CleanConfig(**rules))
    assert _counts(counts) == want
    expected = [original[i] for i in train_left]
    if rules.get("unicode", "NFKC") is not None:
        expected = [unicodedata.normalize("NFKC", t) for t in expected]
    assert got_train["text"] == expected
    assert len(got_train["label"]) == len(expected)
    assert "" not in got_eval["text"]
    assert train["text"] == original  # the caller's columns are left as they were


def test_rules_need_a_valid_length_range() -> None:
    with pytest.raises(ValueError, match="min_length <= max_length"):
        CleanConfig(min_length=5, max_length=3)


def test_summary_names_what_was_removed() -> None:
    train, evals = _table()
    _, _, counts = clean_records(train, evals, CleanConfig())
    assert summary(counts) == (
        "unicode changed 1 (train 1, eval 0), empty 6 (train 5, eval 1), duplicates 2 (train 1, eval 1), "
        "leakage 1 (train 1, eval 0)"
    )


# ----------------------------------------------------------------------------- through the data cache


def _run(tmp_path: Path, clean: dict[str, Any] | None, rows: list[tuple[str, str]], **data: Any) -> Any:
    from trainers.config import RunConfig

    csv = write_csv(tmp_path / f"train-{len(rows)}.csv", rows)
    study = classification(csv=str(csv))
    d = {**study["data"], "files": {"train": str(csv)}, "eval_fraction": 0.25, **data}
    if clean is not None:
        d["clean"] = clean
    return RunConfig.model_validate({"task": study["task"], "model": study["model"], "data": d})


def _unique(n: int) -> list[tuple[str, str]]:
    return [(f"{text} w{i}", label) for i, (text, label) in enumerate(sentiment_rows(n))]


def test_prepared_data_is_cleaned_and_counted(tmp_path: Path) -> None:
    from trainers.data import prepare

    rows = _unique(40) + _unique(10) + [("   ", "pos")]  # 10 duplicated rows, one blank
    plain = _run(tmp_path, None, rows[:-1])
    cleaned = _run(tmp_path, {"length_unit": "tokens", "max_length": 100}, rows)
    a, b = prepare(plain, tmp_path / "cache"), prepare(cleaned, tmp_path / "cache")
    assert a.path != b.path and a.clean_counts is None
    assert b.clean_counts is not None
    removed = sum(b.clean_counts[r]["train"] + b.clean_counts[r]["eval"] for r in ("empty", "duplicates", "leakage"))
    assert removed == 11  # every copy and the blank row, wherever the split put them
    assert b.clean_counts["kept"] == {"train": len(b.train_ids), "eval": len(b.eval_ids)}
    assert len(b.train_ids) + len(b.eval_ids) == 40
    assert prepare(cleaned, tmp_path / "cache").clean_counts == b.clean_counts  # read back from the cache


def test_blank_cell_is_refused_without_cleaning(tmp_path: Path) -> None:
    from trainers.base import ConfigError
    from trainers.data import prepare

    rows = [*sentiment_rows(8), ("   ", "pos")]
    with pytest.raises(ConfigError, match="data row 9: the 'sentence' cell is empty"):
        prepare(_run(tmp_path, None, rows), tmp_path / "cache")
    assert prepare(_run(tmp_path, {}, rows), tmp_path / "cache").clean_counts["empty"]["train"] == 1


def test_cache_key_changes_with_cleaning_not_with_augmentation(tmp_path: Path) -> None:
    from trainers.data import cache_key

    rows = sentiment_rows(8)
    keys = {
        "none": cache_key(_run(tmp_path, None, rows)),
        "default": cache_key(_run(tmp_path, {}, rows)),
        "normalized": cache_key(_run(tmp_path, {"dedup": "normalized"}, rows)),
        "min_length": cache_key(_run(tmp_path, {"min_length": 3}, rows)),
    }
    assert len(set(keys.values())) == 4
    # Augmentation runs on the fly: its searchable settings share one cache (with word ids kept for it).
    aug = [cache_key(_run(tmp_path, {}, rows, augment={"p": p})) for p in (0.1, 0.3)]
    assert aug[0] == aug[1] != keys["default"]


def _study(tmp_path: Path, clean: dict[str, Any] | None) -> dict[str, Any]:
    csv = write_csv(tmp_path / "data" / "train.csv", _unique(40) + _unique(6))
    d = classification(csv=str(csv), n_trials=1)
    d["fidelity"] = {"max_steps": 2, "eval_every": 2}
    if clean is not None:
        d["data"]["clean"] = clean
    return d


def test_fingerprint_refuses_a_resumed_study_whose_cleaning_changed(tmp_path: Path) -> None:
    from hpo.errors import StudyMismatchError
    from hpo.storage import check_fingerprint, create_or_resume, open_storage

    base = validate_study(_study(tmp_path, None))
    cleaned = validate_study(_study(tmp_path, {}))
    other = validate_study(_study(tmp_path, {"dedup": "normalized"}))
    assert base.fingerprint() == validate_study(_study(tmp_path, None)).fingerprint()
    assert len({base.fingerprint(), cleaned.fingerprint(), other.fingerprint()}) == 3
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", create=True)
    study, _ = create_or_resume(cleaned, storage)
    study.add_trial(__import__("optuna").trial.create_trial(value=1.0))
    with pytest.raises(StudyMismatchError, match="different data"):
        check_fingerprint(other, study)


@pytest.mark.slow
def test_counts_reach_the_study_status_and_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards.notes import study_note
    from hpo.api import status

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, {"dedup": "normalized"})))
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    st = status(path)
    assert st.data_clean is not None
    assert st.data_clean["duplicates"]["train"] + st.data_clean["duplicates"]["eval"] > 0
    shown = runner.invoke(app, ["status", str(path)])
    assert f"data.clean removed: {summary(st.data_clean)}" in " ".join(shown.output.split())
    note = study_note({"study": {"name": "s"}}, str(path), "sqlite:///x", st.data_clean)
    assert f"| data.clean | {summary(st.data_clean)} |" in note


@pytest.mark.parametrize(("key", "refused"), [("dedup", True), ("min_label_count", True), ("min_length", False)])
def test_rules_that_change_the_eval_rows_are_not_searchable(tmp_path: Path, key: str, refused: bool) -> None:
    from hpo.errors import StudyFileError

    d = _study(tmp_path, {})
    d["search_space"][f"data.clean.{key}"] = (
        {"type": "categorical", "choices": ["exact", "normalized"]}
        if key == "dedup"
        else {"type": "int", "low": 0, "high": 3}
    )
    if not refused:
        assert validate_study(d).trial_run({"learning_rate": 1e-3, key: 2}).data.clean.min_length == 2  # type: ignore[union-attr]
        return
    with pytest.raises(StudyFileError, match=rf"search_space\[data.clean.{key}\]: changes the eval rows"):
        validate_study(d)
