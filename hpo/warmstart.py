"""Warm start: configurations a study runs first, before its sampler's own.

Three sources: ``hpo run STUDY.yaml --enqueue configs.yaml`` (a YAML list of ``{key: value}`` mappings, or
``{configs: [...]}``), the study file's ``warm_start.configs``, and ``warm_start: {from: other.yaml, top: K}``
(the K best complete trials of an earlier study, e.g. on another dataset or model). Keys are search-space
paths (``training.learning_rate``) or parameter names (``learning_rate``); keys left out are sampled.

Everything is checked before anything is written (``plan``): a key not in the space, or a value outside its
range or choices, is a one-line ``FILE: key: message``; a warm-start study file or study that does not exist
too. A trial of an earlier study that does not fit this space is skipped, and the reason said.

The configurations go into Optuna's queue (``study.enqueue_trial``) once per study (``enqueue``): a marker
in the study (one digest per set of configurations) keeps a resumed run from enqueuing them again, and
``skip_if_exists`` leaves out a configuration some trial of the study already has.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from hpo.errors import HpoError, StudyFileError
from hpo.space import CategoricalSpec, FloatSpec, IntSpec, param_name

if TYPE_CHECKING:  # the study file's section is read without Optuna; enqueuing imports it
    import optuna

ATTR_ENQUEUED = "hpo:warm_start"  # digests of the configuration sets already enqueued
A_WARM_START = "warm_start"  # trial user attribute: where an enqueued configuration came from

Spec = FloatSpec | IntSpec | CategoricalSpec


class WarmStartSection(BaseModel):
    """The study file's ``warm_start`` section. Not fingerprinted: it decides which trials run first, not
    what a trial's result means."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    configs: list[dict[str, Any]] = Field(default_factory=list)
    from_: str | None = Field(default=None, alias="from")  # an earlier study's file, relative to this one
    top: int = Field(default=1, ge=1)  # how many of its best complete trials


@dataclass
class WarmStart:
    """What a run enqueues: (parameters by name, where they came from), and what was skipped, with why."""

    configs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def digest(self) -> str:
        blob = json.dumps([c for c, _ in self.configs], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) if isinstance(a, bool) or isinstance(b, bool) else a == b


def check_value(spec: Spec, value: Any) -> str | None:
    """Why ``value`` cannot be this entry's parameter, or None."""
    if isinstance(spec, CategoricalSpec):
        if any(_same(value, c) for c in spec.choices):
            return None
        return f"{value!r} is not one of the choices {list(spec.choices)}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(spec, IntSpec) and not (number and float(value).is_integer()):
        return f"{value!r} is not a whole number"
    if not number or not math.isfinite(float(value)):
        return f"{value!r} is not a number"
    if not spec.low <= value <= spec.high:
        return f"{value!r} is outside [{spec.low}, {spec.high}]"
    return None


