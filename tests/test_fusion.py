"""Model fusion and compression: `fidelity.save_models`, `hpo ensemble` (prediction ensembles, soups), `hpo
compress`, and their bad input. Fast tests use tiny from-config models built in-process; the end-to-end run
of a study with saved models is marked slow.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner

import studies
from hpo.cli import app
from hpo.compress import Variant, _choose, compress, parse_drop
from hpo.compress import load as load_compressed
from hpo.config import validate_study
from hpo.ensemble import Ensemble, caruana, combine, metrics_of
from hpo.errors import HpoError
from hpo.saved_models import A_MODEL_DIR, MARK, ModelKeeper, SaveSpec, save_trial_model, saved_models
from hpo.soup import average, greedy_soup, incompatibility, uniform_soup
from hpo.storage import create_or_resume, open_storage

runner = CliRunner()


def tiny_bert(seed: int, labels: int = 3) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(**{k: v for k, v in studies.TINY_BERT.items() if k != "model_type"}, vocab_size=50)
    cfg.num_labels = labels
    return BertForSequenceClassification(cfg).eval()


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return str(lines[0])


# --------------------------------------------------------------------------------- ensembles: the math


def test_ensemble_logits_are_the_mean_of_the_members_logits() -> None:
    models = [tiny_bert(s) for s in (1, 2, 3)]
    ids = torch.randint(0, 50, (4, 7))
    with torch.no_grad():
        member_logits = torch.stack([m(input_ids=ids).logits for m in models])
    by_logits = Ensemble(models, [1.0, 1.0, 1.0], None, "sequence_classification", "logits")
    torch.testing.assert_close(by_logits.logits(ids), member_logits.mean(0))
    # Probability averaging: the softmax of the ensemble's logits is the mean of the members' probabilities.
    by_probs = Ensemble(models, [1.0, 1.0, 2.0], None, "sequence_classification", "probs")
    expected = (torch.softmax(member_logits, -1) * torch.tensor([0.25, 0.25, 0.5])[:, None, None]).sum(0)
    torch.testing.assert_close(by_probs.probs(ids), expected)


def test_combine_averages_probabilities_or_logits() -> None:
    rng = np.random.default_rng(0)
    raw = [rng.normal(size=(5, 4)) for _ in range(3)]
    logp = [r - np.log(np.exp(r).sum(-1, keepdims=True)) for r in raw]
    mean_p = np.mean([np.exp(lp) for lp in logp], axis=0)
    np.testing.assert_allclose(np.exp(combine(logp, [1, 1, 1])), mean_p, rtol=1e-12)
    mean_logit = np.mean(raw, axis=0)
    soft = np.exp(mean_logit) / np.exp(mean_logit).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(combine(logp, [1, 1, 1], "logits")), soft, rtol=1e-12)
    # A weight of zero leaves a member out entirely.
    np.testing.assert_allclose(combine(logp, [0, 1, 0]), logp[1], atol=1e-12)


def test_caruana_selects_complementary_members_not_the_best_alone() -> None:
    labels = np.array([0, 0, 1, 1])

    def member(p_class1: list[float]) -> np.ndarray:
        p = np.array(p_class1)
        return np.log(np.stack([1 - p, p], axis=1))

    a = member([0.01, 0.01, 0.4, 0.4])  # sure and right on rows 0-1, a little wrong on 2-3: accuracy 0.5
    b = member([0.6, 0.6, 0.99, 0.99])  # the mirror image: accuracy 0.5
    c = member([0.99, 0.99, 0.01, 0.01])  # sure and wrong everywhere: accuracy 0

    def acc(lp: np.ndarray) -> float:
        return metrics_of(lp, labels, "sequence_classification", 2)["accuracy"]

    counts, score = caruana([a, b, c], acc, "maximize", rounds=5)
    assert counts == [1, 1, 0] and score == 1.0
    # Minimising a loss: the same choice.
    counts, _ = caruana([a, b, c], lambda lp: float(-lp[np.arange(4), labels].mean()), "minimize", rounds=5)
    assert counts[2] == 0 and counts[0] >= 1 and counts[1] >= 1


def test_causal_lm_metrics_from_next_token_log_probabilities() -> None:
    logp = np.log(np.full((2, 3), 0.25))
    m = metrics_of(logp, None, "causal_lm", None)
    assert m["perplexity"] == pytest.approx(4.0) and m["eval_loss"] == pytest.approx(math.log(4))


# ------------------------------------------------------------------------------------------------ soups


def test_soup_parameters_are_the_mean_of_the_members() -> None:
    models = [tiny_bert(s) for s in (1, 2, 3)]
    sds = [m.state_dict() for m in models]
    soup = uniform_soup(sds)
    for key, value in soup.items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(value, torch.stack([sd[key] for sd in sds]).mean(0))
        else:
            assert torch.equal(value, sds[0][key])  # integer buffers (position ids) are copied
    loaded = tiny_bert(9)
    loaded.load_state_dict(soup)  # a soup is a state dict of the same model


def test_greedy_soup_keeps_members_that_do_not_hurt() -> None:
    sds = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}, {"w": torch.tensor([10.0])}]

    def score(sd: dict[str, Any]) -> float:
        return -float((sd["w"] - 2.0) ** 2)

    kept, best = greedy_soup(sds, [0, 1, 2], score, lambda a, b: a >= b)
    assert kept == [0, 1] and best == 0.0
    torch.testing.assert_close(average([sds[i] for i in kept])["w"], torch.tensor([2.0]))


def _run(**changes: Any) -> Any:
    study = studies.classification(csv="/nonexistent.csv")
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        study.setdefault(section, {})[key] = value
    return validate_study(study).base_run()


@pytest.mark.parametrize(
    ("second", "shapes_differ", "reason"),
    [
        ({}, False, None),
        ({"training.learning_rate": 0.1}, False, None),  # searched settings that change no initial weight
        ({"training.seed": 7}, False, "training.seed"),
        ({"model.from_config": {**studies.TINY_BERT, "num_hidden_layers": 2}}, False, "model.from_config"),
        ({}, True, "architecture"),
    ],
)
def test_soup_needs_shared_architecture_and_initialisation(
    second: dict[str, Any], shapes_differ: bool, reason: str | None
) -> None:
    runs = [_run(), _run(**second)]
    sds = [{"w": torch.zeros(2)}, {"w": torch.zeros(3 if shapes_differ else 2)}]
    why = incompatibility(runs, sds)
    assert (why is None) if reason is None else (why is not None and reason in why)


# ---------------------------------------------------------------------------------- fidelity.save_models


def test_save_models_is_not_fingerprinted_and_is_validated() -> None:
    plain = studies.causal_lm()
    saving = studies.causal_lm()
    saving["fidelity"] = {**saving["fidelity"], "save_models": {"top_k": 2}}
    assert validate_study(plain).fingerprint() == validate_study(saving).fingerprint()
    saving["fidelity"]["save_models"] = {"top_k": 0}
    with pytest.raises(HpoError, match=r"fidelity.save_models.top_k"):
        validate_study(saving)
    saving["fidelity"]["save_models"] = {"top_k": 2}
    saving["model"]["peft"] = {"type": "lora", "r": 4}
    with pytest.raises(HpoError, match="LoRA trials"):
        validate_study(saving)


def _finished_study(values: list[float | None]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    dist = {"x": FloatDistribution(0, 1)}
    for v in values:
        state = optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=v, state=state))
    return study


def _fake_saved(root: Path, number: int) -> str:
    d = root / f"trial-{number}"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / MARK).write_text("{}")
    return d.name


def test_model_keeper_keeps_exactly_the_best_k_on_disk(tmp_path: Path) -> None:
    """Trials finish one by one (minimise); each saved its folder; after each, at most K remain: the best."""
    values = [5.0, 3.0, None, 4.0, 1.0, 6.0, 2.0]  # None: a pruned trial (a folder left by a crash, say)
    keeper = ModelKeeper(tmp_path, 3, "minimize")
    study = optuna.create_study(direction="minimize")
    dist = {"x": FloatDistribution(0, 1)}
    for number, v in enumerate(values):
        name = _fake_saved(tmp_path, number)
        attrs = {}
        if v is not None and keeper.admit(study, number, v):
            attrs[A_MODEL_DIR] = name
        state = optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.PRUNED
        study.add_trial(
            optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=v, state=state, user_attrs=attrs)
        )
        keeper.prune(study)
        done = [(n, x) for n, x in enumerate(values[: number + 1]) if x is not None]
        best = {n for n, _ in sorted(done, key=lambda nx: nx[1])[:3]}
        assert {p.name for p in tmp_path.iterdir()} == {f"trial-{n}" for n in best}
    assert set(saved_models(study, tmp_path)) == {4, 6, 1}


def test_save_trial_model_is_whole_or_absent(tmp_path: Path) -> None:
    spec = SaveSpec(str(tmp_path), "s", "accuracy")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    run = _run().model_dump(mode="json")
    name = save_trial_model(spec, 3, tiny_bert(0), tok, run, {"accuracy": 0.5})
    assert name == "trial-3"
    files = {p.name for p in (tmp_path / name).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARK, "train_config.yaml"} <= files

    class Broken:
        def save_pretrained(self, d: Path) -> None:
            Path(d).mkdir(parents=True, exist_ok=True)
            (Path(d) / "config.json").write_text("{}")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_trial_model(spec, 4, Broken(), tok, run, {"accuracy": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok", "trial-3"]  # no half-written folder


# ----------------------------------------------------------------------------------------------- compress


@pytest.mark.parametrize(("text", "value"), [("1%", 0.01), ("0.5%", 0.005), ("0.02", 0.02), ("0", 0.0)])
def test_parse_drop(text: str, value: float) -> None:
    assert parse_drop(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1%", "-0.1", "abc", "nan"])
def test_parse_drop_refuses(text: str) -> None:
    with pytest.raises(HpoError, match="--max-drop"):
        parse_drop(text)


def test_choose_the_smallest_within_the_tolerance() -> None:
    vs = [
        Variant("base", metric=0.9, drop=0.0, size_mb=10.0, nonzero=100, latency_ms=2.0),
        Variant("int8", metric=0.85, drop=0.055, size_mb=3.0, nonzero=100, latency_ms=1.0),
        Variant("prune", metric=0.895, drop=0.005, size_mb=10.0, nonzero=50, latency_ms=2.0),
        Variant("skipped", skipped="does not fit"),
    ]
    assert _choose(vs, 0.01).name == "prune"  # same size as base, fewer non-zero weights
    assert _choose(vs, 0.10).name == "int8"
    assert _choose(vs, 0.0).name == "base"


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny BERT classifier saved the way save_models saves a trial (with its train_config.yaml)."""
    from trainers.data import prepare
    from trainers.models import build_model

    root = tmp_path_factory.mktemp("bert")
    old = os.environ.get("HPO_CACHE_DIR")
    os.environ["HPO_CACHE_DIR"] = str(root / "cache")
    csv = studies.write_sentiment_csv(root / "data" / "train.csv", 40)
    study = studies.classification(csv=str(csv))
    study["model"]["from_config"]["intermediate_size"] = 128
    run = validate_study(study).base_run()
    data = prepare(run, root / "cache")
    torch.manual_seed(0)
    model = build_model(run, data)
    spec = SaveSpec(str(root / "models"), "cls", "accuracy")
    save_trial_model(spec, 0, model, data.tokenizer_dir, run.model_dump(mode="json"), {"accuracy": 0.5})
    yield root / "models" / "trial-0"
    if old is None:
        os.environ.pop("HPO_CACHE_DIR", None)
    else:
        os.environ["HPO_CACHE_DIR"] = old


