"""Generation tasks in a study: what the study file must agree on, and what the pruner is shown.

Validation (``check_generation``, ``architecture_problem``, ``pair_columns``): the keys of generation tasks
(``data.source_column`` ..., the ``generation`` section) only on generation tasks, a model architecture that
fits the task (an encoder-decoder for seq2seq, a decoder for causal LM), the decode-only study
(``fidelity.max_steps: 0``: a trained model, only ``generation.*`` searched), and ``generation.at_steps``
(eval steps of the trials).

The pruning proxy (``pruning_value``): the generation metrics (ROUGE, BLEU, ...) are computed at the final
eval only, since decoding costs ~10x a loss-only eval. Every intermediate eval reports the *proxy*, the eval
loss on the eval batches, to the pruner, and the final eval too, so every value a pruner compares at any
step is the same quantity. The proxy is reported in the objective's direction: the generation metrics are
all maximised, so the value reported is ``-eval_loss`` (higher is better, like the objective). Optuna's
pruners compare a trial's intermediate values only with other trials' intermediate values (never with
final values), so they rank trials by the proxy consistently; the trial's final value (what TPE learns
from and what "best" means) is the generation metric. ``threshold`` pruning, whose bounds would be in the
proxy's units, is refused for generation objectives. Evals that decode before the end
(``generation.at_steps``) record their ROUGE & co in the curves table; the pruner still sees the proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainers.config import GENERATION_DATA_KEYS
from trainers.textmetrics import GENERATION_METRICS

if TYPE_CHECKING:
    from hpo.config import StudyConfig

PROXY_METRIC = "eval_loss"
_GEN_TASKS = "seq2seq, or causal_lm with data.prompt_column"


def generates(cfg: StudyConfig) -> bool:
    return cfg.task == "seq2seq" or (cfg.task == "causal_lm" and cfg.data.prompt_column is not None)


def uses_proxy(metric: str) -> bool:
    """Whether intermediate evals report the proxy instead of ``metric`` (a metric of generated text)."""
    return metric in GENERATION_METRICS


def pruning_value(metric: str, direction: str, metrics: dict[str, float]) -> tuple[str, float] | None:
    """(what is reported, value) for the pruner from an eval's metrics, or None when there is nothing to report.

    A generation objective reports the proxy at every eval (``-eval_loss`` when maximising); any other
    objective reports itself.
    """
    if not uses_proxy(metric):
        value = metrics.get(metric)
        return None if value is None else (metric, value)
    loss = metrics.get(PROXY_METRIC)
    if loss is None:
        return None
    return ("-" + PROXY_METRIC, -loss) if direction == "maximize" else (PROXY_METRIC, loss)


def pair_columns(cfg: StudyConfig) -> list[tuple[str, str]] | None:
    """(key, column) a generation task reads from its data files, or None for other tasks."""
    if not generates(cfg):
        return None
    d = cfg.data
    src = (
        ("data.prompt_column", d.prompt_column) if cfg.task == "causal_lm" else ("data.source_column", d.source_column)
    )
    return [(src[0], src[1] or "source"), ("data.target_column", d.target_column or "target")]


def check_generation(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Cross-checks of generation keys, the decode-only study and the pruner; (key, message) per problem."""
    problems: list[tuple[str, str]] = []
    d = cfg.data
    gen = generates(cfg)
    if d.prompt_column is not None and cfg.task != "causal_lm":
        problems.append(("data.prompt_column", "only applies to causal_lm (prompt -> completion); seq2seq reads "
                         "data.source_column"))  # fmt: skip
    elif not gen:
        for k in GENERATION_DATA_KEYS:
            if getattr(d, k) is not None:
                problems.append((f"data.{k}", f"only applies to generation tasks ({_GEN_TASKS})"))
        if cfg.generation is not None:
            problems.append(("generation", f"only applies to generation tasks ({_GEN_TASKS})"))
        for path in cfg.search_space:
            if path.startswith("generation."):
                problems.append(
                    (f"search_space[{path}]", f"decoding is searched only in generation tasks ({_GEN_TASKS})")
                )
    if d.builtin == "bbc_headlines" and not gen:
        problems.append(("data.builtin", f"'bbc_headlines' is a generation corpus: use it with {_GEN_TASKS}"))
    elif d.builtin is not None and d.builtin != "bbc_headlines" and gen:
        problems.append(("data.builtin", f"{d.builtin!r} has no (source, target) pairs; bbc_headlines has"))
    elif d.builtin == "bbc_headlines":
        for key, col in pair_columns(cfg) or []:
            if col not in ("source", "target"):
                problems.append(
                    (key, f"no column {col!r} in built-in corpus 'bbc_headlines' (columns: source, target)")
                )
    if gen and cfg.task == "causal_lm" and (d.max_target_length or 0) >= d.max_length - 3:
        problems.append(("data.max_target_length", f"{d.max_target_length} leaves no room for the prompt in "
                         f"data.max_length={d.max_length}"))  # fmt: skip
    if cfg.fidelity.max_steps == 0:
        problems += _check_decode_only(cfg, gen)
    if gen and cfg.generation is not None and cfg.generation.at_steps:
        problems += _check_at_steps(cfg, cfg.generation.at_steps)
    if uses_proxy(cfg.metric) and cfg.pruner.name == "threshold":
        problems.append(("pruner", f"threshold bounds would apply to the pruning proxy ({PROXY_METRIC}), not to "
                         f"{cfg.metric}: use another pruner"))  # fmt: skip
    return problems