def to_params(space: Mapping[str, Spec], config: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A configuration (keys: paths or parameter names) as parameters by name, and its problems (key, msg)."""
    by_name = {param_name(p, s): p for p, s in space.items()}
    params: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, value in config.items():
        path = key if key in space else by_name.get(str(key))
        if path is None:
            problems.append((str(key), f"not a key of search_space (keys: {', '.join(space)})"))
            continue
        spec = space[path]
        why = check_value(spec, value)
        if why is not None:
            problems.append((str(key), why))
            continue
        params[param_name(path, spec)] = int(value) if isinstance(spec, IntSpec) else value
    return params, problems


def _configs(raw: Any, source: str, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, Mapping) and set(raw) == {"configs"}:
        raw = raw["configs"]
    if not isinstance(raw, list) or not all(isinstance(c, Mapping) for c in raw):
        raise StudyFileError(source, [(where, "a list of configurations ({key: value} mappings)")])
    return [dict(c) for c in raw]


def _given(
    space: Mapping[str, Spec], configs: Sequence[Mapping[str, Any]], source: str, loc: str, out: WarmStart
) -> None:
    problems: list[tuple[str, str]] = []
    for i, config in enumerate(configs):
        params, bad = to_params(space, config)
        problems += [(f"{loc}[{i}].{k}" if loc else f"[{i}].{k}", m) for k, m in bad]
        out.configs.append((params, f"{Path(source).name}[{i}]" if not loc else f"{loc}[{i}]"))
    if problems:
        raise StudyFileError(source, problems)


def _from_study(cfg: Any, source: str, section: WarmStartSection, out: WarmStart) -> None:
    from hpo.config import load_study_file
    from hpo.record import TrialRecord, best_of
    from hpo.references import resolve_file
    from hpo.storage import load_existing

    assert section.from_ is not None
    path = resolve_file(section.from_, cfg.base_dir)
    if not Path(path).is_file():
        raise StudyFileError(source, [("warm_start.from", f"no such study file: {path}")])
    other = load_study_file(path)
    try:
        study = load_existing(other)
    except HpoError as e:
        raise StudyFileError(source, [("warm_start.from", f"{section.from_}: {e}")]) from None
    records = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    ranked: list[TrialRecord] = []
    from optuna.trial import TrialState

    pool = [r for r in records if r.state == TrialState.COMPLETE and r.value is not None]
    while pool and len(ranked) < section.top:
        best = best_of(pool, study.direction)
        assert best is not None
        ranked.append(best)
        pool.remove(best)
    if not ranked:
        out.skipped.append(f"{section.from_}: no complete trial to start from")
        return
    # The earlier study's parameters by path, so a renamed parameter still lands on its setting.
    theirs = {param_name(p, s): p for p, s in other.search_space.items()}
    mine = {param_name(p, s): p for p, s in cfg.search_space.items()}
    for r in ranked:
        config = {theirs.get(k, k): v for k, v in r.params.items()}
        fitting = {k: v for k, v in config.items() if k in cfg.search_space or k in mine}
        params, bad = to_params(cfg.search_space, fitting)
        label = f"{other.study.name} trial {r.number}"
        if bad:
            out.skipped.append(f"{label}: {bad[0][0]} {bad[0][1]}")
        elif not params:
            out.skipped.append(f"{label}: none of its parameters is in this search space")
        else:
            out.configs.append((params, label))


def plan(cfg: Any, source: str, enqueue_file: str | Path | None = None) -> WarmStart:
    """Everything this run would enqueue, checked; raises ``StudyFileError`` for bad input (nothing written)."""
    from hpo.config import read_yaml_file

    out = WarmStart()
    section: WarmStartSection | None = getattr(cfg, "warm_start", None)
    if section is not None and section.configs:
        _given(cfg.search_space, section.configs, source, "warm_start.configs", out)
    if enqueue_file is not None:
        shown = str(enqueue_file)
        raw = read_yaml_file(enqueue_file, kind="list of configurations")
        _given(cfg.search_space, _configs(raw, shown, ""), shown, "", out)
    if section is not None and section.from_ is not None:
        _from_study(cfg, source, section, out)
    return out


def enqueue(study: optuna.Study, ws: WarmStart) -> list[str]:
    """Put the configurations in the study's queue unless this set was enqueued before; what happened, in
    lines for the run's header."""
    lines = [f"  warm start: skipped {why}" for why in ws.skipped]
    if not ws.configs:
        return lines
    done = study.user_attrs.get(ATTR_ENQUEUED) or []
    digest = ws.digest()
    if digest in done:
        return [*lines, f"  warm start: {len(ws.configs)} configuration(s) already enqueued by an earlier run"]
    for params, label in ws.configs:
        study.enqueue_trial(params, user_attrs={A_WARM_START: label}, skip_if_exists=True)
    study.set_user_attr(ATTR_ENQUEUED, [*done, digest])
    return [
        *lines,
        f"  warm start: enqueued {len(ws.configs)} configuration(s) ({', '.join(lb for _, lb in ws.configs)})",
    ]
