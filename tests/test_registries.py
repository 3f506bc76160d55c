"""The closed sampler and pruner registries: each config builds its Optuna object, nothing else is accepted,
and the built samplers run (ask/tell, in memory) on distributions made by ``hpo.space``."""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args

import optuna
import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from test_config import PRUNER_CONFIGS, minimal_study

from hpo.config import StudyConfig, validate_study
from hpo.errors import StudyFileError
from hpo.pruners import PRUNER_NAMES, WRAPPABLE_PRUNERS, PrunerConfig
from hpo.registry import union_tags
from hpo.samplers import SAMPLER_NAMES, SamplerConfig
from hpo.space import SPEC_TYPES, CategoricalSpec, ParamSpec, to_distributions

optuna.logging.set_verbosity(optuna.logging.WARNING)

SAMPLERS: TypeAdapter[Any] = TypeAdapter(SamplerConfig)
PRUNERS: TypeAdapter[Any] = TypeAdapter(PrunerConfig)

QUICKSTART: dict[str, Any] = minimal_study()  # the content of studies/quickstart.yaml

GRID = {"learning_rate": [1e-5, 1e-4, 1e-3], "per_device_train_batch_size": [8, 16, 32], "dropout": [0.0, 0.1]}


@functools.cache
def _validated(grid: bool) -> StudyConfig:
    data = copy.deepcopy(QUICKSTART)
    if grid:
        data["sampler"] = {"name": "grid"}
        ss = data["search_space"]
        ss["training.learning_rate"]["grid"] = [1e-5, 1e-4, 1e-3]
        ss["model.dropout"]["grid"] = [0.0, 0.1]
        ss["training.weight_decay"]["grid"] = [0.0, 0.05, 0.1]
    return validate_study(data)


def quickstart(sampler: dict[str, Any] | None = None, grid: bool = False) -> StudyConfig:
    """The quickstart study (with grids when asked) using ``sampler``, validated through the registry.

    Validation is cached: it round-trips the run configuration through YAML for each search-space bound.
    """
    cfg = _validated(grid)
    if sampler is None:
        return cfg
    return cfg.model_copy(update={"sampler": SAMPLERS.validate_python(sampler)})


# ------------------------------------------------------------------------------------------ registry


