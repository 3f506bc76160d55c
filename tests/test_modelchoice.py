"""Model choice as a search dimension: presets by name, searched model folders, per-model caches and groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import studies
from hpo.config import validate_study
from hpo.errors import StudyFileError
from hpo.modelchoice import ModelGroup, group_by_model
from hpo.references import check_references
from trainers.data import cache_key

NARROW = {"from_config": studies.TINY_GPT2}
WIDE = {"from_config": {**studies.TINY_GPT2, "n_embd": 64, "n_head": 4}, "tokenizer": {"train_vocab_size": 400}}
PRESETS = {"narrow": NARROW, "wide": WIDE}
CHOICE = {"type": "categorical", "choices": ["narrow", "wide"]}


def study(**over: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {
        "models": PRESETS,
        "search_space": {"model.preset": CHOICE, "training.learning_rate": dict(studies.LEARNING_RATE)},
        **over,
    }
    return studies.causal_lm(**sections)


def test_a_preset_picks_the_trials_model_and_its_data_cache() -> None:
    cfg = validate_study(study(), "s.yaml")
    narrow = cfg.trial_run({"preset": "narrow", "learning_rate": 1e-3})
    wide = cfg.trial_run({"preset": "wide", "learning_rate": 1e-3})
    assert narrow.model.from_config == studies.TINY_GPT2
    assert wide.model.from_config is not None and wide.model.from_config["n_embd"] == 64
    assert wide.model.tokenizer.train_vocab_size == 400
    assert narrow.training.learning_rate == wide.training.learning_rate == 1e-3
    # Each tokenizer its own tokenised data; the same tokenizer shares it.
    assert cache_key(narrow) != cache_key(wide)
    assert cache_key(narrow) == cache_key(cfg.base_run())


def test_presets_enter_the_fingerprint_and_old_studies_keep_theirs() -> None:
    plain = validate_study(studies.causal_lm(), "s.yaml")
    assert "models" not in plain.fingerprints()
    a = validate_study(study(), "s.yaml")
    b = validate_study(study(models={**PRESETS, "wide": {**WIDE, "dropout": 0.2}}), "s.yaml")
    assert a.fingerprints()["models"] != b.fingerprints()["models"]


def test_a_pretrained_and_a_from_config_model(tmp_path: Path) -> None:
    """A preset naming `name_or_path` drops the base's `from_config` (and the other way round)."""
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 64}))
    presets = {"pre": {"name_or_path": "bert", "tokenizer": {"train_vocab_size": 300}}, "scratch": NARROW}
    raw = study(models=presets, search_space={"model.preset": {"type": "categorical", "choices": ["pre", "scratch"]}})
    cfg = validate_study(raw, "s.yaml", base_dir=tmp_path)
    pre = cfg.trial_run({"preset": "pre"})
    assert pre.model.from_config is None and pre.model.name_or_path == str(folder)
    assert cfg.trial_run({"preset": "scratch"}).model.name_or_path is None


