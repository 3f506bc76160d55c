"""hpo suggest: ranges narrowed around the best trials, a valid study file with the old best enqueued."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from pydantic import TypeAdapter

import studies
from hpo import yamlio
from hpo.conditional import ask
from hpo.config import load_study_file
from hpo.errors import HpoError
from hpo.space import CategoricalSpec, FloatSpec, IntSpec, ParamSpec
from hpo.storage import create_or_resume, open_storage
from hpo.suggest import narrow, suggest
from hpo.warmstart import plan

optuna.logging.set_verbosity(optuna.logging.WARNING)
_SPEC: TypeAdapter[Any] = TypeAdapter(ParamSpec)


def spec(**entry: Any) -> Any:
    return _SPEC.validate_python(entry)


LR = spec(type="float", low=1e-5, high=1e-2, log=True)
DROP = spec(type="float", low=0.0, high=0.3)
BATCH = spec(type="categorical", choices=[8, 16, 32])
LAYERS = spec(type="int", low=1, high=12)


def trials(rows: list[tuple[float, dict[str, Any]]]) -> list[tuple[int, float, dict[str, Any]]]:
    return [(i, v, p) for i, (v, p) in enumerate(rows)]


# The best 3 of 8 (minimize): learning rates 1e-3..4e-3, dropout 0.1..0.12, batch 16 or 32, layers 4..6.
ROWS = trials(
    [
        (1.0, {"learning_rate": 2e-3, "dropout": 0.10, "per_device_train_batch_size": 16, "n_layer": 4}),
        (1.2, {"learning_rate": 1e-3, "dropout": 0.12, "per_device_train_batch_size": 32, "n_layer": 6}),
        (1.1, {"learning_rate": 4e-3, "dropout": 0.11, "per_device_train_batch_size": 16, "n_layer": 5}),
        (5.0, {"learning_rate": 1e-5, "dropout": 0.29, "per_device_train_batch_size": 8, "n_layer": 1}),
        (4.0, {"learning_rate": 9e-3, "dropout": 0.01, "per_device_train_batch_size": 8, "n_layer": 12}),
        (3.0, {"learning_rate": 5e-5, "dropout": 0.2, "per_device_train_batch_size": 32, "n_layer": 2}),
        (3.5, {"learning_rate": 3e-5, "dropout": 0.25, "per_device_train_batch_size": 8, "n_layer": 11}),
        (2.5, {"learning_rate": 2e-4, "dropout": 0.05, "per_device_train_batch_size": 16, "n_layer": 9}),
    ]
)
SPACE = {
    "training.learning_rate": LR,
    "model.dropout": DROP,
    "training.per_device_train_batch_size": BATCH,
    "model.config.n_layer": LAYERS,
}


def test_ranges_narrow_around_the_top_and_keep_the_best() -> None:
    s = narrow(SPACE, ROWS, "minimize")
    assert s.top == 3 and s.best_number == 0
    lr, drop, batch, layers = (s.space[k] for k in SPACE)
    assert isinstance(lr, FloatSpec) and lr.log
    # log scale: the top's span is log(4e-3 / 1e-3); a quarter of it on each side
    assert lr.low == pytest.approx(1e-3 / 4**0.25, rel=1e-2) and lr.high == pytest.approx(4e-3 * 4**0.25, rel=1e-2)
    assert isinstance(drop, FloatSpec) and 0.09 <= drop.low <= 0.1 and 0.12 <= drop.high <= 0.13
    assert isinstance(batch, CategoricalSpec) and batch.choices == [16, 32]
    assert isinstance(layers, IntSpec) and (layers.low, layers.high) == (3, 7)
    for path, value in s.best.items():  # the best trial fits the new space
        new = s.space[path]
        assert value in new.choices if isinstance(new, CategoricalSpec) else new.low <= value <= new.high
    assert s.best == {
        "training.learning_rate": 2e-3,
        "model.dropout": 0.10,
        "training.per_device_train_batch_size": 16,
        "model.config.n_layer": 4,
    }
    assert any("learning_rate: [1e-05, 0.01] -> [" in n and "(log scale)" in n for n in s.notes), s.notes


@pytest.mark.parametrize(
    ("direction", "best_lr"), [("minimize", 2e-3), ("maximize", 1e-5)], ids=["minimize", "maximize"]
)
def test_direction_decides_the_top(direction: str, best_lr: float) -> None:
    assert narrow(SPACE, ROWS, direction).best["training.learning_rate"] == best_lr


CASES: list[tuple[str, Any, list[Any], Any]] = [
    ("spread top kept as it was", DROP, [0.0, 0.3, 0.15], DROP),
    ("one value still leaves 5% of the range", DROP, [0.15, 0.15, 0.15], spec(type="float", low=0.142, high=0.158)),
    ("clipped to the old range", DROP, [0.0, 0.01, 0.02], spec(type="float", low=0.0, high=0.025)),
    ("every choice used: kept", BATCH, [8, 16, 32], BATCH),
    ("int with a step stays on it", spec(type="int", low=0, high=100, step=10), [40, 50, 50],
     spec(type="int", low=30, high=60, step=10)),
    ("float grid cut to the new range", spec(type="float", low=0.0, high=1.0, grid=[0.0, 0.25, 0.5, 0.75, 1.0]),
     [0.5, 0.55, 0.6], spec(type="float", low=0.475, high=0.625, grid=[0.5])),
]  # fmt: skip


@pytest.mark.parametrize(("old", "top_values", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_entry(old: Any, top_values: list[Any], expected: Any) -> None:
    rows = trials([(1.0, {"x": v}) for v in top_values])
    assert narrow({"training.x": old}, rows, "minimize", top=len(top_values)).space["training.x"] == expected


def test_conditions_follow_the_narrowed_choices() -> None:
    space = {
        "model.preset": spec(type="categorical", choices=["a", "b"]),
        "model.config.n_layer": spec(type="int", low=1, high=4, when={"model.preset": "b"}),
        "model.dropout": spec(type="float", low=0.0, high=0.3, when={"model.preset": ["a", "b"]}),
    }
    rows = trials([(1.0, {"preset": "a", "dropout": 0.1}), (1.1, {"preset": "a", "dropout": 0.2}),
                   (1.2, {"preset": "a", "dropout": 0.15}), (9.0, {"preset": "b", "n_layer": 2})])  # fmt: skip
    s = narrow(space, rows, "minimize")
    assert "model.config.n_layer" not in s.space and s.dropped == ["model.config.n_layer"]
    assert s.space["model.dropout"].when == {"model.preset": ["a"]}


def test_too_few_trials() -> None:
    with pytest.raises(HpoError, match="at least 3 complete trials; the study has 2"):
        narrow(SPACE, ROWS[:2], "minimize")


def width(x: Any) -> float:
    return float((math.log(x.high) - math.log(x.low)) if x.log else x.high - x.low)


def test_suggest_writes_a_valid_narrower_study_with_the_best_enqueued(tmp_path: Path) -> None:
    raw = studies.causal_lm("first", n_trials=8, storage=f"sqlite:///{tmp_path}/s.db",
                            search_space={k: v.model_dump() for k, v in SPACE.items()})  # fmt: skip
    src = tmp_path / "first.yaml"
    src.write_text(yaml.safe_dump(raw))
    cfg = load_study_file(src)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    for _, value, params in ROWS:
        study.enqueue_trial(params)
        study.tell(ask(study, cfg.search_space), value)
    dest, s = suggest(src, tmp_path / "narrow.yaml")
    text = dest.read_text()
    assert text.startswith("# Suggested by `hpo suggest")
    assert (
        "learning_rate: [1e-05, 0.01] -> [" in text and "per_device_train_batch_size: [8, 16, 32] -> [16, 32]" in text
    )
    new = load_study_file(dest)
    assert new.study.name == "first-suggested" and new.data == cfg.data and new.model == cfg.model
    for path, old in cfg.search_space.items():
        if isinstance(old, CategoricalSpec):
            assert set(new.search_space[path].choices) < set(old.choices)
        else:
            assert width(new.search_space[path]) < width(old)
    ws = plan(new, str(dest))  # the old best, enqueued; it fits the new ranges (plan checks)
    assert ws.configs[0][0] == {"learning_rate": 2e-3, "dropout": 0.10, "per_device_train_batch_size": 16, "n_layer": 4}
    assert yamlio.loads(text)["warm_start"] == {"configs": [s.best]}
    with pytest.raises(HpoError, match="exists; give another -o or --force"):
        suggest(src, dest)