def _check_at_steps(cfg: StudyConfig, steps: list[int]) -> list[tuple[str, str]]:
    """``generation.at_steps`` names eval steps of the trials: multiples of ``eval_every``, within ``max_steps``."""
    f = cfg.fidelity
    if f.max_steps is None:
        return [("generation.at_steps", f"names optimizer steps, but the trial length is in {f.unit} "
                 "(give it as fidelity.max_steps)")]  # fmt: skip
    off = [s for s in steps if s % f.eval_every != 0]
    if off:
        return [("generation.at_steps", f"{', '.join(map(str, off))}: not an eval step (a multiple of "
                 f"fidelity.eval_every={f.eval_every})")]  # fmt: skip
    late = [s for s in steps if s > f.max_steps]
    if late:
        return [("generation.at_steps", f"{', '.join(map(str, late))}: after the trials end "
                 f"(fidelity.max_steps={f.max_steps})")]  # fmt: skip
    return []


def _check_decode_only(cfg: StudyConfig, gen: bool) -> list[tuple[str, str]]:
    if not gen:
        return [("fidelity.max_steps", f"0 means a decode-only study, which needs a generation task ({_GEN_TASKS})")]
    problems: list[tuple[str, str]] = []
    if cfg.model.from_config is not None:
        problems.append(("model.from_config", "a decode-only study (fidelity.max_steps: 0) decodes a trained "
                         "model: point model.name_or_path at one (`hpo train` output, "
                         "save_pretrained folder)"))  # fmt: skip
    if cfg.model.peft is not None:
        problems.append(("model.peft", "a decode-only study (fidelity.max_steps: 0) trains no adapter"))
    for path in cfg.search_space:
        if not path.startswith("generation."):
            problems.append((f"search_space[{path}]", "a decode-only study (fidelity.max_steps: 0) trains nothing: "
                             "search generation.* keys only"))  # fmt: skip
    return problems


def architecture_problem(task: str, model_type: str) -> str | None:
    """Why ``model_type`` cannot run ``task`` (a decoder-only model for seq2seq, or the reverse), or None."""
    from hpo.modelkeys import task_model_types  # read from transformers' source: validating stays light

    seq2seq = task_model_types("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES")
    causal = task_model_types("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")
    if task == "seq2seq" and model_type not in seq2seq:
        kind = "a decoder-only model" if model_type in causal else "not a sequence-to-sequence model"
        return f"{model_type!r} is {kind}; task seq2seq needs an encoder-decoder (e.g. t5, bart, mt5, pegasus)"
    if task == "causal_lm" and model_type not in causal and model_type in seq2seq:
        return f"{model_type!r} is an encoder-decoder; use task seq2seq for it (causal_lm needs a decoder, e.g. gpt2)"
    return None
