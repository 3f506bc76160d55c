"""Tokenised data, prepared once per study and cached on disk.

The cache key is a hash of everything that changes the tokens (data source, split, tokenizer, max length),
so every trial and every worker of a study reads the same arrays, and a second study on the same data
reuses them. Preparation runs under a file lock: parallel workers wait for the first one instead of all
tokenising at once. Arrays are plain numpy (``.npy``): loading them costs milliseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainers import corpora, generation
from trainers.base import ConfigError
from trainers.clean import clean_records, length_filter
from trainers.config import DataConfig, ModelConfig, RunConfig
from trainers.versions import CACHE_VERSION, PAIRS_VERSION


@dataclass
class PreparedData:
    """Token arrays of the train and eval splits, plus what a model needs to be built for them."""

    path: Path  # cache folder (holds tokenizer/ too)
    train_ids: np.ndarray  # [n, max_length] int32, padded with pad_id for classification
    eval_ids: np.ndarray
    train_lengths: np.ndarray | None  # classification: real length of each row
    eval_lengths: np.ndarray | None
    train_labels: np.ndarray | None  # classification: int64 label ids
    eval_labels: np.ndarray | None
    label_names: list[str] | None
    vocab_size: int
    pad_id: int
    eos_id: int | None
    eval_prompt_lengths: np.ndarray | None = None  # causal prompt -> completion: where each completion starts
    train_words: np.ndarray | None = None  # with data.augment (classification): word id per token, -1 special
    clean_counts: dict[str, Any] | None = None  # with data.clean: rows each rule removed, per split
    tokenizer_note: str | None = None  # what hpo changed in the tokenizer (a pad token it lacked), to tell the user

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"


def cache_key(run: RunConfig) -> str:
    """Hash of everything that decides the tokens; the same for all trials of a study."""
    # Augmentation happens on the fly: its settings (searchable) share one cache; it only needs word ids.
    parts = {
        "v": CACHE_VERSION,
        "task": run.task,
        "data": run.data.model_dump(exclude={"augment"}),
        "tokenizer": run.model.tokenizer.model_dump(),
        "tokenizer_source": run.model.tokenizer.name_or_path or run.model.name_or_path,
        "revision": run.model.revision,
    }
    if run.data.augment is not None and run.task == "sequence_classification":
        parts["word_ids"] = True
    if run.generates:  # only there: the caches of other tasks stay where they are
        parts["pairs"] = PAIRS_VERSION
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CacheDamaged(ValueError):
    """A data cache folder whose files are not what was written (truncated, changed, missing, unreadable)."""


def prepare(run: RunConfig, cache_root: str | Path) -> PreparedData:
    """Return the study's tokenised data, tokenising on the first call (under a lock) and loading after.

    A cache folder that was damaged after it was built (a truncated array, a broken ``meta.json`` or
    tokenizer file: the checksums recorded at build time say so) is rebuilt, with a warning.
    """
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(run)
    final = root / f"{run.task}-{key}"
    damaged: CacheDamaged | None = None
    if (final / "meta.json").exists():
        try:
            return _load(final)
        except CacheDamaged as e:
            damaged = e  # rebuilt below, under the lock
    try:
        lock = open(root / f".{key}.lock", "w")
    except OSError as e:
        if damaged is None:
            raise
        raise _unrebuildable(final, damaged, e) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker builds; the others wait, then load
        if final.exists():
            try:
                return _load(final)  # built (or rebuilt) by another process meanwhile
            except CacheDamaged as e:
                warnings.warn(f"data cache {final} is damaged ({e}); rebuilding it", stacklevel=2)
                _discard(final, root, e)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            _build(run, tmp)
            _seal(run, tmp)
            os.replace(tmp, final)  # atomic: a half-written cache is never seen
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _load(final)


def _discard(path: Path, root: Path, why: CacheDamaged) -> None:
    try:
        trash = Path(tempfile.mkdtemp(prefix=".damaged-", dir=root))
        os.replace(path, trash / path.name)  # out of the way at once: no reader opens half of it
        shutil.rmtree(trash, ignore_errors=True)
    except OSError as e:
        raise _unrebuildable(path, why, e) from None


def _unrebuildable(path: Path, why: CacheDamaged, e: OSError) -> CacheDamaged:
    return CacheDamaged(
        f"data cache {path} is damaged ({why}) and cannot be rebuilt ({e.strerror or e}); "
        f"remove it (rm -r {path}) and run again"
    )


def _file_digests(path: Path) -> dict[str, list[Any]]:
    """[size, sha256] of every file of a cache folder but meta.json (arrays and tokenizer files)."""
    out: dict[str, list[Any]] = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != "meta.json":
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[f.relative_to(path).as_posix()] = [f.stat().st_size, h.hexdigest()]
    return out


def _seal(run: RunConfig, path: Path) -> None:
    """Check the tokenizer loads back from the folder as built, then record every file's checksum."""
    from transformers import AutoTokenizer

    meta = json.loads((path / "meta.json").read_text())
    try:
        tok = AutoTokenizer.from_pretrained(str(path / "tokenizer"), trust_remote_code=run.model.trust_remote_code)
    except Exception as e:
        raise ValueError(f"model.tokenizer: the tokenizer does not load back after saving: {e}") from None
    got = {"vocab_size": len(tok), "pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id}
    if any(meta.get(k) != v for k, v in got.items()):
        want = {k: meta.get(k) for k in got}
        raise ValueError(f"model.tokenizer: the tokenizer saved and loaded back differs: {got} instead of {want}")
    meta["files"] = _file_digests(path)
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def _load(path: Path) -> PreparedData:
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict) or "vocab_size" not in meta:
            raise ValueError("no vocab_size")
    except (OSError, ValueError) as e:
        raise CacheDamaged(f"meta.json unreadable: {e}") from None
    recorded = meta.get("files")  # absent in caches built before checksums: only load errors are caught
    if recorded is not None:
        try:
            found = _file_digests(path)
        except OSError as e:  # e.g. removed by a process that found it damaged and rebuilds it
            raise CacheDamaged(f"unreadable: {e}") from None
        for name, (size, digest) in recorded.items():
            if name not in found:
                raise CacheDamaged(f"{name} is missing")
            if found[name][0] != size:
                raise CacheDamaged(f"{name} has {found[name][0]} bytes instead of {size}")
            if found[name][1] != digest:
                raise CacheDamaged(f"{name} changed since it was written (checksum)")

    def arr(name: str) -> np.ndarray | None:
        f = path / f"{name}.npy"
        if not f.exists():
            return None
        try:
            return np.load(f)
        except (OSError, ValueError, EOFError) as e:
            raise CacheDamaged(f"{f.name} unreadable: {e}") from None

    train_ids, eval_ids = arr("train_ids"), arr("eval_ids")
    if train_ids is None or eval_ids is None:
        raise CacheDamaged("train_ids.npy or eval_ids.npy is missing")
    return PreparedData(
        path=path,
        train_ids=train_ids,
        eval_ids=eval_ids,
        train_lengths=arr("train_lengths"),
        eval_lengths=arr("eval_lengths"),
        train_labels=arr("train_labels"),
        eval_labels=arr("eval_labels"),
        label_names=meta.get("label_names"),
        vocab_size=meta["vocab_size"],
        pad_id=meta["pad_id"],
        eos_id=meta.get("eos_id"),
        eval_prompt_lengths=arr("eval_prompt_lengths"),
        train_words=arr("train_words"),
        clean_counts=meta.get("clean"),
        tokenizer_note=meta.get("tokenizer_note"),
    )


