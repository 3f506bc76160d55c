"""benchmarks/model_choice.py: the three studies differ only in how the model is chosen, and the oracle is the
better fixed model of each seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hpo.config import validate_study

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # model_choice imports distillation as a sibling, as when run as a script
spec = importlib.util.spec_from_file_location("model_choice", BENCH / "model_choice.py")
assert spec and spec.loader
model_choice = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_choice)


def test_the_fixed_model_studies_search_the_rest_of_the_space() -> None:
    search, narrow, wide = (model_choice.study(k) for k in model_choice.KINDS)
    assert "model.preset" in search["search_space"] and "models" in search
    assert narrow["model"]["from_config"] == search["models"]["narrow"]["from_config"]
    assert wide["model"]["from_config"] == search["models"]["wide"]["from_config"]
    assert set(narrow["search_space"]) == {"training.learning_rate", "training.per_device_train_batch_size"}
    assert wide["search_space"]["model.config.n_layer"] == {"type": "int", "low": 1, "high": 2}  # no `when`
    for data in (search, narrow, wide):
        validate_study(data)


def test_the_oracle_is_the_better_fixed_model_per_seed() -> None:
    best = {("search", 0): 300.0, ("narrow", 0): 320.0, ("wide", 0): 290.0,
            ("search", 1): 310.0, ("narrow", 1): 305.0, ("wide", 1): 330.0}  # fmt: skip
    rows = [{"kind": k, "seed": s, "best": v} for (k, s), v in best.items()]
    out = model_choice.summarise(rows)
    assert out["oracle"]["per_seed"] == [290.0, 305.0]
    assert out["search_minus_oracle"]["per_seed"] == [10.0, 5.0]
    assert out["search"]["median"] == pytest.approx(305.0)
