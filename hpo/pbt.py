"""Population-based training: the study file's ``pbt`` section and the pure decisions of each generation.

A population of members (each one Optuna trial) trains in intervals of ``interval_steps``. At each interval
boundary every member has reported its objective; ``plan_exploits`` ranks them and names, for each member of
the bottom quantile (and every member that failed its interval), a member of the top quantile to copy
(weights, optimizer state, schedule position: its checkpoint); ``explore`` then perturbs or resamples the
copied member's mutable hyperparameters. Both are pure functions of their inputs and a seeded generator, so
a resumed run takes the same decisions and the tests are tables.

What a member carries between intervals is a ``MemberRecord`` (stored as the trial's ``pbt`` user
attribute): its current step and value, its hyperparameter ``Schedule`` (the parameters its weights saw on
each step interval, inherited through every copy) and its lineage (``Exploit`` events). The winner's
schedule is what ``hpo export`` writes and ``hpo train`` replays. Running the population is
``hpo.pbt_run``'s; the checkpoints on disk are ``hpo.pbt_store``'s. No Optuna, no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpo.space import CategoricalSpec, FloatSpec, IntSpec, param_name
from trainers.config import SCHEDULABLE

if TYPE_CHECKING:  # the generators are made where decisions are taken: reading a study file needs no numpy
    import numpy as np

# Settings a member may change between intervals: those a run's schedule can change at a step
# (``trainers.config.SCHEDULABLE``: written into the optimizer and scheduler, or read at every step).
# Anything else (architecture, batch size, dropout, schedule type, warm-up) changes what a checkpoint means.
MUTABLE_PATHS = SCHEDULABLE

ATTR = "pbt"  # the member's trial user attribute: MemberRecord.to_json()


class PbtSection(BaseModel):
    """``pbt:`` in the study file. Its presence turns the study into population-based training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    population: int = Field(ge=2)  # members; each is one trial (study.n_trials must equal it)
    interval_steps: int = Field(ge=1)  # optimizer steps between exploit/explore decisions
    quantile: float = Field(default=0.25, gt=0.0, le=0.5)  # bottom fraction copies the top fraction
    perturb: tuple[float, float] = (0.8, 1.2)  # factors a copied float/int parameter is multiplied by
    resample_probability: float = Field(default=0.25, ge=0.0, le=1.0)  # draw afresh from the search space
    mutable: list[str] | None = None  # search-space paths that change between intervals; default: all that can
    # Where member checkpoints live; default: next to the SQLite file (``runs/<name>-pbt``), or
    # ``runs/<name>-pbt`` in the working directory for a server storage. Not fingerprinted: moving it is fine.
    checkpoint_dir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PbtSection:
        if not all(f > 0 and math.isfinite(f) for f in self.perturb):
            raise ValueError(f"perturb factors must be finite and > 0, but got {list(self.perturb)}")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What decides the results (everything but where the checkpoints are)."""
        return self.model_dump(exclude={"checkpoint_dir"})


Spec = FloatSpec | IntSpec | CategoricalSpec


def mutable_paths(section: PbtSection, space: Mapping[str, Spec]) -> list[str]:
    """The search-space paths that change between intervals: as declared, or every one that can."""
    if section.mutable is not None:
        return list(section.mutable)
    return [p for p in space if p in MUTABLE_PATHS]


def check_section(
    section: PbtSection,
    space: Mapping[str, Spec],
    *,
    n_trials: int,
    max_steps: int,
    eval_every: int,
    sampler: str,
    workers: int | str,
) -> list[tuple[str, str]]:
    """Cross-checks against the rest of the file, as ``(key, message)`` problems (empty: fine)."""
    problems: list[tuple[str, str]] = []
    for i, path in enumerate(section.mutable or []):
        if path not in space:
            problems.append((f"pbt.mutable[{i}]", f"{path!r} is not in search_space"))
        elif path not in MUTABLE_PATHS:
            problems.append(
                (
                    f"pbt.mutable[{i}]",
                    f"{path!r} cannot change during training (mutable: {', '.join(MUTABLE_PATHS)})",
                )
            )
    if section.mutable is not None and not section.mutable:
        problems.append(("pbt.mutable", "name at least one parameter that changes between intervals"))
    elif section.mutable is None and not mutable_paths(section, space):
        problems.append(
            ("pbt.mutable", f"no search_space parameter can change during training ({', '.join(MUTABLE_PATHS)})")
        )
    if section.population != n_trials:
        problems.append(
            (
                "pbt.population",
                f"each member is one trial: population ({section.population}) must equal study.n_trials ({n_trials})",
            )
        )
    if isinstance(workers, int) and section.population < workers:
        problems.append(
            ("pbt.population", f"population ({section.population}) is smaller than resources.workers ({workers})")
        )
    if section.interval_steps > max_steps:
        problems.append(
            (
                "pbt.interval_steps",
                f"interval ({section.interval_steps}) is longer than a trial (fidelity.max_steps={max_steps})",
            )
        )
    elif section.interval_steps % eval_every:
        problems.append(
            (
                "pbt.interval_steps",
                f"must be a multiple of fidelity.eval_every ({eval_every}): members are ranked on the eval at "
                "each interval's end",
            )
        )
    if sampler == "grid":
        problems.append(("sampler.name", "PBT draws its first population and resamples: the grid sampler cannot"))
    return problems


# ---------------------------------------------------------------------------------------------- decisions
def _rank_key(direction: str, value: float | None, member: int) -> tuple[int, float, int]:
    if value is None or not math.isfinite(value):
        return (1, 0.0, member)  # failed or diverged: after every member with a value
    return (0, value if direction == "minimize" else -value, member)


def plan_exploits(
    values: Mapping[int, float | None], quantile: float, direction: str, rng: np.random.Generator
) -> dict[int, int]:
    """Which member copies which: ``{member: parent}`` for the bottom quantile and every member without a value.

    ``values``: each member's objective at this boundary (None: its interval failed). The quantile is
    ``ceil(population * quantile)`` members, at most half the population, at least one; parents are drawn
    uniformly from the top quantile (members with a value only). Ties rank the lower member first.
    """
    ranked = sorted(values, key=lambda m: _rank_key(direction, values[m], m))
    valid = [m for m in ranked if _rank_key(direction, values[m], m)[0] == 0]
    if not valid:
        raise ValueError("no member of the population has a value: nothing to copy from")
    k = min(max(1, math.ceil(len(ranked) * quantile)), len(ranked) // 2)
    top = valid[:k]
    bottom = set(ranked[len(ranked) - k :]) | {m for m in ranked if m not in valid}
    bottom -= set(top)
    return {m: int(top[int(rng.integers(len(top)))]) for m in sorted(bottom)}


def explore(
    params: Mapping[str, Any],
    mutable: Mapping[str, Spec],
    perturb: Sequence[float],
    resample_probability: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The parameters a member continues with after copying a parent with ``params``.

    Each mutable parameter (``mutable``: Optuna name -> its search-space entry) is drawn afresh from its
    entry with ``resample_probability``; otherwise a float or int is multiplied by one of ``perturb``
    (clipped to the entry's range, rounded to its step) and a categorical moves to a neighbouring choice.
    Fixed parameters are copied as they are.
    """
    out = dict(params)
    for name, spec in mutable.items():
        if rng.random() < resample_probability:
            out[name] = _sample(spec, rng)
        else:
            out[name] = _perturb(spec, params[name], perturb, rng)
    return out


