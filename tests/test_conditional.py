"""Conditional search spaces (`when:`): what is sampled, in which order, and the file's mistakes."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

import studies
from hpo.conditional import active_params, ask, draw_order
from hpo.config import StudyConfig, validate_study
from hpo.errors import StudyFileError

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = studies.LEARNING_RATE
# A from-config model whose depth is searched only for the "deep" variant, and dropout only when the
# warmup is on; the condition's key comes after the entry it gates in the file (order must not matter).
SPACE: dict[str, Any] = {
    "model.config.n_layer": {"type": "int", "low": 2, "high": 4, "when": {"training.lr_scheduler_type": "cosine"}},
    "training.lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine", "constant"]},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.3, "when": {"model.config.n_layer": [3, 4]}},
    "training.learning_rate": dict(LR),
}


def cfg(space: dict[str, Any], sampler: dict[str, Any] | None = None) -> StudyConfig:
    over: dict[str, Any] = {"search_space": space}
    if sampler is not None:
        over["sampler"] = sampler
    return validate_study(studies.causal_lm(**over), "s.yaml")


@pytest.mark.parametrize(
    "sampler",
    [{"name": "random", "seed": 1}, {"name": "tpe", "seed": 2, "n_startup_trials": 3}, {"name": "qmc", "seed": 3}],
    ids=["random", "tpe", "qmc"],
)
def test_an_inactive_key_is_never_sampled(sampler: dict[str, Any]) -> None:
    c = cfg(SPACE, sampler)
    study = optuna.create_study(sampler=c.sampler.for_study(None))
    seen: set[tuple[str, ...]] = set()
    for i in range(30):
        trial = ask(study, c.search_space)
        p = trial.params
        sched, layers = p["lr_scheduler_type"], p.get("n_layer")
        assert ("n_layer" in p) == (sched == "cosine"), p
        assert ("dropout" in p) == (layers in (3, 4)), p
        seen.add(tuple(sorted(p)))
        run = c.trial_run(dict(p))
        base = c.base_run()
        if "n_layer" not in p:  # the inactive key keeps its base value
            assert run.model.config.get("n_layer") == base.model.config.get("n_layer")
        if "dropout" not in p:
            assert run.model.dropout == base.model.dropout
        study.tell(trial, float(i))
    # every shape of parameter set occurred: the gate opens and closes
    assert len(seen) >= 3, seen


def test_seeded_conditional_study_repeats_itself_and_resume_draws_new() -> None:
    c = cfg(SPACE, {"name": "random", "seed": 7})

    def draws(n: int, study: optuna.Study | None = None) -> list[dict[str, Any]]:
        study = study or optuna.create_study(sampler=c.sampler.for_study(None))
        out = []
        for _ in range(n):
            t = ask(study, c.search_space)
            out.append(dict(t.params))
            study.tell(t, 0.0)
        return out

    assert draws(8) == draws(8)
    storage = optuna.storages.InMemoryStorage()
    first = draws(4, optuna.create_study(storage=storage, study_name="s", sampler=c.sampler.for_study(None)))
    resumed = draws(4, optuna.load_study(storage=storage, study_name="s", sampler=c.sampler.for_study(None)))
    assert first + resumed == draws(8)  # a resumed process goes on; it does not replay trials 0..3


def test_requeued_params_are_kept_and_inactive_ones_dropped() -> None:
    c = cfg(SPACE)
    study = optuna.create_study()
    study.enqueue_trial({"lr_scheduler_type": "linear", "n_layer": 4, "learning_rate": 1e-3})
    t = ask(study, c.search_space)
    assert t.params == {"lr_scheduler_type": "linear", "learning_rate": 1e-3}


def test_draw_order_puts_condition_keys_first() -> None:
    c = cfg(SPACE)
    order = draw_order(c.search_space)
    assert (
        order.index("training.lr_scheduler_type") < order.index("model.config.n_layer") < order.index("model.dropout")
    )


def test_active_params() -> None:
    c = cfg(SPACE)
    got = active_params(
        c.search_space, {"lr_scheduler_type": "linear", "n_layer": 3, "dropout": 0.1, "learning_rate": 1e-3}
    )
    assert got == {"lr_scheduler_type": "linear", "learning_rate": 1e-3}


def test_plain_space_draws_what_it_drew_before_conditions_existed() -> None:
    c = cfg({"training.learning_rate": dict(LR), "model.dropout": {"type": "float", "low": 0.0, "high": 0.3}})
    a = optuna.create_study(sampler=c.sampler.for_study(None))
    b = optuna.create_study(sampler=c.sampler.for_study(None))
    from hpo.space import to_distributions

    for _ in range(5):
        ta, tb = ask(a, c.search_space), b.ask(to_distributions(c.search_space))
        assert ta.params == tb.params
        a.tell(ta, 1.0)
        b.tell(tb, 1.0)


def test_when_is_fingerprinted_and_absent_when_unset() -> None:
    plain = cfg({"training.learning_rate": dict(LR)})
    assert "when" not in plain.search_space["training.learning_rate"].model_dump()
    gated = cfg(SPACE)
    other = cfg({**SPACE, "model.dropout": {**SPACE["model.dropout"], "when": {"model.config.n_layer": 4}}})
    assert gated.fingerprints()["search_space"] != other.fingerprints()["search_space"]


CAT = {"type": "categorical", "choices": ["a", "b"]}
BAD: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = [
    (
        "unknown key",
        {"training.learning_rate": {**LR, "when": {"training.nope": 1}}},
        None,
        "s.yaml: search_space[training.learning_rate].when: 'training.nope' is not a key of search_space",
    ),
    (
        "itself",
        {
            "training.lr_scheduler_type": {
                "type": "categorical",
                "choices": ["linear"],
                "when": {"training.lr_scheduler_type": "linear"},
            }
        },
        None,
        "search_space[training.lr_scheduler_type].when: 'training.lr_scheduler_type' names this entry itself",
    ),
    (
        "cycle",
        {
            "training.lr_scheduler_type": {
                "type": "categorical",
                "choices": ["linear", "cosine"],
                "when": {"model.config.n_layer": 2},
            },
            "model.config.n_layer": {
                "type": "int",
                "low": 1,
                "high": 2,
                "when": {"training.lr_scheduler_type": "cosine"},
            },
        },
        None,
        "search_space[training.lr_scheduler_type].when: the conditions make a cycle: training.lr_scheduler_type -> "
        "model.config.n_layer -> training.lr_scheduler_type",
    ),
    (
        "value not a choice",
        {
            "training.lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
            "training.learning_rate": {**LR, "when": {"training.lr_scheduler_type": "cosin"}},
        },
        None,
        "search_space[training.learning_rate].when: 'training.lr_scheduler_type' never takes 'cosin': "
        "its choices are ['linear', 'cosine']",
    ),
    (
        "value out of int range",
        {
            "model.config.n_layer": {"type": "int", "low": 1, "high": 3},
            "training.learning_rate": {**LR, "when": {"model.config.n_layer": [2, 5]}},
        },
        None,
        "search_space[training.learning_rate].when: 'model.config.n_layer' never takes 5: it ranges over [1, 3] step 1",
    ),
    (
        "float key",
        {
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "training.learning_rate": {**LR, "when": {"model.dropout": 0.1}},
        },
        None,
        "'model.dropout' is a float; a condition needs a categorical or int key",
    ),
    (
        "grid sampler",
        {
            "training.lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
            "model.config.n_layer": {
                "type": "int",
                "low": 1,
                "high": 2,
                "when": {"training.lr_scheduler_type": "cosine"},
            },
        },
        {"name": "grid"},
        "search_space[model.config.n_layer].when: a conditional space is not a grid",
    ),
]


@pytest.mark.parametrize(("space", "sampler", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_conditions_are_one_line_errors(
    space: dict[str, Any], sampler: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(StudyFileError) as e:
        cfg(space, sampler)
    text = str(e.value)
    assert message in text, text
    assert len([line for line in text.splitlines() if line.strip()]) == 1, text


def test_the_dashboard_study_note_says_when_an_entry_is_sampled() -> None:
    from dashboards.notes import _space

    rows = _space({"model.config.n_layer": {"type": "int", "low": 1, "high": 2, "when": {"model.preset": "wide"}}})
    assert rows[-1] == "| `model.config.n_layer` | 1 … 2; only when model.preset = wide |"