def test_compress_variants_change_size_and_nonzero_weights(saved_bert: Path, tmp_path: Path) -> None:
    r = compress(saved_bert, tmp_path / "out", max_drop="100%")
    by = {v.name: v for v in r.variants}
    base = by["unchanged (fp32)"]
    assert base.drop == 0.0 and base.nonzero is not None and base.params is not None
    int8 = by["int8 dynamic"]
    assert int8.skipped is None and int8.size_mb is not None and int8.size_mb < base.size_mb  # type: ignore[operator]
    for s in (0.3, 0.5, 0.7):
        v = by[f"prune unstructured {s:.0%}"]
        assert v.size_mb == pytest.approx(base.size_mb, rel=0.01)  # dense zeros: the same file size
        assert v.nonzero is not None and v.nonzero < base.nonzero  # type: ignore[operator]
    assert by["prune unstructured 70%"].nonzero < by["prune unstructured 30%"].nonzero  # type: ignore[operator]
    # Any drop allowed: the smallest file wins, an int8 variant; it loads back and runs.
    assert r.chosen.endswith("int8") or r.chosen == "int8 dynamic"
    info = json.loads((tmp_path / "out" / "compress.json").read_text())
    assert info["chosen"] == r.chosen and len(info["variants"]) == len(r.variants)
    model = load_compressed(tmp_path / "out")
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 2)


