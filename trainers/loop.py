"""The training function every trial and every full run goes through.

It reads top to bottom like accelerate's ``nlp_example.py``: seed, data, model, optimizer and scheduler,
``prepare``, then the loop with periodic evaluation, and the metrics at the end. It knows nothing of
Optuna; it talks to whoever runs it through a ``Reporter``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.base import ConfigError, Diverged, NonFiniteLoss, Reporter, TrainResult, diverged
from trainers.checkpoints import Checkpoints
from trainers.config import RunConfig
from trainers.data import PreparedData, prepare
from trainers.models import build_model


def mixed_precision(run: RunConfig, accelerator_type: str) -> str:
    """'bf16', 'fp16' or 'no'. bf16 by default where the GPU supports it; CPUs train in fp32."""
    t = run.training
    if t.fp16:
        return "fp16"
    if t.bf16 is True:
        return "bf16"
    if t.bf16 is None and accelerator_type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _accelerator(run: RunConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    use_cpu = run.training.use_cpu or not torch.cuda.is_available()
    precision = mixed_precision(run, "cpu" if use_cpu else "cuda")
    state = AcceleratorState._shared_state
    if state and (state.get("mixed_precision") not in (None, precision)):
        # One process, many runs: accelerate keeps a singleton state; a new precision needs a reset.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=use_cpu)


def _optimizer(model: torch.nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    # Like transformers.Trainer: no weight decay on biases and normalisation weights.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    t = run.training
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)


def total_steps(run: RunConfig, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run: max_steps if set, else epochs over the data."""
    t = run.training
    if t.max_steps > 0:
        return t.max_steps
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size
    return max(1, math.ceil(t.num_train_epochs * n_train / per_step))


