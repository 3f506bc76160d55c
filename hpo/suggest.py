"""``hpo suggest``: a new study file whose search space is narrowed around an earlier study's best trials.

``narrow`` is the pure step (tested by equality): from the complete trials' values and parameters, the top
trials (a quarter of the complete ones, at least 3) decide each entry's new range:

- a float or int entry becomes the span of the top trials' values (in log space for ``log: true``), widened by
  a quarter of that span on each side (at least 5% of the old range in all), clipped to the old range, and
  aligned to its ``step``. When the result would still cover 90% of the old range, the entry is kept as it was;
- a categorical entry keeps only the choices seen in the top trials (in the old order);
- an entry no top trial sampled (inactive under its ``when``) is kept; ``when`` values that are no longer a
  choice are dropped, and an entry whose condition can then never hold is dropped with a note.

``suggest`` writes the file: the old one with the new ``search_space``, a new ``study.name``, and the old best
trial's parameters enqueued (``warm_start.configs``), with a header comment that says what was narrowed and
why. It is validated, references included, before it is written.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import HpoError
from hpo.space import CategoricalSpec, FloatSpec, IntSpec, param_name

Spec = FloatSpec | IntSpec | CategoricalSpec

MIN_TOP = 3
TOP_SHARE = 0.25
MARGIN = 0.25  # of the top values' span, on each side
MIN_WIDTH = 0.05  # of the old range: a top that agrees on one value still leaves room around it
KEEP_ABOVE = 0.9  # a new range this wide (share of the old) is not worth a change


@dataclass
class Suggestion:
    space: dict[str, Spec]
    notes: list[str]  # one line per entry: what changed and why
    best: dict[str, Any]  # the best trial's parameters, by path
    best_number: int | None
    best_value: float
    top: int
    complete: int
    dropped: list[str] = field(default_factory=list)
    auto_top: bool = True  # the top's size came from TOP_SHARE (not --top)


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) if isinstance(a, bool) or isinstance(b, bool) else a == b


def _round_down(x: float, digits: int = 3) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(x))))
    return math.floor(x * scale) / scale


def _round_up(x: float, digits: int = 3) -> float:
    return -_round_down(-x, digits)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _numeric(spec: FloatSpec | IntSpec, values: Sequence[float]) -> tuple[Spec, str]:
    """The entry narrowed around ``values`` (the top trials'), and a note."""
    fwd = math.log if spec.log else (lambda v: float(v))
    back = math.exp if spec.log else (lambda v: v)
    lo_t, hi_t = fwd(spec.low), fwd(spec.high)
    width = hi_t - lo_t
    old = f"[{_fmt(spec.low)}, {_fmt(spec.high)}]"
    if width <= 0:
        return spec, f"kept {old}: a single value"
    ts = [fwd(v) for v in values]
    span = max(ts) - min(ts)
    margin = max(MARGIN * span, (MIN_WIDTH * width - span) / 2)
    new_lo_t, new_hi_t = max(lo_t, min(ts) - margin), min(hi_t, max(ts) + margin)
    scale = " (log scale)" if spec.log else ""
    top = f"top {len(values)} between {_fmt(min(values))} and {_fmt(max(values))}"
    if new_hi_t - new_lo_t >= KEEP_ABOVE * width:
        return spec, f"kept {old}: {top}, {100 * (new_hi_t - new_lo_t) / width:.0f}% of the range{scale}"
    lo, hi = back(new_lo_t), back(new_hi_t)
    if isinstance(spec, IntSpec):
        ilo = spec.low + math.floor((lo - spec.low) / spec.step) * spec.step
        ihi = spec.low + math.ceil((hi - spec.low) / spec.step) * spec.step
        ilo, ihi = max(spec.low, ilo), min(spec.high, ihi)
        if ihi - ilo >= KEEP_ABOVE * (spec.high - spec.low):
            return spec, f"kept {old}: {top}"
        new: Spec = spec.model_copy(update={"low": ilo, "high": ihi, "grid": _grid(spec.grid, ilo, ihi)})
    else:
        if spec.step is not None:
            lo = spec.low + math.floor((lo - spec.low) / spec.step + 1e-9) * spec.step
            hi = spec.low + math.ceil((hi - spec.low) / spec.step - 1e-9) * spec.step
        else:  # readable bounds, rounded outwards so every top value stays inside
            lo, hi = _round_down(lo), _round_up(hi)
        lo, hi = max(spec.low, min(lo, min(values))), min(spec.high, max(hi, max(values)))
        new = spec.model_copy(update={"low": lo, "high": hi, "grid": _grid(spec.grid, lo, hi)})
    assert isinstance(new, (FloatSpec, IntSpec))
    return new, f"{old} -> [{_fmt(new.low)}, {_fmt(new.high)}]: {top}{scale}, widened by {MARGIN:.0%} of that span"


def _grid(grid: list[Any] | None, lo: float, hi: float) -> list[Any] | None:
    if grid is None:
        return None
    inside = [g for g in grid if lo <= g <= hi]
    return inside or None  # no old grid point inside: the entry has no grid (the grid sampler says so)


def narrow(
    space: Mapping[str, Spec],
    trials: Sequence[tuple[int, float, Mapping[str, Any]]],
    direction: str,
    top: int | None = None,
) -> Suggestion:
    """Narrow ``space`` around the best of ``trials`` (complete trials: number, value, params by name)."""
    if len(trials) < MIN_TOP:
        raise HpoError(f"hpo suggest needs at least {MIN_TOP} complete trials; the study has {len(trials)}")
    sign = -1.0 if direction == "maximize" else 1.0
    ranked = sorted(trials, key=lambda t: (sign * t[1], t[0]))
    n = top if top is not None else max(MIN_TOP, math.ceil(TOP_SHARE * len(trials)))
    n = max(1, min(n, len(trials)))
    best_trials = ranked[:n]
    new: dict[str, Spec] = {}
    notes: list[str] = []
    for path, spec in space.items():
        name = param_name(path, spec)
        values = [p[name] for _, _, p in best_trials if name in p]
        if not values:
            new[path], note = spec, "kept: no top trial sampled it"
        elif isinstance(spec, CategoricalSpec):
            seen = [c for c in spec.choices if any(_same(c, v) for v in values)]
            if len(seen) < len(spec.choices):
                new[path] = spec.model_copy(update={"choices": seen})
                note = f"{list(spec.choices)} -> {seen}: the choices the top {len(values)} used"
            else:
                new[path], note = spec, f"kept {list(spec.choices)}: the top {len(values)} used every choice"
        elif len(values) < 2:
            new[path], note = spec, "kept: only one top trial sampled it"
        else:
            new[path], note = _numeric(spec, [float(v) for v in values])
        notes.append(f"{name}: {note}")
    new, dropped = _fix_conditions(new)
    notes += [f"{path}: dropped, its `when` can no longer hold" for path in dropped]
    number, value, params = ranked[0]
    by_name = {param_name(p, s): p for p, s in space.items()}
    best = {by_name[k]: v for k, v in params.items() if k in by_name and by_name[k] in new}
    return Suggestion(new, notes, best, number, value, n, len(trials), dropped, auto_top=top is None)


def _fix_conditions(space: dict[str, Spec]) -> tuple[dict[str, Spec], list[str]]:
    """Drop ``when`` values the narrowed keys no longer take; drop entries whose condition cannot hold."""
    from hpo.conditional import possible

    dropped: list[str] = []
    changed = True
    while changed:
        changed = False
        for path, spec in list(space.items()):
            if not spec.when:
                continue
            when: dict[str, Any] = {}
            for key, allowed in spec.when.items():
                if key not in space:
                    when = {}
                    break
                keep = [a for a in (allowed if isinstance(allowed, list) else [allowed]) if possible(space[key], a)]
                if not keep:
                    when = {}
                    break
                when[key] = keep if isinstance(allowed, list) else keep[0]
            if not when:
                del space[path]
                dropped.append(path)
                changed = True
            elif when != spec.when:
                space[path] = spec.model_copy(update={"when": when})
    return space, dropped


def _entry(spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = spec.model_dump(exclude_defaults=True)
    rest = {k: v for k, v in out.items() if k not in ("type", "when")}
    return {"type": spec.type, **rest, **({"when": out["when"]} if "when" in out else {})}


def render(raw: Mapping[str, Any], s: Suggestion, source: str, old_name: str, name: str) -> str:
    """The suggested study file's text: a header comment, then the file."""
    data = {k: v for k, v in raw.items() if k not in ("search_space", "warm_start")}
    data["study"] = {**dict(raw.get("study") or {}), "name": name}
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"Suggested by `hpo suggest {source}` on {when}.",
        f"Study {old_name!r}: {s.complete} complete trials; the best is trial {s.best_number} ({s.best_value:.6g}).",
        f"Each range is narrowed around the top {s.top} trials"
        + (f" (the best quarter, at least {MIN_TOP}):" if s.auto_top else " (--top):"),
        *[f"  {n}" for n in s.notes],
        "warm_start.configs: the old best trial, run first in the new study.",
    ]
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)

    def flow(value: Any) -> str:
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=True, allow_unicode=True, width=10_000).strip()

    # One line per entry, as study files are written by hand.
    text += "search_space:\n" + "".join(f"  {p}: {flow(_entry(spec))}\n" for p, spec in s.space.items())
    text += "warm_start:\n  configs:\n  - " + flow(s.best) + "\n"
    return "".join(f"# {line}\n" for line in head) + text


