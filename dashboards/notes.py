"""The Markdown notes optuna-dashboard shows beside a study and each trial. Pure text from plain values
and trial records."""

from __future__ import annotations

import math
from typing import Any

from hpo.record import TrialRecord
from trainers.clean import summary as clean_summary

STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _cell(v: Any) -> str:
    """A value safe inside a Markdown table cell."""
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def _seconds(v: Any) -> str:
    return f"{v:.1f} s" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def trial_note(record: TrialRecord, metric: str, max_steps: int | None = None) -> str:
    """A finished trial at a glance: outcome, why it stopped, parameters, metrics and cost."""
    a, state, value = record.attrs, record.state.name, record.value
    of = f" of {max_steps}" if max_steps else ""
    head = f"### Trial {record.number}: {STATE_WORDS.get(state, state.lower())}"
    if value is not None:
        head += f", {metric} = {_fmt(value)}"
        if state == "PRUNED":
            head += " (last reported)"
    lines = [head, ""]
    if a.reason:
        lines += [f"**Why it stopped:** {_cell(a.reason)}", ""]
    if state == "FAIL" and a.requeued:
        lines += ["Re-queued: the same parameters ran again as a new trial.", ""]
    if state == "FAIL" and a.discarded:
        lines += ["Not run: asked, then not needed; it does not count towards n_trials.", ""]
    if a.retry_of is not None:
        lines += [f"Re-run of trial {a.retry_of}.", ""]
    tb = a.traceback
    if state == "FAIL" and tb is not None and tb.strip():
        last = tb.strip().splitlines()[-1]
        lines += [f"Last traceback line: `{last.replace('`', chr(39))}` (full text in the `traceback` attribute)", ""]
    lines += ["| parameter | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in record.params.items()]
    if a.metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in a.metrics.items()]
    run = []
    if a.steps is not None:
        run.append(f"{a.steps}{of} steps")
    if a.duration is not None:
        run.append(f"{_seconds(a.duration)} in all")
    if a.train_time is not None:
        run.append(f"train {_seconds(a.train_time)}, eval {_seconds(a.eval_time)}")
    if a.tokens_per_s is not None:
        run.append(f"{a.tokens_per_s:,.0f} tokens/s")
    if a.device is not None:
        run.append(f"on {a.device}" + (f" (worker {a.worker})" if a.worker is not None else ""))
    if a.precision not in (None, "no"):
        run.append(f"precision {a.precision}")
    if run:
        lines += ["", "**Run:** " + ", ".join(run)]
    if a.examples:  # generation tasks: what the model wrote at its final eval
        lines += [
            "",
            "**What it writes** (fixed eval examples):",
            "",
            "| source | reference | prediction |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_cell(e.get('source', ''))} | {_cell(e.get('reference', ''))} | {_cell(e.get('prediction', ''))} |"
            for e in a.examples
        ]
    pbt = record.extra.get("pbt")
    if isinstance(pbt, dict):  # a PBT member: the parameters above are its first draw; its lineage and schedule
        from hpo.pbt import MemberRecord

        lines += ["", MemberRecord.from_json(pbt).note()]
    return "\n".join(lines) + "\n"


def _describe(section: dict[str, Any] | None, skip: tuple[str, ...] = ("name",)) -> str:
    """`name (k=v, ...)` with the set arguments of a sampler or pruner section."""
    if not section:
        return "-"
    args = ", ".join(f"{k}={_fmt(v)}" for k, v in section.items() if k not in skip and v is not None)
    return f"{section.get('name', '?')}" + (f" ({args})" if args else "")


def _model(model: dict[str, Any]) -> str:
    if model.get("name_or_path"):
        text = f"`{model['name_or_path']}`" + (f" @ {model['revision']}" if model.get("revision") else "")
    elif model.get("from_config"):
        fc = model["from_config"]
        text = (
            f"{fc.get('model_type', '?')} from scratch ("
            + ", ".join(f"{k}={_fmt(v)}" for k, v in fc.items() if k != "model_type")
            + ")"
        )
    else:
        text = "-"
    if model.get("dropout") is not None:
        text += f", dropout {model['dropout']}"
    return text


