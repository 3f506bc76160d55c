"""hpo's orchestrator as the tests run it with ``doubles.CurveRunner``: it tells the double's workers when
each of their evals has been judged (``doubles.Verdicts``), so a prune lands before the double's next step.

Apart from ``doubles`` so that worker processes, which import ``doubles`` by name, do not import Optuna.
"""

from __future__ import annotations

from typing import Any

from doubles import CurveRunner

import hpo.orchestrator
from hpo.protocol import Eval, Event


class Orchestrator(hpo.orchestrator.Orchestrator):
    """``hpo.orchestrator.Orchestrator``, plus a verdict for every eval a ``CurveRunner`` reports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.runner, CurveRunner):
            self.runner.verdicts.arm()

    def _handle(self, event: Event, summary: Any) -> None:
        try:
            super()._handle(event, summary)
        finally:
            if isinstance(event, Eval) and isinstance(self.runner, CurveRunner):
                self.runner.verdicts.judged(event.trial, event.step)
