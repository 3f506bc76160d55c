"""`hpo report`: one self-contained HTML file (plotly.js inlined once, no CDN) for one or more studies.

``load`` opens a study file's study (read only) and reads it and its learning curves into plain data
(``dashboards.data``), ``build`` turns them into figures (``dashboards.figures``: Optuna's, drawn from the
study, and hpo's own) and HTML, ``write`` does both and writes the file (and PNGs on request).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from dashboards import data as D
from dashboards import figures as F
from hpo import curves
from hpo.config import DEFAULT_RUNS_DIR, load_study_file
from hpo.curves import CurvePoint
from hpo.errors import HpoError
from hpo.storage import ATTR_CONFIG, load_existing, redact

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}
PNG_WIDTH = 1200


# ------------------------------------------------------------------------------------------------ load


def read_curves(url: str, study_name: str) -> list[CurvePoint]:
    """The study's stored learning curves; [] when the database has no curves table (nothing is created)."""
    return curves.read_curves(url, study_name)


@dataclass
class Loaded:
    data: D.StudyData
    study: optuna.Study  # opened read only: Optuna's plots read it
    study_file: str
    storage: str  # redacted
    description: str | None = None
    confirmation: Any = None  # hpo.confirm.Confirmation, when `hpo confirm` has run
    pareto: Any = None  # several objectives: (the study itself, objective names) for the Pareto front


def load(study_file: str | Path) -> Loaded:
    """A study file's study and its learning curves, as plain data."""
    cfg = load_study_file(study_file)
    study = load_existing(cfg)
    points = read_curves(cfg.storage_url, cfg.study.name)
    from hpo.confirm import stored

    confirmation = stored(cfg, study)
    pareto = None
    if len(study.directions) > 1:  # the figures made for one objective show the first; the front shows all
        from hpo.objectives import first_objective_view

        pareto, study = (study, [o.metric for o in cfg.objectives]), first_objective_view(study)
    loaded = Loaded(D.collect(study, points), study, str(study_file), redact(cfg.storage_url), cfg.study.description)
    loaded.confirmation = confirmation
    loaded.pareto = pareto
    return loaded


# ----------------------------------------------------------------------------------------------- build


@dataclass
class Figure:
    key: str  # file-name safe, unique in the report
    title: str
    fig: go.Figure


@dataclass
class Section:
    anchor: str
    title: str
    intro: list[str]  # HTML fragments (already escaped)
    figures: list[Figure]
    tables: list[str] = field(default_factory=list)  # HTML (already escaped)


@dataclass
class Report:
    title: str
    sections: list[Section]
    summaries: list[D.Summary]
    facts: dict[str, list[str]]  # study label -> findings (plain text)

    @property
    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "study"


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def study_figures(study: optuna.Study, sd: D.StudyData, slug: str) -> list[Figure]:
    """Every figure of one study, in report order."""
    figs = [
        Figure(f"{slug}-history", "Optimization history", F.history_figure(study, sd)),
        Figure(f"{slug}-importance", "Hyperparameter importances", F.importance_figure(study, sd)),
        Figure(f"{slug}-curves", "Learning curves", F.curves_figure(D.curves(sd))),
        Figure(f"{slug}-compute", "Compute spent and saved by pruning", F.compute_figure(D.compute(sd))),
        Figure(f"{slug}-parallel", "Parallel coordinates", F.parallel_figure(study, sd)),
        Figure(f"{slug}-slice", "Slice", F.slice_figure(study, sd)),
    ]
    pairs = D.contour_pairs(sd)
    if not pairs:
        figs.append(Figure(f"{slug}-contour", "Contour", F.empty("Contour", "needs at least two parameters")))
    for x, y in pairs:
        figs.append(Figure(f"{slug}-contour-{_slug(x)}-{_slug(y)}", "Contour", F.contour_figure(study, sd, x, y)))
    figs.append(Figure(f"{slug}-timeline", "Timeline of trials per device", F.timeline_figure(study, sd)))
    from dashboards.pbt import pbt_figures  # a PBT study: its population and the winner's schedule

    figs += [Figure(f"{slug}-{k}", title, fig) for k, title, fig in pbt_figures(study, sd.metric, sd.max_steps or 0)]
    return figs


