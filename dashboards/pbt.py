"""The report's figures of a population-based-training study: the population's curves with the exploit
events, and the winning member's hyperparameter schedule over steps. ``population`` turns the study into
plain data (pure); the two figure functions draw it. Studies without PBT members give no figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from hpo.pbt import ATTR, Exploit, MemberRecord, Schedule
from hpo.record import rank_key

WINNER_COLOR = "#111111"


@dataclass(frozen=True)
class MemberCurve:
    member: int
    trial: int
    state: str
    value: float | None
    curve: list[tuple[int, float]]  # objective reported at each eval step
    exploits: list[Exploit]
    schedule: Schedule


@dataclass(frozen=True)
class PopulationData:
    metric: str
    members: list[MemberCurve] = field(default_factory=list)
    winner: int | None = None  # member number

    def member(self, m: int) -> MemberCurve:
        return next(c for c in self.members if c.member == m)


def population(study: optuna.Study, metric: str) -> PopulationData:
    """The members of a PBT study (trials carrying the ``pbt`` attribute) as plain data."""
    members = []
    for t in study.get_trials(deepcopy=False):
        if ATTR not in t.user_attrs:
            continue
        rec = MemberRecord.from_json(t.user_attrs[ATTR])
        curve = sorted((int(s), float(v)) for s, v in t.intermediate_values.items())
        members.append(MemberCurve(rec.member, t.number, t.state.name, t.value, curve, rec.lineage, rec.schedule))
    members.sort(key=lambda c: c.member)
    done = [c for c in members if c.state == TrialState.COMPLETE.name and c.value is not None]
    direction = "minimize" if study.direction == optuna.study.StudyDirection.MINIMIZE else "maximize"
    winner = min(done, key=lambda c: rank_key(direction, c.value, c.trial)).member if done else None  # type: ignore[arg-type]
    return PopulationData(metric, members, winner)


def population_figure(pd: PopulationData) -> go.Figure:
    fig = go.Figure()
    for c in pd.members:
        win = c.member == pd.winner
        fig.add_trace(
            go.Scatter(
                x=[s for s, _ in c.curve],
                y=[v for _, v in c.curve],
                mode="lines+markers",
                name=f"member {c.member} (trial {c.trial})" + (" — winner" if win else ""),
                line={"color": WINNER_COLOR, "width": 3} if win else {"width": 1.5},
                marker={"size": 4},
            )
        )
    xs, ys, texts = [], [], []
    for c in pd.members:
        for e in c.exploits:
            xs.append(e.step)
            ys.append(e.parent_value)
            texts.append(f"member {c.member} {e.describe()}")
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="exploit (a member copies another's checkpoint)",
                marker={"symbol": "triangle-up", "size": 11, "color": "#d62728", "line": {"width": 1, "color": "#fff"}},
                text=texts,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    log = pd.metric == "perplexity" and all(v > 0 for c in pd.members for _, v in c.curve)
    fig.update_layout(
        title=f"Population: {pd.metric} per member over steps, with exploit events",
        xaxis_title="optimizer step",
        yaxis_title=pd.metric,
        yaxis_type="log" if log else None,
        height=460,
    )
    return fig


def schedule_figure(pd: PopulationData, max_steps: int) -> go.Figure:
    """The winner's hyperparameters per step interval (inherited through every copy), one panel each."""
    if pd.winner is None:
        fig = go.Figure()
        fig.update_layout(title="Winner's schedule: no complete member yet", height=200)
        return fig
    w = pd.member(pd.winner)
    names = [k for k, v in w.schedule[0][1].items() if len({p.get(k) for _, p in w.schedule}) > 1] or list(
        w.schedule[0][1]
    )
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names)
    for i, name in enumerate(names, start=1):
        xs: list[int] = []
        ys: list[Any] = []
        for j, (s, p) in enumerate(w.schedule):
            end = w.schedule[j + 1][0] if j + 1 < len(w.schedule) else max_steps
            xs += [s, end]
            ys += [p.get(name), p.get(name)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line={"color": WINNER_COLOR}), row=i, col=1)
        positive = all(isinstance(y, int | float) and y > 0 and math.isfinite(y) for y in ys)
        if name == "learning_rate" and positive:
            fig.update_yaxes(type="log", row=i, col=1)
    fig.update_xaxes(title_text="optimizer step", row=len(names), col=1)
    fig.update_layout(
        title=f"Winner's schedule: member {w.member} (trial {w.trial}), {len(w.exploits)} exploit(s)",
        height=220 + 160 * len(names),
        showlegend=False,
    )
    return fig


def pbt_figures(study: optuna.Study, metric: str, max_steps: int) -> list[tuple[str, str, go.Figure]]:
    """(key suffix, title, figure) of a PBT study; none for other studies."""
    pd = population(study, metric)
    if not pd.members:
        return []
    return [
        ("pbt-population", "Population-based training: members and exploits", population_figure(pd)),
        ("pbt-schedule", "Population-based training: the winner's schedule", schedule_figure(pd, max_steps)),
    ]
