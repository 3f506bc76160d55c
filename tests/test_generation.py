"""Generation tasks (issue 10): metrics against the libraries called directly, completion-only loss masking,
target truncation, the pruning proxy kept apart from the objective, validation of bad input, and (slow) a
seq2seq study and a decode-only study run end to end."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sacrebleu
import torch
import yaml
from optuna.trial import TrialState
from rich.console import Console
from rouge_score import rouge_scorer
from typer.testing import CliRunner

import studies
from hpo.cli import app
from hpo.config import validate_study
from hpo.display import RunDisplay
from hpo.genstudy import pruning_value
from hpo.orchestrator import Orchestrator
from hpo.protocol import TrialResult
from hpo.storage import create_or_resume, open_storage
from hpo.worker import WorkerSpec
from trainers.config import RunConfig
from trainers.data import prepare
from trainers.textmetrics import GENERATION_METRICS, score, split_sentences

runner = CliRunner()

# ------------------------------------------------------------------------------------------------ metrics

PAIRS = [
    ("identical", ["the cat sat on the mat"], ["the cat sat on the mat"]),
    ("partial overlap, stemming", ["cats are running fast"], ["a cat runs fast"]),
    ("two sentences", ["Profits rose. Shares fell sharply."], ["Shares fell. Profits rose sharply."]),
    ("nothing shared", ["alpha beta"], ["gamma delta"]),
    ("empty prediction", [""], ["IBM frees 500 software patents"]),
    ("corpus of three", ["IBM frees patents", "Dollar gains", "Yukos buyer faces claim"],
     ["IBM frees 500 software patents", "Dollar gains on Greenspan speech", "Yukos unit buyer faces loan claim"]),
]  # fmt: skip


@pytest.mark.parametrize(("preds", "refs"), [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_metrics_equal_the_libraries_called_directly(preds: list[str], refs: list[str]) -> None:
    got = score(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        want = 100 * np.mean([scorer.score(r, p)[key].fmeasure for p, r in zip(preds, refs, strict=True)])
        assert got[key] == pytest.approx(want)
    # rougeLsum: one sentence per line, split here by hand
    lines = {"Profits rose. Shares fell sharply.": "Profits rose.\nShares fell sharply.",
             "Shares fell. Profits rose sharply.": "Shares fell.\nProfits rose sharply."}  # fmt: skip
    want_lsum = 100 * np.mean(
        [scorer.score(lines.get(r, r), lines.get(p, p))["rougeLsum"].fmeasure for p, r in zip(preds, refs, strict=True)]
    )
    assert got["rougeLsum"] == pytest.approx(want_lsum)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert got["exact_match"] == pytest.approx(100 * np.mean([p == r for p, r in zip(preds, refs, strict=True)]))
    assert set(got) == set(GENERATION_METRICS)


def test_known_values() -> None:
    assert score(["the cat sat on the mat"], ["the cat sat on the mat"])["rougeL"] == pytest.approx(100.0)
    assert score(["alpha beta"], ["gamma delta"])["rouge1"] == 0.0
    assert score(["a  b "], ["a b"])["exact_match"] == 100.0  # whitespace normalised
    # rougeLsum differs from rougeL once sentence order differs: the split is what Lsum reads
    two = score(["Profits rose. Shares fell sharply."], ["Shares fell. Profits rose sharply."])
    assert two["rougeLsum"] > two["rougeL"]


def test_sentence_split_needs_no_download() -> None:
    assert split_sentences("One. Two!  Three? four") == "One.\nTwo!\nThree? four".replace("? ", "?\n")


# ----------------------------------------------------------------------------------------- data / masking


def write_pairs(path: Path, n: int, long_every: int = 0) -> Path:
    rows = []
    for i in range(n):
        words = ["alpha", "beta", "gamma", "delta", "omega"]
        src = " ".join(words[(i + k) % 5] for k in range(6)) + f" item {i}"
        tgt = f"{words[i % 5]} {words[(i + 1) % 5]}"
        if long_every and i % long_every == 0:
            tgt = " ".join([tgt] * 12)  # far beyond max_target_length
        rows.append({"article": src, "title": tgt})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def gen_run(task: str, data_file: Path, tokenizer: dict[str, Any] | None = None, **data: Any) -> RunConfig:
    model: dict[str, Any]
    if task == "seq2seq":
        model = {"from_config": {"model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 1,
                                 "num_decoder_layers": 1, "num_heads": 2, "d_kv": 16},
                 "tokenizer": {"train_vocab_size": 300}}  # fmt: skip
        cols = {"source_column": "article", "target_column": "title"}
    else:
        model = {"from_config": {**studies.TINY_GPT2, "n_positions": 64}, "tokenizer": {"train_vocab_size": 300}}
        cols = {"prompt_column": "article", "target_column": "title", "source_suffix": " =>"}
    if tokenizer is not None:
        model["tokenizer"] = tokenizer
    return RunConfig.model_validate(
        {
            "task": task,
            "model": model,
            "data": {"files": {"train": str(data_file)}, "max_length": 48, "max_target_length": 8, **cols, **data},
            "training": {"max_steps": 4, "eval_steps": 2, "per_device_train_batch_size": 4},
            "generation": {"eval_samples": 4, "max_new_tokens": 4, "examples": 2},
        }
    )


def test_completion_only_loss_masks_the_prompt(tmp_path: Path) -> None:
    from trainers import generation
    from trainers.models import build_model

    run = gen_run("causal_lm", write_pairs(tmp_path / "d.jsonl", 40))
    data = prepare(run, tmp_path / "cache")
    plens = np.load(data.path / "train_prompt_lengths.npy")
    for row in range(len(data.train_ids)):
        labels, ids, n = data.train_labels[row], data.train_ids[row], int(data.train_lengths[row])
        p = int(plens[row])
        assert (labels[:p] == -100).all()  # the prompt is context only
        assert (labels[p:n] == ids[p:n]).all()  # the completion (and its EOS) is the target
        assert labels[n - 1] == data.eos_id
        assert (labels[n:] == -100).all()  # padding
    torch.manual_seed(0)
    model = build_model(run, data).eval()  # no dropout: the two losses see the same network
    batch = generation.to_batch(data, "train", np.arange(4), torch.device("cpu"))
    loss = float(model(**batch).loss.detach())
    # the same loss by hand: cross-entropy over completion tokens only
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    keep = target != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    assert loss == pytest.approx(float(manual), rel=1e-5)
    everything = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1)
    )
    assert abs(loss - float(everything)) > 1e-3  # not the plain LM loss over prompt tokens too


@pytest.mark.parametrize("task", ["seq2seq", "causal_lm"])
def test_long_targets_are_truncated_and_counted(tmp_path: Path, task: str) -> None:
    run = gen_run(task, write_pairs(tmp_path / "d.jsonl", 40, long_every=4))
    data = prepare(run, tmp_path / "cache")
    meta = json.loads((data.path / "meta.json").read_text())
    assert sum(meta["targets_truncated"].values()) == 10  # rows 0, 4, ..., 36
    n_target = ((data.train_labels != -100).sum(1)).max()
    assert n_target <= 8  # max_target_length, EOS included


@pytest.mark.parametrize("task", ["seq2seq", "causal_lm"])
def test_a_generation_run_records_every_metric_and_examples(tmp_path: Path, task: str) -> None:
    from trainers.base import NullReporter
    from trainers.loop import train

    run = gen_run(task, write_pairs(tmp_path / "d.jsonl", 40, long_every=4))
    result = train(run, NullReporter(), tmp_path / "cache")
    assert set(GENERATION_METRICS) | {"eval_loss", "perplexity", "generate_time", "generated"} <= set(result.metrics)
    assert result.metrics["generated"] == 4.0 and result.metrics["targets_truncated"] > 0
    assert [s for s, _ in result.evals] == [2, 4]
    assert "rougeL" not in result.evals[0][1]  # decoded at the final eval only
    assert result.examples is not None and len(result.examples) == 2
    assert set(result.examples[0]) == {"source", "reference", "prediction"}


# ----------------------------------------------------------------------------------------- pruning proxy

PROXY = [
    ("generation objective, maximised: -eval_loss", "rougeL", "maximize", {"eval_loss": 2.5}, ("-eval_loss", -2.5)),
    ("final eval: still the proxy", "rougeL", "maximize", {"eval_loss": 2.0, "rougeL": 31.0}, ("-eval_loss", -2.0)),
    ("no loss: nothing reported", "bleu", "maximize", {"rougeL": 31.0}, None),
    ("other objectives report themselves", "perplexity", "minimize", {"eval_loss": 2.0, "perplexity": 7.4},
     ("perplexity", 7.4)),
]  # fmt: skip


@pytest.mark.parametrize(("metric", "direction", "metrics", "want"), [p[1:] for p in PROXY], ids=[p[0] for p in PROXY])
def test_pruning_value(metric: str, direction: str, metrics: dict[str, float], want: Any) -> None:
    assert pruning_value(metric, direction, metrics) == want


class GenCurveRunner:
    """A trainer double for a generation study: eval loss falls with steps (worse with a bad learning rate);
    the final eval adds a ROUGE-L that is better where the loss is lower."""

    def setup(self, spec: Any) -> None:
        pass

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        lr = float(run["training"]["learning_rate"])
        steps, every = int(run["training"]["max_steps"]), int(run["training"]["eval_steps"])
        metrics: dict[str, float] = {}
        done, stopped = 0, None
        for step in range(1, steps + 1):
            stopped = reporter.stop_reason()
            if stopped is not None:
                break
            done = step
            if step % every == 0:
                loss = 1.0 + (math.log10(lr) + 3.0) ** 2 + 5.0 / step
                metrics = {"eval_loss": loss, "perplexity": math.exp(loss)}
                if step == steps:
                    metrics["rougeL"] = 100.0 / loss
                reporter.on_eval(step, metrics)
        return TrialResult(metrics=metrics, steps=done, train_time=0.0, eval_time=0.0, setup_time=0.0,
                           tokens_per_s=0.0, precision="no", stopped=stopped or reporter.stop_reason())  # fmt: skip


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_the_pruner_sees_one_quantity_in_the_objectives_direction(tmp_path: Path) -> None:
    d = studies.curve("gen", n_trials=10, storage=f"sqlite:///{tmp_path}/s.db")
    d.update(task="seq2seq", objective={"metric": "rougeL"}, pruner={"name": "median", "n_startup_trials": 2})
    d["model"] = {"from_config": {"model_type": "t5"}, "tokenizer": {"train_vocab_size": 256}}
    d["data"] = {"files": {"train": str(write_pairs(tmp_path / "d.jsonl", 10))}}
    d["resources"] = {"workers": 1}
    cfg = validate_study(d)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
    orch = Orchestrator(cfg, study, [WorkerSpec(0, 1, {}, "cpu")], GenCurveRunner(), display)
    try:
        orch.run()
    finally:
        orch.close()
    trials = study.get_trials(deepcopy=False)
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        lr = t.params["learning_rate"]
        for step, v in t.intermediate_values.items():  # every value a pruner compares: -eval_loss at that step
            assert v == pytest.approx(-(1.0 + (math.log10(lr) + 3.0) ** 2 + 5.0 / step))
        if t.state == TrialState.COMPLETE:
            assert 20 in t.intermediate_values  # the final eval reports the proxy too, never the ROUGE
            assert t.value == pytest.approx(100.0 / -t.intermediate_values[20])  # the objective: ROUGE-L
        else:
            assert "-eval_loss" in t.user_attrs["reason"]
    best = study.best_trial
    assert best.value == max(t.value for t in trials if t.state == TrialState.COMPLETE)


# ------------------------------------------------------------------------------------ dashboard and report


def test_examples_in_the_note_and_the_report_best_first_and_no_proxy_on_the_objective_axis() -> None:
    from dashboards import data as D
    from dashboards import report as R
    from dashboards.notes import trial_note
    from hpo.record import TrialRecord
    from hpo.storage import ATTR_CONFIG

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ATTR_CONFIG, {"task": "seq2seq", "objective": {"metric": "rougeL"}})
    for value, pred in ((12.0, "worse headline"), (30.0, "better headline")):
        t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        t.report(-3.0, 10)
        t.set_user_attr("metrics", {"rougeL": value, "bleu": 1.0})
        t.set_user_attr("examples", [{"source": "an article | with a pipe", "reference": "the headline",
                                      "prediction": pred}])  # fmt: skip
        study.tell(t, value)
    pruned = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    pruned.report(-9.0, 10)
    study.tell(pruned, state=TrialState.PRUNED)
    sd = D.collect(study, importances=False)
    assert [t.value for t in sd.trials] == [12.0, 30.0, None]  # -eval_loss is not a ROUGE-L
    html = R.examples_table(sd)
    assert html.index("better headline") < html.index("worse headline")  # best trial first
    note = trial_note(TrialRecord.from_trial(study.trials[1]), "rougeL")
    assert "| an article \\| with a pipe | the headline | better headline |" in note


# ------------------------------------------------------------------------------------------- bad input


def seq2seq_study(tmp_path: Path) -> dict[str, Any]:
    d = studies.curve("gen", n_trials=2)
    d.update(task="seq2seq", objective={"metric": "rougeL"}, fidelity={"max_steps": 4, "eval_every": 2})
    d["model"] = {"from_config": {"model_type": "t5", "d_model": 32, "num_layers": 1, "num_heads": 2, "d_kv": 16},
                  "tokenizer": {"train_vocab_size": 300}}  # fmt: skip
    d["data"] = {"files": {"train": str(write_pairs(tmp_path / "data" / "d.jsonl", 20))},
                 "source_column": "article", "target_column": "title"}  # fmt: skip
    saved = tmp_path / "t5"  # a trained model's folder, as far as validation reads it
    saved.mkdir(exist_ok=True)
    (saved / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    (saved / "tokenizer.json").write_text("{}")
    return d


def _set(path: str, value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        keys = path.split(".")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value

    return mutate


def _many(*ms: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        for m in ms:
            m(d)

    return mutate


BAD = [
    ("missing source column", _set("data.source_column", "body"), "data.source_column",
     ["no column 'body'", "article, title"]),
    ("missing target column", _set("data.target_column", "headline"), "data.target_column", ["no column 'headline'"]),
    ("decoder-only model for seq2seq", _set("model.from_config", {"model_type": "gpt2", "n_layer": 1}),
     "model.from_config.model_type", ["'gpt2' is a decoder-only model", "encoder-decoder"]),
    ("encoder-decoder for causal_lm", _many(_set("task", "causal_lm"), _set("data.source_column", None),
                                           _set("data.prompt_column", "article")),
     "model.from_config.model_type", ["'t5' is an encoder-decoder"]),
    ("accuracy for seq2seq", _set("objective.metric", "accuracy"), "objective.metric",
     ["'accuracy' is not reported by task 'seq2seq'"]),
    ("rougeL for classification", _many(_set("task", "sequence_classification"), _set("data.source_column", None),
                                        _set("data.target_column", None)),
     "objective.metric", ["'rougeL' is not reported by task 'sequence_classification'"]),
    ("rougeL for plain causal_lm", _many(_set("task", "causal_lm"), _set("data.source_column", None),
                                         _set("data.target_column", None)),
     "objective.metric", ["needs generated text", "data.prompt_column"]),
    ("num_beams < 1", _set("generation.num_beams", 0), "generation.num_beams", ["greater than or equal to 1"]),
    ("num_beams < 1 searched", _set("search_space", {"generation.num_beams": {"type": "int", "low": 0, "high": 2}}),
     "search_space[generation.num_beams]", ["value 0 is not valid"]),
    ("generation section on classification", _many(
        _set("task", "sequence_classification"), _set("objective.metric", "accuracy"),
        _set("data.source_column", None), _set("data.target_column", None), _set("generation.num_beams", 2)),
     "generation", ["only applies to generation tasks"]),
    ("decode-only from scratch", _many(_set("fidelity.max_steps", 0), _set("search_space", {
        "generation.num_beams": {"type": "int", "low": 1, "high": 2}})),
     "model.from_config", ["decodes a trained model"]),
    ("decode-only searching training", _many(_set("fidelity.max_steps", 0), _set("model", {"name_or_path": "./t5"})),
     "search_space[training.learning_rate]",
     ["trains nothing"]),
    ("threshold pruner on a proxy", _set("pruner", {"name": "threshold", "lower": 10.0}), "pruner",
     ["pruning proxy"]),
    ("at_steps not an eval step", _set("generation.at_steps", [2, 3]), "generation.at_steps",
     ["3: not an eval step", "eval_every=2"]),
    ("at_steps after the end", _set("generation.at_steps", [6]), "generation.at_steps",
     ["6: after the trials end", "max_steps=4"]),
    ("at_steps in a samples budget", _many(_set("fidelity", {"max_samples": 64, "eval_every": 16}),
                                           _set("generation.at_steps", [16])),
     "generation.at_steps", ["names optimizer steps", "samples"]),
    ("at_steps below 1", _set("generation.at_steps", [0]), "generation.at_steps[0]", ["greater than or equal to 1"]),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "key", "hints"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_generation_input_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutate: Any, key: str, hints: list[str]
) -> None:
    d = seq2seq_study(tmp_path)
    mutate(d)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HPO_CACHE_DIR", str(cwd / "cache"))
    before = {str(p) for p in tmp_path.rglob("*")}
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: {key}: "), result.output
    for hint in hints:
        assert hint in lines[0], result.output
    assert {str(p) for p in tmp_path.rglob("*")} == before


def test_the_base_generation_study_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(seq2seq_study(tmp_path), sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_generation_keys_enter_the_fingerprint_and_other_studies_keep_theirs(tmp_path: Path) -> None:
    d = seq2seq_study(tmp_path)
    a = validate_study(d).fingerprint()
    d["generation"] = {"num_beams": 2}
    assert validate_study(d).fingerprint() != a
    plain = studies.curve("plain")
    assert "generation" not in validate_study(plain).fingerprints()
    assert "source_column" not in validate_study(plain).base_run().model_dump()["data"]


# ------------------------------------------------------------------------------------------------- slow


def _saved_t5(folder: Path, tmp_path: Path) -> None:
    """A tiny T5 trained for a few steps and saved with its tokenizer (what `hpo train` leaves)."""
    from trainers.base import NullReporter
    from trainers.loop import train

    run = gen_run("seq2seq", write_pairs(tmp_path / "train.jsonl", 40))
    result = train(run, NullReporter(), tmp_path / "cache0")
    result.model.save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(prepare(run, tmp_path / "cache0").tokenizer_dir)).save_pretrained(folder)


@pytest.mark.slow
def test_decode_only_study_searches_decoding_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "trained"
    _saved_t5(model_dir, tmp_path)
    d = seq2seq_study(tmp_path)
    d["model"] = {"name_or_path": str(model_dir)}
    d["fidelity"] = {"max_steps": 0, "eval_every": 1}
    d["study"]["n_trials"] = 3
    d["generation"] = {"eval_samples": 4, "max_new_tokens": 4, "examples": 1}
    d["search_space"] = {"generation.num_beams": {"type": "int", "low": 1, "high": 3},
                         "generation.no_repeat_ngram_size": {"type": "int", "low": 0, "high": 2}}  # fmt: skip
    d["resources"] = {"workers": 1}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="gen", storage=f"sqlite:///{tmp_path}/runs/gen.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.user_attrs["steps"] == 0 and t.user_attrs["train_time"] == 0.0  # nothing trained
        assert set(GENERATION_METRICS) <= set(t.user_attrs["metrics"])
        assert t.value == t.user_attrs["metrics"]["rougeL"]
        assert len(t.user_attrs["examples"]) == 1
    # the same trained weights: the loss is the same in every trial, only decoding differs
    assert len({round(t.user_attrs["metrics"]["eval_loss"], 6) for t in trials}) == 1


@pytest.mark.slow
def test_seq2seq_study_runs_exports_and_trains_with_its_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig, Seq2SeqTrainingArguments

    d = seq2seq_study(tmp_path)
    d["generation"] = {"eval_samples": 4, "max_new_tokens": 4, "examples": 2}
    d["search_space"]["generation.num_beams"] = {"type": "int", "low": 1, "high": 3}
    d["training"] = {"per_device_train_batch_size": 4}
    d["resources"] = {"workers": 1}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="gen", storage=f"sqlite:///{tmp_path}/runs/gen.db")
    for t in study.get_trials(deepcopy=False):
        assert t.state == TrialState.COMPLETE
        assert set(GENERATION_METRICS) | {"generate_time", "eval_loss"} <= set(t.user_attrs["metrics"])
        assert len(t.user_attrs["examples"]) == 2
        assert all(v < 0 for v in t.intermediate_values.values())  # -eval_loss: the proxy, maximised
    result = runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "best")])
    assert result.exit_code == 0, result.output
    best = study.best_trial
    args = Seq2SeqTrainingArguments(**json.loads((tmp_path / "best" / "training_args.json").read_text()))
    assert args.predict_with_generate and args.generation_num_beams == best.params["num_beams"]
    assert args.generation_max_length == 5
    gen = GenerationConfig.from_pretrained(tmp_path / "best")
    assert gen.num_beams == best.params["num_beams"] and gen.max_new_tokens == 4
    result = runner.invoke(app, ["train", str(tmp_path / "best" / "train.yaml")])
    assert result.exit_code == 0, result.output
    assert "rougeL" in result.output
    metrics = json.loads((tmp_path / "best" / "model" / "metrics.json").read_text())
    assert set(GENERATION_METRICS) <= set(metrics["metrics"]) and metrics["examples"]
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "best" / "model")
    assert model.generation_config.num_beams == best.params["num_beams"]  # the searched decoding goes along


# ------------------------------------------------------------------------------------------- benchmarks


def test_proxy_correlation_of_the_benchmark_matches_scipy() -> None:
    import sys

    from scipy.stats import spearmanr

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gen_proxy

    rng = np.random.default_rng(0)
    finals = rng.normal(size=9)
    trials = [({10: float(-f + rng.normal() * 0.5), 20: float(round(-f, 0))}, float(f)) for f in finals]
    rows = gen_proxy.proxy_correlation(trials, boot=50)
    assert [r["step"] for r in rows] == [10, 20]
    for r in rows:
        x = [iv[r["step"]] for iv, _ in trials]
        assert r["spearman"] == pytest.approx(spearmanr(x, finals).statistic)  # ties at step 20 too
        lo, hi = r["ci90"]
        assert lo <= hi


@pytest.mark.slow
def test_the_benchmarks_quick_modes_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for script in ("gen_proxy.py", "tuned_vs_untuned.py"):
        out = tmp_path / f"{script}.json"
        cmd = [sys.executable, str(root / "benchmarks" / script), "--quick", "--json", str(out)]
        if script == "tuned_vs_untuned.py":
            cmd.insert(2, str(root / "studies" / "bbc-headlines-t5.yaml"))
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        result = json.loads(out.read_text())
        assert result["machine"]
        if script == "gen_proxy.py":
            assert [r["step"] for r in result["correlation"]] == [10, 20]
        else:
            assert "rougeL" in result["studies"][0]["metrics"]


@pytest.mark.slow
def test_prompt_completion_learns_a_copy_task_end_to_end(tmp_path: Path) -> None:
    """Masking, left-padded prompts and decoding fit together: a tiny GPT-2 learns to write the first two
    words of its prompt, and ROUGE-L says so (an untrained model scores near 0)."""
    import random

    from trainers.base import NullReporter
    from trainers.loop import train

    rng = random.Random(0)
    words = "apple river stone cloud music paper garden window silver rocket tiger forest bread candle".split()
    rows = []
    for _ in range(600):
        src = rng.sample(words, 6)
        rows.append({"s": " ".join(src), "t": " ".join(src[:2])})
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunConfig.model_validate(
        {
            "task": "causal_lm",
            "model": {
                "from_config": {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 64},
                "tokenizer": {"train_vocab_size": 300},
            },
            "data": {
                "files": {"train": str(tmp_path / "p.jsonl")},
                "prompt_column": "s",
                "target_column": "t",
                "source_suffix": " =>",
                "max_length": 48,
                "max_target_length": 12,
            },
            "training": {"max_steps": 300, "eval_steps": 150, "per_device_train_batch_size": 16, "learning_rate": 3e-3},
            "generation": {"eval_samples": 32, "max_new_tokens": 12},
        }
    )
    result = train(run, NullReporter(), tmp_path / "cache")
    assert result.metrics["rougeL"] > 80.0, result.examples
    assert result.metrics["targets_truncated"] == 0.0


def test_an_empty_reference_is_named_with_its_file_and_row(tmp_path: Path) -> None:
    from trainers.base import ConfigError

    path = write_pairs(tmp_path / "d.jsonl", 12)
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({"article": "some text here", "title": "  "})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        prepare(gen_run("seq2seq", path), tmp_path / "cache")
    assert info.value.key == "data.target_column"
    assert "d.jsonl data row 7" in info.value.message and "'title' cell is empty" in info.value.message


# ---------------------------------------------------------------------------------- pretrained tokenizers


def _bpe(texts: list[str], specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return bpe


def _no_pad_tokenizer(folder: Path, data_file: Path) -> Path:
    """A pretrained-style tokenizer saved locally with an EOS token and no pad token (as GPT-2's ships)."""
    from transformers import PreTrainedTokenizerFast

    texts = [v for line in data_file.read_text().splitlines() for v in json.loads(line).values()]
    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(texts, ["<|endoftext|>"]), eos_token="<|endoftext|>")
    assert tok.pad_token is None
    tok.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("task", ["seq2seq", "causal_lm"])