def test_a_searched_model_folder_is_relative_to_the_study_file(tmp_path: Path) -> None:
    model = {"name_or_path": "a", "tokenizer": {"train_vocab_size": 300}}
    space = {"model.name_or_path": {"type": "categorical", "choices": ["a", "b"]}}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    cfg = validate_study(studies.causal_lm(model=model, search_space=space), "s.yaml", base_dir=tmp_path)
    assert cfg.trial_run({"name_or_path": "b"}).model.name_or_path == str(tmp_path / "b")
    check_references(cfg, "s.yaml")  # both folders exist
    (tmp_path / "b" / "config.json").unlink()
    with pytest.raises(StudyFileError, match=r"s.yaml: search_space\[model.name_or_path\]: .*b"):
        check_references(cfg, "s.yaml")


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown preset", study(search_space={"model.preset": {"type": "categorical", "choices": ["narrow", "big"]}}),
     "s.yaml: search_space[model.preset]: 'big' is not a model under `models` (known: narrow, wide)"),
    ("no models section", study(models=None),
     "search_space[model.preset]: 'narrow' is not a model under `models` (known: none: add a `models:` section)"),
    ("not categorical", study(search_space={"model.preset": {"type": "int", "low": 0, "high": 1}}),
     "search_space[model.preset]: a preset is chosen by name: use `type: categorical`"),
    ("bad preset key", study(models={**PRESETS, "wide": {"from_config": {"n_layer": 2}}}),
     "s.yaml: models.wide: `from_config` needs a `model_type`"),
    ("unknown model key", study(models={**PRESETS, "wide": {"layers": 2}}), "s.yaml: models.wide.layers: unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_model_choice_is_a_one_line_error(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyFileError) as e:
        validate_study(raw, "s.yaml")
    assert message in str(e.value)
    assert len(str(e.value).strip().splitlines()) == 1, str(e.value)


def test_a_preset_config_key_is_checked_against_its_own_architecture() -> None:
    bert = {"from_config": studies.TINY_BERT, "tokenizer": {"train_vocab_size": 300}}
    space = {
        "model.preset": {"type": "categorical", "choices": ["gpt", "bert"]},
        "model.config.n_layer": {"type": "int", "low": 1, "high": 2, "when": {"model.preset": "gpt"}},
    }
    raw = studies.causal_lm(models={"gpt": NARROW, "bert": bert}, search_space=space)
    check_references(validate_study(raw, "s.yaml"), "s.yaml")  # n_layer is a GPT-2 key, gated to gpt
    space["model.config.n_layer"] = {"type": "int", "low": 1, "high": 2}  # ungated: BERT has no n_layer
    with pytest.raises(StudyFileError, match=r"search_space\[model.config.n_layer\]: .*bert"):
        check_references(validate_study(raw, "s.yaml"), "s.yaml")


CONFIG = {"search_space": {"model.preset": {"type": "categorical", "choices": ["a", "b"]}}}
GROUPS: list[tuple[str, str, list[tuple[int, str, float | None, dict[str, Any]]], list[ModelGroup]]] = [
    (
        "minimize: best group first, pruned and failed counted",
        "minimize",
        [
            (0, "COMPLETE", 3.0, {"preset": "a"}),
            (1, "COMPLETE", 2.0, {"preset": "b"}),
            (2, "COMPLETE", 5.0, {"preset": "a"}),
            (3, "PRUNED", 9.0, {"preset": "b"}),
            (4, "FAIL", None, {"preset": "a"}),
            (5, "COMPLETE", 4.0, {"preset": "b"}),
        ],
        [ModelGroup("b", 3, 2, 1, 0, 2.0, 1, 3.0), ModelGroup("a", 3, 2, 0, 1, 3.0, 0, 4.0)],
    ),
    (
        "maximize, a model without complete trial last",
        "maximize",
        [(0, "PRUNED", 0.1, {"preset": "a"}), (1, "COMPLETE", 0.5, {"preset": "b"})],
        [ModelGroup("b", 1, 1, 0, 0, 0.5, 1, 0.5), ModelGroup("a", 1, 0, 1, 0, None, None, None)],
    ),
]


@pytest.mark.parametrize(("direction", "trials", "expected"), [g[1:] for g in GROUPS], ids=[g[0] for g in GROUPS])
def test_group_by_model(direction: str, trials: list[Any], expected: list[ModelGroup]) -> None:
    assert group_by_model(trials, CONFIG, direction) == expected


def test_no_groups_when_the_study_has_one_model() -> None:
    config = {"search_space": {"training.learning_rate": {"type": "float"}}}
    assert group_by_model([(0, "COMPLETE", 1.0, {"learning_rate": 0.1})], config, "minimize") == []


def test_status_groups_a_studys_results_by_model(tmp_path: Path) -> None:
    import optuna
    import yaml

    from hpo import api
    from hpo.conditional import ask
    from hpo.storage import create_or_resume, open_storage

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study(study={"name": "m", "n_trials": 4, "storage": f"sqlite:///{tmp_path}/m.db"})))
    cfg = validate_study(yaml.safe_load(path.read_text()), str(path))
    st, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    for preset, value in (("narrow", 30.0), ("wide", 20.0), ("narrow", 25.0)):
        st.enqueue_trial({"preset": preset})
        st.tell(ask(st, cfg.search_space), value)
    t = ask(st, cfg.search_space)
    st.tell(t, state=optuna.trial.TrialState.PRUNED)
    groups = {g.model: g for g in api.status(path).by_model}
    assert (groups["narrow"].best_value, groups["narrow"].median, groups["wide"].best_value) == (25.0, 27.5, 20.0)
    assert sum(g.trials for g in groups.values()) == 4 and sum(g.pruned for g in groups.values()) == 1


def test_the_report_has_a_by_model_table() -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution

    from dashboards import data as D
    from dashboards import report as R
    from hpo.storage import ATTR_CONFIG

    config = {"objective": {"metric": "perplexity"}, "search_space": {"model.preset": CHOICE}}
    st = optuna.create_study()
    st.set_user_attr(ATTR_CONFIG, config)
    for preset, value in (("narrow", 30.0), ("wide", 20.0), ("narrow", 25.0)):
        st.enqueue_trial({"preset": preset})
        st.tell(st.ask({"preset": CategoricalDistribution(["narrow", "wide"])}), value)
    sd = D.collect(st, importances=False)
    html = R.model_table(sd, config)
    rows = html.split("<tbody>")[1].split("</tr>")
    assert "<h3>By model</h3>" in html and "<td>wide</td>" in rows[0] and "<td>narrow</td>" in rows[1]
    assert "<td>27.5</td>" in rows[1]  # narrow's median
    assert R.model_table(sd, {"search_space": {}}) == ""  # one model: no table
