"""`hpo export` and `hpo train`: the exported bundle, the TrainingArguments JSON, the round trip that
reproduces a trial's metric, resuming after an interruption, and bad input that writes nothing.

One tiny study (real trainer, 16-step trials) is run once for the module; everything else trains for a
few steps in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

import studies
from hpo.cli import app
from hpo.config import validate_study
from hpo.errors import HpoError
from hpo.export import (
    ARGS_NAME,
    BUNDLE,
    CONFIG_NAME,
    MODEL_NAME,
    load_train_file,
    provenance,
    ranked_trials,
)
from hpo.storage import create_or_resume, load_existing, open_storage
from hpo.train import CHECKPOINTS, METRICS, OUT_CONFIG, train_file
from trainers.base import NullReporter
from trainers.checkpoints import STATE_FILE

runner = CliRunner()

# `hpo train` reproduces a trial to the last digit on the CPU; on a GPU (bf16, CUDA kernels that sum in no
# fixed order) two identical runs differ in the 4th-5th digit: 0.025% on an H200.
EXACT = 1e-9 if not torch.cuda.is_available() else 1e-3


def tiny(root: Path, name: str = "ex") -> dict[str, Any]:
    return studies.causal_lm(
        name,
        3,
        f"sqlite:///{root}/runs/{name}.db",
        sampler={"name": "random", "seed": 3},
        data={"builtin": "pydoc_topics", "max_length": 32, "max_train_samples": 24, "max_eval_samples": 4},
        training={"per_device_eval_batch_size": 8, "max_steps": 24, "warmup_ratio": 0.1},
        search_space={
            "training.learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "training.per_device_train_batch_size": {"type": "categorical", "choices": [4, 8]},
            "model.dropout": {"type": "float", "low": 0.1, "high": 0.3},  # > 0: resuming must restore RNG
        },
        resources={"workers": 1},
    )


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return str(lines[0])


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished tiny study (3 complete trials); HPO_CACHE_DIR points at its own cache."""
    root = tmp_path_factory.mktemp("study")
    old = os.environ.get("HPO_CACHE_DIR")
    os.environ["HPO_CACHE_DIR"] = str(root / "cache")
    path = write(root / "study.yaml", tiny(root))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    yield path
    if old is None:
        os.environ.pop("HPO_CACHE_DIR", None)
    else:
        os.environ["HPO_CACHE_DIR"] = old


def trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    cfg = validate_study(yaml.safe_load(path.read_text()))
    return ranked_trials(load_existing(cfg))


def export(*args: str) -> Any:
    return runner.invoke(app, ["export", *args])


# ------------------------------------------------------------------------------------------ export


def test_export_best_writes_a_resolved_full_length_config(study: Path, tmp_path: Path) -> None:
    result = export(str(study), "-o", str(tmp_path / "best"))
    assert result.exit_code == 0, result.output
    best = trials(study)[0]
    assert {p.name for p in (tmp_path / "best").iterdir()} == set(BUNDLE)
    assert f"trial {best.number}" in result.output and "24 steps" in result.output
    tf = load_train_file(tmp_path / "best" / CONFIG_NAME)
    t = tf.training
    # The trial's parameters, the study's uncapped length and the whole eval split.
    assert t.learning_rate == best.params["learning_rate"]
    assert t.per_device_train_batch_size == best.params["per_device_train_batch_size"]
    assert tf.model.dropout == best.params["dropout"]
    assert (t.max_steps, t.eval_steps, tf.eval_batches, tf.threads) == (24, 2, None, None)
    prov = tf.provenance
    assert prov is not None
    assert prov["trial"] == best.number and prov["value"] == best.value and prov["rank"] == 1
    assert (
        prov["storage"].startswith("sqlite:///")
        and prov["fingerprint"] == validate_study(yaml.safe_load(study.read_text())).fingerprint()
    )
    assert {"torch", "transformers", "accelerate", "optuna", "python"} <= set(prov["versions"])
    assert "git" in prov and prov["exported_at"]
    overrides = json.loads((tmp_path / "best" / MODEL_NAME).read_text())["overrides"]
    assert overrides == dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), best.params["dropout"])
    launch = (tmp_path / "best" / "launch.sh").read_text()
    assert (
        "accelerate launch" in launch and "process_index" in launch and os.access(tmp_path / "best/launch.sh", os.X_OK)
    )