# ------------------------------------------------------------------------------------------ raw records


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_eval = max(1, round(n * fraction))
    # The eval part keeps its shuffled order: corpora listed by label (bbc_news) would otherwise put one
    # class first, and a capped eval (`eval_batches`) would score only the first classes.
    return np.sort(order[n_eval:]), order[:n_eval]


def load_records(
    data: DataConfig, need_labels: bool, run: RunConfig | None = None
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Load the train and eval records as column dicts (``text``, optional ``text_pair`` and ``label``).

    A generation ``run``: ``text`` is the source (or prompt) column and ``target`` the target column."""
    pairs = run is not None and run.generates
    if data.builtin is not None:
        cols: dict[str, list[Any]]
        if pairs or data.builtin == "bbc_headlines":
            if run is None or not pairs:
                raise ConfigError("data.builtin", "'bbc_headlines' is a generation corpus: use it with task seq2seq")
            if data.builtin != "bbc_headlines":
                raise ConfigError("data.builtin", f"{data.builtin!r} has no (source, target) pairs: use bbc_headlines")
            sources, targets = corpora.bbc_headlines()
            cols = generation.pick_columns(
                run, {"source": sources, "target": targets}, "built-in corpus 'bbc_headlines'"
            )
        elif data.builtin == "pydoc_topics":
            if need_labels:
                raise ConfigError(
                    "data.builtin", "built-in corpus 'pydoc_topics' has no labels; use it with task causal_lm"
                )
            cols = {"text": corpora.pydoc_topics()}
        else:
            texts, labels = corpora.bbc_news()
            cols = {"text": texts, "label": labels}
        tr, ev = _split(len(cols["text"]), data.eval_fraction, data.seed)
        train = {k: [v[i] for i in tr] for k, v in cols.items()}
        evals = {k: [v[i] for i in ev] for k, v in cols.items()}
    else:
        train, evals = _load_with_datasets(data, run if pairs else None)
    return _limit(train, data.max_train_samples, data.seed), _limit(evals, data.max_eval_samples, data.seed)


def _limit(cols: dict[str, list[Any]], n: int | None, seed: int) -> dict[str, list[Any]]:
    total = len(cols["text"])
    if n is None or n >= total:
        return cols
    keep = np.sort(np.random.default_rng(seed + 1).permutation(total)[:n])
    return {k: [v[i] for i in keep] for k, v in cols.items()}


def _load_with_datasets(
    data: DataConfig, pairs: RunConfig | None = None
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    import datasets  # only here: ~1.5 s of import that cached runs never pay

    if data.files is not None:
        fmt = data.format or _format_from_extension(data.files["train"])
        try:
            ds = datasets.load_dataset(fmt, data_files=data.files)
        except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
            raise ConfigError("data.files", f"cannot read the files as {fmt}: {_first_line(e)}") from e
    else:
        assert data.dataset is not None
        try:
            ds = datasets.load_dataset(data.dataset, data.dataset_config)
        except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
            raise ConfigError("data.dataset", f"cannot load {data.dataset!r}: {_first_line(e)}") from e
    if data.train_split not in ds:
        raise ConfigError("data.train_split", f"split {data.train_split!r} not found (splits: {', '.join(ds)})")
    train_ds = ds[data.train_split]
    if data.eval_split is not None and data.eval_split not in ds:
        # A misspelt split must not silently become "split the training set".
        raise ConfigError("data.eval_split", f"split {data.eval_split!r} not found (splits: {', '.join(ds)})")
    eval_name = data.eval_split or ("validation" if "validation" in ds else None)
    # Dirty rows are found here, before any split or shuffle, so the message can name the file and the row.
    for name in dict.fromkeys(n for n in (data.train_split, eval_name) if n is not None):
        _check_cells(ds[name], name, data, pairs)
    if eval_name is not None:
        eval_ds = ds[eval_name]
    else:
        parts = train_ds.train_test_split(test_size=data.eval_fraction, seed=data.seed)
        train_ds, eval_ds = parts["train"], parts["test"]

    def columns(d: Any) -> dict[str, list[Any]]:
        if pairs is not None:
            return generation.pick_columns(pairs, {c: list(d[c]) for c in d.column_names}, "the data")
        out = {"text": list(d[data.text_column])}
        if data.text_pair_column is not None:
            out["text_pair"] = list(d[data.text_pair_column])
        if data.label_column in d.column_names:
            feat = d.features[data.label_column]
            values = list(d[data.label_column])
            # ClassLabel ids become their names, so labels map by name everywhere, never by position.
            out["label"] = [feat.int2str(v) for v in values] if hasattr(feat, "int2str") else values
        return out

    return columns(train_ds), columns(eval_ds)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_cells(d: Any, split: str, data: DataConfig, pairs: RunConfig | None = None) -> None:
    """Refuse a missing column, a missing text (or pair) cell and a missing label, naming file and row.

    An empty text would train on nothing, and a missing label would become a class "None": both are
    mistakes in the data, not something to guess around. (Blank lines of plain-text files are not cells.)
    """
    plain_text = data.files is not None and (data.format or _format_from_extension(data.files["train"])) == "text"
    checks = [("data.text_column", data.text_column)]
    if data.text_pair_column is not None:
        checks.append(("data.text_pair_column", data.text_pair_column))
    if data.label_column in d.column_names and pairs is None:
        checks.append(("data.label_column", data.label_column))
    if pairs is not None:  # a generation task reads its source (or prompt) and target columns
        checks = list(generation.columns(pairs))
    for key, col in checks:
        if col not in d.column_names:
            raise ConfigError(
                key, f"column {col!r} not found in split {split!r} (columns: {', '.join(d.column_names)})"
            )
        values = d[col]
        blank = key != "data.label_column" and not plain_text
        if data.clean is not None and data.clean.drop_empty:
            continue  # dropped (and counted) by the cleaning rules instead
        for i, v in enumerate(values):
            if v is None or (blank and isinstance(v, str) and not v.strip()):
                raise ConfigError(key, f"{_row_origin(data, split, i)}: the {col!r} cell is empty")


def _row_origin(data: DataConfig, split: str, index: int) -> str:
    """'train.csv data row 7' for the index-th record of a split (1-based, not counting a CSV header)."""
    if data.files is None:
        return f"dataset {data.dataset!r}, split {split!r}, row {index + 1}"
    entry = data.files[split]
    paths = [entry] if isinstance(entry, str) else list(entry)
    if len(paths) > 1:  # which file: count each one's records (only on this error path)
        import datasets

        fmt = data.format or _format_from_extension(data.files["train"])
        for path in paths:
            n = len(datasets.load_dataset(fmt, data_files={"x": path})["x"])
            if index < n:
                return f"{path} data row {index + 1}"
            index -= n
    return f"{paths[0]} data row {index + 1}"


def _format_from_extension(files: str | list[str]) -> str:
    first = files if isinstance(files, str) else files[0]
    ext = Path(first).suffix.lower()
    return {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(ext, "text")


# -------------------------------------------------------------------------------------------- tokenising


def load_tokenizer(
    model: ModelConfig, train_texts: list[str] | None, out_dir: Path, notes: list[str] | None = None
) -> Any:
    """The tokenizer: from_pretrained(name_or_path), or a byte-level BPE trained here on the train split.

    What was changed in a pretrained tokenizer (a pad token set) is appended to ``notes``, for the user.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok_cfg = model.tokenizer
    if tok_cfg.train_vocab_size is not None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        assert train_texts is not None
        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=tok_cfg.train_vocab_size,
            min_frequency=tok_cfg.train_min_frequency,
            special_tokens=["<|endoftext|>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(train_texts, trainer=trainer)
        tok: Any = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>")
    else:
        name = tok_cfg.name_or_path or model.name_or_path
        assert name is not None  # ModelConfig validation guarantees a source
        key = "model.tokenizer.name_or_path" if tok_cfg.name_or_path else "model.name_or_path"
        try:
            tok = AutoTokenizer.from_pretrained(
                corpora.resolve_model_path(name), revision=model.revision, trust_remote_code=model.trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ConfigError(key, f"cannot load a tokenizer from {name!r}: {_first_line(e)}") from e
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ConfigError(key, f"{name!r} has neither a pad nor an EOS token; give a tokenizer that has one")
            # Causal LMs often ship without a pad token; reuse EOS as HF examples do.
            tok.pad_token = tok.eos_token
            if notes is not None:
                eos = tok.eos_token
                notes.append(f"{key}: {name!r} has no pad token; its EOS token {eos!r} pads (masked, never learnt)")
    tok.save_pretrained(str(out_dir))
    return tok


def _word_ids(enc: Any, n: int, width: int) -> np.ndarray:
    """[n, width] word index of each token (-1: special or padding), for word-level augmentation."""
    words = np.full((n, width), -1, dtype=np.int32)
    for i in range(n):
        try:
            ids = enc.word_ids(i)
        except (ValueError, AttributeError):  # a slow tokenizer: each token counts as a word
            ids = list(range(width))
        words[i, : len(ids)] = [-1 if w is None else w for w in ids]
    return words


def _build(run: RunConfig, out: Path) -> None:
    is_cls = run.task == "sequence_classification"
    train, evals = load_records(run.data, need_labels=is_cls, run=run)
    rules = run.data.clean
    counts: dict[str, Any] | None = None
    if rules is not None:
        train, evals, counts = clean_records(train, evals, rules)
    if not train["text"] or not evals["text"]:
        raise ConfigError("data.clean" if rules is not None else "data", "the train or eval split is empty")
    notes: list[str] = []
    tok = load_tokenizer(run.model, train["text"] + train.get("target", []), out / "tokenizer", notes)
    if rules is not None and counts is not None:
        if rules.needs_tokens:  # lengths in tokens: once the tokenizer exists
            train = length_filter(
                train, rules, counts, lambda texts: [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
            )
            if not train["text"]:
                raise ConfigError("data.clean", "the length rules leave no training rows")
        counts["kept"] = {"train": len(train["text"]), "eval": len(evals["text"])}
    meta: dict[str, Any] = {"vocab_size": len(tok), "pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id}
    if counts is not None:
        meta["clean"] = counts
    if notes and run.generates:  # generation pads (batches, left-padded prompts): the user is told once
        meta["tokenizer_note"] = "; ".join(notes)
    L = run.data.max_length
    if run.generates:
        meta.update(generation.build_pairs(run, tok, train, evals, out))
    elif is_cls:
        if "label" not in train or "label" not in evals:
            raise ConfigError("data.label_column", f"column {run.data.label_column!r} not found")
        names = sorted({str(x) for x in train["label"]} | {str(x) for x in evals["label"]})
        index = {n: i for i, n in enumerate(names)}
        meta["label_names"] = names
        for split, cols in (("train", train), ("eval", evals)):
            enc = tok(
                cols["text"],
                cols.get("text_pair"),
                truncation=True,
                max_length=L,
                padding="max_length",
                return_attention_mask=True,
            )
            ids = np.asarray(enc["input_ids"], dtype=np.int32)
            np.save(out / f"{split}_ids.npy", ids)
            np.save(out / f"{split}_lengths.npy", np.asarray(enc["attention_mask"]).sum(1).astype(np.int32))
            np.save(out / f"{split}_labels.npy", np.asarray([index[str(x)] for x in cols["label"]], np.int64))
            if split == "train" and run.data.augment is not None:
                np.save(out / "train_words.npy", _word_ids(enc, len(ids), L))
    else:
        eos = tok.eos_token_id
        for split, cols in (("train", train), ("eval", evals)):
            # Concatenate documents with EOS between them and cut into full blocks (the HF run_clm recipe).
            stream: list[int] = []
            for ids in tok(cols["text"], add_special_tokens=False)["input_ids"]:
                stream.extend(ids)
                if eos is not None:
                    stream.append(eos)
            n_blocks = len(stream) // L
            if n_blocks == 0:
                raise ConfigError("data.max_length", f"the {split} split has fewer than max_length={L} tokens")
            blocks = np.asarray(stream[: n_blocks * L], dtype=np.int32).reshape(n_blocks, L)
            np.save(out / f"{split}_ids.npy", blocks)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
