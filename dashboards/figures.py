"""Plain data (``dashboards.data``) to plotly figures. No study, storage or file access here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from dashboards.data import (
    Axis,
    ComparisonData,
    ComputeData,
    ContourData,
    CurvesData,
    HistoryData,
    ImportanceData,
    ParallelData,
    SliceData,
    TimelineData,
)

STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#2ca02c",
    "WAITING": "#7f7f7f",
}
BEST_COLOR = "#111111"
SAVED_COLOR = "#c7e9c0"
STUDY_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
HEIGHT = 460
LOG_METRICS = {"perplexity"}


def _layout(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        height=height,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        legend={"itemsizing": "constant"},
    )
    return fig


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks between lo and hi (inclusive of the decades around them)."""
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo / 1.0001 <= t <= hi * 1.0001:
                out.append(float(f"{t:.12g}"))
    return out or [lo, hi]


def empty(title: str, message: str) -> go.Figure:
    """A figure that says why there is nothing to plot."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=260)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def _better(direction: str) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def _apply_axis(fig: go.Figure, axis: Axis, which: str = "x", row: int | None = None, col: int | None = None) -> None:
    kw: dict[str, object] = {"title_text": axis.name}
    if axis.categories is not None:
        kw.update(tickmode="array", tickvals=list(range(len(axis.categories))), ticktext=list(axis.categories))
    elif axis.log:
        kw.update(type="log")
    if which == "x":
        fig.update_xaxes(row=row, col=col, **kw)
    else:
        fig.update_yaxes(row=row, col=col, **kw)


# ------------------------------------------------------------------------------------------- history


def history_figure(d: HistoryData, title: str = "Optimization history") -> go.Figure:
    if not d.complete and not d.pruned:
        return empty(title, "no finished trials yet")
    fig = go.Figure()
    if d.complete:
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in d.complete],
                y=[v for _, v in d.complete],
                mode="markers",
                name="complete trial",
                marker={"color": STATE_COLORS["COMPLETE"], "size": 9},
                hovertemplate="trial %{x}<br>" + d.metric + " %{y:.4g}<extra>complete</extra>",
            )
        )
        last = max(n for n, _ in (*d.complete, *d.pruned))
        best = list(d.best) + ([(last, d.best[-1][1])] if last > d.best[-1][0] else [])
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in best],
                y=[v for _, v in best],
                mode="lines",
                line={"shape": "hv", "color": BEST_COLOR, "width": 2},
                name="best so far",
                hovertemplate="after trial %{x}<br>best %{y:.4g}<extra></extra>",
            )
        )
    if d.pruned:
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in d.pruned],
                y=[v for _, v in d.pruned],
                mode="markers",
                name="pruned (last reported value)",
                marker={"color": STATE_COLORS["PRUNED"], "size": 9, "symbol": "x"},
                hovertemplate="trial %{x}<br>" + d.metric + " %{y:.4g}<extra>pruned</extra>",
            )
        )
    fig.update_xaxes(title_text="trial")
    fig.update_yaxes(title_text=d.metric, type="log" if d.metric in LOG_METRICS else None)
    return _layout(fig, f"{title} — {d.metric}, {_better(d.direction)}")


# --------------------------------------------------------------------------------------- importances


def importance_figure(d: ImportanceData, title: str = "Hyperparameter importances") -> go.Figure:
    if not d.params:
        return empty(title, f"no importances: {d.note or 'no data'}")
    fig = go.Figure(
        go.Bar(
            x=list(reversed(d.values)),
            y=list(reversed(d.params)),
            orientation="h",
            text=[f"{v:.2f}" for v in reversed(d.values)],
            textposition="auto",
            marker={"color": STATE_COLORS["COMPLETE"]},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="importance (PED-ANOVA, sums to 1)", range=[0, max(1.0, max(d.values))])
    caveat = " — few trials: treat as a hint" if d.n_complete < 20 else ""
    return _layout(fig, f"{title} — from {d.n_complete} complete trials{caveat}", height=120 + 50 * len(d.params))


# ---------------------------------------------------------------------------------- parameter plots


def parallel_figure(d: ParallelData, title: str = "Parallel coordinates") -> go.Figure:
    if not d.numbers:
        return empty(title, "no complete trials yet")
    dims = []
    for axis, col in zip(d.axes, d.columns, strict=True):
        dim: dict[str, object] = {"label": axis.name}
        if axis.categories is not None:
            dim.update(values=list(col), tickvals=list(range(len(axis.categories))), ticktext=list(axis.categories))
            dim["range"] = [-0.2, len(axis.categories) - 0.8]
        elif axis.log and col and all(v > 0 for v in col):
            logs = [math.log10(v) for v in col]
            ticks = log_ticks(min(col), max(col))
            dim.update(
                values=logs,
                tickvals=[math.log10(t) for t in ticks],
                ticktext=[f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e") for t in ticks],
                label=f"{axis.name} (log)",
            )
        else:
            dim["values"] = list(col)
        dims.append(dim)
    dims.append({"label": d.metric, "values": list(d.values)})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": list(d.values),
                "colorscale": "Viridis",
                "reversescale": d.direction == "maximize",  # darkest = best
                "showscale": True,
                "colorbar": {"title": {"text": d.metric}},
            },
        )
    )
    fig = _layout(fig, f"{title} — {len(d.numbers)} complete trials, colour = {d.metric}")
    fig.update_layout(margin={"t": 120, "l": 90, "r": 40})
    return fig


def slice_figure(ds: Sequence[SliceData], metric: str, title: str = "Slice") -> go.Figure:
    if not ds or not any(s.x or s.pruned_x for s in ds):
        return empty(title, "no finished trials yet")
    cols = min(len(ds), 4)
    rows = math.ceil(len(ds) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04, vertical_spacing=0.18)
    for i, s in enumerate(ds):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(
            go.Scatter(
                x=list(s.x),
                y=list(s.y),
                mode="markers",
                name="complete",
                legendgroup="complete",
                showlegend=i == 0,
                marker={
                    "color": list(s.numbers),
                    "colorscale": "Blues",
                    "size": 9,
                    "line": {"width": 0.5, "color": "#333"},
                    "showscale": i == 0,
                    "colorbar": {"title": {"text": "trial"}},
                },
                customdata=list(s.numbers),
                hovertemplate="trial %{customdata}<br>" + s.axis.name + " %{x}<br>%{y:.4g}<extra></extra>",
            ),
            row=r,
            col=c,
        )
        if s.pruned_x:
            fig.add_trace(
                go.Scatter(
                    x=list(s.pruned_x),
                    y=list(s.pruned_y),
                    mode="markers",
                    name="pruned (last reported value)",
                    legendgroup="pruned",
                    showlegend=i == 0,
                    marker={"color": STATE_COLORS["PRUNED"], "symbol": "x", "size": 8},
                    customdata=list(s.pruned_numbers),
                    hovertemplate="trial %{customdata} (pruned)<br>" + s.axis.name + " %{x}<br>%{y:.4g}<extra></extra>",
                ),
                row=r,
                col=c,
            )
        _apply_axis(fig, s.axis, "x", r, c)
    fig.update_yaxes(type="log" if metric in LOG_METRICS else None)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return _layout(fig, f"{title} — {metric} against each parameter", height=max(HEIGHT, 340 * rows + 80))


def contour_figure(d: ContourData | None, title: str = "Contour") -> go.Figure:
    if d is None:
        return empty(title, "needs at least 3 complete trials with both parameters")
    fig = go.Figure()
    fig.add_trace(
        go.Contour(
            x=list(d.grid_x),
            y=list(d.grid_y),
            z=[list(r) for r in d.z],
            colorscale="Viridis",
            reversescale=d.direction == "maximize",  # darkest = best
            contours={"coloring": "heatmap"},
            line={"width": 0.5},
            colorbar={"title": {"text": d.metric}},
            hovertemplate=f"{d.x.name} %{{x}}<br>{d.y.name} %{{y}}<br>{d.metric} ≈ %{{z:.4g}}"
            "<extra>interpolated</extra>",
            name=d.metric,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=list(d.points_x),
            y=list(d.points_y),
            mode="markers",
            marker={"color": "white", "size": 10, "line": {"color": "black", "width": 1.5}},
            customdata=[[n, v] for n, v in zip(d.numbers, d.values, strict=True)],
            hovertemplate="trial %{customdata[0]}<br>"
            + d.metric
            + " %{customdata[1]:.4g}<extra>complete trial</extra>",
            name="complete trials",
            showlegend=False,
        )
    )
    _apply_axis(fig, d.x, "x")
    _apply_axis(fig, d.y, "y")
    return _layout(
        fig, f"{title} — {d.metric} over {d.x.name} × {d.y.name} (interpolated from {len(d.numbers)} complete trials)"
    )


# ----------------------------------------------------------------------------------- learning curves


def _trial_colors(d: CurvesData) -> dict[int, str]:
    """Complete trials coloured by their final value (darkest = best)."""
    done = sorted(
        {s.number: s.final for p in d.panels for s in d.series.get(p, ()) if s.state == "COMPLETE"}.items(),
        key=lambda kv: kv[1] if kv[1] is not None else math.inf,
    )
    if d.direction == "maximize":
        done.reverse()
    n = len(done)
    shades = sample_colorscale("Viridis", [0.85 * i / max(1, n - 1) for i in range(n)]) if n else []
    return {num: shades[i] for i, (num, _) in enumerate(done)}


def curves_figure(d: CurvesData, title: str = "Learning curves") -> go.Figure:
    if not any(d.series.get(p) for p in d.panels):
        return empty(title, "no learning curves yet (no evaluation reported)")
    n = len(d.panels)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[p + (" (objective)" if p == d.objective else "") for p in d.panels],
        horizontal_spacing=0.08,
        vertical_spacing=0.14,
    )
    colors = _trial_colors(d)
    shown: set[int] = set()
    for i, panel in enumerate(d.panels):
        r, c = i // cols + 1, i % cols + 1
        for s in sorted(d.series.get(panel, ()), key=lambda s: (s.number == d.best, s.number)):
            best = s.number == d.best
            line: dict[str, object]
            if s.state == "COMPLETE":
                line = {"color": BEST_COLOR if best else colors.get(s.number, STATE_COLORS["COMPLETE"])}
                line["width"] = 3.5 if best else 1.5
                label = f"#{s.number}" + (" best" if best else "") + f" {_fmt(s.final)}"
            elif s.state == "PRUNED":
                line = {"color": STATE_COLORS["PRUNED"], "width": 1.2, "dash": "dot"}
                label = f"#{s.number} pruned@{s.steps[-1] if s.steps else '?'}"
            else:
                line = {"color": STATE_COLORS.get(s.state, "#7f7f7f"), "width": 1.2, "dash": "dash"}
                label = f"#{s.number} {s.state.lower()}"
            ends_pruned = s.state == "PRUNED"
            fig.add_trace(
                go.Scatter(
                    x=list(s.steps),
                    y=list(s.values),
                    mode="lines+markers" if ends_pruned else "lines",
                    line=line,
                    marker={
                        "symbol": ["circle"] * (len(s.steps) - 1) + ["x"],
                        "size": [0] * (len(s.steps) - 1) + [10],
                        "color": STATE_COLORS["PRUNED"],
                    }
                    if ends_pruned
                    else None,
                    name=label,
                    legendgroup=str(s.number),
                    showlegend=s.number not in shown,
                    opacity=1.0 if s.state == "COMPLETE" else 0.8,
                    hovertemplate=f"trial {s.number} ({s.state.lower()})<br>step %{{x}}<br>{panel} %{{y:.4g}}"
                    "<extra></extra>",
                ),
                row=r,
                col=c,
            )
            shown.add(s.number)
        log = panel in LOG_METRICS or panel == "learning_rate"
        fig.update_yaxes(type="log" if log else None, row=r, col=c)
        fig.update_xaxes(title_text="step", row=r, col=c)
    source = " (objective as reported to the pruner; no stored curves)" if d.from_intermediate else ""
    fig.update_layout(legend={"title": {"text": "trial (click to hide)"}})
    return _layout(
        fig,
        f"{title} — pruned trials dotted and marked ×, best trial black{source}",
        height=max(HEIGHT, 360 * rows + 60),
    )


# --------------------------------------------------------------------------------------------- compute


def compute_figure(d: ComputeData, title: str = "Compute spent and saved by pruning") -> go.Figure:
    if not d.trials:
        return empty(title, "no finished trials yet")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.28, 0.72],
        subplot_titles=["all finished trials", "per trial"],
        horizontal_spacing=0.1,
    )
    fig.add_trace(
        go.Bar(
            x=["without pruning", "with pruning"],
            y=[d.steps_without_pruning, d.steps_run],
            marker={"color": ["#9e9e9e", STATE_COLORS["COMPLETE"]]},
            text=[f"{d.steps_without_pruning:,}", f"{d.steps_run:,}"],
            textposition="auto",
            showlegend=False,
            hovertemplate="%{x}: %{y:,} steps<extra></extra>",
        ),
        row=1,
        col=1,
    )
    xs = [f"#{t.number}" for t in d.trials]
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        ys = [t.steps_run if t.state == state else 0 for t in d.trials]
        if any(ys):
            fig.add_trace(
                go.Bar(
                    x=xs,
                    y=ys,
                    name=f"steps run ({state.lower()})",
                    marker={"color": STATE_COLORS[state]},
                    hovertemplate="trial %{x}: %{y:,} steps run<extra></extra>",
                ),
                row=1,
                col=2,
            )
    saved = [t.steps_full - t.steps_run for t in d.trials]
    if any(saved):
        fig.add_trace(
            go.Bar(
                x=xs,
                y=saved,
                name="steps saved by pruning",
                marker={"color": SAVED_COLOR, "pattern": {"shape": "/"}, "line": {"color": "#74c476", "width": 1}},
                hovertemplate="trial %{x}: %{y:,} steps not run<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="optimizer steps", row=1, col=1)
    fig.update_xaxes(type="category", row=1, col=2)
    pct = 100 * d.saved_fraction
    secs = f", ≈{d.seconds_saved:.0f}s of training" if d.seconds_saved else ""
    return _layout(
        fig,
        f"{title} — {d.n_pruned} pruned trials saved {d.steps_saved:,} of {d.steps_without_pruning:,} steps "
        f"({pct:.0f}%){secs}",
    )


# -------------------------------------------------------------------------------------------- timeline


def timeline_figure(d: TimelineData, title: str = "Timeline of trials per device") -> go.Figure:
    if not d.bars:
        return empty(title, "no trial has started yet")
    fig = go.Figure()
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        bars = [b for b in d.bars if b.state == state]
        if not bars:
            continue
        fig.add_trace(
            go.Bar(
                y=[b.lane for b in bars],
                x=[max(b.end - b.start, 0.0) for b in bars],
                base=[b.start for b in bars],
                orientation="h",
                name=state.lower(),
                marker={"color": STATE_COLORS[state], "line": {"color": "white", "width": 1}},
                text=[f"#{b.number}" for b in bars],
                textposition="inside",
                insidetextanchor="middle",
                customdata=[[b.number, b.start, b.end] for b in bars],
                hovertemplate="trial %{customdata[0]}<br>%{customdata[1]:.1f}s → %{customdata[2]:.1f}s"
                "<br>%{y}<extra>" + state.lower() + "</extra>",
            )
        )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="seconds since the first trial started")
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(d.lanes)))
    return _layout(fig, title, height=max(260, 140 + 60 * len(d.lanes)))


# ------------------------------------------------------------------------------------------ comparison


def comparison_figure(d: ComparisonData, title: str = "Studies compared") -> go.Figure:
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["best so far vs complete trials", "best so far vs training steps spent"],
        horizontal_spacing=0.08,
    )
    for i, s in enumerate(d.series):
        color = STUDY_COLORS[i % len(STUDY_COLORS)]
        common = {"mode": "lines+markers", "line": {"shape": "hv", "color": color, "width": 2}, "legendgroup": s.name}
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(s.best) + 1)),
                y=list(s.best),
                name=s.name,
                customdata=list(s.numbers),
                hovertemplate=s.name
                + "<br>%{x} complete trials (last: #%{customdata})<br>best %{y:.4g}<extra></extra>",
                **common,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=list(s.cumulative_steps),
                y=list(s.best),
                name=s.name,
                showlegend=False,
                customdata=list(s.numbers),
                hovertemplate=s.name + "<br>%{x:,} steps (trial #%{customdata})<br>best %{y:.4g}<extra></extra>",
                **common,
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="complete trials", row=1, col=1)
    fig.update_xaxes(title_text="optimizer steps run by all finished trials", row=1, col=2)
    fig.update_yaxes(title_text=d.metric, type="log" if d.metric in LOG_METRICS else None)
    warn = "" if d.comparable else " — WARNING: the studies optimise different objectives"
    return _layout(fig, f"{title} — best {d.metric} so far, {_better(d.direction)}{warn}")


def importance_comparison_figure(d: ComparisonData, title: str = "Importances compared") -> go.Figure:
    params = list(dict.fromkeys(p for imp in d.importances.values() for p in imp))
    if not params:
        return empty(title, "no study has importances yet")
    fig = go.Figure()
    for i, (name, imp) in enumerate(d.importances.items()):
        fig.add_trace(
            go.Bar(
                x=params,
                y=[imp.get(p, 0.0) for p in params],
                name=name,
                marker={"color": STUDY_COLORS[i % len(STUDY_COLORS)]},
                hovertemplate=name + "<br>%{x}: %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="importance (PED-ANOVA)")
    return _layout(fig, title)
