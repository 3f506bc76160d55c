"""`hpo export` says where the full run's length comes from; a file that never sets one exports the trial's own
length, not the trainer's default of 3 epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_export import export, tiny, write

from hpo.config import validate_study
from hpo.export import CONFIG_NAME, load_train_file
from hpo.space import to_distributions
from hpo.storage import create_or_resume, open_storage


@pytest.mark.parametrize(
    ("training", "full_run", "max_steps", "epochs", "said"),
    [
        ({}, None, 16, 3.0, "16 steps: the trial's length (fidelity.max_steps), since neither full_run nor training"),
        ({"max_steps": 24}, None, 24, 3.0, "24 steps (training.max_steps)"),
        ({"num_train_epochs": 2}, None, -1, 2.0, "2 epochs (training.num_train_epochs)"),
        ({}, {"max_steps": 40}, 40, 3.0, "40 steps (full_run.max_steps)"),
        ({}, {"num_train_epochs": 1}, -1, 1.0, "1 epoch (full_run.num_train_epochs)"),
    ],
)
def test_export_length_comes_from_what_the_file_says(
    tmp_path: Path, training: dict[str, Any], full_run: dict[str, Any] | None, max_steps: int, epochs: float, said: str
) -> None:
    d = tiny(tmp_path)
    d["training"] = {"per_device_eval_batch_size": 8, **training}
    if full_run is not None:
        d["full_run"] = full_run
    path = write(tmp_path / "study.yaml", d)
    cfg = validate_study(d)
    study, _ = create_or_resume(cfg, open_storage(cfg.storage_url, create=True))
    trial = study.ask(to_distributions(cfg.search_space))
    study.tell(trial, 100.0)  # a finished trial to export
    result = export(str(path), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert said in " ".join(result.output.split())
    t = load_train_file(tmp_path / "out" / CONFIG_NAME).training
    assert (t.max_steps, t.num_train_epochs) == (max_steps, epochs)
