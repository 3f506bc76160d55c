"""Plotly figures of a study for `hpo report`.

Where Optuna draws the figure (``optuna.visualization``: optimization history, importances, parallel
coordinates, slice, contour, timeline), the figure is Optuna's, drawn from the ``optuna.Study`` (read only)
with the objective's name as ``target_name``, then post-processed with what hpo adds: pruned trials at
their last reported value, the best trial marked, trials placed on their device and worker, hpo's titles
and layout. Those additions come from the plain data of ``dashboards.data``. Where Optuna has no such
figure (learning curves of several metrics from the ``hpo_curves`` table, compute saved by pruning,
studies compared), the figure is hpo's own, drawn from plain data alone.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import optuna.visualization as ov
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from dashboards.data import ComparisonData, ComputeData, CurvesData, StudyData, TrialInfo, lane
from hpo.record import rank_key

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
PRUNED_NAME = "pruned (last reported value)"
BEST_MARKER = {"symbol": "star", "size": 16, "color": "#ffd60a", "line": {"color": BEST_COLOR, "width": 1.5}}


def _layout(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        height=height,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        legend={"itemsizing": "constant"},
    )
    return fig


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


def _pruned(sd: StudyData) -> list[TrialInfo]:
    """Pruned trials that reported a value (Optuna stores the last reported value as a pruned trial's value)."""
    return [t for t in sd.trials if t.state == "PRUNED" and t.value is not None]


def _log_y(fig: go.Figure, metric: str) -> None:
    if metric in LOG_METRICS:
        fig.update_yaxes(type="log")


def _on_axis(fig: go.Figure, axis: str, value: Any) -> Any:
    """A parameter value where Optuna's contour plot puts it: categorical axes hold ``str`` of the choice."""
    return str(value) if fig.layout[axis].type == "category" else value


# ------------------------------------------------------------------------------------------- history


def history_figure(study: optuna.Study, sd: StudyData, title: str = "Optimization history") -> go.Figure:
    """Optuna's optimization history with the pruned trials and the best trial added."""
    pruned = _pruned(sd)
    if not sd.complete and not pruned:
        return empty(title, "no finished trials yet")
    # Without a complete trial Optuna draws nothing (and logs a warning): the pruned trials go on a bare figure.
    fig = ov.plot_optimization_history(study, target_name=sd.metric) if sd.complete else go.Figure()
    fig.update_traces(
        selector={"name": sd.metric},
        name="complete trial",
        marker={"color": STATE_COLORS["COMPLETE"], "size": 9},
        hovertemplate="trial %{x}<br>" + sd.metric + " %{y:.4g}<extra>complete</extra>",
    )
    fig.update_traces(
        selector={"name": "Best Value"},
        name="best so far",
        line={"shape": "hv", "color": BEST_COLOR, "width": 2},
        hovertemplate="after trial %{x}<br>best %{y:.4g}<extra></extra>",
    )
    if pruned:
        fig.add_trace(
            go.Scatter(
                x=[t.number for t in pruned],
                y=[t.value for t in pruned],
                mode="markers",
                name=PRUNED_NAME,
                marker={"color": STATE_COLORS["PRUNED"], "size": 9, "symbol": "x"},
                hovertemplate="trial %{x}<br>" + sd.metric + " %{y:.4g}<extra>pruned</extra>",
            )
        )
    best = sd.best()
    if best is not None:
        fig.add_trace(
            go.Scatter(
                x=[best.number],
                y=[best.value],
                mode="markers",
                name=f"best: trial {best.number}",
                marker=BEST_MARKER,
                hovertemplate="best trial %{x}<br>" + sd.metric + " %{y:.4g}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="trial")
    fig.update_yaxes(title_text=sd.metric)
    _log_y(fig, sd.metric)
    fig.update_layout(showlegend=True)
    return _layout(fig, f"{title} — {sd.metric}, {_better(sd.direction)}")


# --------------------------------------------------------------------------------------- importances


def importance_figure(study: optuna.Study, sd: StudyData, title: str = "Hyperparameter importances") -> go.Figure:
    """Optuna's importances (its default evaluator, PED-ANOVA: the numbers of the report's findings)."""
    if not sd.importances:
        return empty(title, f"no importances: {sd.importance_note or 'no data'}")
    fig = ov.plot_param_importances(study, target_name=sd.metric)
    fig.update_traces(marker={"color": STATE_COLORS["COMPLETE"]}, showlegend=False)
    # Room on the right for Optuna's labels, drawn outside the bars.
    top = max(1.0, *sd.importances.values())
    fig.update_xaxes(title_text="importance (PED-ANOVA, sums to 1)", range=[0, 1.08 * top])
    fig.update_yaxes(title_text=None)
    n = len(sd.complete)
    caveat = " — few trials: treat as a hint" if n < 20 else ""
    return _layout(fig, f"{title} — from {n} complete trials{caveat}", height=120 + 50 * len(sd.importances))


# ---------------------------------------------------------------------------------- parameter plots


def parallel_figure(study: optuna.Study, sd: StudyData, title: str = "Parallel coordinates") -> go.Figure:
    """Optuna's parallel coordinates of the complete trials, coloured by the objective."""
    if not sd.complete or not sd.params:
        return empty(title, "no complete trials yet")
    fig = ov.plot_parallel_coordinate(study, target_name=sd.metric)
    # hpo's colours (Viridis, darkest = best) instead of Optuna's Blues, where the worst trial is white on
    # white. Each trial is one line whose first point is its objective, scaled to 0..1 over the trials.
    flip = sd.direction == "maximize"
    for trace in fig.data:
        if trace.mode == "lines" and trace.y:
            at = min(max(float(trace.y[0]), 0.0), 1.0)
            trace.update(line={"color": sample_colorscale("Viridis", [1.0 - at if flip else at])[0]}, opacity=0.8)
        elif trace.marker is not None and trace.marker.showscale:
            trace.update(marker={"colorscale": "Viridis", "reversescale": flip})
    return _layout(fig, f"{title} — {len(sd.complete)} complete trials, colour = {sd.metric}")


def slice_figure(study: optuna.Study, sd: StudyData, title: str = "Slice") -> go.Figure:
    """Optuna's slice plot, with the pruned trials at their last reported value and the best trial marked."""
    pruned = _pruned(sd)
    if not sd.complete:
        return empty(title, "no complete trials yet" + (f" ({len(pruned)} pruned)" if pruned else ""))
    fig = ov.plot_slice(study, target_name=sd.metric)
    fig.layout.width = None  # Optuna fixes the width from 4 parameters on: let the page size it
    categorical = {p.name for p in sd.params if p.kind == "categorical"}
    best = sd.best()
    # One subplot per parameter: its x axis is titled with the parameter; its complete-trial trace says which
    # y axis goes with that x axis.
    axes = {fig.layout[k].title.text: k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")}
    for i, (name, key) in enumerate(sorted(axes.items())):
        xref = "x" + key[len("xaxis") :]
        yref = next((t.yaxis for t in fig.data if t.xaxis == xref), None) or "y"
        fig.update_traces(
            selector={"xaxis": xref, "name": "Feasible Trial"} if len(axes) > 1 else {"name": "Feasible Trial"},
            hovertemplate="trial %{marker.color}<br>" + name + " %{x}<br>%{y:.4g}<extra>complete</extra>",
        )

        def x_of(t: TrialInfo, name: str = name) -> Any:
            v = t.params[name]
            return repr(v) if name in categorical else v

        cut = [t for t in pruned if name in t.params]
        if cut:
            fig.add_trace(
                go.Scatter(
                    x=[x_of(t) for t in cut],
                    y=[t.value for t in cut],
                    xaxis=xref,
                    yaxis=yref,
                    mode="markers",
                    name=PRUNED_NAME,
                    legendgroup="pruned",
                    showlegend=i == 0,
                    marker={"color": STATE_COLORS["PRUNED"], "symbol": "x", "size": 8},
                    customdata=[t.number for t in cut],
                    hovertemplate="trial %{customdata} (pruned)<br>" + name + " %{x}<br>%{y:.4g}<extra></extra>",
                )
            )
        if best is not None and name in best.params:
            fig.add_trace(
                go.Scatter(
                    x=[x_of(best)],
                    y=[best.value],
                    xaxis=xref,
                    yaxis=yref,
                    mode="markers",
                    name=f"best: trial {best.number}",
                    legendgroup="best",
                    showlegend=i == 0,
                    marker=BEST_MARKER,
                    hovertemplate=f"best trial {best.number}<br>{name} %{{x}}<br>%{{y:.4g}}<extra></extra>",
                )
            )
    _log_y(fig, sd.metric)
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.2})
    return _layout(fig, f"{title} — {sd.metric} against each parameter")


MIN_CONTOUR_TRIALS = 3


def contour_figure(study: optuna.Study, sd: StudyData, x: str, y: str, title: str = "Contour") -> go.Figure:
    """Optuna's contour of the objective over two parameters, with the best trial marked."""
    rows = [t for t in sd.complete if x in t.params and y in t.params]
    if len(rows) < MIN_CONTOUR_TRIALS:
        return empty(title, f"needs at least {MIN_CONTOUR_TRIALS} complete trials with both parameters")
    same = [p for p in (x, y) if len({repr(t.params[p]) for t in rows}) < 2]
    if same:  # Optuna would draw an empty contour (and log a warning)
        return empty(title, f"every complete trial has the same {same[0]}: nothing to interpolate")
    fig = ov.plot_contour(study, params=[x, y], target_name=sd.metric)
    fig.update_traces(
        selector={"name": "Feasible Trial"},
        marker={"color": "white", "size": 10, "line": {"color": "black", "width": 1.5}},
        hovertemplate="%{x}, %{y}<extra>complete trial</extra>",
    )
    # Optuna puts the parameters on the axes in name order, whatever order they were asked in.
    px, py = fig.layout.xaxis.title.text, fig.layout.yaxis.title.text
    best = sd.best()
    if best is not None and px in best.params and py in best.params:
        fig.add_trace(
            go.Scatter(
                x=[_on_axis(fig, "xaxis", best.params[px])],
                y=[_on_axis(fig, "yaxis", best.params[py])],
                mode="markers",
                name=f"best: trial {best.number}",
                marker=BEST_MARKER,
                hovertemplate=f"best trial {best.number}<br>{sd.metric} {_fmt(best.value)}<extra></extra>",
            )
        )
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.2})
    return _layout(
        fig, f"{title} — {sd.metric} over {px} × {py} (interpolated from {len(rows)} complete trials, marked)"
    )


