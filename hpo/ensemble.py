"""`hpo ensemble`: fusing a study's best trials into one predictor, measured against the best single model.

Members are the top-K complete trials' weights: those ``fidelity.save_models`` kept, else re-trained from
their exported configs at the trial's own length (``hpo export --trial-length`` + ``hpo train``: on CPU that
reproduces the trial's weights). The study's eval split is cut in two fixed halves: the *selection* half
chooses (Caruana's greedy forward selection of ensemble members, with replacement; the greedy soup's
members; which fusion is written), the *report* half measures, so the gain shown is not fitted to the
numbers it is reported on.

- Prediction ensemble: the weighted mean of the members' probabilities (classification: class
  probabilities; causal LM: next-token distributions), or with ``average="logits"`` (classification only)
  the weighted mean of their logits. ``Ensemble.logits`` returns, for probabilities, their log (softmax of
  it gives the averaged probabilities back).
- Model soups (``hpo.soup``): uniform and greedy weight averages where members share architecture and
  initialisation; otherwise skipped with the reason.

The output folder is a ``save_pretrained`` model for a soup, or an ensemble folder (``members/trial-N``
plus ``hpo_ensemble.json``); ``load(DIR)`` reads either and gives ``logits`` / ``probs`` / ``predict``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hpo.errors import HpoError

ENSEMBLE_FILE = "hpo_ensemble.json"  # in every folder `hpo ensemble` writes: what it is and what it measured
MEMBERS = "members"
Average = Literal["probs", "logits"]


# ------------------------------------------------------------------------------------- combining outputs
# Member outputs are arrays of log-probabilities: classification [n, classes]; causal LM [n, positions],
# the log-probability of each next token (all a probability average needs).


def combine(outputs: Sequence[np.ndarray], weights: Sequence[float], average: Average = "probs") -> np.ndarray:
    """The ensemble's log-probabilities from its members' (weighted mean of probabilities, or of logits)."""
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    if keep.sum() == 1:  # one member: its own output, exactly (no rounding through the average)
        return np.asarray(outputs[int(np.argmax(keep))])
    w = w[keep] / w[keep].sum()
    stack = np.stack([np.asarray(o, dtype=np.float64) for o, k in zip(outputs, keep, strict=True) if k])
    if average == "logits":
        # Log-probabilities differ from logits by a per-row constant, which the renormalisation removes.
        mean = np.tensordot(w, stack, axes=1)
        return mean - _logsumexp(mean, axis=-1, keepdims=True)
    return _logsumexp(stack + np.log(w).reshape((-1,) + (1,) * (stack.ndim - 1)), axis=0)  # log sum_i w_i p_i


def _logsumexp(a: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def metrics_of(logp: np.ndarray, labels: np.ndarray | None, task: str, n_classes: int | None) -> dict[str, float]:
    """The study's metrics from log-probabilities (what ``trainers.loop.evaluate`` reports)."""
    from trainers.loop import f1_macro

    if task == "causal_lm":
        loss = float(-logp.mean())
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    assert labels is not None and n_classes is not None
    pred = logp.argmax(-1)
    return {
        "eval_loss": float(-logp[np.arange(len(labels)), labels].mean()),
        "accuracy": float((pred == labels).mean()),
        "f1_macro": f1_macro(pred, labels, n_classes),
    }


def is_better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


def caruana(
    outputs: Sequence[np.ndarray],
    score: Any,
    direction: str,
    rounds: int,
    average: Average = "probs",
) -> tuple[list[int], float]:
    """Greedy forward selection with replacement (Caruana et al., 2004) on the selection split.

    Each round adds the member whose addition scores best (``score(logp) -> float``; ties: the lower index);
    returns the member counts of the best round (the weights) and that score.
    """
    counts = [0] * len(outputs)
    best_counts: list[int] = []
    best = math.nan
    for _ in range(rounds):
        trial_scores = []
        for i in range(len(outputs)):
            c = counts.copy()
            c[i] += 1
            trial_scores.append(score(combine(outputs, c, average)))
        pick = 0
        for i, s in enumerate(trial_scores):
            if is_better(s, trial_scores[pick], direction):
                pick = i
        counts[pick] += 1
        if not best_counts or is_better(trial_scores[pick], best, direction):
            best_counts, best = counts.copy(), trial_scores[pick]
    return best_counts, best


# ------------------------------------------------------------------------------------------- members


@dataclass
class Member:
    trial: int
    value: float  # the trial's objective, as the study recorded it
    path: Path  # a save_pretrained folder with the tokenizer and train_config.yaml
    run: Any  # trainers.config.RunConfig it was trained with
    retrained: bool = False