def test_a_tokenizer_without_pad_gets_eos_and_the_run_says_so(tmp_path: Path, task: str) -> None:
    data_file = write_pairs(tmp_path / "d.jsonl", 20)
    tok_dir = _no_pad_tokenizer(tmp_path / "tok", data_file)
    run = gen_run(task, data_file, tokenizer={"name_or_path": str(tok_dir)})
    data = prepare(run, tmp_path / "cache")
    assert data.pad_id == data.eos_id
    assert data.tokenizer_note is not None
    assert "no pad token" in data.tokenizer_note and "'<|endoftext|>'" in data.tokenizer_note
    assert data.tokenizer_note.startswith("model.tokenizer.name_or_path: ")
    assert prepare(run, tmp_path / "cache").tokenizer_note == data.tokenizer_note  # loaded back from the cache
    trained = prepare(gen_run(task, data_file), tmp_path / "cache")  # its own pad token: nothing to say
    assert trained.tokenizer_note is None


class NoteRunner(GenCurveRunner):
    """The generation double, with the note a worker's data carries when hpo set the pad token."""

    NOTE = "model.name_or_path: 'x' has no pad token; its EOS token '</s>' pads (masked, never learnt)"

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        return dataclasses.replace(super().__call__(run, reporter), tokenizer_note=self.NOTE)


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_the_pad_token_notice_is_shown_once_per_study(tmp_path: Path) -> None:
    import warnings

    from hpo.errors import HpoWarning

    d = studies.curve("gen", n_trials=3, storage=f"sqlite:///{tmp_path}/s.db")
    d.update(task="seq2seq", objective={"metric": "rougeL"})
    d["model"] = {"from_config": {"model_type": "t5"}, "tokenizer": {"train_vocab_size": 256}}
    d["data"] = {"files": {"train": str(write_pairs(tmp_path / "d.jsonl", 10))}}
    d["resources"] = {"workers": 1}
    seen: list[str] = []
    for n_trials in (3, 5):  # a first run, then the study resumed for more trials
        d["study"]["n_trials"] = n_trials
        cfg = validate_study(d)
        study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
        display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
        orch = Orchestrator(cfg, study, [WorkerSpec(0, 1, {}, "cpu")], NoteRunner(), display)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                orch.run()
            finally:
                orch.close()
        seen += [str(w.message) for w in caught if issubclass(w.category, HpoWarning)]
        assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * n_trials
    assert seen == [NoteRunner.NOTE]  # once for the study: not per trial, not again on resume
    assert study.user_attrs["tokenizer_note"] == NoteRunner.NOTE