def facts(s: D.Summary, c: D.ComputeData) -> list[str]:
    """The study's findings in a few sentences (plain text)."""
    counts = ", ".join(f"{n} {k.lower()}" for k, n in s.states.items()) or "no trials"
    out = [f"{sum(s.states.values())} trials ({counts}); sampler {s.sampler}, pruner {s.pruner}."]
    if s.best_number is not None:
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in s.best_params.items())
        out.append(f"Best: trial {s.best_number}, {s.metric} = {_fmt(s.best_value)} ({params}).")
    else:
        out.append("No complete trial yet.")
    if s.most_important is not None:
        out.append(
            f"Most important parameter: {s.most_important} ({s.most_important_value:.2f} of the total, "
            "PED-ANOVA over complete trials)."
        )
    if c.steps_without_pruning:
        secs = f", about {c.seconds_saved:.0f} s of training" if c.seconds_saved else ""
        out.append(
            f"Pruning: {c.n_pruned} trials stopped early; {c.steps_run:,} steps run instead of "
            f"{c.steps_without_pruning:,} without pruning — {c.steps_saved:,} steps saved "
            f"({100 * c.saved_fraction:.0f}%){secs}."
        )
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def top_table(sd: D.StudyData, n: int = 10) -> str:
    rows = D.top_trials(sd, n)
    if not rows:
        return "<p>No complete trial yet.</p>"
    names = [p.name for p in sd.params]
    return _table(
        ["rank", "trial", sd.metric, *names, "steps", "duration (s)", "tokens/s", "device"],
        [
            [
                r.rank,
                r.number,
                r.value,
                *(r.params.get(k) for k in names),
                r.steps,
                r.duration,
                r.tokens_per_s,
                r.device,
            ]
            for r in rows
        ],
        "top",
    )


def model_table(sd: D.StudyData, config: Any) -> str:
    """Results per model for a study that chooses its model (``model.preset`` / ``model.name_or_path``)."""
    from hpo.modelchoice import group_by_model

    trials = ((t.number, t.state, t.value, t.params) for t in sd.trials)
    groups = group_by_model(trials, config if isinstance(config, dict) else None, sd.direction)
    if not groups:
        return ""
    rows = [[g.model, g.trials, g.complete, g.pruned, g.failed, g.best_value, g.best_trial, g.median] for g in groups]
    heads = [
        "model",
        "trials",
        "complete",
        "pruned",
        "failed",
        f"best {sd.metric}",
        "best trial",
        f"median {sd.metric}",
    ]
    return "<h3>By model</h3>" + _table(heads, rows, "top")


def examples_table(sd: D.StudyData, n: int = 3) -> str:
    """Generation tasks: the fixed eval examples as the best ``n`` complete trials wrote them, best first."""
    best = [t for t in D.rank_trials(sd.trials, sd.direction)[:n] if t.examples]
    if not best:
        return ""
    rows = [[t.number, t.value, e.get("source", ""), e.get("reference", ""), e.get("prediction", "")]
            for t in best for e in t.examples]  # fmt: skip
    table = _table(["trial", sd.metric, "source", "reference", "prediction"], rows, "examples")
    return f"<h3>What the best trials write</h3>{table}"


def all_trials_table(sd: D.StudyData) -> str:
    names = [p.name for p in sd.params]
    rows = [
        [t.number, t.state.lower(), t.value, *(t.params.get(k) for k in names), t.steps, t.duration, t.reason or ""]
        for t in sd.trials
    ]
    table = _table(["trial", "state", sd.metric, *names, "steps", "duration (s)", "reason"], rows, "all")
    return f"<details><summary>All {len(rows)} trials</summary>{table}</details>"


def _unique_labels(loaded: Sequence[Loaded]) -> list[str]:
    names = [x.data.name for x in loaded]
    return [
        n if names.count(n) == 1 else f"{n} ({Path(x.study_file).stem})" for n, x in zip(names, loaded, strict=True)
    ]