def _sample(spec: Spec, rng: np.random.Generator) -> Any:
    if isinstance(spec, CategoricalSpec):
        return spec.choices[int(rng.integers(len(spec.choices)))]
    if spec.log:
        value = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
    else:
        value = rng.uniform(spec.low, spec.high)
    return _fit(spec, value)


def _perturb(spec: Spec, value: Any, factors: Sequence[float], rng: np.random.Generator) -> Any:
    if isinstance(spec, CategoricalSpec):
        i = spec.choices.index(value) if value in spec.choices else 0
        j = min(max(i + (1 if rng.random() < 0.5 else -1), 0), len(spec.choices) - 1)
        return spec.choices[j]
    return _fit(spec, float(value) * float(factors[int(rng.integers(len(factors)))]))


def _fit(spec: FloatSpec | IntSpec, value: float) -> Any:
    """Clip to the entry's range and round to its step (an int entry gives an int)."""
    if spec.step is not None:
        value = spec.low + round((value - spec.low) / spec.step) * spec.step
    value = min(max(value, spec.low), spec.high)
    return round(value) if isinstance(spec, IntSpec) else float(value)


def generation_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of the decisions at boundary ``step``: a function of the study's seed and the step only,
    so a population resumed after a crash decides exactly as it would have."""
    import numpy as np

    return np.random.default_rng([seed, step])


# ------------------------------------------------------------------------------------- lineage, schedule
@dataclass(frozen=True)
class Exploit:
    """One copy: at ``step``, ``member`` (trial ``trial``) took ``parent``'s checkpoint and explored."""

    step: int
    member: int
    parent: int
    parent_trial: int
    value: float | None  # the member's objective before the copy (None: its interval failed)
    parent_value: float
    changed: dict[str, tuple[Any, Any]]  # parameter -> (the parent's value, the member's new value)

    def describe(self) -> str:
        changes = ", ".join(f"{k} {_short(a)}→{_short(b)}" for k, (a, b) in self.changed.items()) or "no change"
        return f"step {self.step}: copied member {self.parent} (trial {self.parent_trial}); {changes}"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