def _run_of(path: Path) -> Any:
    from hpo.export import load_train_file

    return load_train_file(path / "train_config.yaml").run_config()


def model_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification


def find_members(study_path: Path, top: int, say: Any = print) -> tuple[Any, list[Member]]:
    """The study's config and its top-``top`` trials' weights: saved ones, or re-trained (slow, said)."""
    from hpo.config import load_study_file
    from hpo.export import ranked_trials
    from hpo.saved_models import models_root, saved_models
    from hpo.storage import load_existing

    if top < 1:
        raise HpoError(f"--top must be at least 1, but got {top}")
    cfg = load_study_file(study_path)
    study = load_existing(cfg)
    if len(study.directions) > 1:
        raise HpoError(f"study {cfg.study.name!r} has several objectives: `hpo ensemble` needs one")
    ranked = ranked_trials(study)
    if top > len(ranked):
        raise HpoError(
            f"--top {top} is more than the {len(ranked)} complete trials of study {cfg.study.name!r}; "
            f"see `hpo status {study_path}`"
        )
    if cfg.model.peft is not None:
        raise HpoError(f"{study_path}: model.peft: LoRA trials save adapters; `hpo ensemble` needs whole models")
    root = models_root(cfg)
    saved = saved_models(study, root)
    members: list[Member] = []
    for t in ranked[:top]:
        assert t.value is not None
        if t.number in saved:
            members.append(Member(t.number, t.value, saved[t.number], _run_of(saved[t.number])))
            continue
        path = root / "retrained" / f"trial-{t.number}"
        if not (path / "metrics.json").is_file():
            say(f"trial {t.number}: no saved weights; re-training it at the trial's length into {path}")
            _retrain(study_path, t.number, path)
        members.append(Member(t.number, t.value, path, _run_of(path), retrained=True))
    return cfg, members


def _retrain(study_path: Path, trial: int, out: Path) -> None:
    import tempfile

    from hpo.export import export
    from hpo.train import train_file
    from trainers.base import NullReporter

    with tempfile.TemporaryDirectory(prefix="hpo-ensemble-") as tmp:
        (e,) = export(study_path, tmp, trial=trial, trial_length=True)
        train_file(e.files[0], out, force=True, reporter=NullReporter())


# ---------------------------------------------------------------------------------------- evaluation


@dataclass
class Split:
    """The study's eval rows, cut into a selection half and a report half (a fixed permutation: ``seed``)."""

    data: Any  # trainers.data.PreparedData
    selection: np.ndarray
    report: np.ndarray

    @classmethod
    def of(cls, data: Any, max_examples: int | None = None, seed: int = 0) -> Split:
        n = len(data.eval_ids)
        rows = np.random.default_rng(seed).permutation(n)
        if max_examples is not None:
            rows = rows[:max_examples]
        if len(rows) < 2:
            raise HpoError(f"the eval split has {len(rows)} rows: an ensemble needs at least 2 (selection, report)")
        half = len(rows) // 2
        return cls(data, np.sort(rows[:half]), np.sort(rows[half:]))

    def labels(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self.data.eval_labels is None else self.data.eval_labels[rows]


@torch.no_grad()
def outputs_of(model: Any, data: Any, rows: np.ndarray, task: str, batch_size: int) -> np.ndarray:
    """Log-probabilities of a model on these eval rows (see ``combine``)."""
    from trainers.loop import task_batch

    model.eval()
    out: list[np.ndarray] = []
    cpu = torch.device("cpu")
    for s in range(0, len(rows), batch_size):
        idx = rows[s : s + batch_size]
        batch = task_batch(data, "eval", idx, task, cpu)
        batch.pop("labels")
        logits = model(**batch).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        if task == "causal_lm":
            ids = batch["input_ids"]
            logp = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        out.append(logp.numpy())
    return np.concatenate(out)


def _latency_ms(models: Sequence[Any], data: Any, rows: np.ndarray, task: str, batch_size: int) -> float:
    """Milliseconds per example of all ``models`` in turn (the median of 3 passes over ``rows``)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for m in models:
            outputs_of(m, data, rows, task, batch_size)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / max(len(rows), 1)


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Candidate:
    name: str
    selection: float | None
    report: float | None
    params_x: float | None = None
    latency_ms: float | None = None
    detail: str = ""
    skipped: str | None = None  # why it was not built


@dataclass
class EnsembleResult:
    study: str
    metric: str
    direction: str
    members: list[Member]
    candidates: list[Candidate]
    chosen: str
    out_dir: Path | None
    weights: list[int] = field(default_factory=list)
    split: dict[str, int] = field(default_factory=dict)

    def best_single(self) -> Candidate:
        return self.candidates[0]

    def gain(self, c: Candidate) -> float | None:
        """Improvement over the best single model on the report half, in the metric's units (+ = better)."""
        b = self.best_single().report
        if c.report is None or b is None:
            return None
        return c.report - b if self.direction == "maximize" else b - c.report

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "metric": self.metric,
            "direction": self.direction,
            "members": [{"trial": m.trial, "value": m.value, "retrained": m.retrained} for m in self.members],
            "split": self.split,
            "candidates": [{**c.__dict__, "gain": self.gain(c)} for c in self.candidates],
            "chosen": self.chosen,
            "weights": self.weights,
        }