def build(loaded: Sequence[Loaded]) -> Report:
    """Figures and sections for one or more studies (several: a comparison section first)."""
    if not loaded:
        raise ValueError("`loaded` must hold at least one study.")
    labels = _unique_labels(loaded)
    datas = [dataclasses.replace(x.data, name=label) for x, label in zip(loaded, labels, strict=True)]
    sections: list[Section] = []
    summaries = [D.summary(sd) for sd in datas]
    if len(datas) > 1:
        cmp = D.comparison(datas)
        rows = [
            [
                s.name,
                s.sampler,
                s.pruner,
                sum(s.states.values()),
                s.states.get("COMPLETE", 0),
                s.states.get("PRUNED", 0),
                s.states.get("FAIL", 0),
                s.best_value,
                s.best_number,
                s.most_important,
                s.steps_run,
                f"{s.steps_saved:,} ({100 * s.saved_fraction:.0f}%)",
                None if s.wall_time is None else round(s.wall_time, 1),
            ]
            for s in summaries
        ]
        table = _table(
            [
                "study",
                "sampler",
                "pruner",
                "trials",
                "complete",
                "pruned",
                "failed",
                f"best {cmp.metric}",
                "best trial",
                "most important",
                "steps run",
                "steps saved",
                "wall time (s)",
            ],
            rows,
            "top",
        )
        intro = [_esc(f"{len(datas)} studies: " + ", ".join(labels) + ".")]
        if not cmp.comparable:
            intro.append("<strong>The studies optimise different objectives: their values are not comparable.</strong>")
        sections.append(
            Section(
                "comparison",
                "Comparison",
                intro,
                [
                    Figure("comparison-best", "Studies compared", F.comparison_figure(cmp)),
                    Figure("comparison-importance", "Importances compared", F.importance_comparison_figure(cmp)),
                ],
                [table],
            )
        )
    found: dict[str, list[str]] = {}
    for x, sd, s in zip(loaded, datas, summaries, strict=True):
        slug = _slug(sd.name)
        found[sd.name] = facts(s, D.compute(sd))
        if sd.data_clean:
            from trainers.clean import summary as clean_summary

            found[sd.name].append(f"Data cleaning (data.clean): {clean_summary(sd.data_clean)}.")
        intro = [_esc(line) for line in found[sd.name]]
        meta = f"study file <code>{_esc(x.study_file)}</code>, storage <code>{_esc(x.storage)}</code>"
        if sd.task:
            meta = f"task {_esc(sd.task)}, objective {_esc(sd.direction)} {_esc(sd.metric)}; " + meta
        intro.insert(0, meta)
        if x.description:
            intro.insert(0, _esc(x.description))
        tables = [f"<h3>Top trials</h3>{top_table(sd)}", examples_table(sd), all_trials_table(sd)]
        by_model = model_table(sd, x.study.user_attrs.get(ATTR_CONFIG))
        if by_model:
            tables.insert(0, by_model)
        figs = study_figures(x.study, sd, slug)
        if x.pareto is not None:
            from dashboards.winners import pareto_figure
            from hpo.objectives import front

            real, names = x.pareto
            intro.append(
                _esc(
                    f"{len(names)} objectives ({', '.join(names)}): the other figures show the first; "
                    f"Pareto front: trials {', '.join(str(t.number) for t in front(real))}."
                )
            )
            figs.insert(0, Figure(f"{slug}-pareto", "Pareto front", pareto_figure(real, names)))
        if x.confirmation is not None:  # `hpo confirm`: each top configuration as an interval over seeds
            from dashboards.winners import confirmation_figure, confirmation_rows
            from hpo.confirm import describe

            intro.append(_esc(describe(x.confirmation)))
            figs.insert(1, Figure(f"{slug}-confirm", "Confirmation over seeds", confirmation_figure(x.confirmation)))
            head = ["trial", "search", "mean", "std", "95% CI", "P(best)", "runs"]
            tables.insert(0, f"<h3>Confirmation</h3>{_table(head, confirmation_rows(x.confirmation))}")
        sections.append(Section(f"study-{slug}", sd.name, intro, figs, tables))
    title = "hpo report — " + " vs ".join(labels)
    return Report(title, sections, summaries, found)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#243447;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:6px 0 0;color:#cfd8e3;font-size:13px}