def suggest(
    path: str | Path,
    out: str | Path | None = None,
    top: int | None = None,
    name: str | None = None,
    force: bool = False,
) -> tuple[Path, Suggestion]:
    """Write the narrowed study file (default: ``<study>-suggested.yaml`` next to it); returns where, and what."""
    from hpo.config import load_study_file, read_yaml_file, validate_study
    from hpo.record import TrialRecord
    from hpo.references import check_references
    from hpo.storage import load_existing

    src = Path(path)
    cfg = load_study_file(src)
    dest = Path(out) if out is not None else src.with_name(f"{src.stem}-suggested.yaml")
    if dest.exists() and not force:
        raise HpoError(f"{dest} exists; give another -o or --force")
    study = load_existing(cfg)
    records = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    trials = [
        (r.number, float(r.value), dict(r.params))
        for r in records
        if r.state.name == "COMPLETE" and r.value is not None
    ]
    s = narrow(cfg.search_space, trials, cfg.direction, top)
    new_name = name or f"{cfg.study.name}-suggested"
    text = render(read_yaml_file(src), s, str(path), cfg.study.name, new_name)
    from hpo import yamlio

    new_cfg = validate_study(yamlio.loads(text), str(dest), base_dir=dest.absolute().parent)
    if dest.absolute().parent != src.absolute().parent:
        # Relative paths in the file are relative to its folder: check they still resolve from the new one.
        check_references(new_cfg, str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    return dest, s