def _data(data: dict[str, Any]) -> str:
    if data.get("builtin"):
        src = f"builtin `{data['builtin']}`"
    elif data.get("dataset"):
        src = f"dataset `{data['dataset']}`" + (f" ({data['dataset_config']})" if data.get("dataset_config") else "")
    elif data.get("files"):
        src = "files " + ", ".join(f"{k}: `{v}`" for k, v in data["files"].items())
    else:
        src = "-"
    extra = []
    if data.get("max_length"):
        extra.append(f"max_length {data['max_length']}")
    for k in ("max_train_samples", "max_eval_samples"):
        if data.get(k):
            extra.append(f"{k} {data[k]}")
    if data.get("eval_split") and not data.get("builtin"):
        extra.append(f"eval split `{data['eval_split']}`")
    return src + (f" ({', '.join(extra)})" if extra else "")


def _space(space: dict[str, Any]) -> list[str]:
    rows = ["| searched | range |", "|---|---|"]
    for path, spec in space.items():
        if spec.get("type") == "categorical":
            rng = "one of " + ", ".join(_fmt(c) for c in spec.get("choices", []))
        else:
            rng = f"{_fmt(spec.get('low'))} … {_fmt(spec.get('high'))}"
            if spec.get("log"):
                rng += ", log scale"
            if spec.get("step"):
                rng += f", step {_fmt(spec['step'])}"
        if spec.get("when"):  # a conditional entry (hpo.conditional): sampled only then
            rng += "; only when " + " and ".join(f"{k} = {v}" for k, v in spec["when"].items())
        rows.append(f"| `{path}` | {_cell(rng)} |")
    return rows


def _teacher(d: dict[str, Any]) -> str:
    t = d.get("teacher")
    who = f"trial {t.get('trial')} of study {t.get('study')}" if isinstance(t, dict) else str(t)
    return f"{who}; temperature {d.get('temperature')}, alpha {d.get('alpha')} (distillation)"


def study_note(config: dict[str, Any], study_file: str, storage: str, data_clean: dict[str, Any] | None = None) -> str:
    """What the study is and how to take its best trial further. ``storage`` must already be redacted.
    ``data_clean``: what ``data.clean`` removed (the study's ``data_clean`` attribute), when it ran."""
    study = config.get("study", {})
    name = study.get("name", "?")
    raw = config.get("objective", {})
    objectives = raw if isinstance(raw, list) else [raw]  # several: a multi-objective study
    fidelity = config.get("fidelity", {})
    lines = [f"## {name}", ""]
    if study.get("description"):
        lines += [str(study["description"]), ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| task | {_cell(config.get('task', '-'))} |",
        "| objective | "
        + ", ".join(f"{o.get('direction', '?')} **{o.get('metric', '?')}**" for o in objectives)
        + (" (Pareto front)" if len(objectives) > 1 else "")
        + " |",
        f"| model | {_cell(_model(config.get('model', {})))} |",
        f"| data | {_cell(_data(config.get('data', {})))} |",
        *([f"| data.clean | {_cell(clean_summary(data_clean))} |"] if data_clean else []),
        *([f"| teacher | {_cell(_teacher(config['distillation']))} |"] if config.get("distillation") else []),
        f"| sampler | {_cell(_describe(config.get('sampler')))} |",
        f"| pruner | {_cell(_describe(config.get('pruner')))} |",
        f"| trials | {_cell(study.get('n_trials', '?'))}, of up to {_cell(fidelity.get('max_steps', '?'))} steps "
        f"each, evaluated every {_cell(fidelity.get('eval_every', '?'))} steps |",
        f"| study file | `{study_file}` |",
        f"| storage | `{storage}` |",
        "",
        *_space(config.get("search_space", {})),
        "",
        "Each trial's note says how it ended (and why, when pruned or failed) with its metrics and cost; the",
        "trial's user attributes hold the same values (`metrics`, `steps`, `duration`, `tokens_per_s`, ...).",
        "",
        "**Take the best trial further**",
        "",
        f"- `hpo best {study_file}` (add `--json` for its parameters and metrics)",
        f"- `hpo export {study_file}` writes its training config (`--trial N` for another trial), then",
        f"  `hpo train runs/{name}-export/train.yaml` trains it in full",
        f"- `hpo report {study_file}` writes an offline HTML report (history, importances, learning curves)",
    ]
    return "\n".join(lines) + "\n"