# (registry, the union it is read from, the names in the union's order: error messages list them so)
REGISTRIES: list[tuple[str, tuple[str, ...], Any, list[str]]] = [
    ("samplers", SAMPLER_NAMES, SamplerConfig, ["random", "grid", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3"]),
    (
        "pruners",
        PRUNER_NAMES,
        PrunerConfig,
        ["none", "median", "percentile", "successive_halving", "hyperband", "threshold", "wilcoxon", "patient"],
    ),
]


@pytest.mark.parametrize(("names", "union", "expected"), [r[1:] for r in REGISTRIES], ids=[r[0] for r in REGISTRIES])
def test_registered_names_are_the_union_members(names: tuple[str, ...], union: Any, expected: list[str]) -> None:
    members = get_args(get_args(union)[0])
    assert list(names) == [get_args(m.model_fields["name"].annotation)[0] for m in members] == expected


@pytest.mark.parametrize("name", PRUNER_NAMES)
def test_wrappable_pruners_are_what_patient_accepts(name: str) -> None:
    patient = {"name": "patient", "patience": 1, "wrapped": PRUNER_CONFIGS[name]}
    if name in WRAPPABLE_PRUNERS:
        assert PRUNERS.validate_python(patient).wrapped.name == name
    else:
        with pytest.raises(ValidationError, match=r"patient\.wrapped"):
            PRUNERS.validate_python(patient)


def test_spec_types_are_the_search_space_union_members() -> None:
    assert SPEC_TYPES == ("float", "int", "categorical")
    assert [m.model_fields["type"].annotation for m in get_args(get_args(ParamSpec)[0])] == [
        Literal["float"],
        Literal["int"],
        Literal["categorical"],
    ]


class _A(BaseModel):
    kind: Literal["a"]


class _B(BaseModel):
    kind: Literal["b", "bee"]


@pytest.mark.parametrize(
    ("union", "expected"),
    [
        (Annotated[Union[_A, _B], Field(discriminator="kind")], ("a", "b", "bee")),
        (Annotated[Union[_B, _A], Field(discriminator="kind")], ("b", "bee", "a")),
        (Union[_A, _B], ("a", "b", "bee")),
    ],
    ids=["annotated", "order-kept", "bare-union"],
)
def test_union_tags_reads_a_new_member_without_a_list_to_update(union: Any, expected: tuple[str, ...]) -> None:
    assert union_tags(union, "kind") == expected


# (config, optuna type, arguments hpo constructs it with: given or Optuna's defaults)
SAMPLER_CASES: list[tuple[str, dict[str, Any], type, dict[str, Any]]] = [
    ("random", {"name": "random", "seed": 3}, optuna.samplers.RandomSampler, {"seed": 3}),
    ("grid", {"name": "grid", "seed": 3}, optuna.samplers.GridSampler, {"search_space": GRID, "seed": 3}),
    (
        "tpe-defaults",
        {"name": "tpe"},
        optuna.samplers.TPESampler,
        {"n_startup_trials": 10, "n_ei_candidates": 24, "constant_liar": True, "group": False},
    ),
    (
        "tpe-args",
        {
            "name": "tpe",
            "seed": 1,
            "n_startup_trials": 3,
            "n_ei_candidates": 7,
            "multivariate": True,
            "group": True,
            "constant_liar": False,
        },
        optuna.samplers.TPESampler,
        {
            "seed": 1,
            "n_startup_trials": 3,
            "n_ei_candidates": 7,
            "multivariate": True,
            "group": True,
            "constant_liar": False,
        },
    ),
    (
        "gp",
        {"name": "gp", "seed": 2, "n_startup_trials": 4, "deterministic_objective": True},
        optuna.samplers.GPSampler,
        {"seed": 2, "n_startup_trials": 4, "deterministic_objective": True},
    ),
    (
        "cmaes",
        {
            "name": "cmaes",
            "seed": 2,
            "n_startup_trials": 2,
            "popsize": 6,
            "use_separable_cma": True,
            "consider_pruned_trials": True,
        },
        optuna.samplers.CmaEsSampler,
        {
            "seed": 2,
            "n_startup_trials": 2,
            "popsize": 6,
            "use_separable_cma": True,
            "with_margin": False,
            "consider_pruned_trials": True,
            "warn_independent_sampling": False,
        },
    ),
    (
        "cmaes-margin",
        {"name": "cmaes", "with_margin": True},
        optuna.samplers.CmaEsSampler,
        {"with_margin": True, "use_separable_cma": False, "n_startup_trials": 1},
    ),
    (
        "nsga2",
        {"name": "nsga2", "seed": 3, "population_size": 8, "mutation_prob": 0.1},
        optuna.samplers.NSGAIISampler,
        {"seed": 3, "population_size": 8, "mutation_prob": 0.1, "crossover_prob": 0.9, "swapping_prob": 0.5},
    ),
    (
        "nsga3",
        {"name": "nsga3", "population_size": 10, "dividing_parameter": 4},
        optuna.samplers.NSGAIIISampler,
        {"population_size": 10, "dividing_parameter": 4},
    ),
    (
        "qmc",
        {"name": "qmc", "seed": 5, "qmc_type": "halton", "scramble": True},
        optuna.samplers.QMCSampler,
        {"qmc_type": "halton", "scramble": True, "seed": 5},
    ),
    (
        "qmc-defaults",
        {"name": "qmc", "seed": 0},
        optuna.samplers.QMCSampler,
        {"qmc_type": "sobol", "scramble": False},
    ),
]


@pytest.fixture
def constructed(monkeypatch: pytest.MonkeyPatch) -> dict[type, dict[str, Any]]:
    """The arguments (Optuna's defaults filled in) each Optuna sampler and pruner class of the tables was last
    constructed with: what hpo asks of Optuna, read at the public constructor rather than from the private
    attributes an Optuna release may rename."""
    seen: dict[type, dict[str, Any]] = {}
    for cls in {c[2] for c in SAMPLER_CASES + PRUNER_CASES}:
        original = cls.__init__
        signature = inspect.signature(original)

        def spy(
            self: Any, *args: Any, _cls: type = cls, _init: Any = original, _sig: Any = signature, **kw: Any
        ) -> None:
            bound = _sig.bind(self, *args, **kw)
            bound.apply_defaults()
            seen[_cls] = {k: v for k, v in bound.arguments.items() if k != "self"}
            _init(self, *args, **kw)

        monkeypatch.setattr(cls, "__init__", spy)
    return seen


def assert_built_with(args: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {k: args.get(k, "<not an argument>") for k in expected} == expected


@pytest.mark.parametrize(("config", "cls", "args"), [c[1:] for c in SAMPLER_CASES], ids=[c[0] for c in SAMPLER_CASES])
def test_sampler_builds(
    config: dict[str, Any], cls: type, args: dict[str, Any], constructed: dict[type, dict[str, Any]]
) -> None:
    sampler = SAMPLERS.validate_python(config).build(GRID)
    assert isinstance(sampler, cls)
    assert_built_with(constructed[cls], args)


def test_sampler_cases_cover_the_registry() -> None:
    assert {c[1]["name"] for c in SAMPLER_CASES} == set(SAMPLER_NAMES)


def test_sampler_seed_is_passed_through() -> None:
    def first_draws(seed: int) -> list[float]:
        sampler = SAMPLERS.validate_python({"name": "random", "seed": seed}).build()
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)]

    assert first_draws(7) == first_draws(7)
    assert first_draws(7) != first_draws(8)


def test_grid_sampler_needs_the_grid() -> None:
    with pytest.raises(ValueError, match="needs the grid"):
        SAMPLERS.validate_python({"name": "grid"}).build(None)


def test_grid_sampler_gets_the_studys_grid(constructed: dict[type, dict[str, Any]]) -> None:
    cfg = quickstart({"name": "grid", "seed": 0}, grid=True)
    grid = cfg.grid()
    assert grid is not None
    sampler = cfg.sampler.build(grid)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    assert constructed[optuna.samplers.GridSampler]["search_space"] == grid
    assert math.prod(len(v) for v in grid.values()) == 3 * 3 * 2 * 3


PRUNER_CASES: list[tuple[str, dict[str, Any], type, dict[str, Any]]] = [
    ("none", {"name": "none"}, optuna.pruners.NopPruner, {}),
    (
        "median",
        {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 50, "interval_steps": 2, "n_min_trials": 3},
        optuna.pruners.MedianPruner,
        {"n_startup_trials": 4, "n_warmup_steps": 50, "interval_steps": 2, "n_min_trials": 3},
    ),
    (
        "median-defaults",
        {"name": "median"},
        optuna.pruners.MedianPruner,
        {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
    ),
    (
        "percentile",
        {"name": "percentile", "percentile": 25.0, "n_startup_trials": 2},
        optuna.pruners.PercentilePruner,
        {"percentile": 25.0, "n_startup_trials": 2},
    ),
    (
        "successive-halving",
        {
            "name": "successive_halving",
            "min_resource": 50,
            "reduction_factor": 3,
            "min_early_stopping_rate": 1,
            "bootstrap_count": 2,
        },
        optuna.pruners.SuccessiveHalvingPruner,
        {"min_resource": 50, "reduction_factor": 3, "min_early_stopping_rate": 1, "bootstrap_count": 2},
    ),
    (
        "successive-halving-auto",
        {"name": "successive_halving"},
        optuna.pruners.SuccessiveHalvingPruner,
        {"min_resource": "auto", "reduction_factor": 4},
    ),
    (
        "hyperband",
        {"name": "hyperband", "min_resource": 10, "max_resource": 300, "reduction_factor": 2},
        optuna.pruners.HyperbandPruner,
        {"min_resource": 10, "max_resource": 300, "reduction_factor": 2},
    ),
    ("hyperband-auto", {"name": "hyperband"}, optuna.pruners.HyperbandPruner, {"max_resource": "auto"}),
    (
        "threshold",
        {"name": "threshold", "upper": 100.0, "n_warmup_steps": 10},
        optuna.pruners.ThresholdPruner,
        {"lower": None, "upper": 100.0, "n_warmup_steps": 10, "interval_steps": 1},
    ),
    (
        "threshold-both",
        {"name": "threshold", "lower": 0.0, "upper": 1.0},
        optuna.pruners.ThresholdPruner,
        {"lower": 0.0, "upper": 1.0},
    ),
    (
        "wilcoxon",
        {"name": "wilcoxon", "p_threshold": 0.05, "n_startup_steps": 3},
        optuna.pruners.WilcoxonPruner,
        {"p_threshold": 0.05, "n_startup_steps": 3},
    ),
    (
        "patient-alone",
        {"name": "patient", "patience": 3, "min_delta": 0.01},
        optuna.pruners.PatientPruner,
        {"wrapped_pruner": None, "patience": 3, "min_delta": 0.01},
    ),
]


@pytest.mark.parametrize(("config", "cls", "args"), [c[1:] for c in PRUNER_CASES], ids=[c[0] for c in PRUNER_CASES])
def test_pruner_builds(
    config: dict[str, Any], cls: type, args: dict[str, Any], constructed: dict[type, dict[str, Any]]
) -> None:
    pruner = PRUNERS.validate_python(config).build()
    assert type(pruner) is cls
    assert_built_with(constructed[cls], args)


def test_pruner_cases_cover_the_registry() -> None:
    assert {c[1]["name"] for c in PRUNER_CASES} == set(PRUNER_NAMES)


WRAPPED: list[tuple[dict[str, Any], type]] = [
    ({"name": "median", "n_warmup_steps": 10}, optuna.pruners.MedianPruner),
    ({"name": "percentile", "percentile": 10.0}, optuna.pruners.PercentilePruner),
    ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
    ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
    ({"name": "threshold", "upper": 5.0}, optuna.pruners.ThresholdPruner),
]


@pytest.mark.parametrize(("inner", "cls"), WRAPPED, ids=[w[0]["name"] for w in WRAPPED])
def test_patient_pruner_builds_its_wrapped_pruner(
    inner: dict[str, Any], cls: type, constructed: dict[type, dict[str, Any]]
) -> None:
    pruner = PRUNERS.validate_python({"name": "patient", "patience": 2, "wrapped": inner}).build()
    assert type(pruner) is optuna.pruners.PatientPruner
    args = constructed[optuna.pruners.PatientPruner]
    assert type(args["wrapped_pruner"]) is cls and args["patience"] == 2


@pytest.mark.parametrize("inner", ["none", "wilcoxon", "patient"])
def test_patient_pruner_cannot_wrap(inner: str) -> None:
    with pytest.raises(ValidationError):
        PRUNERS.validate_python({"name": "patient", "patience": 2, "wrapped": {"name": inner, "patience": 1}})


# ------------------------------------------------------------------------------------------ closed registry

NOT_REGISTERED = [
    "optuna.samplers.TPESampler",
    "TPESampler",
    "hpo.samplers.TPESamplerConfig",
    "optuna.pruners.MedianPruner",
    "MedianPruner",
    "builtins.eval",
    "os:system",
    "TPE",
    "",
]


@pytest.mark.parametrize("section", ["sampler", "pruner"])
@pytest.mark.parametrize("name", NOT_REGISTERED)
def test_unregistered_name_is_rejected_by_validation(section: str, name: str) -> None:
    data = copy.deepcopy(QUICKSTART)
    data[section] = {"name": name}
    with pytest.raises(StudyFileError) as info:
        validate_study(data, "s.yaml")
    ((loc, msg),) = info.value.problems
    assert loc == section
    assert msg.startswith("`name` must be one of ")
    assert msg.endswith(f", but got {name!r}") if name else msg.endswith("(it is missing)")


@pytest.mark.parametrize("key", ["class", "module", "import", "cls", "target", "_target_"])
@pytest.mark.parametrize("section", ["sampler", "pruner"])
def test_import_style_keys_are_unknown(section: str, key: str) -> None:
    data = copy.deepcopy(QUICKSTART)
    data[section] = {"name": "tpe" if section == "sampler" else "median", key: "optuna.samplers.TPESampler"}
    with pytest.raises(StudyFileError) as info:
        validate_study(data, "s.yaml")
    assert info.value.problems == [(f"{section}.{key}", "unknown key")]


@pytest.mark.parametrize("adapter", [SAMPLERS, PRUNERS], ids=["sampler", "pruner"])
def test_callables_are_not_accepted(adapter: TypeAdapter[Any]) -> None:
    name = "tpe" if adapter is SAMPLERS else "median"
    for key in ("gamma", "weights", "constraints_func", "independent_sampler"):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            adapter.validate_python({"name": name, key: "builtins.print"})


# ------------------------------------------------------------------------------------------ ask / tell


def objective(params: dict[str, Any]) -> float:
    """Deterministic: best at learning_rate 1e-3, batch 16, no dropout, no weight decay."""
    return (
        (math.log10(params["learning_rate"]) + 3.0) ** 2
        + abs(params["per_device_train_batch_size"] - 16) / 16
        + params["dropout"]
        + 10 * params["weight_decay"]
    )


DRIVEN: list[tuple[str, dict[str, Any]]] = [
    ("random", {"name": "random", "seed": 0}),
    ("grid", {"name": "grid", "seed": 0}),
    ("tpe", {"name": "tpe", "seed": 0, "n_startup_trials": 2}),  # trials 3-5 come from TPE itself
    ("tpe-multivariate", {"name": "tpe", "seed": 0, "n_startup_trials": 2, "multivariate": True}),
    # GP fitting imports torch and takes seconds: the GP sampler runs its (random) startup trials here only
    ("gp-startup", {"name": "gp", "seed": 0}),
    # CMA-ES and QMC are built and checked above but not driven: their first sample imports scipy.stats
    # (~0.7 s), more than the rest of this file. Add ("cmaes", {"name": "cmaes", "n_startup_trials": 1}) and
    # ("qmc", {"name": "qmc"}) here to drive them too; both pass.
]


@pytest.mark.parametrize("sampler", [d[1] for d in DRIVEN], ids=[d[0] for d in DRIVEN])
def test_built_sampler_runs_on_our_distributions(sampler: dict[str, Any]) -> None:
    cfg = quickstart(sampler, grid=sampler["name"] == "grid")
    dists = to_distributions(cfg.search_space)
    assert list(dists) == ["learning_rate", "per_device_train_batch_size", "dropout", "weight_decay"]
    study = optuna.create_study(direction=cfg.direction, sampler=cfg.sampler.build(cfg.grid()))
    seen: list[tuple[Any, ...]] = []
    for _ in range(5):
        trial = study.ask(dists)
        params = trial.params
        assert set(params) == set(dists)
        for name, value in params.items():
            dist = dists[name]
            assert dist._contains(dist.to_internal_repr(value)), (name, value)
        assert type(params["per_device_train_batch_size"]) is int
        run = cfg.trial_run(params)  # the sampled values make a valid run configuration
        assert run.training.learning_rate == params["learning_rate"]
        assert run.model.dropout == params["dropout"]
        assert run.training.max_steps == 300
        seen.append(tuple(params[k] for k in dists))
        study.tell(trial, objective(params))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert study.best_value == min(objective(t.params) for t in trials)
    if cfg.sampler.name == "grid":
        grid = cfg.grid()
        assert grid is not None
        assert len(set(seen)) == 5  # distinct grid points
        for point in seen:
            assert all(v in grid[k] for k, v in zip(dists, point, strict=True))


def test_grid_sampler_can_be_exhausted_with_ask_tell() -> None:
    grid = {"x": [1, 2], "y": ["a", "b"]}
    sampler = SAMPLERS.validate_python({"name": "grid", "seed": 0}).build(grid)
    dists = {
        "x": optuna.distributions.IntDistribution(1, 2),
        "y": optuna.distributions.CategoricalDistribution(["a", "b"]),
    }
    study = optuna.create_study(sampler=sampler)
    for _ in range(4):
        trial = study.ask(dists)
        study.tell(trial, float(trial.params["x"]))  # the last tell must not call study.stop()
    assert sorted((t.params["x"], t.params["y"]) for t in study.trials) == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]


def test_samplers_with_the_same_seed_repeat_themselves() -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        cfg = quickstart({"name": "tpe", "seed": seed, "n_startup_trials": 2})
        dists = to_distributions(cfg.search_space)
        study = optuna.create_study(direction=cfg.direction, sampler=cfg.sampler.build())
        out = []
        for _ in range(4):
            trial = study.ask(dists)
            out.append(trial.params)
            study.tell(trial, objective(trial.params))
        return out

    assert run(0) == run(0)


# ------------------------------------------------------------------------------------------ known bugs

BUILD_FAILS: list[tuple[str, Callable[[], Any]]] = [
    (
        "cmaes-separable-with-margin",
        lambda: SAMPLERS.validate_python({"name": "cmaes", "use_separable_cma": True, "with_margin": True}),
    ),
    (
        "cmaes-lr-adapt-with-margin",
        lambda: SAMPLERS.validate_python({"name": "cmaes", "lr_adapt": True, "with_margin": True}),
    ),
    (
        "tpe-group-without-multivariate",
        lambda: SAMPLERS.validate_python({"name": "tpe", "group": True, "multivariate": False}),
    ),
    (
        "successive-halving-bootstrap-with-auto",
        lambda: PRUNERS.validate_python({"name": "successive_halving", "bootstrap_count": 2}),
    ),
    (
        "successive-halving-min-resource-0",
        lambda: PRUNERS.validate_python({"name": "successive_halving", "min_resource": 0}),
    ),
    ("hyperband-bootstrap-with-auto", lambda: PRUNERS.validate_python({"name": "hyperband", "bootstrap_count": 2})),
]


@pytest.mark.parametrize("make", [b[1] for b in BUILD_FAILS], ids=[b[0] for b in BUILD_FAILS])
def test_configs_optuna_rejects_are_rejected_when_the_study_file_is_validated(make: Callable[[], Any]) -> None:
    config = make()
    with pytest.raises(ValueError) as built:
        config.build()  # Optuna checks these combinations only in its constructor...
    assert config.refused() == str(built.value).splitlines()[0]  # ...which `refused()` mirrors without Optuna
    section = "sampler" if config.name in SAMPLER_NAMES else "pruner"
    study = copy.deepcopy(QUICKSTART)
    study[section] = config.model_dump()
    with pytest.raises(StudyFileError) as info:  # ...so validation builds them, and says where
        validate_study(study, "study.yaml")
    assert [loc for loc, _ in info.value.problems] == [section]


# Every combination of the arguments Optuna's constructors check together: `refused()` (what `hpo validate`
# asks, without importing Optuna) must say no exactly when the constructor raises.
COMBINATIONS: list[dict[str, Any]] = [
    *({"name": "tpe", "group": g, "multivariate": m} for g in (False, True) for m in (None, False, True)),
    *(
        {"name": "cmaes", "use_separable_cma": a, "with_margin": b, "lr_adapt": c}
        for a in (False, True)
        for b in (False, True)
        for c in (False, True)
    ),
    *(
        {"name": "successive_halving", "min_resource": r, "bootstrap_count": b}
        for r in ("auto", 0, 1, 5)
        for b in (0, 2)
    ),
    *({"name": "hyperband", "max_resource": r, "bootstrap_count": b} for r in ("auto", 1, 100) for b in (0, 2)),
    *({"name": "patient", "patience": 1, "wrapped": w} for w in (None, {"name": "hyperband", "bootstrap_count": 2})),
    {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
    {"name": "threshold", "lower": 1.0, "upper": 1.0},
    {"name": "qmc", "qmc_type": "halton", "scramble": True, "seed": 0},
]


@pytest.mark.parametrize("raw", COMBINATIONS, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_refused_says_no_exactly_when_optunas_constructor_raises(raw: dict[str, Any]) -> None:
    adapter = SAMPLERS if raw["name"] in SAMPLER_NAMES else PRUNERS
    config = adapter.validate_python(raw)
    try:
        config.build()
        raised = None
    except (ValueError, TypeError) as e:
        raised = str(e).splitlines()[0]
    assert config.refused() == raised


def test_categorical_true_next_to_1_is_rejected() -> None:
    # Optuna's CategoricalDistribution stores choices by list.index: a trial that ran `true` would be
    # recorded as 1. Such lists are rejected up front.
    with pytest.raises(ValidationError, match="must be distinct"):
        CategoricalSpec(type="categorical", choices=[1, True])
