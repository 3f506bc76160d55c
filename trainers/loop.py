"""The training function every trial and every full run goes through.

It reads top to bottom like accelerate's ``nlp_example.py``: seed, data, model, optimizer and scheduler,
``prepare`` (the training DataLoader too: accelerate shards it and places the batches), then the loop with
periodic evaluation, and the metrics at the end, returned with the trained model (``TrainResult``).
Everything the loop carries from step to step is one ``LoopState``, checkpointed with accelerate's
``save_state`` as a whole; a resumed run skips to its place in the batch order (``BatchOrder``, a function
of the seed and the epoch) with ``skip_first_batches``. It knows nothing of Optuna; it talks to whoever runs
it through a ``Reporter``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers import generation
from trainers.augment import Augmenter
from trainers.base import ConfigError, Diverged, NonFiniteLoss, Reporter, TrainResult, diverged
from trainers.checkpoints import Checkpoints
from trainers.config import GenerationConfig, RunConfig
from trainers.data import PreparedData, prepare
from trainers.distill import distiller_for
from trainers.models import build_model, parameter_counts


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
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState

    use_cpu = run.training.use_cpu or not torch.cuda.is_available()
    precision = mixed_precision(run, "cpu" if use_cpu else "cuda")
    state = AcceleratorState._shared_state
    if state and (state.get("mixed_precision") not in (None, precision)):
        # One process, many runs: accelerate keeps a singleton state; a new precision needs a reset, and
        # accelerate has no public way to reset it (its own tests call this).
        AcceleratorState._reset_state(reset_partial_state=False)
    # Ranks may hold one batch more than others per epoch (see BatchOrder): each rank keeps its own count
    # instead of accelerate repeating the first batches to even them out.
    return Accelerator(
        mixed_precision=precision, cpu=use_cpu, dataloader_config=DataLoaderConfiguration(even_batches=False)
    )


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


class BatchOrder:
    """The training batches of one epoch, as index lists, for a DataLoader prepared by accelerate.

    Epoch ``e`` shuffles with the ``e+1``-th permutation drawn from a generator seeded with the run's seed;
    rank ``r`` of ``world`` takes ``permutation[r::world]`` and cuts it into full batches. The batches are
    yielded round by round (rank 0's first, rank 1's first, ..., rank 0's second, ...), which is how
    accelerate's ``BatchSamplerShard`` deals them out again: each rank gets exactly its own shard, the
    batches every trial has trained on since before accelerate prepared the data (so results do not change).
    The epoch is set by the loop (``epoch``), not through accelerate's ``set_epoch``, which does not reach
    a batch sampler under its shard and skip wrappers.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world: int) -> None:
        self.n, self.batch_size, self.seed, self.world = n, batch_size, seed, world
        self.drop_last = False  # the last round is partial when ranks differ by a batch: keep it
        self.epoch = 0
        self._rng = np.random.default_rng(seed)
        self._drawn = 0  # permutations drawn from _rng so far; the last one is _order
        self._order = np.arange(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch < self._drawn - 1:  # an earlier epoch: draw again from the seed
            self._rng, self._drawn = np.random.default_rng(self.seed), 0
        while self._drawn <= epoch:  # a later one: the permutations of the epochs between are drawn too
            self._order = self._rng.permutation(self.n)
            self._drawn += 1
        return self._order

    def _shards(self) -> list[np.ndarray]:
        order = self._permutation(self.epoch)
        return [order[r :: self.world] for r in range(self.world)]

    def per_rank(self, rank: int) -> int:
        """Batches of ``rank`` in each epoch."""
        return len(range(rank, self.n, self.world)) // self.batch_size

    def __len__(self) -> int:
        return sum(self.per_rank(r) for r in range(self.world))

    def __iter__(self) -> Iterator[list[int]]:
        shards, bs = self._shards(), self.batch_size
        for i in range(self.per_rank(0)):
            for shard in shards:
                if (i + 1) * bs <= len(shard):
                    yield shard[i * bs : (i + 1) * bs].tolist()


def _check_batch_fits(run: RunConfig, data: PreparedData, world: int) -> None:
    """Refuse a batch larger than the training set (a process's share of it): the batch order cuts full
    batches only, so an epoch would hold none (before, a trial trained on one short batch per step while it
    was recorded with the larger size)."""
    bs = run.training.per_device_train_batch_size
    n = len(data.train_ids)
    if n // world < bs:
        unit = f"blocks of data.max_length={run.data.max_length} tokens" if run.task == "causal_lm" else "examples"
        per = f" ({n // world} per process on {world} processes)" if world > 1 else ""
        raise ConfigError(
            "training.per_device_train_batch_size",
            f"a batch of {bs} is larger than the training set: {n} {unit}{per}",
        )


class _Indices(torch.utils.data.Dataset[int]):
    """Row numbers of the training split: the batch is cut from the arrays at once, in ``collate_fn``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _train_loader(data: PreparedData, run: RunConfig, order: BatchOrder) -> torch.utils.data.DataLoader[int]:
    """The training batches on the CPU; ``accelerator.prepare`` shards them and moves them to the device.
    With ``data.augment``, each batch is augmented as it is cut (seeded by the run's seed, epoch and row)."""
    cpu = torch.device("cpu")
    aug = Augmenter(run.data.augment, run.task, run.training.seed) if run.data.augment is not None else None

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        batch = _to_batch(data, "train", np.asarray(rows), run, cpu)
        return aug(batch, data, np.asarray(rows), order.epoch) if aug is not None else batch

    return torch.utils.data.DataLoader(
        _Indices(len(data.train_ids)),
        batch_sampler=order,
        collate_fn=collate,
        # Its own generator: each pass over a DataLoader draws a seed from it, which would otherwise come
        # from torch's global generator and shift every dropout mask after it.
        generator=torch.Generator(),
    )


def _micro_batches(
    accelerator: Any, loader: Any, order: BatchOrder, start: int
) -> Generator[dict[str, torch.Tensor], None, None]:
    """Endless micro-batches from the ``start``-th of the run on (a resumed run: where it stopped), epoch
    after epoch. The epoch and the place in it follow from ``start``: the batch order is a function of the
    seed and the epoch, so nothing of it needs saving."""
    epoch, skip = divmod(start, order.per_rank(accelerator.process_index))
    while True:
        order.epoch = epoch
        part = accelerator.skip_first_batches(loader, skip) if skip else loader
        try:
            yield from part
        finally:
            # Stopped inside an epoch (the run's last step): take the loader out of accelerate's process-wide
            # list of active loaders, as finishing the epoch does, so no loader outlives its run.
            part.end()
        epoch, skip = epoch + 1, 0


@dataclass
class LoopState:
    """What the training loop carries from step to step; checkpointed and restored as a whole.

    Registered with ``accelerator.register_for_checkpointing``: ``save_state`` / ``load_state`` write it next
    to the model, optimizer, scheduler and RNG states. The model, optimizer and RNGs are accelerate's; the
    batch order is a function of the seed (in the config a checkpoint is tied to) and ``batches``.
    """

    step: int = 0  # optimizer steps done
    batches: int = 0  # micro-batches drawn from the batch order (the same count on every rank)
    tokens: int = 0  # training tokens processed (non-padding)
    train_time: float = 0.0
    eval_time: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # of the last eval
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    # The logging window since the last on_log: summed step losses, steps, tokens and seconds.
    window_loss: float = 0.0
    window_steps: int = 0
    window_tokens: int = 0
    window_time: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in LoopState(**state).__dict__.items():
            setattr(self, name, value)
        self.evals = [(int(s), dict(m)) for s, m in self.evals]

    def close_window(self) -> None:
        self.window_loss, self.window_steps, self.window_tokens, self.window_time = 0.0, 0, 0, 0.0


def _to_batch(
    data: PreparedData, split: str, idx: np.ndarray, run: RunConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    if run.generates:
        return generation.to_batch(data, split, idx, device)
    return task_batch(data, split, idx, run.task, device)


def task_batch(
    data: PreparedData, split: str, idx: np.ndarray, task: str, device: torch.device
) -> dict[str, torch.Tensor]:
    """The rows ``idx`` of a split as model inputs with labels, for the plain (non-generating) tasks; also
    what ``hpo ensemble`` / ``hpo compress`` score members on."""
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
        batch = _to_batch(data, "eval", idx, run, device)
        out = model(**batch)
        if run.generates:
            w = generation.label_tokens(batch)  # the loss is a mean over target tokens only
        else:
            w = _tokens(batch) if run.task == "causal_lm" else len(idx)
        loss_sum += float(out.loss) * w
        weight += w
        if run.task == "sequence_classification":
            preds.append(out.logits.argmax(-1).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    model.train()
    loss = loss_sum / max(weight, 1)
    metrics = {"eval_loss": loss}
    if run.task != "sequence_classification":
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


LATENCY_ROWS = 8


def _latency(model: torch.nn.Module, data: PreparedData, run: RunConfig, device: torch.device) -> float:
    from trainers.latency import latency_ms

    return latency_ms(model, _to_batch(data, "eval", latency_rows(data, run), run, device), device)


def latency_rows(data: PreparedData, run: RunConfig) -> np.ndarray:
    """The eval rows latency is measured on: the first rows of the eval split (at most one eval batch, at most
    ``LATENCY_ROWS``: timing costs a few passes per trial), the same rows for every trial."""
    return np.arange(0, min(run.training.per_device_eval_batch_size, LATENCY_ROWS, len(data.eval_ids)))


def _peak_memory_mb(device: torch.device) -> float:
    """See ``TrainResult.peak_memory_mb``: what each device type can measure."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _mean_over_ranks(accelerator: Any, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean"))


def apply_settings(optimizer: Any, scheduler: Any, settings: dict[str, float], clip: float) -> float:
    """Write scheduled settings (``RunConfig.schedule``) into the optimizer and scheduler; return the
    gradient-clipping norm in force.

    A new learning rate is a new peak of the same warm-up/decay curve, taken at the position the run has
    reached. Values already in force are left alone, so a run whose schedule changes nothing (or an
    ordinary resume) computes bit for bit what it did before.
    """
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds the torch scheduler
    lr = settings.get("training.learning_rate")
    decay = settings.get("training.weight_decay")
    for i, group in enumerate(optimizer.param_groups):
        if lr is not None and inner.base_lrs[i] != lr:
            factor = group["lr"] / inner.base_lrs[i] if inner.base_lrs[i] else 0.0
            group["lr"] = lr * factor
            group["initial_lr"] = lr
            inner.base_lrs[i] = lr
        if decay is not None and i == 0 and group["weight_decay"] != decay:  # group 1 (biases, norms): no decay
            group["weight_decay"] = decay
    return settings.get("training.max_grad_norm", clip)


def train(
    run: RunConfig,
    reporter: Reporter,
    cache_dir: str | Path,
    data: PreparedData | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    save_every: int | None = None,
    keep_checkpoints: int = 1,
    resume: bool = True,
) -> TrainResult:
    """Train one run to its step budget (or until the reporter says stop); return what it did, with the
    trained model (``TrainResult.model``).

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
    world = accelerator.num_processes
    if not run.decode_only:
        _check_batch_fits(run, data, world)
    # 3. model, with the run's config overrides (dropout, ...).
    model = build_model(run, data)
    trainable, total = parameter_counts(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if run.decode_only:  # a decode-only study: the model as loaded, evaluated and decoded, nothing trained
        return _decode_only(run, reporter, data, accelerator, model, time.perf_counter() - t0, (trainable, total))
    # 4. optimizer and schedule.
    steps = total_steps(run, len(data.train_ids), world)
    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * steps)
    optimizer = _optimizer(model, run)
    # accelerate steps a prepared scheduler once per process at each optimizer step (its convention for
    # sharded dataloaders), so the schedule is laid out over steps x processes; one process: unchanged.
    scheduler = get_scheduler(
        t.lr_scheduler_type, optimizer, num_warmup_steps=warmup * world, num_training_steps=steps * world
    )
    order = BatchOrder(len(data.train_ids), t.per_device_train_batch_size, t.seed, world)
    # 5. prepare: device placement, mixed precision, and each process its shard of the batches.
    loader = _train_loader(data, run, order)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    model.train()
    # The loss of a micro-batch: the model's own, or a teacher's softened outputs mixed in (distillation).
    loss_fn = distiller_for(run, accelerator.unwrap_model(model), device, data, accelerator.autocast)
    eval_every = t.eval_steps or max(1, steps // 10)
    setup_time = time.perf_counter() - t0

    # 6. loop with periodic eval.
    state = LoopState()
    stopped: str | None = None
    examples: list[dict[str, str]] | None = None  # generation: (source, reference, prediction) of the final eval
    first_loss: float | None = None  # not checkpointed: divergence is judged from where this run starts
    ckpt: Checkpoints | None = None
    resumed_from: int | None = None
    if checkpoint_dir is not None:
        ckpt = Checkpoints(checkpoint_dir, accelerator, run, state, keep=keep_checkpoints)
        if resume and ckpt.load_latest():
            resumed_from = state.step
    batches = _micro_batches(accelerator, loader, order, state.batches)
    clip = apply_settings(optimizer, scheduler, run.settings_at(state.step), t.max_grad_norm)
    changes = {s.step for s in run.schedule}
    reporter.on_start(state.step, steps)

    try:
        while state.step < steps:
            stopped = reporter.stop_reason()
            if stopped is not None:
                break
            if state.step in changes:
                clip = apply_settings(optimizer, scheduler, run.settings_at(state.step), clip)
            ts = time.perf_counter()
            step_loss = 0.0
            for _ in range(t.gradient_accumulation_steps):
                batch = next(batches)
                state.batches += 1
                loss = loss_fn(model, batch) / t.gradient_accumulation_steps
                accelerator.backward(loss)
                step_loss += float(loss.detach())
                state.tokens += _tokens(batch)
                state.window_tokens += _tokens(batch)
            if not math.isfinite(step_loss):
                raise NonFiniteLoss(state.step + 1, step_loss)
            if first_loss is None:  # before any update: where this run starts (or resumes)
                first_loss = _mean_over_ranks(accelerator, step_loss)
            if clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            step = state.step
            dt = time.perf_counter() - ts
            state.train_time += dt
            state.window_loss += step_loss
            state.window_steps += 1
            state.window_time += dt
            if step % t.logging_steps == 0 or step == steps:
                # Every rank takes the same divergence decision (a rank that stopped alone would hang the others).
                mean_loss = _mean_over_ranks(accelerator, state.window_loss / state.window_steps)
                window = state.window_steps
                reporter.on_log(
                    step,
                    {
                        "train_loss": mean_loss,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "tokens_per_s": state.window_tokens / state.window_time if state.window_time > 0 else 0.0,
                    },
                )
                state.close_window()
                if first_loss is not None and diverged(mean_loss, first_loss):
                    raise Diverged(step, mean_loss, first_loss, window)
            if step % eval_every == 0 or step == steps:
                te = time.perf_counter()
                state.metrics = evaluate(model, data, run, device)
                # Decoding is ~10x an eval: at the final eval, and at the steps the user named (generation.at_steps)
                if run.generates and (step == steps or step in (run.generation or GenerationConfig()).at_steps):
                    generated, shown = generation.generate_and_score(model, data, run, device)
                    state.metrics.update(generated)
                    if step == steps:  # the examples a trial keeps are its final eval's
                        examples = shown
                state.eval_time += time.perf_counter() - te
                state.evals.append((step, state.metrics))
                reporter.on_eval(step, state.metrics)
            reporter.on_step(step)
            if ckpt is not None and (step == steps or step % (save_every or eval_every) == 0):
                # The finished run too: if saving the model fails (disk full), the next run only saves.
                ckpt.save(step)
    finally:
        batches.close()

    if ckpt is not None and stopped is not None and state.step > 0 and ckpt.last_saved != state.step:
        ckpt.save(state.step)  # stopped (Ctrl-C): resume from exactly here
    # 7. metrics of the last evaluation (a run stopped before its first eval has none).
    return TrainResult(
        examples=examples,
        metrics=state.metrics,
        steps=state.step,
        train_time=state.train_time,
        eval_time=state.eval_time,
        setup_time=setup_time,
        tokens=state.tokens,
        device=str(device),
        precision=accelerator.mixed_precision,
        stopped=stopped,
        evals=state.evals,
        resumed_from=resumed_from,
        trainable_params=trainable,
        total_params=total,
        peak_memory_mb=_peak_memory_mb(device),
        latency_ms=_latency(accelerator.unwrap_model(model), data, run, device) if run.measure_latency else None,
        teacher_time=getattr(loss_fn, "teacher_time", None),
        data_clean=data.clean_counts,
        tokenizer_note=data.tokenizer_note,
        model=accelerator.unwrap_model(model),
    )


def _decode_only(
    run: RunConfig,
    reporter: Reporter,
    data: PreparedData,
    accelerator: Any,
    model: Any,
    setup: float,
    params: tuple[int, int],
) -> TrainResult:
    """Evaluate and decode the model as loaded (a decode-only study searches decoding parameters only)."""
    model = accelerator.prepare(model)
    device = accelerator.device
    reporter.on_start(0, 0)
    te = time.perf_counter()
    metrics = evaluate(model, data, run, device)
    generated, examples = generation.generate_and_score(model, data, run, device)
    metrics.update(generated)
    eval_time = time.perf_counter() - te
    reporter.on_eval(0, metrics)
    return TrainResult(
        metrics=metrics,
        steps=0,
        train_time=0.0,
        eval_time=eval_time,
        setup_time=setup,
        tokens=0,
        device=str(device),
        precision=accelerator.mixed_precision,
        evals=[(0, metrics)],
        trainable_params=params[0],
        total_params=params[1],
        peak_memory_mb=_peak_memory_mb(device),
        model=accelerator.unwrap_model(model),
        examples=examples,
        tokenizer_note=data.tokenizer_note,
    )
