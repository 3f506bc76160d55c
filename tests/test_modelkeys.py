"""hpo.modelkeys reads a config class's keys from transformers' source: the same keys as importing it."""

from __future__ import annotations

import pytest

from hpo import modelkeys
from hpo.references import _valid_keys

TYPES = ["gpt2", "bert", "distilbert", "roberta", "llama", "qwen2", "mistral", "t5", "bart", "modernbert"]


@pytest.mark.parametrize("model_type", TYPES)
def test_source_keys_are_the_imported_class_keys(model_type: str) -> None:
    source = modelkeys._from_source(model_type)
    imported = modelkeys._from_import(model_type)
    assert source is not None and imported is not None
    assert source[0] == imported[0]
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):  # what the size checks read
        if key in source[1]:
            assert source[1][key] == imported[1][key]


def test_a_key_the_source_misses_is_confirmed_by_importing() -> None:
    # deepseek_v3 sets num_nextn_predict_layers outside its dataclass fields: the source read misses it,
    # and the check asks the imported class before calling it unknown.
    source = modelkeys.config_keys("deepseek_v3")
    assert source is not None and "num_nextn_predict_layers" not in source[0]
    found = _valid_keys("deepseek_v3", ["num_nextn_predict_layers"])
    assert found is not None and "num_nextn_predict_layers" in found[0]


def test_unknown_model_type_is_none_and_known_types_come_from_the_source() -> None:
    assert modelkeys.config_keys("gtp2") is None
    assert {"gpt2", "bert", "llama"} <= set(modelkeys.known_model_types())
