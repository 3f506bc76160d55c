"""What a trainer takes besides its config (a reporter) and what it returns (a result).

Trainers know nothing of Optuna: they call ``reporter.on_eval`` at each evaluation and ask
``reporter.stop_reason()`` between optimizer steps. The orchestrator's adapter (``hpo.worker``) turns
these into ``trial.report`` / ``should_prune`` decisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


class Reporter:
    """What a trainer talks to. Every hook does nothing here: a reporter subclasses this and overrides the
    hooks it needs, and the trainer calls all of them."""

    def on_start(self, step: int, total_steps: int) -> None:
        """Once before the first optimizer step (``step`` > 0 after a resume from a checkpoint)."""

    def on_step(self, step: int) -> None:
        """After every optimizer step."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Training curves: train loss, learning rate, tokens/s (every ``logging_steps``)."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Eval metrics at ``step`` (every ``eval_steps`` and at the end)."""

    def stop_reason(self) -> str | None:
        """A reason to stop now (pruned, interrupted), or None to go on."""
        return None


class NullReporter(Reporter):
    """Reporter for runs nobody watches step by step (``hpo train`` without a display, tests)."""


class ConfigError(ValueError):
    """A mistake in the run configuration that shows only while running (a dirty data row, a model that does
    not load, a batch larger than the data): ``key`` is the setting to fix (``data.text_column``), so the
    orchestrator can report it as ``STUDYFILE: key: message`` like a mistake found by validation."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class CheckpointMismatch(ValueError):
    """A checkpoint that cannot resume this run (another configuration, another number of processes)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, ...); the earlier ones are intact."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run cannot go on."""

    def __init__(self, step: int, value: float, message: str | None = None) -> None:
        self.step = step
        self.value = value
        super().__init__(message or f"non-finite training loss ({value}) at step {step}")


# A run has diverged when its training loss, averaged over a logging window (``logging_steps``), exceeds
# DIVERGED_FACTOR times the loss of its first step and is at least DIVERGED_MARGIN above it. Healthy runs
# never come close: the quickstart's tiny GPT-2 starts at 7.6 and peaks at 1.2x that with learning rates up
# to 0.1, while learning rates of 1 to 10 reach 5x to 1 000x within 20 steps. The margin keeps a model that
# starts near zero loss (already fine-tuned) from counting ordinary noise as divergence.
DIVERGED_FACTOR = 3.0
DIVERGED_MARGIN = 1.0


def diverged(loss: float, first: float) -> bool:
    return loss > max(DIVERGED_FACTOR * first, first + DIVERGED_MARGIN)


class Diverged(NonFiniteLoss):
    """The training loss exploded far above where it started (``diverged``): the run cannot recover usefully,
    and its final metric (perplexity 1e17, or a capped value shared by every such run) would mislead."""

    def __init__(self, step: int, value: float, first: float, window: int) -> None:
        self.first = first
        super().__init__(
            step,
            value,
            f"diverged: training loss {value:.4g} (mean of the last {window} steps) at step {step} is over "
            f"{DIVERGED_FACTOR:g}x the first step's {first:.4g}",
        )


@dataclass
class TrainResult:
    """What one run did. Times are seconds of wall clock inside the run."""

    metrics: dict[str, float]  # last eval's metrics
    steps: int  # optimizer steps done
    train_time: float  # forward/backward/optimizer steps
    eval_time: float  # evaluation passes
    setup_time: float  # model build, data loading, accelerator set-up
    tokens: int  # training tokens processed (non-padding)
    device: str
    precision: str
    stopped: str | None = None  # why the run ended early, if it did
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    resumed_from: int | None = None  # the checkpoint step the run resumed from, if it did
    trainable_params: int | None = None  # parameters the optimizer updates (with LoRA: the adapter's)
    total_params: int | None = None  # every parameter of the model (with LoRA: base + adapter)
    # CUDA: the most memory torch allocated on the device during the run (torch.cuda.max_memory_allocated).
    # CPU: the process's peak resident set size so far (getrusage ru_maxrss): process-wide and never
    # lowered, so in a worker that ran earlier trials it is at least their peak.
    peak_memory_mb: float | None = None
    # Generation tasks: a few (source, reference, prediction) of the final eval, for whoever shows them.
    examples: list[dict[str, str]] | None = None
    latency_ms: float | None = None  # inference per example on the first eval batch (``trainers.latency``), when asked
    teacher_time: float | None = None  # distillation: seconds in teacher forward passes (inside train_time)
    data_clean: dict[str, Any] | None = None  # data.clean: rows each rule removed, per split
    tokenizer_note: str | None = None  # what hpo changed in the tokenizer (PreparedData.tokenizer_note)
    # The trained model (unwrapped from accelerate), for whoever saves it (``hpo train``). Not part of
    # ``to_dict``, which is what leaves the process: a worker keeps no model past its trial.
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_time if self.train_time > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, model=None))
        del d["model"]
        d["tokens_per_s"] = self.tokens_per_s
        return d


class _NoHubKernelNotice:
    """A logging filter: drops bitsandbytes' notice that a Hub kernel could not be loaded."""

    def filter(self, record: Any) -> bool:
        return "from kernels-community" not in record.getMessage()


_NO_HUB_KERNEL_NOTICE = _NoHubKernelNotice()


def quiet_libraries() -> None:
    """Silence library chatter that says nothing about the user's study (warnings, transformers' logs and
    progress bars, accelerate's logs).

    This changes the whole process: call it from a process's entry point only (the ``hpo train`` command, a
    worker process, a rank), never from library code. It imports nothing: transformers and huggingface_hub
    read their environment variables when imported (a process's own ``TRANSFORMERS_VERBOSITY`` wins).
    """
    import logging
    import os
    import sys
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers = sys.modules.get("transformers")
    if transformers is not None:  # imported already: its environment was read then
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    # transformers.trainer_utils imports peft when installed, and peft imports bitsandbytes, whose CPU backend
    # logs a warning when it cannot fetch an optional kernel from the Hub (never here: offline, no `kernels`)
    # in every process, QLoRA or not. Its fallback kernel is the one tested; other bitsandbytes warnings stay.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_HUB_KERNEL_NOTICE)  # one instance: added once