def test_training_arguments_json_loads_into_transformers(study: Path, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    assert export(str(study), "-o", str(tmp_path / "best")).exit_code == 0
    kwargs = json.loads((tmp_path / "best" / ARGS_NAME).read_text())
    kwargs["use_cpu"] = True
    args = TrainingArguments(**kwargs)
    tf = load_train_file(tmp_path / "best" / CONFIG_NAME)
    assert args.learning_rate == tf.training.learning_rate
    assert args.per_device_train_batch_size == tf.training.per_device_train_batch_size
    assert args.max_steps == 24 and args.eval_steps == 2 and args.seed == tf.training.seed
    assert args.warmup_steps == 3  # ceil(0.1 x 24), as the trainer computes it
    assert args.lr_scheduler_type.value == "linear"


def test_export_trial_top_and_lengths(study: Path, tmp_path: Path) -> None:
    ranked = trials(study)
    worst = ranked[-1]
    assert export(str(study), "--trial", str(worst.number), "-o", str(tmp_path / "t")).exit_code == 0
    assert load_train_file(tmp_path / "t" / CONFIG_NAME).training.learning_rate == worst.params["learning_rate"]

    result = export(str(study), "--top", "2", "-o", str(tmp_path / "top"))
    assert result.exit_code == 0, result.output
    dirs = sorted(p.name for p in (tmp_path / "top").iterdir())
    assert dirs == sorted(f"trial-{t.number}" for t in ranked[:2])
    for rank, t in enumerate(ranked[:2], start=1):
        prov = load_train_file(tmp_path / "top" / f"trial-{t.number}" / CONFIG_NAME).provenance
        assert prov is not None and (prov["trial"], prov["rank"]) == (t.number, rank)

    assert export(str(study), "--steps", "50", "-o", str(tmp_path / "s")).exit_code == 0
    assert load_train_file(tmp_path / "s" / CONFIG_NAME).training.max_steps == 50
    assert export(str(study), "--trial-length", "-o", str(tmp_path / "l")).exit_code == 0
    tf = load_train_file(tmp_path / "l" / CONFIG_NAME)
    assert (tf.training.max_steps, tf.training.eval_steps, tf.eval_batches) == (16, 8, 2)
    # The trial worker's CPU threads: float sums depend on them (a GPU trial has none to set).
    assert tf.threads == (None if torch.cuda.is_available() else 1)


def test_full_run_section_sets_the_length_and_does_not_change_the_fingerprint(study: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(study.read_text())
    data["full_run"] = {"num_train_epochs": 2, "eval_steps": 5, "eval_batches": 1, "save_steps": 4}
    path = write(tmp_path / "with-full-run.yaml", data)
    result = export(str(path), "-o", str(tmp_path / "e"))  # the study's stored fingerprint still matches
    assert result.exit_code == 0, result.output
    tf = load_train_file(tmp_path / "e" / CONFIG_NAME)
    assert (tf.training.max_steps, tf.training.num_train_epochs, tf.training.eval_steps) == (-1, 2.0, 5)
    assert (tf.eval_batches, tf.checkpoints.save_steps) == (1, 4)


def test_provenance_hides_the_storage_password(study: Path) -> None:
    data = yaml.safe_load(study.read_text())
    cfg = validate_study(data)
    real = load_existing(cfg)
    data["study"]["storage"] = "postgresql+psycopg://hpo:s3cret@db.example/hpo"
    prov = provenance(validate_study(data), real, study, real.best_trial, 1, "x")
    assert "s3cret" not in json.dumps(prov) and prov["storage"] == "postgresql+psycopg://hpo:***@db.example/hpo"


def test_multi_objective_pick_is_the_pareto_front_by_first_objective() -> None:
    s = optuna.create_study(directions=["minimize", "maximize"])
    for values in [(3.0, 9.0), (1.0, 1.0), (2.0, 5.0), (2.5, 4.0)]:  # (2.5, 4.0) is dominated by (2.0, 5.0)
        t = s.ask()
        s.tell(t, values)
    assert [t.values for t in ranked_trials(s)] == [[1.0, 1.0], [2.0, 5.0], [3.0, 9.0]]


# ------------------------------------------------------------------------------------ train round trip


def test_round_trip_reproduces_the_trial_and_the_saved_model_its_metric(study: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.data import prepare
    from trainers.loop import evaluate

    best = trials(study)[0]
    assert export(str(study), "--trial-length", "-o", str(tmp_path / "b")).exit_code == 0
    out = tmp_path / "b" / "model"
    result = runner.invoke(app, ["train", str(tmp_path / "b" / CONFIG_NAME)])  # default: model/ next to it
    assert result.exit_code == 0, result.output
    assert "trained 16 steps" in result.output and f"trial {best.number}" in result.output
    metrics = json.loads((out / METRICS).read_text())
    assert metrics["steps"] == 16 and [e["step"] for e in metrics["evals"]] == [8, 16]
    assert metrics["metrics"]["perplexity"] == pytest.approx(best.value, rel=EXACT, abs=0)
    assert not (out / CHECKPOINTS).exists()
    assert load_train_file(out / OUT_CONFIG).run_config() == load_train_file(tmp_path / "b" / CONFIG_NAME).run_config()

    # The saved model and tokenizer reload with plain transformers and give the reported eval loss.
    run = load_train_file(out / OUT_CONFIG).run_config()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out)("def f(): pass")["input_ids"]
    again = evaluate(model, prepare(run, os.environ["HPO_CACHE_DIR"]), run, model.device)
    assert again["eval_loss"] == pytest.approx(metrics["metrics"]["eval_loss"], rel=EXACT, abs=0)


def pretrained_classifier(root: Path) -> dict[str, Any]:
    """A study fine-tuning a tiny pretrained BERT (made here: save_pretrained of a random one) as a classifier."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "good great fine nice bad awful poor sad the a movie film plot was is very".split()
    (root / "bert").mkdir()
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(words) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(cfg).save_pretrained(root / "bert")  # no classification head: `hpo` adds a new one
    rows = ["text,label"]
    for i in range(48):
        pos = i % 2 == 0
        rows.append(f"the {'film' if i % 3 else 'movie'} was {'very ' * (i % 4)}{'good' if pos else 'bad'},{int(pos)}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "eval.csv").write_text("\n".join(rows[:1] + rows[1:17]) + "\n")
    return {
        "study": {"name": "cls", "n_trials": 1, "storage": f"sqlite:///{root}/cls.db"},
        "task": "sequence_classification",
        "objective": {"metric": "eval_loss"},  # continuous: any difference in the run shows
        "sampler": {"name": "random", "seed": 1},
        "pruner": {"name": "none"},
        "fidelity": {"max_steps": 8, "eval_every": 4},
        "model": {"name_or_path": str(root / "bert")},
        "data": {
            "files": {"train": str(root / "train.csv"), "validation": str(root / "eval.csv")},
            "max_length": 16,
        },
        "training": {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 8},
        "search_space": {
            "training.learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "model.dropout": {"type": "float", "low": 0.1, "high": 0.3},
        },
        "resources": {"workers": 1},
    }


@pytest.mark.slow
def test_round_trip_reproduces_a_fine_tuned_pretrained_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker loads the pretrained weights before its first trial; `hpo train` after seeding. The new
    # classification head must start from the same seeded values in both.
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path / "cls.yaml", pretrained_classifier(tmp_path))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    trial = trials(path)[0]
    assert export(str(path), "--trial-length", "-o", str(tmp_path / "b")).exit_code == 0
    result = runner.invoke(app, ["train", str(tmp_path / "b" / CONFIG_NAME)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "b" / "model" / METRICS).read_text())["metrics"]
    assert metrics["eval_loss"] == pytest.approx(trial.value, rel=1e-9, abs=0)
    assert metrics == trial.user_attrs["metrics"]


class StopAfter(NullReporter):
    def __init__(self, k: int) -> None:
        self.k, self.step = k, 0

    def on_step(self, step: int) -> None:
        self.step = step

    def stop_reason(self) -> str | None:
        return "interrupted" if self.step >= self.k else None


def test_resume_after_interruption_gives_the_uninterrupted_result(study: Path, tmp_path: Path) -> None:
    assert export(str(study), "-o", str(tmp_path / "e")).exit_code == 0  # full length: 24 steps, eval every 2
    config = tmp_path / "e" / CONFIG_NAME
    data = yaml.safe_load(config.read_text())
    data["checkpoints"]["save_steps"] = 5  # saved at 5, then at 7 on the stop; only the newest is kept
    data["threads"] = 1  # one thread: fast on a busy machine
    write(config, data)
    whole = train_file(config, tmp_path / "whole", reporter=NullReporter())
    assert not whole.interrupted and whole.result.steps == 24

    first = train_file(config, tmp_path / "cut", reporter=StopAfter(7))
    assert first.interrupted and first.result.steps == 7
    assert not (tmp_path / "cut" / METRICS).exists()
    assert [p.name for p in (tmp_path / "cut" / CHECKPOINTS).iterdir()] == ["checkpoint-7"]

    result = runner.invoke(app, ["train", str(config), "-o", str(tmp_path / "cut")])
    assert result.exit_code == 0, result.output
    assert "resuming from the checkpoint at step 7/24" in result.output
    metrics = json.loads((tmp_path / "cut" / METRICS).read_text())
    assert metrics["resumed_from"] == 7 and metrics["steps"] == 24
    assert metrics["metrics"] == whole.result.metrics  # bit for bit: same batches, same dropout masks
    assert [(e.pop("step"), e) for e in metrics["evals"]] == [(s, m) for s, m in whole.result.evals]


@pytest.mark.parametrize("written_by", ["an older hpo", "a newer hpo"])
def test_a_checkpoint_of_another_format_is_refused_in_one_line(written_by: str, study: Path, tmp_path: Path) -> None:
    assert export(str(study), "-o", str(tmp_path / "e")).exit_code == 0
    config = tmp_path / "e" / CONFIG_NAME
    data = yaml.safe_load(config.read_text())
    data["threads"] = 1
    write(config, data)
    out = tmp_path / "cut"
    assert train_file(config, out, reporter=StopAfter(3)).interrupted
    state_file = out / CHECKPOINTS / "checkpoint-3" / STATE_FILE
    state = json.loads(state_file.read_text())
    if written_by == "an older hpo":  # before the format was recorded (the loop's counters were in this file)
        state.pop("format", None)
    else:
        state["format"] = 99
    state_file.write_text(json.dumps(state))

    result = runner.invoke(app, ["train", str(config), "-o", str(out)])
    line = one_line_error(result)
    assert line.startswith(f"error: cannot resume: {state_file.parent} was written by another version of hpo")
    assert line.endswith("; use --force to start over")
    assert not (out / METRICS).exists()
    result = runner.invoke(app, ["train", str(config), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_same_command_resumes(study: Path, tmp_path: Path) -> None:
    """SLURM's scancel (and a job's time limit) sends SIGTERM: `hpo train` saves where it is, like Ctrl-C."""
    assert export(str(study), "--steps", "300", "-o", str(tmp_path / "e")).exit_code == 0
    config = tmp_path / "e" / CONFIG_NAME
    data = yaml.safe_load(config.read_text())
    data["training"]["eval_steps"] = 50
    data["checkpoints"]["save_steps"] = 50
    data["eval_batches"] = 1
    data["threads"] = 1
    write(config, data)
    whole = train_file(config, tmp_path / "whole", reporter=NullReporter())

    out = tmp_path / "cut"
    cmd = [str(Path(sys.executable).with_name("hpo")), "train", str(config), "-o", str(out)]
    proc = subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + 120
    while not (out / CHECKPOINTS / "checkpoint-50").exists():  # training, past its first checkpoint
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr  # 128 + SIGTERM
    assert "SIGTERM: stopping after this step and saving a checkpoint" in stderr
    cut = int(stdout.split("interrupted at step ")[1].split(";")[0])
    assert 50 <= cut < 300 and [p.name for p in (out / CHECKPOINTS).iterdir()] == [f"checkpoint-{cut}"]

    again = subprocess.run(cmd, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming from the checkpoint at step {cut}/300" in again.stderr
    metrics = json.loads((out / METRICS).read_text())
    assert metrics["resumed_from"] == cut and metrics["metrics"] == whole.result.metrics


def _disk_use(folder: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def test_a_final_save_that_fails_on_a_full_disk_is_redone_without_training(study: Path, tmp_path: Path) -> None:
    from fsfaults import fill, small_fs

    assert export(str(study), "--trial-length", "-o", str(tmp_path / "e")).exit_code == 0
    config = tmp_path / "e" / CONFIG_NAME
    data = yaml.safe_load(config.read_text())
    data["model"]["from_config"]["n_embd"] = 64  # weights big enough to fill a page-granular filesystem
    data["checkpoints"].update(save_steps=8, save_total_limit=2)  # checkpoints at 8 and at 16, the end
    data["threads"] = 1
    write(config, data)
    whole = train_file(config, tmp_path / "whole", reporter=NullReporter())

    class FillsTheDisk(NullReporter):
        """At the last step, leaves room for the final checkpoint and half of the model's weights."""

        def on_step(self, step: int) -> None:
            if step == 16:
                ckpt = out / CHECKPOINTS / "checkpoint-8"
                self.filler = fill(mnt, _disk_use(ckpt) + 64 * 1024 + (ckpt / "model.safetensors").stat().st_size // 2)

    with small_fs(tmp_path / "fs", 16 * 1024) as mnt:
        out = mnt / "model"
        reporter = FillsTheDisk()
        with pytest.raises(HpoError) as err:
            train_file(config, out, reporter=reporter)
        msg = str(err.value)
        assert msg.startswith(f"could not save the trained model to {out}: ") and "No space left on device" in msg
        assert msg.endswith("run the same command again: it only saves")
        assert sorted(p.name for p in out.iterdir()) == [CHECKPOINTS]  # no half-saved model left behind
        assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == ["checkpoint-16", "checkpoint-8"]

        reporter.filler.unlink()  # space freed; the same command, without --force
        result = runner.invoke(app, ["train", str(config), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert "resuming from the checkpoint at step 16/16" in result.output
        metrics = json.loads((out / METRICS).read_text())
    assert metrics["resumed_from"] == 16 and metrics["metrics"] == whole.result.metrics


def test_train_never_overwrites_what_it_did_not_write_nor_writes_through_links(study: Path, tmp_path: Path) -> None:
    assert export(str(study), "--trial-length", "-o", str(tmp_path / "e")).exit_code == 0
    config = tmp_path / "e" / CONFIG_NAME
    out = tmp_path / "m"
    out.mkdir()
    (out / "tokenizer.json").write_text("the user's own")
    msg = one_line_error(runner.invoke(app, ["train", str(config), "-o", str(out)]))
    assert msg == (
        f"error: {out} already holds tokenizer.json, which hpo train did not write; use --force to overwrite it, "
        "or -o another directory"
    )
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json"]
    (out / "tokenizer.json").unlink()

    elsewhere = tmp_path / "precious.bin"
    elsewhere.write_text("not a model")
    (out / "model.safetensors").symlink_to(elsewhere)
    msg = one_line_error(runner.invoke(app, ["train", str(config), "-o", str(out)]))
    assert msg.startswith(f"error: {out / 'model.safetensors'} is a symbolic link; hpo train does not write through")
    assert not (out / CHECKPOINTS).exists() and elsewhere.read_text() == "not a model"
    result = runner.invoke(app, ["train", str(config), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "model.safetensors").is_symlink() and elsewhere.read_text() == "not a model"

    (out / CHECKPOINTS).symlink_to(tmp_path, target_is_directory=True)
    msg = one_line_error(runner.invoke(app, ["train", str(config), "-o", str(out), "--force"]))
    assert "checkpoints is a symbolic link" in msg


@pytest.mark.slow
def test_sigterm_under_a_multi_process_launch_stops_every_rank_on_one_step(study: Path, tmp_path: Path) -> None:
    """`hpo train` under a 2-process launch (gloo on CPU, as `launch.sh` with NUM_PROCESSES=2): SIGTERM to
    the job, as scancel sends it, reaches each rank at its own moment; all must stop and checkpoint together."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")
    assert export(str(study), "--steps", "400", "-o", str(tmp_path / "e")).exit_code == 0
    config = tmp_path / "e" / CONFIG_NAME
    data = yaml.safe_load(config.read_text())
    data["training"]["eval_steps"] = 50
    data["checkpoints"]["save_steps"] = 50
    data["eval_batches"], data["threads"] = 1, 1
    write(config, data)
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), "-m", "hpo.cli", "train", str(config), "-o", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    end = time.monotonic() + 180
    while not (out / CHECKPOINTS / "checkpoint-50").exists():
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert "interrupted at step" in stdout, stderr
    cut = int(stdout.split("interrupted at step ")[1].split(";")[0])
    assert stdout.count("interrupted at step") == 1  # the main process reports
    assert [p.name for p in (out / CHECKPOINTS).iterdir()] == [f"checkpoint-{cut}"]
    assert 50 <= cut < 400

    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    again = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming from the checkpoint at step {cut}/400" in again.stderr
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    cmd[-1] = str(tmp_path / "whole")
    whole = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    resumed = json.loads((out / METRICS).read_text())
    assert resumed["metrics"] == json.loads((tmp_path / "whole" / METRICS).read_text())["metrics"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_bad_export_input_is_one_line_and_writes_nothing(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    msg = one_line_error(export(str(study), "--trial", "99", "-o", str(out)))
    assert "no trial 99" in msg and not out.exists()
    msg = one_line_error(export(str(study), "--trial", "0", "--top", "2", "-o", str(out)))
    assert "not both" in msg and not out.exists()

    empty = tiny(tmp_path, name="empty")
    path = write(tmp_path / "empty.yaml", empty)
    cfg = validate_study(empty)
    s, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    s.tell(s.ask(), state=optuna.trial.TrialState.FAIL)
    msg = one_line_error(export(str(path), "-o", str(out)))
    assert "no complete trial" in msg and not out.exists()
    msg = one_line_error(export(str(path), "--trial", "0", "-o", str(out)))
    assert "FAIL, not COMPLETE" in msg and not out.exists()

    assert export(str(study), "-o", str(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    msg = one_line_error(export(str(study), "--trial-length", "-o", str(out)))
    assert "--force" in msg and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert export(str(study), "--trial-length", "-o", str(out), "--force").exit_code == 0
    assert load_train_file(out / CONFIG_NAME).training.max_steps == 16


def test_bad_train_input_is_one_line_and_writes_nothing(study: Path, tmp_path: Path) -> None:
    assert export(str(study), "--trial-length", "-o", str(tmp_path / "e")).exit_code == 0
    config = tmp_path / "e" / CONFIG_NAME
    data = yaml.safe_load(config.read_text())
    data["training"]["learning_rat"] = 0.1
    bad = write(tmp_path / "bad.yaml", data)
    msg = one_line_error(runner.invoke(app, ["train", str(bad), "-o", str(tmp_path / "m")]))
    assert msg == f"error: {bad}: training.learning_rat: unknown key" and not (tmp_path / "m").exists()
    msg = one_line_error(runner.invoke(app, ["train", str(study), "-o", str(tmp_path / "m")]))
    assert "this is a study file" in msg and not (tmp_path / "m").exists()

    out = tmp_path / "m"
    assert train_file(config, out, reporter=NullReporter()).files
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    msg = one_line_error(runner.invoke(app, ["train", str(config), "-o", str(out)]))
    assert "--force" in msg and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # Checkpoints of another configuration are not resumed.
    data = yaml.safe_load(config.read_text())
    data["training"]["learning_rate"] *= 2
    other = write(tmp_path / "other.yaml", data)
    assert train_file(other, tmp_path / "o", reporter=StopAfter(3)).interrupted
    msg = one_line_error(runner.invoke(app, ["train", str(config), "-o", str(tmp_path / "o")]))
    assert "different configuration" in msg and not (tmp_path / "o" / METRICS).exists()