def ensemble(
    study_path: str | Path,
    top: int,
    out_dir: str | Path | None = None,
    kind: Literal["auto", "ensemble", "soup"] = "auto",
    average: Average = "probs",
    max_examples: int | None = None,
    rounds: int | None = None,
    force: bool = False,
    say: Any = print,
    split_seed: int = 0,
) -> EnsembleResult:
    """Build the prediction ensemble and the soups of a study's top trials, measure them, write the chosen one."""
    from hpo.api import cache_dir
    from hpo.soup import greedy_soup, incompatibility, uniform_soup
    from trainers.data import cache_key, prepare

    if kind not in ("auto", "ensemble", "soup"):
        raise HpoError(f"--kind must be auto, ensemble or soup, but got {kind!r}")
    if average not in ("probs", "logits"):
        raise HpoError(f"--average must be probs or logits, but got {average!r}")
    if max_examples is not None and max_examples < 2:
        raise HpoError(f"--max-examples must be at least 2, but got {max_examples}")
    study_path = Path(study_path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out(out, force)
    from hpo.config import load_study_file

    cfg0 = load_study_file(study_path)
    if average == "logits" and cfg0.task == "causal_lm":
        raise HpoError("--average logits is for classification; a causal LM ensemble averages next-token probabilities")
    cfg, members = find_members(study_path, top, say)
    metric, direction, task = cfg.metric, cfg.direction, cfg.task
    keys = {cache_key(m.run) for m in members}
    if len(keys) > 1:
        raise HpoError("the members tokenise the eval data differently (data settings searched): cannot align them")
    data = prepare(members[0].run, cache_dir())
    split = Split.of(data, max_examples, split_seed)
    n_classes = len(data.label_names) if data.label_names else None
    bs = members[0].run.training.per_device_eval_batch_size

    def score(logp: np.ndarray, rows: np.ndarray) -> float:
        return metrics_of(logp, split.labels(rows), task, n_classes)[metric]

    cls = model_class(task)
    models = [cls.from_pretrained(str(m.path)) for m in members]
    sel = [outputs_of(m, data, split.selection, task, bs) for m in models]
    rep = [outputs_of(m, data, split.report, task, bs) for m in models]
    _params(models[0])
    timing_rows = split.report[: min(32, len(split.report))]
    one_latency = _latency_ms(models[:1], data, timing_rows, task, bs)

    cands: list[Candidate] = []
    best = members[0]
    cands.append(
        Candidate(
            f"best single (trial {best.trial})",
            score(sel[0], split.selection),
            score(rep[0], split.report),
            1.0,
            one_latency,
        )
    )
    for i, m in enumerate(members[1:], start=1):
        cands.append(
            Candidate(f"trial {m.trial}", score(sel[i], split.selection), score(rep[i], split.report), 1.0, None)
        )
    # Prediction ensemble: every member equally, then Caruana's selection.
    uni = [1] * len(members)
    used = [mod for mod in models]
    cands.append(
        Candidate(
            f"ensemble, all {len(members)} equal",
            score(combine(sel, uni, average), split.selection),
            score(combine(rep, uni, average), split.report),
            float(len(members)),
            _latency_ms(used, data, timing_rows, task, bs),
        )
    )
    counts, sel_score = caruana(
        sel, lambda lp: score(lp, split.selection), direction, rounds or 2 * len(members), average
    )
    picked = [models[i] for i, c in enumerate(counts) if c]
    weights_txt = " ".join(f"{members[i].trial}x{c}" for i, c in enumerate(counts) if c)
    caruana_c = Candidate(
        "ensemble, greedy selection",
        sel_score,
        score(combine(rep, counts, average), split.report),
        float(len(picked)),
        _latency_ms(picked, data, timing_rows, task, bs),
        detail=f"trial x count: {weights_txt}",
    )
    cands.append(caruana_c)
    # Soups.
    sds = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    why = incompatibility([m.run for m in members], sds)
    soup_sds: dict[str, dict[str, Any]] = {}
    if why is None:
        work = cls.from_pretrained(str(members[0].path))

        def soup_out(sd: dict[str, Any], rows: np.ndarray) -> np.ndarray:
            work.load_state_dict(sd)
            return outputs_of(work, data, rows, task, bs)

        uniform = uniform_soup(sds)
        soup_sds["uniform soup"] = uniform
        cands.append(
            Candidate(
                "uniform soup",
                score(soup_out(uniform, split.selection), split.selection),
                score(soup_out(uniform, split.report), split.report),
                1.0,
                one_latency,
            )
        )
        order = sorted(range(len(members)), key=lambda i: cands[i].selection or 0.0, reverse=direction == "maximize")
        kept, g_sel = greedy_soup(
            sds,
            order,
            lambda sd: score(soup_out(sd, split.selection), split.selection),
            lambda a, b: not is_better(b, a, direction),
        )
        from hpo.soup import average as avg_sd

        greedy = avg_sd([sds[i] for i in kept])
        soup_sds["greedy soup"] = greedy
        cands.append(
            Candidate(
                "greedy soup",
                g_sel,
                score(soup_out(greedy, split.report), split.report),
                1.0,
                one_latency,
                detail="trials " + ", ".join(str(members[i].trial) for i in kept),
            )
        )
    else:
        cands.append(Candidate("uniform soup", None, None, skipped=why))
        cands.append(Candidate("greedy soup", None, None, skipped=why))

    chosen = _choose(cands, kind, direction)
    result = EnsembleResult(
        cfg.study.name,
        metric,
        direction,
        members,
        cands,
        chosen.name,
        out,
        counts,
        {"selection": len(split.selection), "report": len(split.report)},
    )
    if out is not None:
        _write(out, result, chosen, soup_sds, members, counts, average, task, force)
    return result


def _choose(cands: list[Candidate], kind: str, direction: str) -> Candidate:
    """By the selection half (never the report half): the greedy ensemble or the better soup; a tie goes to a
    soup (one model's cost)."""
    pool = [
        c
        for c in cands
        if c.skipped is None and c.name in ("ensemble, greedy selection", "uniform soup", "greedy soup")
    ]
    if kind == "ensemble":
        pool = [c for c in pool if c.name.startswith("ensemble")]
    elif kind == "soup":
        pool = [c for c in pool if c.name.endswith("soup")]
        if not pool:
            why = next(c.skipped for c in cands if c.name == "greedy soup")
            raise HpoError(f"--kind soup: no soup of these members: {why}")
    pool.reverse()  # soups first: another candidate must be strictly better
    best = pool[0]
    for c in pool[1:]:
        assert c.selection is not None and best.selection is not None
        if is_better(c.selection, best.selection, direction):
            best = c
    return best


def _check_out(out: Path, force: bool) -> None:
    for d in (out, *out.parents):
        if d.exists() and not d.is_dir():
            raise HpoError(f"{d} exists and is not a directory; give -o a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise HpoError(f"{out} is not empty; use --force to replace it, or -o another directory")


def _write(
    out: Path,
    result: EnsembleResult,
    chosen: Candidate,
    soups: dict[str, dict[str, Any]],
    members: list[Member],
    counts: list[int],
    average: Average,
    task: str,
    force: bool,
) -> None:
    """Write the chosen fusion into a staging folder next to ``out``, then put it in place whole."""
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    best = members[0].path
    try:
        staging.mkdir()
        info = {"kind": "soup" if chosen.name.endswith("soup") else "ensemble", "task": task, **result.to_json()}
        if info["kind"] == "soup":
            model = model_class(task).from_pretrained(str(best))
            model.load_state_dict(soups[chosen.name])
            model.save_pretrained(staging)
            for f in best.iterdir():  # tokenizer and the run config (hpo compress reads it)
                if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES):
                    shutil.copy2(f, staging / f.name)
        else:
            entries = []
            for m, c in zip(members, counts, strict=True):
                if not c:
                    continue
                rel = f"{MEMBERS}/trial-{m.trial}"
                shutil.copytree(m.path, staging / rel)
                entries.append({"trial": m.trial, "dir": rel, "weight": c})
            info["members_used"] = entries
            info["average"] = average
        shutil.copy2(best / "train_config.yaml", staging / "train_config.yaml")
        (staging / ENSEMBLE_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# A tokenizer's files besides `tokenizer*`: what a saved model folder carries over (also hpo.compress).
TOKENIZER_FILES = {"special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json"}


# ---------------------------------------------------------------------------------------------- loader


class Ensemble:
    """A loaded ensemble (or soup, or single model): ``logits``, ``probs`` and ``predict`` on token ids or text."""

    def __init__(self, models: list[Any], weights: list[float], tokenizer: Any, task: str, average: Average) -> None:
        self.models = models
        self.weights = weights
        self.tokenizer = tokenizer
        self.task = task
        self.average = average

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Combined logits: the log of the weighted mean probability (or the weighted mean logits)."""
        w = torch.tensor(self.weights, dtype=torch.float64)
        w = w / w.sum()
        outs = []
        for m in self.models:
            m.eval()
            kw = {} if attention_mask is None else {"attention_mask": attention_mask}
            outs.append(m(input_ids=input_ids, **kw).logits.double())
        stack = torch.stack(outs)
        shape = (-1,) + (1,) * (stack.ndim - 1)
        if self.average == "logits":
            return (w.reshape(shape) * stack).sum(0).float()
        logp = torch.log_softmax(stack, dim=-1) + torch.log(w).reshape(shape)
        return torch.logsumexp(logp, dim=0).float()

    def probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.logits(input_ids, attention_mask), dim=-1)

    def predict(self, texts: list[str]) -> list[str]:
        """Classification: the label of each text; causal LM: the most likely next token after each text."""
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        mask = enc.get("attention_mask")
        logits = self.logits(enc["input_ids"], mask)
        if self.task == "causal_lm":
            last = (mask.sum(1) - 1) if mask is not None else torch.full((len(texts),), logits.shape[1] - 1)
            ids = logits[torch.arange(len(texts)), last].argmax(-1)
            return [self.tokenizer.decode([int(i)]) for i in ids]
        id2label = self.models[0].config.id2label
        return [str(id2label[int(i)]) for i in logits.argmax(-1)]


def load(path: str | Path) -> Ensemble:
    """An ensemble folder, a soup, or any model folder `hpo` wrote (then an ensemble of one)."""
    from transformers import AutoTokenizer

    root = Path(path)
    info_file = root / ENSEMBLE_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if not (root / "config.json").is_file() and info.get("kind") != "ensemble":
        raise HpoError(f"{root}: not a model or ensemble folder (no config.json, no {ENSEMBLE_FILE})")
    task = info.get("task") or ("causal_lm" if _is_causal(root) else "sequence_classification")
    cls = model_class(task)
    if info.get("kind") == "ensemble":
        entries = info["members_used"]
        dirs = [root / e["dir"] for e in entries]
        weights = [float(e["weight"]) for e in entries]
        average = info.get("average", "probs")
    else:
        dirs, weights, average = [root], [1.0], "probs"
    models = [cls.from_pretrained(str(d)) for d in dirs]
    tokenizer = AutoTokenizer.from_pretrained(str(dirs[0]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return Ensemble(models, weights, tokenizer, task, average)


def _is_causal(root: Path) -> bool:
    cfg = json.loads((root / "config.json").read_text())
    return any(a.endswith("LMHeadModel") or a.endswith("ForCausalLM") for a in cfg.get("architectures") or [])


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def render(r: EnsembleResult) -> list[str]:
    """The table `hpo ensemble` prints: each candidate on the selection and report halves, gain and cost."""
    lines = [
        f"study {r.study!r}: {r.metric} ({r.direction}) of the top {len(r.members)} trials on the eval split: "
        f"{r.split.get('selection')} rows select, {r.split.get('report')} rows report",
        f"{'candidate':34} {'select':>9} {'report':>9} {'gain':>9} {'params':>7} {'ms/ex':>7}  note "
        "(gain: on the report half over the best single model, + = better)",
    ]
    for c in r.candidates:
        if c.skipped is not None:
            lines.append(f"{c.name:34} {'skipped':>9} {'':>9} {'':>9} {'':>7} {'':>7}  {c.skipped}")
            continue
        g = r.gain(c)
        gain = "-" if g is None else f"{g:+.4g}"
        px = "-" if c.params_x is None else f"{c.params_x:.0f}x"
        cells = f"{_fmt(c.selection):>9} {_fmt(c.report):>9} {gain:>9} {px:>7} {_fmt(c.latency_ms):>7}"
        lines.append(f"{c.name:34} {cells}  {c.detail}")
    lines.append(f"chosen (by the selection half): {r.chosen}")
    if r.out_dir is not None:
        lines.append(f"wrote {r.out_dir}/ (load it with hpo.ensemble.load)")
    return lines
