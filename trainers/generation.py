"""Generation tasks: seq2seq (source -> target) and causal-LM prompt -> completion, tokenised and decoded.

The seam this module owns, between the data cache, the training loop and the metrics:

* tokenising pairs into fixed-width arrays (``build_pairs``, called by ``trainers.data`` when it builds the
  cache): sources / prompts cut to their length (the prefix and suffix kept), targets cut to
  ``max_target_length`` and counted (``targets_truncated``), EOS after every target. The special tokens
  are the tokenizer's own (``special_tokens``: what it adds around a source and around a target, e.g.
  BART's ``<s> ... </s>``, T5's ``... </s>``), read off the tokenizer rather than assumed, with EOS added
  where it adds none (a tokenizer trained here, GPT-2's) so a target always ends. Seq2seq: ``ids`` are the
  source, ``labels`` the target; causal LM: ``ids`` are prompt (with the tokenizer's leading specials, e.g.
  Llama's BOS) + completion + EOS, and ``labels`` the same with every prompt token masked (-100), so the
  loss is on the completion only;
* training and eval batches (``to_batch``): padding trimmed to the longest row, masked in the labels;
* the final eval's decoding, and that of the evals at ``generation.at_steps`` (``generate_and_score``): a fixed,
  seeded subset of ``generation.eval_samples`` eval examples (the same for every trial), decoded in
  batches with the model's ``generate`` and ``max_new_tokens``, scored against the untruncated references
  (``trainers.textmetrics``), timed apart (``generate_time``), and a few (source, reference, prediction)
  examples kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.base import ConfigError
from trainers.config import GenerationConfig, RunConfig

TEXTS_FILE = "eval_texts.json"  # eval sources and references, untruncated, in eval order
SEQ2SEQ_TARGET_LENGTH = 64  # default max_target_length of seq2seq


def lengths(run: RunConfig) -> tuple[int, int]:
    """(source or prompt tokens, target tokens incl. EOS) of a generation run."""
    d = run.data
    if run.task == "seq2seq":
        return d.max_source_length or d.max_length, d.max_target_length or SEQ2SEQ_TARGET_LENGTH
    target = d.max_target_length or max(1, d.max_length // 4)
    room = d.max_length - target
    return min(d.max_source_length or room, room), target


def columns(run: RunConfig) -> tuple[tuple[str, str], tuple[str, str]]:
    """((key, column) of the source or prompt, (key, column) of the target)."""
    d = run.data
    if run.task == "causal_lm":
        assert d.prompt_column is not None
        src = ("data.prompt_column", d.prompt_column)
    else:
        src = ("data.source_column", d.source_column or "source")
    return src, ("data.target_column", d.target_column or "target")


def pick_columns(run: RunConfig, cols: dict[str, list[Any]], where: str) -> dict[str, list[Any]]:
    """The source column as ``text`` and the target as ``target``; a missing one names those that exist."""
    out: dict[str, list[Any]] = {}
    for (key, name), as_ in zip(columns(run), ("text", "target"), strict=True):
        if name not in cols:
            raise ConfigError(key, f"column {name!r} not found in {where} (columns: {', '.join(cols)})")
        out[as_] = cols[name]
    return out


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def special_tokens(tok: Any, target: bool) -> tuple[list[int], list[int]]:
    """(tokens before, tokens after) the text that ``tok`` adds to a source (``target=False``) or a target.

    Read off the tokenizer itself (``tok(text)`` / ``tok(text_target=text)`` against the plain tokens), so
    every tokenizer's own rule applies: BART ``<s> x </s>``, T5 ``x </s>``, Llama ``<s> x``, GPT-2 and the
    tokenizers trained here nothing. The text is encoded without specials and cut to length first, then
    wrapped: truncation never cuts a special token off.
    """
    probe = "a b c"
    plain = _encode(tok, [probe])[0]
    full = list(tok(text_target=probe)["input_ids"] if target else tok(probe)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []  # the specials cannot be told apart from the text: add none (EOS is still added)


def build_pairs(
    run: RunConfig, tok: Any, train: dict[str, list[Any]], evals: dict[str, list[Any]], out: Path
) -> dict[str, Any]:
    """Write the token arrays of a generation task into the cache folder ``out``; return what goes in meta."""
    eos, pad = tok.eos_token_id, tok.pad_token_id
    if eos is None:
        raise ConfigError(
            "model.tokenizer", "a generation task needs a tokenizer with an EOS token (where a target ends)"
        )
    src_len, tgt_len = lengths(run)
    d = run.data
    prefix, suffix = d.source_prefix or "", d.source_suffix or ""
    suffix_ids = _encode(tok, [suffix])[0] if suffix else []
    s_head, s_tail = special_tokens(tok, target=False)
    if run.task == "seq2seq":
        t_head, t_tail = special_tokens(tok, target=True)
        s_tail = s_tail if s_tail[-1:] == [eos] else [*s_tail, eos]  # the encoder sees where the source ends
    else:  # a prompt is continued, not closed; the completion follows it directly and ends with EOS
        s_tail, t_head, t_tail = [], [], []
    t_tail = t_tail if t_tail[-1:] == [eos] else [*t_tail, eos]
    keep = src_len - len(suffix_ids) - len(s_head) - len(s_tail)
    if keep < 1:
        raise ConfigError("data.source_suffix", f"the suffix is {len(suffix_ids)} tokens: no room left in {src_len}")
    room = tgt_len - len(t_head) - len(t_tail)
    if room < 1:
        raise ConfigError("data.max_target_length", f"{tgt_len} leaves no room for text after the special tokens")
    truncated: dict[str, int] = {}
    for split, cols in (("train", train), ("eval", evals)):
        for i, t in enumerate(cols["target"]):
            if t is None or not str(t).strip():
                raise ConfigError("data.target_column", f"{split} example {i + 1}: the reference is empty")
        src_ids = _encode(tok, [prefix + str(s) for s in cols["text"]])
        sources = [[*s_head, *ids[:keep], *suffix_ids, *s_tail] for ids in src_ids]
        targets = _encode(tok, [str(t) for t in cols["target"]])
        truncated[split] = sum(len(t) > room for t in targets)
        targets = [[*t_head, *t[:room], *t_tail] for t in targets]
        n = len(sources)
        if run.task == "seq2seq":
            ids = np.full((n, src_len), pad, np.int32)
            labels = np.full((n, tgt_len), -100, np.int64)
            for r, (s, t) in enumerate(zip(sources, targets, strict=True)):
                ids[r, : len(s)] = s
                labels[r, : len(t)] = t
            row_lengths = np.asarray([len(s) for s in sources], np.int32)
        else:
            width = src_len + tgt_len
            ids = np.full((n, width), pad, np.int32)
            labels = np.full((n, width), -100, np.int64)
            for r, (s, t) in enumerate(zip(sources, targets, strict=True)):
                ids[r, : len(s) + len(t)] = s + t
                labels[r, len(s) : len(s) + len(t)] = t  # the prompt is context, not a target: -100
            row_lengths = np.asarray([len(s) + len(t) for s, t in zip(sources, targets, strict=True)], np.int32)
            np.save(out / f"{split}_prompt_lengths.npy", np.asarray([len(s) for s in sources], np.int32))
        np.save(out / f"{split}_ids.npy", ids)
        np.save(out / f"{split}_lengths.npy", row_lengths)
        np.save(out / f"{split}_labels.npy", labels)
    texts = {"sources": [str(s) for s in evals["text"]], "targets": [str(t) for t in evals["target"]]}
    (out / TEXTS_FILE).write_text(json.dumps(texts))
    return {"targets_truncated": truncated, "max_target_length": tgt_len}


def to_batch(data: Any, split: str, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """A training or eval batch: input ids, attention mask, labels (-100 where no loss is taken)."""
    ids = getattr(data, f"{split}_ids")[idx]
    row_lengths = getattr(data, f"{split}_lengths")[idx]
    labels = getattr(data, f"{split}_labels")[idx]
    width = int(row_lengths.max())  # trim padding to the longest row of this batch
    mask = (np.arange(width)[None, :] < row_lengths[:, None]).astype(np.int64)
    if labels.shape[1] == ids.shape[1]:  # causal LM: labels line up with the inputs
        labels = labels[:, :width]
    else:  # seq2seq: the longest target of the batch
        labels = labels[:, : int((labels != -100).sum(1).max())]
    return {
        "input_ids": torch.from_numpy(ids[:, :width].astype(np.int64)).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
        "labels": torch.from_numpy(np.ascontiguousarray(labels)).to(device),
    }


def eval_subset(n: int, gen: GenerationConfig) -> np.ndarray:
    """The eval rows decoded at every final eval: ``eval_samples`` of ``n``, drawn once from ``gen.seed``."""
    if gen.eval_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(gen.seed).permutation(n)[: gen.eval_samples])


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    key = str(path)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(key)
    return _TOKENIZERS[key]


@torch.no_grad()
def generate_and_score(
    model: Any, data: Any, run: RunConfig, device: torch.device
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Decode the fixed eval subset and score it; return (metrics, examples).

    Metrics: every ``textmetrics`` score, ``generate_time`` (seconds decoding), ``generated`` (examples
    decoded) and ``targets_truncated`` (training and eval targets cut to ``max_target_length``).
    """
    from trainers.textmetrics import score

    gen = run.generation or GenerationConfig()
    texts = json.loads((data.path / TEXTS_FILE).read_text())
    meta = json.loads((data.path / "meta.json").read_text())
    tok = _tokenizer(data.tokenizer_dir)
    net = getattr(model, "module", model)  # under DDP, generate is the wrapped model's
    causal = run.task == "causal_lm"
    rows = eval_subset(len(data.eval_ids), gen)
    bs = run.training.per_device_eval_batch_size
    was_training = net.training
    net.eval()
    preds: list[str] = []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(gen.seed)  # sampling draws the same for every trial; training RNG untouched
        for s in range(0, len(rows), bs):
            idx = rows[s : s + bs]
            if causal:
                inputs = _left_padded_prompts(data, idx, device)
            else:
                batch = to_batch(data, "eval", idx, device)
                inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            out = net.generate(**inputs, **gen.generate_kwargs(), pad_token_id=data.pad_id, eos_token_id=data.eos_id)
            if causal:
                out = out[:, inputs["input_ids"].shape[1] :]
            preds.extend(p.strip() for p in tok.batch_decode(out, skip_special_tokens=True))
    generate_time = time.perf_counter() - t0
    if was_training:
        net.train()
    refs = [texts["targets"][i] for i in rows]
    metrics = score(preds, refs)
    metrics["generate_time"] = round(generate_time, 3)
    metrics["generated"] = float(len(rows))
    metrics["targets_truncated"] = float(sum(meta.get("targets_truncated", {}).values()))
    examples = [
        {"source": _short(texts["sources"][i]), "reference": refs[j], "prediction": preds[j]}
        for j, i in enumerate(rows[: gen.examples])
    ]
    return metrics, examples


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _left_padded_prompts(data: Any, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Prompts of a decoder-only model, padded on the left: generation continues right after each prompt."""
    plens = data.eval_prompt_lengths[idx]
    width = int(plens.max())
    ids = np.full((len(idx), width), data.pad_id, np.int64)
    mask = np.zeros((len(idx), width), np.int64)
    for r, (row, n) in enumerate(zip(idx, plens, strict=True)):
        ids[r, width - n :] = data.eval_ids[row, :n]
        mask[r, width - n :] = 1
    return {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is taken on (labels not -100): the weight of a batch's mean loss."""
    return int((batch["labels"] != -100).sum())
