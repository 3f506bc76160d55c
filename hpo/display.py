"""What a user sees while a study runs: a live rich display on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fmt_counts(counted: int, n_trials: int, grid_points: int | None = None) -> str:
    """How far a study is, the same words in the run's header and its final line: "5/8 trials counted",
    with what makes the target differ from n_trials (a smaller grid, n_trials lowered since)."""
    if grid_points is not None and grid_points <= n_trials:
        used_up = "; the grid is used up" if counted >= grid_points else ""
        more = f" (n_trials {n_trials} asks for more)" if grid_points < n_trials else ""
        return f"{counted}/{plural(grid_points, 'grid point')} counted{used_up}{more}"
    if counted > n_trials:
        return f"{plural(counted, 'trial')} counted, more than n_trials {n_trials} (it was lowered)"
    return f"{counted}/{plural(n_trials, 'trial')} counted"


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v) if isinstance(v, float) else v}" for k, v in params.items())


class RunDisplay:
    """Callbacks the orchestrator calls as trials start, report and finish."""

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_enabled = self.console.is_terminal if live is None else live
        self.metric = ""
        self.best: tuple[int, float] | None = None
        self.running: dict[int, dict[str, Any]] = {}
        self.status = "starting workers (importing libraries, preparing data)"
        self._live: Live | None = None
        self._progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=self.console,
        )
        self._task = self._progress.add_task("trials", total=1, best="")

    # -- lifecycle
    def start(self, study_name: str, metric: str, done: int, total: int, header: list[str]) -> None:
        self.metric = metric
        for line in header:
            self.console.print(line)
        self._progress.update(self._task, total=total, completed=done)
        if self.live_enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- events
    def workers_ready(self, ready: int, total: int) -> None:
        self.status = "" if ready >= total else f"workers ready: {ready}/{total}"
        self._refresh()

    def set_best(self, number: int, value: float) -> None:
        self.best = (number, value)
        self._progress.update(self._task, best=f"best {self.metric} {fmt_value(value)} (trial {number})")
        self._refresh()

    def trial_started(self, number: int, params: dict[str, Any], device: str, max_steps: int) -> None:
        self.running[number] = {
            "params": params,
            "device": device,
            "step": 0,
            "max": max_steps,
            "eval": None,
            "t": time.monotonic(),
        }
        self._refresh()

    def trial_step(self, number: int, step: int) -> None:
        if number in self.running:
            self.running[number]["step"] = step
            self._refresh()

    def trial_eval(self, number: int, step: int, value: float) -> None:
        if number in self.running:
            self.running[number].update(step=step, eval=value)
            self._refresh()

    def trial_finished(self, number: int, state: str, value: float | None, steps: int, note: str = "") -> None:
        info = self.running.pop(number, None)
        dur = time.monotonic() - info["t"] if info else 0.0
        style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "white")
        params = fmt_params(info["params"]) if info else ""
        extra = f"  ({note})" if note else ""
        self.console.print(
            f"trial {number:>3} [{style}]{state:<8}[/] {self.metric}={fmt_value(value):<9} "
            f"steps={steps:<5} {dur:6.1f}s  {escape(params)}{escape(extra)}",
            highlight=False,
            soft_wrap=True,
        )
        self._progress.advance(self._task)
        self._refresh()

    def message(self, text: str) -> None:
        self.console.print(text)

    # -- rendering
    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        table = Table(box=None, show_header=bool(self.running), pad_edge=False)
        if self.running:
            for col in ("trial", "device", "step", f"last {self.metric}", "params"):
                table.add_column(col)
            for n, r in sorted(self.running.items()):
                table.add_row(
                    str(n), r["device"], f"{r['step']}/{r['max']}", fmt_value(r["eval"]), fmt_params(r["params"])
                )
        if not self.running and self.status:
            return Group(self._progress, f"[dim]{self.status}…[/]")
        return Group(self._progress, table)
