"""Population-based training: the pure decisions (exploit, explore), lineage and schedules, the ``pbt``
section's checks, and the schedule a run follows (``RunConfig.schedule``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.config import validate_study
from hpo.errors import StudyFileError
from hpo.pbt import (
    Exploit,
    MemberRecord,
    PbtSection,
    exploit_and_explore,
    explore,
    inherit,
    params_at,
    plan_exploits,
    scale_schedule,
)
from hpo.space import CategoricalSpec, FloatSpec, IntSpec
from studies import causal_lm
from trainers.config import RunConfig


class FixedRng:
    """A generator whose draws are given: ``random()`` and ``integers()`` pop from their own lists."""

    def __init__(self, randoms: list[float] = (), integers: list[int] = ()) -> None:  # type: ignore[assignment]
        self._r, self._i = list(randoms), list(integers)

    def random(self) -> float:
        return self._r.pop(0)

    def integers(self, n: int) -> int:
        i = self._i.pop(0)
        assert 0 <= i < n
        return i

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._r.pop(0)


@pytest.mark.parametrize(
    ("values", "quantile", "direction", "parents", "expected"),
    [
        # 4 members, a quarter: the worst copies the best.
        ({0: 5.0, 1: 1.0, 2: 3.0, 3: 9.0}, 0.25, "minimize", [0], {3: 1}),
        ({0: 5.0, 1: 1.0, 2: 3.0, 3: 9.0}, 0.25, "maximize", [0], {1: 3}),
        # 8 members, a quarter = 2: the two worst copy one of the two best (the draws pick which).
        ({i: float(i) for i in range(8)}, 0.25, "minimize", [1, 0], {6: 1, 7: 0}),
        # A failed member (None) or a diverged one (inf, nan) ranks last, and copies even beyond the quantile.
        ({0: 1.0, 1: None, 2: 2.0, 3: 3.0, 4: 4.0}, 0.2, "minimize", [0], {1: 0}),
        ({0: 1.0, 1: None, 2: None, 3: 3.0}, 0.25, "minimize", [0, 0], {1: 0, 2: 0}),
        ({0: 1.0, 1: math.inf, 2: math.nan, 3: 0.5}, 0.25, "minimize", [0, 0], {1: 3, 2: 3}),
        # Population 2: one copies the other; the quantile never exceeds half.
        ({0: 2.0, 1: 1.0}, 0.5, "minimize", [0], {0: 1}),
        ({0: 2.0, 1: 1.0, 2: 3.0}, 0.5, "minimize", [0], {2: 1}),
        # Ties rank the lower member first.
        ({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, 0.25, "minimize", [0], {3: 0}),
    ],
)
def test_plan_exploits(
    values: dict[int, float | None], quantile: float, direction: str, parents: list[int], expected: dict[int, int]
) -> None:
    rng = FixedRng(integers=parents)
    assert plan_exploits(values, quantile, direction, rng) == expected  # type: ignore[arg-type]


def test_plan_exploits_without_any_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="no member"):
        plan_exploits({0: None, 1: None}, 0.25, "minimize", np.random.default_rng(0))


LR = FloatSpec(type="float", low=1e-4, high=1e-2, log=True)
WD = FloatSpec(type="float", low=0.0, high=0.1, step=0.01)
LAYERS = IntSpec(type="int", low=1, high=4)
SCHED = CategoricalSpec(type="categorical", choices=["linear", "cosine", "constant"])


@pytest.mark.parametrize(
    ("spec", "value", "randoms", "integers", "expected"),
    [
        (LR, 1e-3, [0.9], [1], 1.2e-3),  # perturbed: factor 1.2
        (LR, 1e-3, [0.9], [0], 0.8e-3),  # factor 0.8
        (LR, 9e-3, [0.9], [1], 1e-2),  # clipped to high
        (LR, 1e-3, [0.1, 0.5], [], math.exp((math.log(1e-4) + math.log(1e-2)) / 2)),  # resampled, log-uniform
        (WD, 0.05, [0.9], [1], 0.06),  # rounded to the step
        (LAYERS, 3, [0.9], [1], 4),  # int: rounded, an int
        (LAYERS, 1, [0.9], [0], 1),
        (SCHED, "cosine", [0.9, 0.2], [], "constant"),  # categorical: a neighbour
        (SCHED, "linear", [0.9, 0.7], [], "linear"),  # at the edge: stays
        (SCHED, "cosine", [0.1], [0], "linear"),  # resampled
    ],
)
def test_explore(spec: Any, value: Any, randoms: list[float], integers: list[int], expected: Any) -> None:
    rng = FixedRng(randoms, integers)
    got = explore({"p": value, "fixed": 16}, {"p": spec}, (0.8, 1.2), 0.25, rng)  # type: ignore[arg-type]
    assert got["fixed"] == 16
    if isinstance(expected, float):
        assert got["p"] == pytest.approx(expected)
    else:
        assert got["p"] == expected and type(got["p"]) is type(expected)


@pytest.mark.parametrize(
    ("parent", "step", "params", "expected"),
    [
        ([(0, {"lr": 1})], 50, {"lr": 2}, [(0, {"lr": 1}), (50, {"lr": 2})]),
        (
            [(0, {"lr": 1}), (50, {"lr": 2}), (100, {"lr": 3})],
            100,
            {"lr": 4},
            [(0, {"lr": 1}), (50, {"lr": 2}), (100, {"lr": 4})],
        ),
        ([(0, {"lr": 1}), (50, {"lr": 2})], 100, {"lr": 2}, [(0, {"lr": 1}), (50, {"lr": 2})]),  # unchanged: merged
    ],
)
def test_inherit(parent: Any, step: int, params: dict[str, Any], expected: Any) -> None:
    assert inherit(parent, step, params) == expected


def test_params_at_and_scale() -> None:
    s = [(0, {"lr": 1}), (50, {"lr": 2}), (100, {"lr": 3})]
    assert [params_at(s, k)["lr"] for k in (0, 49, 50, 99, 100, 300)] == [1, 1, 2, 2, 3, 3]
    assert scale_schedule(s, 300, 1000) == [(0, {"lr": 1}), (166, {"lr": 2}), (333, {"lr": 3})]


def test_exploit_and_explore_records_lineage_and_schedule() -> None:
    section = PbtSection(population=4, interval_steps=50, resample_probability=0.0)
    records = {
        m: MemberRecord(member=m, step=50, value=v, schedule=[(0, {"learning_rate": lr, "batch": 8 * (m + 1)})])
        for m, (v, lr) in enumerate([(5.0, 1e-3), (1.0, 2e-3), (3.0, 3e-3), (9.0, 4e-3)])
    }
    new = exploit_and_explore(records, {0: 10, 1: 11, 2: 12, 3: 13}, 50, section, {"learning_rate": LR}, "minimize", 7)
    assert list(new) == [3]
    rec = new[3]
    event = rec.lineage[-1]
    assert (event.step, event.member, event.parent, event.parent_trial) == (50, 3, 1, 11)
    assert (event.value, event.parent_value) == (9.0, 1.0)
    lr = rec.schedule[-1][1]["learning_rate"]
    assert lr in (pytest.approx(1.6e-3), pytest.approx(2.4e-3))
    assert event.changed == {"learning_rate": (2e-3, lr)}
    # The fixed parameter is the parent's (its weights trained with it); the schedule is the parent's, then its own.
    assert rec.schedule == [(0, {"learning_rate": 2e-3, "batch": 16}), (50, {"learning_rate": lr, "batch": 16})]
    assert (rec.step, rec.value) == (50, 1.0)
    # The same seed and step decide the same; the record survives its JSON form (the trial attribute).
    again = exploit_and_explore(
        records, {0: 10, 1: 11, 2: 12, 3: 13}, 50, section, {"learning_rate": LR}, "minimize", 7
    )
    assert again == new
    assert MemberRecord.from_json(rec.to_json()) == rec
    assert "copied member 1 (trial 11); learning_rate 0.002→" in rec.note()


def test_exploit_describe() -> None:
    e = Exploit(100, 3, 1, 11, None, 2.5, {"learning_rate": (0.002, 0.0024)})
    assert e.describe() == "step 100: copied member 1 (trial 11); learning_rate 0.002→0.0024"


# ---------------------------------------------------------------------------------------------- the file
def _pbt_study(**pbt: Any) -> dict[str, Any]:
    d = causal_lm(n_trials=4, pbt={"population": 4, "interval_steps": 8, **pbt})
    d["search_space"]["training.per_device_train_batch_size"] = {"type": "categorical", "choices": [4, 8]}
    return d


def _grid(d: dict[str, Any]) -> None:
    d["sampler"] = {"name": "grid"}
    d["search_space"]["training.learning_rate"]["grid"] = [1e-3, 1e-2]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["pbt"].update(mutable=["training.per_device_train_batch_size"]),
            "<s>: pbt.mutable[0]: 'training.per_device_train_batch_size' cannot change during training",
        ),
        (
            lambda d: d["pbt"].update(mutable=["training.warmup_ratio"]),
            "<s>: pbt.mutable[0]: 'training.warmup_ratio' is not in search_space",
        ),
        (lambda d: d["pbt"].update(population=1), "<s>: pbt.population: Input should be greater than or equal to 2"),
        (
            lambda d: d["study"].update(n_trials=5),
            "<s>: pbt.population: each member is one trial: population (4) must equal study.n_trials (5)",
        ),
        (
            lambda d: d.update(resources={"workers": 8}),
            "<s>: pbt.population: population (4) is smaller than resources.workers (8)",
        ),
        (
            lambda d: d["pbt"].update(interval_steps=32),
            "<s>: pbt.interval_steps: interval (32) is longer than a trial (fidelity.max_steps=16)",
        ),
        (
            lambda d: d["pbt"].update(interval_steps=6),
            "<s>: pbt.interval_steps: must be a multiple of fidelity.eval_every (8)",
        ),
        (_grid, "<s>: sampler.name: PBT draws its first population and resamples: the grid sampler cannot"),
        (lambda d: d["pbt"].update(quantile=0.75), "<s>: pbt.quantile: Input should be less than or equal to 0.5"),
        (lambda d: d["pbt"].update(bogus=1), "<s>: pbt.bogus: unknown key"),
    ],
)
def test_bad_pbt_sections(change: Any, expected: str) -> None:
    d = _pbt_study()
    change(d)
    with pytest.raises(StudyFileError) as e:
        validate_study(d, "<s>")
    lines = str(e.value).splitlines()
    assert any(line.startswith(expected) for line in lines), lines


def test_pbt_section_is_fingerprinted_but_not_its_checkpoint_dir() -> None:
    plain = validate_study(causal_lm())
    a = validate_study(_pbt_study())
    b = validate_study(_pbt_study(quantile=0.5))
    c = validate_study(_pbt_study(checkpoint_dir="/elsewhere"))
    assert "pbt" not in plain.fingerprints()  # studies without PBT keep their fingerprints
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == c.fingerprint()
    assert a.pbt is not None and a.pbt.mutable is None  # default: every search-space key that can change


# ------------------------------------------------------------------------------------- a run's schedule
def _run(schedule: list[dict[str, Any]]) -> RunConfig:
    base = validate_study(causal_lm()).base_run().model_dump(mode="json")
    return RunConfig.model_validate({**base, "schedule": schedule})


def test_schedule_settings_and_checks() -> None:
    run = _run(
        [{"step": 0, "set": {"training.learning_rate": 1e-3}}, {"step": 8, "set": {"training.weight_decay": 0.1}}]
    )
    assert run.settings_at(0) == {"training.learning_rate": 1e-3}
    assert run.settings_at(8) == {"training.learning_rate": 1e-3, "training.weight_decay": 0.1}
    assert "schedule" not in _run([]).model_dump()  # no schedule: the run's dump (and digests) as before
    with pytest.raises(ValueError, match="cannot change during a run"):
        _run([{"step": 0, "set": {"training.per_device_train_batch_size": 4}}])
    with pytest.raises(ValueError, match="must be increasing"):
        _run([{"step": 8, "set": {}}, {"step": 8, "set": {}}])


def test_checkpoint_digest_counts_the_schedule_up_to_its_step() -> None:
    from trainers.checkpoints import run_digest

    parent = _run(
        [{"step": 0, "set": {"training.learning_rate": 1e-3}}, {"step": 8, "set": {"training.learning_rate": 2e-3}}]
    )
    child = _run(
        [{"step": 0, "set": {"training.learning_rate": 1e-3}}, {"step": 8, "set": {"training.learning_rate": 5e-3}}]
    )
    assert run_digest(parent, 8) == run_digest(child, 8)  # the child resumes the parent's checkpoint at 8
    assert run_digest(parent, 9) != run_digest(child, 9)  # not one written after their schedules part
    assert run_digest(_run([])) == run_digest(_run([]), 8)


# ------------------------------------------------------------------------------ report, dashboard note
def _population_study() -> Any:
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(direction="minimize")
    lineage = {1: [Exploit(8, 1, 0, 0, 9.0, 4.0, {"learning_rate": (2e-3, 2.4e-3)})]}
    schedules = {0: [(0, {"learning_rate": 2e-3})], 1: [(0, {"learning_rate": 2e-3}), (8, {"learning_rate": 2.4e-3})]}
    for m, (first, curve) in enumerate([(2e-3, {8: 4.0, 16: 3.5}), (1e-4, {8: 9.0, 16: 3.0})]):
        rec = MemberRecord(member=m, step=16, value=curve[16], schedule=schedules[m], lineage=lineage.get(m, []))
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": first},
                distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)},
                value=curve[16],
                intermediate_values=curve,
                user_attrs={"pbt": rec.to_json()},
            )
        )
    return study


def test_report_draws_the_population_with_exploits_and_the_winners_schedule() -> None:
    from dashboards.pbt import pbt_figures, population

    study = _population_study()
    pd = population(study, "perplexity")
    assert pd.winner == 1 and [c.curve for c in pd.members] == [[(8, 4.0), (16, 3.5)], [(8, 9.0), (16, 3.0)]]
    figs = {k: f for k, _, f in pbt_figures(study, "perplexity", 16)}
    exploit = next(t for t in figs["pbt-population"].data if t.name.startswith("exploit"))
    assert list(exploit.x) == [8] and list(exploit.y) == [4.0]
    assert "copied member 0 (trial 0)" in exploit.text[0]
    lr = figs["pbt-schedule"].data[0]
    assert list(lr.x) == [0, 8, 8, 16] and list(lr.y) == [2e-3, 2e-3, 2.4e-3, 2.4e-3]
    import optuna

    assert pbt_figures(optuna.create_study(), "perplexity", 16) == []  # not a PBT study: no figures


def test_dashboard_note_of_a_member_shows_lineage_and_schedule() -> None:
    from dashboards.notes import trial_note
    from hpo.record import TrialRecord

    note = trial_note(TrialRecord.from_trial(_population_study().trials[1]), "perplexity", 16)
    assert "**PBT member 1**: 1 exploit(s)" in note
    assert "- step 8: copied member 0 (trial 0); learning_rate 0.002→0.0024" in note
    assert "| 8 | learning_rate=0.0024 |" in note


@pytest.mark.parametrize(
    ("pbt", "expected"),
    [
        ({"population": 4, "interval_steps": 8, "mutable": ["training.per_device_train_batch_size"]},
         "pbt.mutable[0]: 'training.per_device_train_batch_size' cannot change during training"),
        ({"population": 4, "interval_steps": 64}, "pbt.interval_steps: interval (64) is longer than a trial"),
        ({"population": 1, "interval_steps": 8}, "pbt.population: Input should be greater than or equal to 2"),
    ],
)  # fmt: skip
def test_hpo_run_refuses_a_bad_pbt_section_in_one_line_and_writes_nothing(
    tmp_path: Path, pbt: dict[str, Any], expected: str
) -> None:
    import yaml
    from typer.testing import CliRunner

    from hpo.cli import app

    d = _pbt_study(**pbt)
    d["study"]["storage"] = f"sqlite:///{tmp_path}/runs/pbt.db"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {expected}"), result.output
    assert not (tmp_path / "runs").exists()