nav{padding:10px 28px;background:#eef1f5;font-size:14px}nav a{margin-right:16px}
main{padding:8px 28px 40px}section{margin-top:26px}
h2{border-bottom:2px solid #243447;padding-bottom:4px}
.facts{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:10px 16px;margin-bottom:14px}
.facts li{margin:4px 0}.fig{background:#fff;border:1px solid #dde3ea;border-radius:6px;margin:14px 0;padding:4px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0}
th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}details{margin:12px 0}summary{cursor:pointer;font-weight:600}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
table.examples td{text-align:left;max-width:480px}
"""


def render_html(report: Report, generated: str) -> str:
    """The whole page: plotly.js inlined once in <head>, every figure a div + its own small script."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(report.title)}</title>",
        f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<header><h1>{_esc(report.title)}</h1><p>{_esc(generated)} — works offline; hover, zoom, "
        "click legend entries to hide trials</p></header>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{_esc(s.title)}</a>' for s in report.sections) + "</nav>",
        "<main>",
    ]
    for s in report.sections:
        parts.append(f'<section id="{_esc(s.anchor)}"><h2>{_esc(s.title)}</h2>')
        parts.append('<ul class="facts">' + "".join(f"<li>{line}</li>" for line in s.intro) + "</ul>")
        for f in s.figures:
            div = pio.to_html(
                f.fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{f.key}", config=PLOTLY_CONFIG
            )
            parts.append(f'<div class="fig">{div}</div>')
        parts.extend(s.tables)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------- PNG


def _browser() -> str | None:
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
            if shutil.which(name):
                return shutil.which(name)
        return None


def write_pngs(figures: Sequence[Figure], out_dir: Path) -> list[Path]:
    """Each figure as a PNG (kaleido, which drives a local Chromium)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise HpoError("PNG export needs kaleido: pip install 'hpo[report]' (and apt-get install chromium)") from None
    if _browser() is None:
        raise HpoError("PNG export needs Chromium for kaleido: apt-get install chromium (or set BROWSER_PATH)")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{f.key}.png" for f in figures]
    heights = [int(f.fig.layout.height or F.HEIGHT) for f in figures]
    try:
        pio.write_images([f.fig for f in figures], paths, format="png", width=[PNG_WIDTH] * len(paths), height=heights)
    except Exception as e:
        raise HpoError(f"PNG export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return paths


# ----------------------------------------------------------------------------------------------- write


@dataclass
class ReportResult:
    path: Path
    size: int  # bytes
    n_figures: int
    summaries: list[D.Summary]
    facts: dict[str, list[str]]  # study -> sentences
    pngs: list[Path]


def default_output(names: Sequence[str]) -> Path:
    return Path(DEFAULT_RUNS_DIR) / ("-vs-".join(_slug(n) for n in names) + "-report.html")


def write(
    study_files: Sequence[str | Path], output: str | Path | None = None, png_dir: str | Path | None = None
) -> ReportResult:
    """Load each study file's study, build the report, write one HTML file (and PNGs into ``png_dir``)."""
    if not study_files:
        raise HpoError("name at least one study file")
    loaded = [load(p) for p in study_files]
    report = build(loaded)
    path = Path(output) if output is not None else default_output([x.data.name for x in loaded])
    if path.is_dir():
        raise HpoError(f"{path} is a directory; give a file name such as {path / 'report.html'}")
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = render_html(report, f"generated {now} by hpo report")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise HpoError(f"cannot write {path}: {e.strerror or e}") from None
    pngs = write_pngs(report.figures, Path(png_dir)) if png_dir is not None else []
    return ReportResult(path, path.stat().st_size, len(report.figures), report.summaries, report.facts, pngs)
