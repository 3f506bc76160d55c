"""Report figures on what a study's winners are worth: the confirmation intervals (`hpo confirm`) and the
Pareto front of a multi-objective study. Plain data in, plotly figures out; ``dashboards.report`` places them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
import plotly.graph_objects as go

from hpo.confirm import Confirmation


def confirmation_figure(conf: Confirmation) -> go.Figure:
    """Each confirmed configuration: its runs (dots), mean and 95% CI (bar), and the search's one value (×)."""
    fig = go.Figure()
    labels = [f"trial {c.trial}" + (" (winner)" if c.trial == conf.winner else "") for c in conf.configs]
    means = [c.mean for c in conf.configs]
    fig.add_trace(
        go.Scatter(
            x=means,
            y=labels,
            mode="markers",
            name="mean, 95% CI",
            marker={"size": 11, "color": "#243447"},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [0.0 if math.isnan(c.ci_high) else c.ci_high - c.mean for c in conf.configs],
                "arrayminus": [0.0 if math.isnan(c.ci_low) else c.mean - c.ci_low for c in conf.configs],
            },
            customdata=[[c.std, c.p_best, len(c.values)] for c in conf.configs],
            hovertemplate="%{y}<br>mean %{x:.4g}, std %{customdata[0]:.3g}<br>P(best) %{customdata[1]:.2f}, "
            "%{customdata[2]} runs<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[v for c in conf.configs for v in c.values],
            y=[lab for c, lab in zip(conf.configs, labels, strict=True) for _ in c.values],
            mode="markers",
            name="runs (one per seed)",
            marker={"size": 7, "color": "rgba(31,119,180,0.6)"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[c.search_value for c in conf.configs],
            y=labels,
            mode="markers",
            name="the search's run",
            marker={"size": 10, "symbol": "x", "color": "#d62728"},
        )
    )
    better = "lower" if conf.direction == "minimize" else "higher"
    fig.update_layout(
        title=f"Confirmation — {conf.metric} over seeds {conf.seeds} at {conf.steps} steps ({better} is better)",
        xaxis_title=conf.metric,
        yaxis={"autorange": "reversed"},
        template="plotly_white",
        height=160 + 50 * len(conf.configs),
    )
    return fig


def confirmation_rows(conf: Confirmation) -> list[list[Any]]:
    """The table next to the figure: trial, search value, mean, std, interval, P(best), runs."""
    out = []
    for c in conf.configs:
        ci = "-" if math.isnan(c.ci_low) else f"{c.ci_low:.4g} – {c.ci_high:.4g}"
        out.append([c.trial, c.search_value, c.mean, c.std, ci, round(c.p_best, 3), len(c.values)])
    return out


def pareto_figure(study: optuna.Study, names: Sequence[str]) -> go.Figure:
    """Optuna's Pareto-front plot of the complete trials (two or three objectives), named."""
    from optuna.visualization import plot_pareto_front

    fig = plot_pareto_front(study, target_names=list(names))
    fig.update_layout(template="plotly_white")
    return fig
