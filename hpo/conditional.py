"""Conditional search spaces: an entry with ``when: {other.key: value}`` is sampled only when that holds.

Optuna samples define-by-run: a trial asks for one parameter after another, so which parameters exist may
depend on the values drawn before (``distillation.temperature`` only when ``distillation.enabled``,
``model.config.n_layer`` only for the from-config model). This module owns that seam: the order in which
entries are drawn (every condition's key before the entries that depend on it), which entries are active
for given values, drawing a trial's parameters through ``trial.suggest_*``, and the checks a study file's
conditions must pass (a key in the space, no cycle, values the key can take).

An inactive entry is not sampled and not recorded: the trial's run keeps the base value at its path
(``hpo.space.apply_params`` writes only parameters that were sampled). An entry whose condition's key is
itself inactive is inactive too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpo.space import CategoricalSpec, FloatSpec, IntSpec, param_name, to_distributions

if TYPE_CHECKING:  # only annotations: validating a study file never needs Optuna
    import optuna

Spec = FloatSpec | IntSpec | CategoricalSpec


def is_conditional(space: Mapping[str, Spec]) -> bool:
    return any(spec.when for spec in space.values())


def _allowed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _same(a: Any, b: Any) -> bool:
    # 1 and true are different values to a user (Optuna's choices compare them equal; we do not need to).
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def draw_order(space: Mapping[str, Spec]) -> list[str]:
    """The paths in file order, except that each condition's key comes before the entries it gates.

    Assumes ``check_conditions`` found nothing (no unknown key, no cycle).
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for key in space[path].when or {}:
            visit(key)
        order.append(path)

    for path in space:
        visit(path)
    return order


def active(path: str, space: Mapping[str, Spec], values: Mapping[str, Any]) -> bool:
    """Whether the entry at ``path`` is sampled, given the values (by path) of the entries drawn before it."""
    for key, allowed in (space[path].when or {}).items():
        if key not in values:  # its key is inactive itself
            return False
        if not any(_same(values[key], a) for a in _allowed(allowed)):
            return False
    return True


def suggest(trial: optuna.Trial, space: Mapping[str, Spec]) -> dict[str, Any]:
    """Draw the trial's active parameters define-by-run; returns their values by path.

    A trial enqueued with fixed parameters (a re-queue, a warm start) gets its fixed values from Optuna's
    ``suggest_*`` as usual; fixed values of entries inactive here are ignored.
    """
    values: dict[str, Any] = {}
    for path in draw_order(space):
        if not active(path, space, values):
            continue
        spec, name = space[path], param_name(path, space[path])
        if isinstance(spec, CategoricalSpec):
            values[path] = trial.suggest_categorical(name, spec.choices)
        elif isinstance(spec, IntSpec):
            values[path] = trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        else:
            values[path] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return values


def ask(study: optuna.Study, space: Mapping[str, Spec]) -> optuna.Trial:
    """A new trial with its parameters drawn: all at once for a plain space (as before conditions existed,
    so the draws of existing studies do not change), define-by-run for a conditional one."""
    if not is_conditional(space):
        return study.ask(to_distributions(space))
    trial = study.ask()
    suggest(trial, space)
    return trial


def active_params(space: Mapping[str, Spec], params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters (by name) a trial with these values would sample: inactive ones dropped."""
    values: dict[str, Any] = {}
    for path in draw_order(space):
        name = param_name(path, space[path])
        if name in params and active(path, space, values):
            values[path] = params[name]
    return {param_name(p, space[p]): v for p, v in values.items()}


def possible(spec: Spec, value: Any) -> bool:
    if isinstance(spec, CategoricalSpec):
        return any(_same(value, c) for c in spec.choices)
    if isinstance(spec, IntSpec):
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and spec.low <= value <= spec.high
            and (value - spec.low) % spec.step == 0
        )
    return False


def check_conditions(space: Mapping[str, Spec]) -> list[tuple[str, str]]:
    """Problems of the space's ``when`` conditions, as (``search_space[PATH].when``, message)."""
    problems: list[tuple[str, str]] = []
    for path, spec in space.items():
        loc = f"search_space[{path}].when"
        for key, allowed in (spec.when or {}).items():
            if key == path:
                problems.append((loc, f"{key!r} names this entry itself"))
            elif key not in space:
                problems.append((loc, f"{key!r} is not a key of search_space (keys: {', '.join(space)})"))
            elif isinstance(space[key], FloatSpec):
                problems.append((loc, f"{key!r} is a float; a condition needs a categorical or int key"))
            else:
                bad = [a for a in _allowed(allowed) if not possible(space[key], a)]
                if bad:
                    other = space[key]
                    can = (
                        f"its choices are {list(other.choices)}"
                        if isinstance(other, CategoricalSpec)
                        else f"it ranges over [{other.low}, {other.high}] step {other.step}"  # type: ignore[union-attr]
                    )
                    problems.append((loc, f"{key!r} never takes {bad[0]!r}: {can}"))
    if problems:
        return problems
    cycle = _cycle(space)
    if cycle:
        path = cycle[0]
        return [(f"search_space[{path}].when", "the conditions make a cycle: " + " -> ".join([*cycle, path]))]
    return []


def _cycle(space: Mapping[str, Spec]) -> list[str] | None:
    """One cycle of the "depends on" relation, as a list of paths, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(path: str) -> list[str] | None:
        state[path] = 1
        stack.append(path)
        for key in space[path].when or {}:
            if state.get(key) == 1:
                return stack[stack.index(key) :]
            if state.get(key) is None:
                found = visit(key)
                if found:
                    return found
        stack.pop()
        state[path] = 2
        return None

    for path in space:
        if path not in state:
            found = visit(path)
            if found:
                return found
    return None