@pytest.mark.slow
def test_hpo_train_says_it_set_the_pad_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_file = write_pairs(tmp_path / "d.jsonl", 20)
    tok_dir = _no_pad_tokenizer(tmp_path / "tok", data_file)
    run = gen_run("seq2seq", data_file, tokenizer={"name_or_path": str(tok_dir)})
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["train", str(config), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    notices = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert notices == [f"warning: model.tokenizer.name_or_path: {str(tok_dir)!r} has no pad token; "
                       "its EOS token '<|endoftext|>' pads (masked, never learnt)"]  # fmt: skip
    assert "rougeL" in result.output


def _styled_tokenizer(folder: Path, data_file: Path, style: str) -> Path:
    """A tokenizer saved locally that adds its special tokens as a known family does (no hub)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    texts = [v for line in data_file.read_text().splitlines() for v in json.loads(line).values()]
    bpe = _bpe(texts, ["<s>", "<pad>", "</s>", "<unk>"])  # ids 0 1 2 3, as BART's
    templates = {"bart": "<s> $A </s>", "t5": "$A </s>", "llama": "<s> $A", "plain": "$A"}
    specials = [("<s>", 0), ("</s>", 2)]
    bpe.post_processor = processors.TemplateProcessing(single=templates[style], special_tokens=specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")  # fmt: skip
    tok.save_pretrained(str(folder))
    return folder


BOS, EOS = 0, 2
STYLES = [  # style, task: first and last token of the source (prompt) row, first and last of the target
    ("bart", "seq2seq", (BOS, EOS), (BOS, EOS)),
    ("t5", "seq2seq", (None, EOS), (None, EOS)),  # EOS once: the tokenizer's own, not a second one
    ("plain", "seq2seq", (None, EOS), (None, EOS)),  # a tokenizer that adds nothing: EOS still closes both
    ("llama", "causal_lm", (BOS, None), (None, EOS)),  # the prompt opens with BOS, the completion ends with EOS
]


@pytest.mark.parametrize(("style", "task", "source", "target"), [s[:4] for s in STYLES], ids=[s[0] for s in STYLES])
def test_pretrained_tokenizers_add_their_own_special_tokens(
    tmp_path: Path, style: str, task: str, source: tuple[int | None, int | None], target: tuple[int | None, int]
) -> None:
    data_file = write_pairs(tmp_path / "d.jsonl", 20)
    tok_dir = _styled_tokenizer(tmp_path / "tok", data_file, style)
    run = gen_run(task, data_file, tokenizer={"name_or_path": str(tok_dir)})
    data = prepare(run, tmp_path / "cache")
    assert data.eos_id == EOS and data.pad_id == 1
    lengths = data.train_lengths
    assert lengths is not None and data.train_labels is not None
    plens = np.load(data.path / "train_prompt_lengths.npy") if task == "causal_lm" else lengths
    specials = {BOS, EOS}
    for row, ids in enumerate(data.train_ids):
        src = [int(x) for x in ids[: int(plens[row])]]
        labels = [int(x) for x in data.train_labels[row] if x != -100]
        body = src[1 if source[0] is not None else 0 : -1 if source[1] is not None else None]
        assert not specials & set(body), (src, body)  # the specials only where the tokenizer puts them
        if source[0] is not None:
            assert src[0] == source[0]
        if source[1] is not None:
            assert src[-1] == source[1]
        assert labels[-1] == target[1] and EOS not in labels[:-1]  # EOS once, at the end
        assert (labels[0] == BOS) == (target[0] == BOS) and BOS not in labels[1:]


@pytest.mark.slow
def test_a_tiny_bart_from_config_trains_and_decodes_with_a_bart_tokenizer(tmp_path: Path) -> None:
    from trainers.base import NullReporter
    from trainers.loop import train

    data_file = write_pairs(tmp_path / "d.jsonl", 40)
    tok_dir = _styled_tokenizer(tmp_path / "tok", data_file, "bart")
    run = gen_run("seq2seq", data_file, tokenizer={"name_or_path": str(tok_dir)})
    bart = {
        "model_type": "bart",
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
    }
    run = run.model_copy(update={"model": run.model.model_copy(update={"from_config": bart})})  # fmt: skip
    data = prepare(run, tmp_path / "cache")
    assert data.train_ids[0][0] == BOS and data.train_labels is not None and data.train_labels[0][0] == BOS
    result = train(run, NullReporter(), tmp_path / "cache")
    assert set(GENERATION_METRICS) <= set(result.metrics) and result.metrics["generated"] == 4.0
    assert result.examples is not None
    assert all("<s>" not in e["prediction"] and "</s>" not in e["prediction"] for e in result.examples)


def test_pairs_of_pretrained_tokenizers_enter_the_fingerprint_and_trained_ones_keep_theirs(tmp_path: Path) -> None:
    from hpo.config import _digest
    from trainers.data import CACHE_VERSION

    d = seq2seq_study(tmp_path)
    cfg = validate_study(d)
    before = _digest({**cfg.data.model_dump(), "cache_version": CACHE_VERSION})  # as it was before pairs v2
    assert cfg.fingerprints()["data"] == before  # a tokenizer trained here: the same tokens as before
    d["model"] = {"name_or_path": str(tmp_path / "t5")}
    assert validate_study(d).fingerprints()["data"] != before  # a pretrained one: its specials are new


# --------------------------------------------------------------------------------- generation.at_steps


def test_at_steps_decode_at_those_evals_and_keep_the_final_examples(tmp_path: Path) -> None:
    from trainers.base import NullReporter
    from trainers.loop import train

    data_file = write_pairs(tmp_path / "d.jsonl", 40)
    base = gen_run("seq2seq", data_file)
    run = base.model_copy(update={"generation": base.generation.model_copy(update={"at_steps": [2]})})  # type: ignore[union-attr]
    result = train(run, NullReporter(), tmp_path / "cache")
    assert [s for s, _ in result.evals] == [2, 4]
    for _, metrics in result.evals:  # both evals decoded and scored: every metric at step 2 too
        assert set(GENERATION_METRICS) | {"generate_time", "generated"} <= set(metrics)
    plain = train(base, NullReporter(), tmp_path / "cache")  # the same run without at_steps
    assert "rougeL" not in plain.evals[0][1]
    # decoding at step 2 forks the RNG: training goes on exactly as without it
    assert result.evals[1][1]["eval_loss"] == plain.evals[1][1]["eval_loss"]
    assert result.metrics["rougeL"] == plain.metrics["rougeL"] and result.examples == plain.examples


class AtStepsRunner(GenCurveRunner):
    """The generation double, decoding (a ROUGE-L in the eval's metrics) at generation.at_steps as well."""

    def __call__(self, run: dict[str, Any], reporter: Any) -> TrialResult:
        at = set(run["generation"]["at_steps"])

        class Decoding:
            def __getattr__(self, name: str) -> Any:
                return getattr(reporter, name)

            def on_eval(self, step: int, metrics: dict[str, float]) -> None:
                extra = {"rougeL": 100.0 / metrics["eval_loss"]} if step in at else {}
                reporter.on_eval(step, {**metrics, **extra})

        return super().__call__(run, Decoding())


@pytest.mark.slow  # a few seconds of real processes: CI's slow run (make test stays ~2 min)
def test_at_steps_are_recorded_in_the_curves_and_the_pruner_keeps_the_proxy(tmp_path: Path) -> None:
    from hpo.curves import CurveStore, read_curves

    url = f"sqlite:///{tmp_path}/s.db"
    d = studies.curve("gen", n_trials=4, storage=url)
    d.update(task="seq2seq", objective={"metric": "rougeL"}, pruner={"name": "median", "n_startup_trials": 1})
    d["model"] = {"from_config": {"model_type": "t5"}, "tokenizer": {"train_vocab_size": 256}}
    d["data"] = {"files": {"train": str(write_pairs(tmp_path / "d.jsonl", 10))}}
    d["generation"] = {"at_steps": [10]}
    d["resources"] = {"workers": 1}
    cfg = validate_study(d)
    assert cfg.fingerprint() == validate_study({**d, "generation": {}}).fingerprint()  # recorded, not a result
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    display = RunDisplay(console=Console(file=io.StringIO(), width=200), live=False)
    orch = Orchestrator(
        cfg, study, [WorkerSpec(0, 1, {}, "cpu")], AtStepsRunner(), display, curves=CurveStore(url, "gen")
    )
    try:
        orch.run()
    finally:
        orch.close()
    points = read_curves(url, "gen")
    reached = 0
    for t in study.get_trials(deepcopy=False):
        rouge = {p.step: p.value for p in points if p.trial_number == t.number and p.name == "rougeL"}
        loss = {p.step: p.value for p in points if p.trial_number == t.number and p.name == "eval_loss"}
        if 10 in t.intermediate_values:  # the trial reported step 10: its ROUGE-L there is in the curves
            assert rouge[10] == pytest.approx(100.0 / loss[10])
            assert t.intermediate_values[10] == pytest.approx(-loss[10])  # the pruner saw the proxy
            reached += 1
        assert set(rouge) <= {10, 20}
    assert reached >= 2


@pytest.mark.slow
def test_a_two_rank_trial_decodes_the_whole_subset_and_reports_every_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resources.gpus_per_trial > 1 (2 CPU ranks, gloo): every rank holds the same weights (DDP) and decodes
    the same fixed subset with the same seed, outside the DDP wrapper (no collective to wait on), so rank 0's
    scores are the model's; nothing hangs and nothing is split or counted twice."""
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")
    d = seq2seq_study(tmp_path)
    d["study"]["n_trials"] = 1
    d["generation"] = {"eval_samples": 4, "max_new_tokens": 4, "examples": 2}
    d["training"] = {"per_device_train_batch_size": 4}
    d["resources"] = {"gpus_per_trial": 2, "devices": "cpu"}
    d["data"]["eval_fraction"] = 0.3  # 6 eval rows: the 4 decoded are a subset, not all there is
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    (t,) = optuna.load_study(study_name="gen", storage=f"sqlite:///{tmp_path}/runs/gen.db").get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["rank_steps"] == [4, 4]
    assert set(GENERATION_METRICS) | {"generate_time", "eval_loss"} <= set(t.user_attrs["metrics"])
    assert t.user_attrs["metrics"]["generated"] == 4.0  # the whole subset, not a rank's share
    assert t.value == t.user_attrs["metrics"]["rougeL"] and len(t.user_attrs["examples"]) == 2