# ----------------------------------------------------------------------------------- learning curves


def _trial_colors(d: CurvesData) -> dict[int, str]:
    """Complete trials coloured by their final value (darkest = best)."""
    finals = {s.number: s.final for p in d.panels for s in d.series.get(p, ()) if s.state == "COMPLETE"}
    # Best first by the study's own rule (hpo.record), trials without a final value last.
    done = sorted(finals.items(), key=lambda kv: (kv[1] is None, rank_key(d.direction, kv[1] or 0.0, kv[0])))
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


def timeline_figure(study: optuna.Study, sd: StudyData, title: str = "Timeline of trials per device") -> go.Figure:
    """Optuna's timeline with each trial moved onto its device and worker's lane (Optuna: one row a trial)."""
    info = {t.number: t for t in sd.trials if t.start is not None}  # waiting trials never ran
    if not info:
        return empty(title, "no trial has started yet")
    fig = ov.plot_timeline(study)
    for trace in fig.data:
        keep = [i for i, n in enumerate(trace.y) if n in info]
        state = str(trace.name)
        trials = [info[trace.y[i]] for i in keep]
        trace.update(
            x=[trace.x[i] for i in keep],
            base=[trace.base[i] for i in keep],
            y=[lane(t) for t in trials],
            name=state.lower(),
            marker={"color": STATE_COLORS.get(state, "#cccccc"), "line": {"color": "white", "width": 1}},
            # hpo's own hover text: Optuna's lists every user attribute, tracebacks included.
            text=[f"#{t.number}" for t in trials],
            textposition="inside",
            insidetextanchor="middle",
            customdata=[[t.number, _fmt(t.duration), t.reason or ""] for t in trials],
            hovertemplate="trial %{customdata[0]}, %{customdata[1]} s<br>%{y}<br>%{customdata[2]}<extra>"
            + state.lower()
            + "</extra>",
            showlegend=bool(keep),
        )
    lanes = sorted({lane(t) for t in info.values()})
    # Bars of one lane share its row: overlaid, not grouped side by side per state.
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="time")
    fig.update_yaxes(title_text=None, type="category", categoryorder="array", categoryarray=list(reversed(lanes)))
    return _layout(fig, title, height=max(260, 140 + 60 * len(lanes)))


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
