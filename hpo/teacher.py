"""The teacher of a distilled study: which folder it is, and whether it fits the student, before anything runs.

``distillation.teacher`` is a model folder, or a trial of an earlier study (``{study: FILE_OR_NAME, trial:
best | N}``). A trial has no weights of its own (trials keep no model): its model is the one ``hpo export``
+ ``hpo train`` produced for it, found in that study's export folder (``runs/<study>-export/model``, or
``runs/<study>-export/trial-<N>/model`` for ``--top``) and recognised by the study and trial recorded in its
``metrics.json``. ``resolve_teacher`` finds it (reading the other study's storage read-only) or says which
commands make it.

``check_teacher`` (called by ``hpo.references``) reads ``config.json`` files and tokenizer vocabularies only
(no weights): a missing folder, a tokenizer trained here, a vocabulary of another size, or hidden sizes that
differ where the hidden-state loss needs them equal are one-line errors naming the sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError, StudyFileError
from hpo.references import _model_folder, resolve_local
from trainers.distill import TeacherRef

if TYPE_CHECKING:
    from hpo.config import StudyConfig

KEY = "distillation.teacher"


def _other_study(ref: TeacherRef, cfg: StudyConfig) -> tuple[str, str, str]:
    """(study name, storage URL, how to name it in a command) of the referenced study."""
    from hpo.config import load_study_file

    path = resolve_local(ref.study, cfg.base_dir)
    if path is not None and path.is_file():
        other = load_study_file(path)
        return other.study.name, other.storage_url, str(path)
    if ref.study.endswith((".yaml", ".yml")):
        raise HpoError(f"no such study file: {path or ref.study}")
    # A name: the study lives in this study's storage when one is given (a shared server), else in its own
    # default SQLite file.
    url = cfg.study.storage or f"sqlite:///runs/{ref.study}.db"
    return ref.study, url, f"<{ref.study}'s study file>"


def _trial_number(ref: TeacherRef, name: str, url: str) -> int:
    import optuna
    from optuna.trial import TrialState

    from hpo.export import ranked_trials
    from hpo.storage import open_storage, storage_exists

    if not storage_exists(url):
        raise HpoError(f"study {name!r}: its storage {url} does not exist; run that study first")
    storage = open_storage(url, create=False, readonly=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise HpoError(f"no study {name!r} in {url}") from None
    if ref.trial == "best":
        ranked = ranked_trials(study)
        if not ranked:
            raise HpoError(f"study {name!r} has no complete trial yet")
        return ranked[0].number
    found = [t for t in study.get_trials(deepcopy=False) if t.number == ref.trial]
    if not found or found[0].state != TrialState.COMPLETE:
        raise HpoError(f"study {name!r} has no complete trial {ref.trial}")
    return int(ref.trial)


def trained_folder(name: str, trial: int, runs_dir: Path) -> Path | None:
    """The model folder `hpo train` wrote for trial ``trial`` of study ``name`` under its export folder."""
    export = runs_dir / f"{name}-export"
    for folder in (export / "model", export / f"trial-{trial}" / "model"):
        try:
            meta = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        made = meta.get("trial") if isinstance(meta, dict) else None
        if isinstance(made, dict) and made.get("study") == name and made.get("trial") == trial:
            return folder
    return None


def resolve_teacher(ref: TeacherRef, cfg: StudyConfig, source: str) -> Path:
    """The model folder of the referenced trial; a StudyFileError naming ``distillation.teacher`` if none."""
    from hpo.config import DEFAULT_RUNS_DIR

    try:
        name, url, shown = _other_study(ref, cfg)
        number = _trial_number(ref, name, url)
    except HpoError as e:
        raise StudyFileError(source, [(KEY, str(e))]) from None
    except StudyFileError as e:
        raise StudyFileError(source, [(KEY, f"the teacher's study file: {e}")]) from None
    runs = Path(DEFAULT_RUNS_DIR)
    folder = trained_folder(name, number, runs)
    if folder is None:
        out = runs / f"{name}-export"
        raise StudyFileError(
            source,
            [
                (
                    KEY,
                    f"trial {number} of study {name!r} has no trained model in {out}/; make it with "
                    f"`hpo export {shown} --trial {number} -o {out} && hpo train {out}/train.yaml`",
                )
            ],
        )
    return folder.resolve()


# ------------------------------------------------------------------------------------------ fit checks


def _config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def tokenizer_vocab(folder: Path) -> int | None:
    """The number of tokens of a tokenizer folder (as ``len(tokenizer)``), or None when not readable cheaply."""
    tj = folder / "tokenizer.json"
    try:
        if tj.is_file():
            data = json.loads(tj.read_text(encoding="utf-8"))
            vocab = data.get("model", {}).get("vocab")
            ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab or [])))
            ids |= {a.get("id") for a in data.get("added_tokens", []) if isinstance(a, dict)}
            return len(ids)
        vt = folder / "vocab.txt"
        if vt.is_file():
            return sum(1 for _ in vt.open(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _hidden(config: dict[str, Any]) -> int | None:
    for k in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(config.get(k), int):
            return int(config[k])
    return None


def check_teacher(cfg: StudyConfig, source: str, problems: list[tuple[str, str]]) -> None:
    """Append a problem when the teacher folder is missing or does not fit the student (sizes named)."""
    d = cfg.distillation
    if d is None:
        return
    try:
        cfg.resolve_teacher(source)
    except StudyFileError as e:
        problems.extend(e.problems)
        return
    run = cfg.base_run()
    assert run.distillation is not None and isinstance(run.distillation.teacher, str)
    name = run.distillation.teacher
    if not name.startswith("builtin:"):
        local = resolve_local(name, cfg.base_dir)
        if local is None or not local.exists():  # the teacher is loaded from a folder, never from the hub
            problems.append(
                (KEY, f"no such folder: {local or name}; give the folder `hpo train` (or save_pretrained) wrote, or "
                      "{study: FILE_OR_NAME, trial: best}")
            )  # fmt: skip
            return
    teacher = _model_folder(name, KEY, cfg.base_dir, problems, need="config.json")
    if teacher is None:
        return
    t_cfg = _config(teacher)
    m = run.model
    if m.tokenizer.train_vocab_size is not None:
        problems.append(
            (KEY, "the student's tokenizer is trained here (model.tokenizer.train_vocab_size): it cannot match the "
                  f"teacher's; set model.tokenizer.name_or_path: {teacher}")
        )  # fmt: skip
        return
    tok_name = m.tokenizer.name_or_path or m.name_or_path
    tok_dir = _model_folder(tok_name, "model.tokenizer.name_or_path", cfg.base_dir, [], need="") if tok_name else None
    s_vocab: int | None = None
    if m.from_config is None and tok_dir is not None and m.tokenizer.name_or_path is None:
        s_vocab = _config(tok_dir).get("vocab_size")  # a pretrained student: its embedding size
    elif tok_dir is not None:
        s_vocab = tokenizer_vocab(tok_dir)
    t_vocab = t_cfg.get("vocab_size")
    if isinstance(s_vocab, int) and isinstance(t_vocab, int) and s_vocab != t_vocab:
        problems.append(
            (KEY, f"the teacher's vocabulary has {t_vocab} tokens and the student's {s_vocab} (from {tok_dir}): "
                  "teacher and student must share the tokenizer")
        )  # fmt: skip
    if d.hidden_loss_weight > 0 or "distillation.hidden_loss_weight" in cfg.search_space:
        s_hidden = _hidden(dict(m.from_config)) if m.from_config is not None else None
        if m.from_config is None and tok_dir is not None and m.name_or_path is not None:
            student_dir = _model_folder(m.name_or_path, "model.name_or_path", cfg.base_dir, [], need="")
            s_hidden = _hidden(_config(student_dir)) if student_dir is not None else None
        t_hidden = _hidden(t_cfg)
        if s_hidden is not None and t_hidden is not None and s_hidden != t_hidden:
            problems.append(
                ("distillation.hidden_loss_weight",
                 f"the teacher's hidden size is {t_hidden} and the student's {s_hidden}: the hidden-state loss "
                 "needs them equal (leave hidden_loss_weight at 0)")
            )  # fmt: skip