def test_compress_with_no_drop_allowed_keeps_quality(saved_bert: Path, tmp_path: Path) -> None:
    r = compress(saved_bert, tmp_path / "out", max_drop="0%")
    chosen = next(v for v in r.variants if v.name == r.chosen)
    assert chosen.drop is not None and chosen.drop <= 0.0


def test_compress_bad_input_is_one_line_and_writes_nothing(saved_bert: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    for args, needle in [
        ([str(empty)], "not a model folder"),
        ([str(tmp_path / "missing")], "no such model folder"),
        ([str(saved_bert), "--max-drop", "-1%"], "--max-drop must be at least 0"),
    ]:
        line = one_line_error(runner.invoke(app, ["compress", *args, "-o", str(out)]))
        assert needle in line
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# ------------------------------------------------------------------------------------ ensemble bad input


def test_ensemble_top_larger_than_the_complete_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study_dict = studies.causal_lm("s", 5, url)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study_dict))
    cfg = validate_study(study_dict)
    study, _ = create_or_resume(cfg, open_storage(url, create=True))
    dist = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    for v in (50.0, 40.0):
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3}, distributions=dist, value=v))
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_line_error(runner.invoke(app, ["ensemble", str(path), "--top", "3", "-o", str(tmp_path / "ens")]))
    assert "--top 3 is more than the 2 complete trials" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ensemble_refuses_logits_averaging_for_a_causal_lm(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(studies.causal_lm("s", 5, f"sqlite:///{tmp_path}/s.db")))
    line = one_line_error(runner.invoke(app, ["ensemble", str(path), "--average", "logits"]))
    assert "--average logits is for classification" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_study_saves_top_k_then_ensembles_and_compresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real study (workers, real trainer) keeps exactly the best 2 of 4 trials' weights; `hpo ensemble`
    fuses them and writes a folder `hpo.ensemble.load` reads; the soup is skipped or built with a reason."""
    from hpo.ensemble import load

    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    csv = studies.write_sentiment_csv(tmp_path / "data" / "train.csv", 60)
    d = studies.classification("cls", 4, f"sqlite:///{tmp_path}/runs/cls.db", csv=str(csv))
    d["fidelity"] = {"max_steps": 8, "eval_every": 4, "save_models": {"top_k": 2}}
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(d))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    cfg = validate_study(d)
    from hpo.export import ranked_trials
    from hpo.storage import load_existing

    ranked = ranked_trials(load_existing(cfg))
    on_disk = {p.name for p in (tmp_path / "runs" / "cls-models").iterdir()}
    assert on_disk == {f"trial-{t.number}" for t in ranked[:2]}
    res = runner.invoke(app, ["ensemble", str(path), "--top", "2", "-o", str(tmp_path / "ens")])
    assert res.exit_code == 0, res.output
    assert "greedy selection" in res.output and "uniform soup" in res.output
    ens = load(tmp_path / "ens")
    labels = ens.predict(["good great fine lovely", "bad awful poor dull"])
    assert set(labels) <= {"pos", "neg"}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["fusion.py", "compress.py"])
def test_benchmark_quick_mode_runs_and_writes_json(script: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out.json"
    extra = ["--work", str(tmp_path / "work")] if script == "fusion.py" else []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "HPO_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["load_avg_before"] and data["load_avg_after"]
    if script == "fusion.py":
        rows = [r for res in data["results"].values() for r in res["rows"]]
        assert {r["candidate"] for r in rows} >= {"best single", "ensemble, greedy selection", "uniform soup"}
        assert all(r["gain"]["n"] == 2 for r in rows if "gain" in r)
    else:
        names = {r["variant"] for r in data["variants"]}
        assert {"unchanged (fp32)", "int8 dynamic", "prune unstructured 50%"} <= names


def test_gpt2_conv1d_layers_become_equal_linears_for_int8() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from hpo.compress import _conv1d_as_linear, apply_int8, quantizable

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=40)).eval()
    ids = torch.randint(0, 40, (2, 9))
    before = model(input_ids=ids).logits
    linear = copy.deepcopy(model)
    _conv1d_as_linear(linear)
    assert not any(type(m).__name__ == "Conv1D" for m in linear.modules())
    torch.testing.assert_close(linear(input_ids=ids).logits, before)
    assert len(quantizable(model)) == 4  # c_attn, c_proj (attention), c_fc, c_proj (MLP); not the tied lm_head
    q = apply_int8(copy.deepcopy(model))
    assert type(q.lm_head) is torch.nn.Linear  # tied to the embedding: left alone
    assert (q(input_ids=ids).logits - before).abs().max() < 0.05  # int8: close, not equal


def test_without_a_soup_the_ensemble_is_chosen_and_kind_soup_says_why() -> None:
    from hpo.ensemble import Candidate, _choose

    why = "members differ in training.seed (1, 2): they do not share initialisation"
    cands = [
        Candidate("best single (trial 0)", 0.8, 0.8),
        Candidate("ensemble, greedy selection", 0.85, 0.84, 2.0),
        Candidate("uniform soup", None, None, skipped=why),
        Candidate("greedy soup", None, None, skipped=why),
    ]
    assert _choose(cands, "auto", "maximize").name == "ensemble, greedy selection"
    with pytest.raises(HpoError, match=r"no soup of these members: members differ in training\.seed"):
        _choose(cands, "soup", "maximize")
    # A soup as good as the ensemble on the selection half wins: it costs one model.
    cands[2:] = [Candidate("uniform soup", 0.85, 0.83, 1.0), Candidate("greedy soup", 0.80, 0.80, 1.0)]
    assert _choose(cands, "auto", "maximize").name == "uniform soup"
    assert _choose(cands, "ensemble", "maximize").name == "ensemble, greedy selection"


@pytest.mark.slow
def test_ensemble_without_saved_models_retrains_the_top_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No `save_models`: the top K are re-trained at their own length, reproducing each trial's metric."""
    from hpo.export import ranked_trials
    from hpo.storage import load_existing

    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    d = studies.causal_lm("lm", 2, f"sqlite:///{tmp_path}/runs/lm.db", resources={"workers": 1})
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(d))
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    res = runner.invoke(app, ["ensemble", str(path), "--top", "2"])
    assert res.exit_code == 0, res.output
    assert "greedy selection" in res.output
    for t in ranked_trials(load_existing(validate_study(d)))[:2]:
        metrics = json.loads(
            (tmp_path / "runs" / "lm-models" / "retrained" / f"trial-{t.number}" / "metrics.json").read_text()
        )
        assert metrics["metrics"]["perplexity"] == pytest.approx(t.value, rel=1e-9)