def _batches(n: int, batch_size: int, seed: int, rank: int, world: int) -> Iterator[np.ndarray]:
    """Endless shuffled index batches; each epoch a new permutation, each rank its own shard."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)[rank::world]
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield order[i : i + batch_size]
        if len(order) < batch_size:  # tiny data: allow one short batch instead of looping forever
            yield order


def _check_batch_fits(run: RunConfig, data: PreparedData, world: int) -> None:
    """Refuse a batch larger than the training set: it would train on one short batch per step while the
    trial is recorded with the larger size (the batch order below allows a short batch only as a last resort)."""
    bs = run.training.per_device_train_batch_size
    n = len(data.train_ids)
    if n // world < bs:
        unit = f"blocks of data.max_length={run.data.max_length} tokens" if run.task == "causal_lm" else "examples"
        per = f" ({n // world} per process on {world} processes)" if world > 1 else ""
        raise ConfigError(
            "training.per_device_train_batch_size",
            f"a batch of {bs} is larger than the training set: {n} {unit}{per}",
        )


def _to_batch(
    data: PreparedData, split: str, idx: np.ndarray, task: str, device: torch.device
) -> dict[str, torch.Tensor]:
    ids = getattr(data, f"{split}_ids")[idx]
    if task == "causal_lm":
        t = torch.from_numpy(ids.astype(np.int64)).to(device)
        return {"input_ids": t, "labels": t}
    lengths = getattr(data, f"{split}_lengths")[idx]
    width = int(lengths.max())  # trim padding to the longest row of this batch
    ids = ids[:, :width].astype(np.int64)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    labels = getattr(data, f"{split}_labels")[idx]
    return {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
        "labels": torch.from_numpy(labels).to(device),
    }


def _tokens(batch: dict[str, torch.Tensor]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PreparedData, run: RunConfig, device: torch.device) -> dict[str, float]:
    """Eval loss (token-weighted for LM), perplexity or accuracy / macro-F1 on the fixed eval batches."""
    model.eval()
    bs = run.training.per_device_eval_batch_size
    n = len(data.eval_ids)
    starts = list(range(0, n, bs))
    if run.eval_batches is not None:
        starts = starts[: run.eval_batches]
    loss_sum, weight = 0.0, 0
    preds: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for s in starts:
        idx = np.arange(s, min(s + bs, n))
        batch = _to_batch(data, "eval", idx, run.task, device)
        out = model(**batch)
        w = _tokens(batch) if run.task == "causal_lm" else len(idx)
        loss_sum += float(out.loss) * w
        weight += w
        if run.task != "causal_lm":
            preds.append(out.logits.argmax(-1).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    model.train()
    loss = loss_sum / max(weight, 1)
    metrics = {"eval_loss": loss}
    if run.task == "causal_lm":
        metrics["perplexity"] = math.exp(min(loss, 50.0))  # capped: exp overflows past ~709
    else:
        p, y = np.concatenate(preds), np.concatenate(labels)
        assert data.label_names is not None
        metrics["accuracy"] = float((p == y).mean())
        metrics["f1_macro"] = f1_macro(p, y, len(data.label_names))
    return metrics


def f1_macro(pred: np.ndarray, true: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over the classes present in ``true`` or ``pred`` (as scikit-learn computes it)."""
    scores = []
    for c in range(n_classes):
        tp = int(((pred == c) & (true == c)).sum())
        fp = int(((pred == c) & (true != c)).sum())
        fn = int(((pred != c) & (true == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _mean_over_ranks(accelerator: Any, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean"))


def train(
    run: RunConfig,
    reporter: Reporter,
    cache_dir: str | Path,
    data: PreparedData | None = None,
    model_out: list[torch.nn.Module] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    save_every: int | None = None,
    keep_checkpoints: int = 1,
    resume: bool = True,
) -> TrainResult:
    """Train one run to its step budget (or until the reporter says stop); return what it did.

    Trials pass none of the keyword-only arguments. Full runs (``hpo train``) pass ``checkpoint_dir``:
    a checkpoint is then written every ``save_every`` steps (default: at every eval), at the last step and
    when the reporter stops the run, the newest ``keep_checkpoints`` are kept, and with ``resume`` the run
    continues from the newest one there, exactly as if it had not been interrupted (same batches, same
    dropout masks); from a checkpoint of the last step, it only returns the result.
    """
    from transformers import get_scheduler, set_seed

    t0 = time.perf_counter()
    t = run.training
    # 1. seed: the same seed gives the same initial weights and batch order for every trial.
    set_seed(t.seed)
    # 2. data: tokenised once per study; later calls load the cached arrays.
    if data is None:
        data = prepare(run, cache_dir)
    accelerator = _accelerator(run)
    device = accelerator.device
    _check_batch_fits(run, data, accelerator.num_processes)
    # 3. model, with the run's config overrides (dropout, ...).
    model = build_model(run, data)
    # 4. optimizer and schedule.
    steps = total_steps(run, len(data.train_ids), accelerator.num_processes)
    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * steps)
    optimizer = _optimizer(model, run)
    # accelerate steps a prepared scheduler once per process at each optimizer step (its convention for
    # sharded dataloaders), so the schedule is laid out over steps x processes; one process: unchanged.
    world = accelerator.num_processes
    scheduler = get_scheduler(
        t.lr_scheduler_type, optimizer, num_warmup_steps=warmup * world, num_training_steps=steps * world
    )
    # 5. prepare: device placement and mixed precision.
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    batches = _batches(
        len(data.train_ids), t.per_device_train_batch_size, t.seed, accelerator.process_index, accelerator.num_processes
    )
    eval_every = t.eval_steps or max(1, steps // 10)
    setup_time = time.perf_counter() - t0

    # 6. loop with periodic eval.
    train_time = eval_time = 0.0
    tokens = 0
    log_loss, log_n, log_tokens, log_t = 0.0, 0, 0, 0.0
    metrics: dict[str, float] = {}
    evals: list[tuple[int, dict[str, float]]] = []
    stopped: str | None = None
    step = 0
    first_loss: float | None = None
    ckpt: Checkpoints | None = None
    resumed_from: int | None = None
    if checkpoint_dir is not None:
        ckpt = Checkpoints(checkpoint_dir, accelerator, run, keep=keep_checkpoints)
        saved = ckpt.load_latest() if resume else None
        if saved is not None:
            step = resumed_from = int(saved["step"])
            tokens, train_time, eval_time = int(saved["tokens"]), float(saved["train_time"]), float(saved["eval_time"])
            metrics = dict(saved["metrics"])
            evals = [(int(s), dict(m)) for s, m in saved["evals"]]
            log_loss, log_n, log_tokens, log_t = saved["log"]
            for _ in range(step * t.gradient_accumulation_steps):  # the batch order goes on where it stopped
                next(batches)
    reporter.on_start(step, steps)

    def loop_state() -> dict[str, Any]:
        return {
            "steps": steps,
            "tokens": tokens,
            "train_time": train_time,
            "eval_time": eval_time,
            "metrics": metrics,
            "evals": evals,
            "log": [log_loss, log_n, log_tokens, log_t],
        }

    while step < steps:
        stopped = reporter.stop_reason()
        if stopped is not None:
            break
        ts = time.perf_counter()
        step_loss = 0.0
        for _ in range(t.gradient_accumulation_steps):
            batch = _to_batch(data, "train", next(batches), run.task, device)
            loss = model(**batch).loss / t.gradient_accumulation_steps
            accelerator.backward(loss)
            step_loss += float(loss.detach())
            tokens += _tokens(batch)
            log_tokens += _tokens(batch)
        if not math.isfinite(step_loss):
            raise NonFiniteLoss(step + 1, step_loss)
        if first_loss is None:  # before any update: where this run starts (or resumes)
            first_loss = _mean_over_ranks(accelerator, step_loss)
        if t.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - ts
        train_time += dt
        log_loss, log_n, log_t = log_loss + step_loss, log_n + 1, log_t + dt
        if step % t.logging_steps == 0 or step == steps:
            # Every rank takes the same divergence decision (a rank that stopped alone would hang the others).
            mean_loss, window = _mean_over_ranks(accelerator, log_loss / log_n), log_n
            reporter.on_log(
                step,
                {
                    "train_loss": mean_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "tokens_per_s": log_tokens / log_t if log_t > 0 else 0.0,
                },
            )
            log_loss, log_n, log_tokens, log_t = 0.0, 0, 0, 0.0
            if first_loss is not None and diverged(mean_loss, first_loss):
                raise Diverged(step, mean_loss, first_loss, window)
        if step % eval_every == 0 or step == steps:
            te = time.perf_counter()
            metrics = evaluate(model, data, run, device)
            eval_time += time.perf_counter() - te
            evals.append((step, metrics))
            reporter.on_eval(step, metrics)
        reporter.on_step(step)
        if ckpt is not None and (step == steps or step % (save_every or eval_every) == 0):
            # The finished run too: if saving the model fails (disk full), the next run only saves.
            ckpt.save(step, loop_state())

    if ckpt is not None and stopped is not None and step > 0 and ckpt.last_saved != step:
        ckpt.save(step, loop_state())  # stopped (Ctrl-C): resume from exactly here
    if model_out is not None:
        model_out.append(accelerator.unwrap_model(model))
    # 7. metrics of the last evaluation (a run stopped before its first eval has none).
    return TrainResult(
        metrics=metrics,
        steps=step,
        train_time=train_time,
        eval_time=eval_time,
        setup_time=setup_time,
        tokens=tokens,
        device=str(device),
        precision=accelerator.mixed_precision,
        stopped=stopped,
        evals=evals,
        resumed_from=resumed_from,
    )
