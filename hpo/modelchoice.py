"""Model choice as a search dimension: named model presets, and the model a trial's parameters pick.

A study file may name models under ``models:`` (each a partial ``model`` section: ``from_config``,
``name_or_path``, ``tokenizer``, ``config``, ``dropout``, ...) and search ``model.preset`` as a categorical
of those names; or search ``model.name_or_path`` directly as a categorical of pretrained models (hub
names or local folders, relative to the study file like the ``model`` section's). A preset replaces the
keys it names in the ``model`` section; naming ``from_config`` drops the base ``name_or_path`` and the
other way round, so a study can choose between a pretrained encoder and a model built from scratch.

Each model's tokenizer gets its own tokenised-data cache without anything here: the cache key
(``trainers.data.cache_key``) already hashes the tokenizer section and source. Results are grouped by
model value in ``hpo status`` and the report (``model_key``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from trainers.config import ModelConfig

PRESET = "model.preset"  # the search-space path that picks a preset by name
NAME = "model.name_or_path"
# Keys that choose where the model comes from: a preset naming one of them replaces both.
_SOURCES = ("name_or_path", "from_config")


def merged(base: ModelConfig, preset: Mapping[str, Any]) -> ModelConfig:
    """``base`` with the preset's keys written over it; raises ``ValidationError`` if the result is invalid."""
    data = base.model_dump()
    if any(k in preset for k in _SOURCES):
        for k in _SOURCES:
            data[k] = None
    for key, value in preset.items():
        if key == "tokenizer" and isinstance(value, Mapping):
            # The tokenizer named whole: a preset's `{name_or_path: x}` must not keep the base's trained vocab.
            data[key] = dict(value)
        else:
            data[key] = value
    return ModelConfig.model_validate(data)


def chosen_model(
    base: ModelConfig, presets: Mapping[str, Mapping[str, Any]], space: Mapping[str, Any], params: Mapping[str, Any]
) -> ModelConfig | None:
    """The model section (as written, paths unresolved) a trial's parameters pick; None: the base model."""
    from hpo.space import param_name

    spec = space.get(PRESET)
    if spec is None:
        return None
    name = params.get(param_name(PRESET, spec))
    if name is None:
        return None  # inactive under a `when`: the base model
    return merged(base, presets[str(name)])


def check_presets(
    base: ModelConfig, presets: Mapping[str, Mapping[str, Any]], space: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Problems of ``models`` and a ``model.preset`` entry, as (key, message)."""
    problems: list[tuple[str, str]] = []
    for name, preset in presets.items():
        try:
            merged(base, preset)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append((f"models.{name}" + (f".{where}" if where else ""), msg))
    spec = space.get(PRESET)
    if spec is None:
        return problems
    if getattr(spec, "type", None) != "categorical":
        return [*problems, (f"search_space[{PRESET}]", "a preset is chosen by name: use `type: categorical`")]
    missing = [c for c in spec.choices if not isinstance(c, str) or c not in presets]
    if missing:
        known = ", ".join(presets) or "none: add a `models:` section"
        problems.append((f"search_space[{PRESET}]", f"{missing[0]!r} is not a model under `models` (known: {known})"))
    return problems


def variants(
    base: ModelConfig, presets: Mapping[str, Mapping[str, Any]], space: Mapping[str, Any]
) -> list[tuple[str, ModelConfig]]:
    """Every model a study may train, with the key that names it: the base when nothing is chosen, each
    preset in ``model.preset``'s choices, each ``model.name_or_path`` choice. For checking what they refer to."""
    out: list[tuple[str, ModelConfig]] = []
    preset = space.get(PRESET)
    if preset is not None:
        out += [(f"models.{c}", merged(base, presets[str(c)])) for c in preset.choices]
    names = space.get(NAME)
    if names is not None and getattr(names, "type", None) == "categorical":
        for c in names.choices:
            if isinstance(c, str):
                out.append((f"search_space[{NAME}]", base.model_copy(update={"name_or_path": c})))
    if preset is None or preset.when:  # the base model trains when no preset is chosen
        out.insert(0, ("model", base))
    return out


def model_key(params: Mapping[str, Any], config: Mapping[str, Any] | None) -> str | None:
    """The model a trial trained, for grouping results: its preset or model name parameter, else None
    (one model for the whole study). ``config``: the study's stored configuration (``hpo:config``)."""
    space = (config or {}).get("search_space") or {}
    for path in (PRESET, NAME):
        entry = space.get(path)
        if isinstance(entry, Mapping):
            name = entry.get("name") or path.rsplit(".", 1)[-1]
            if name in params:
                return str(params[name])
    return None


def space_for(space: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The entries of ``space`` that can be sampled with the model ``variants`` named ``key``: entries
    gated on another preset (``when: {model.preset: ...}``) are left out, so a ``model.config`` key is
    checked only against the architectures it can reach."""
    chosen = key.removeprefix("models.") if key.startswith("models.") else None
    out: dict[str, Any] = {}
    for path, spec in space.items():
        want = (spec.when or {}).get(PRESET, ...)
        if want is not ...:
            allowed = want if isinstance(want, list) else [want]
            if chosen is None or chosen not in allowed:
                continue
        out[path] = spec
    return out


@dataclass(frozen=True)
class ModelGroup:
    """The results of the trials that trained one model."""

    model: str
    trials: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_trial: int | None
    median: float | None  # of the complete trials' values


def group_by_model(
    trials: Iterable[tuple[int, str, float | None, Mapping[str, Any]]],
    config: Mapping[str, Any] | None,
    direction: str,
) -> list[ModelGroup]:
    """Trials (number, state name, value, params) grouped by the model they trained, best group first;
    [] when the study does not choose its model."""
    by: dict[str, list[tuple[int, str, float | None]]] = {}
    for number, state, value, params in trials:
        key = model_key(params, config)
        if key is not None:
            by.setdefault(key, []).append((number, state, value))
    if not by:
        return []
    sign = -1.0 if direction == "maximize" else 1.0
    groups: list[ModelGroup] = []
    for key, rows in by.items():
        done = [(v, n) for n, s, v in rows if s == "COMPLETE" and v is not None]
        best = min(done, key=lambda vn: (sign * vn[0], vn[1])) if done else None
        groups.append(
            ModelGroup(
                model=key,
                trials=len(rows),
                complete=len(done),
                pruned=sum(1 for _, s, _ in rows if s == "PRUNED"),
                failed=sum(1 for _, s, _ in rows if s == "FAIL"),
                best_value=best[0] if best else None,
                best_trial=best[1] if best else None,
                median=statistics.median(v for v, _ in done) if done else None,
            )
        )
    return sorted(groups, key=lambda g: (g.best_value is None, sign * (g.best_value or 0.0), g.model))