Schedule = list[tuple[int, dict[str, Any]]]  # (first step, parameters) per interval, ascending


def inherit(parent: Schedule, step: int, params: Mapping[str, Any]) -> Schedule:
    """A copied member's schedule: the parent's up to ``step``, then ``params`` (merged when unchanged)."""
    out = [(s, dict(p)) for s, p in parent if s < step]
    if not out or out[-1][1] != dict(params):
        out.append((step, dict(params)))
    return out


def params_at(schedule: Schedule, step: int) -> dict[str, Any]:
    """The parameters in force on the step after ``step`` optimizer steps were done."""
    current = schedule[0][1]
    for s, p in schedule:
        if s <= step:
            current = p
    return dict(current)


def scale_schedule(schedule: Schedule, from_steps: int, to_steps: int) -> Schedule:
    """The same schedule over a run of ``to_steps`` instead of ``from_steps`` (boundaries stretched)."""
    return [(s * to_steps // from_steps, dict(p)) for s, p in schedule]


@dataclass
class MemberRecord:
    """What the population knows of one member between intervals (the trial's ``pbt`` user attribute)."""

    member: int
    step: int = 0  # optimizer steps its checkpoint holds
    value: float | None = None  # objective at ``step`` (None before the first boundary, or failed)
    schedule: Schedule = field(default_factory=list)
    lineage: list[Exploit] = field(default_factory=list)
    retries: int = 0  # times its current interval was restarted after its worker died
    status: Literal["training", "done", "failed"] = "training"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.schedule[-1][1])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedule"] = [[s, p] for s, p in self.schedule]
        d["lineage"] = [{**asdict(e), "changed": {k: list(v) for k, v in e.changed.items()}} for e in self.lineage]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MemberRecord:
        lineage = [
            Exploit(**{**e, "changed": {k: (v[0], v[1]) for k, v in e["changed"].items()}}) for e in d["lineage"]
        ]
        return cls(
            member=int(d["member"]),
            step=int(d["step"]),
            value=d.get("value"),
            schedule=[(int(s), dict(p)) for s, p in d["schedule"]],
            lineage=lineage,
            retries=int(d.get("retries", 0)),
            status=d.get("status", "training"),
        )

    def note(self) -> str:
        """Lineage and schedule in Markdown (the dashboard's trial note)."""
        lines = [f"**PBT member {self.member}**: {len(self.lineage)} exploit(s)", ""]
        lines += [f"- {e.describe()}" for e in self.lineage]
        lines += ["", "| from step | parameters |", "|---|---|"]
        for step, params in self.schedule:
            lines.append(f"| {step} | " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()) + " |")
        return "\n".join(lines)


def exploit_and_explore(
    records: Mapping[int, MemberRecord],
    trials: Mapping[int, int],
    step: int,
    section: PbtSection,
    mutable: Mapping[str, Spec],
    direction: str,
    seed: int,
) -> dict[int, MemberRecord]:
    """The records after the decisions at boundary ``step``: only the members that copy appear, each with
    its new schedule and an ``Exploit`` added to its lineage (``trials``: member -> trial number)."""
    rng = generation_rng(seed, step)
    plan = plan_exploits({m: r.value for m, r in records.items()}, section.quantile, direction, rng)
    out: dict[int, MemberRecord] = {}
    for m, parent in plan.items():
        p = records[parent]
        new = explore(p.params, mutable, section.perturb, section.resample_probability, rng)
        changed = {k: (p.params[k], new[k]) for k in mutable if new[k] != p.params[k]}
        assert p.value is not None  # parents come from the top, which has values
        event = Exploit(step, m, parent, trials[parent], records[m].value, p.value, changed)
        old = records[m]
        out[m] = MemberRecord(
            member=m,
            step=step,
            value=p.value,  # its weights are the parent's now
            schedule=inherit(p.schedule, step, new),
            lineage=[*old.lineage, event],
            retries=0,
            status="training",
        )
    return out


def mutable_specs(section: PbtSection, space: Mapping[str, Spec]) -> dict[str, Spec]:
    """Optuna parameter name -> entry, for the mutable paths."""
    return {param_name(p, space[p]): space[p] for p in mutable_paths(section, space)}
