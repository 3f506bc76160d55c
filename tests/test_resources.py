"""Worker planning: workers x threads never exceed the cores; one worker per GPU, pinned."""

from __future__ import annotations

import pytest

from hpo import resources
from hpo.config import ResourcesSection
from hpo.resources import Gpu, plan_workers


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def set_machine(cores: int, gpus: int = 0) -> None:
        monkeypatch.setattr(resources, "cpu_cores", lambda: cores)
        monkeypatch.setattr(resources, "detect_gpus", lambda: [Gpu(i, "H200", 143_000) for i in range(gpus)])

    return set_machine


@pytest.mark.parametrize(
    ("cores", "res", "expected"),
    [
        (2, {}, (2, 1)),  # auto: one 1-thread worker per core
        (16, {}, (16, 1)),
        (2, {"threads_per_worker": 2}, (1, 2)),
        (8, {"workers": 2}, (2, 1)),
        (2, {"workers": 4, "threads_per_worker": 2}, (2, 1)),  # more than the cores: capped to fit
        (4, {"workers": 2, "threads_per_worker": 2}, (2, 2)),
    ],
)
def test_cpu_plans_never_oversubscribe(machine, cores: int, res: dict, expected: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    machine(cores)
    specs = plan_workers(ResourcesSection(**res))
    assert (len(specs), specs[0].threads) == expected
    assert len(specs) * specs[0].threads <= cores
    for s in specs:
        assert s.device_label == "cpu" and s.env["CUDA_VISIBLE_DEVICES"] == ""
        assert s.env["OMP_NUM_THREADS"] == str(s.threads) and s.env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_max_workers_caps_the_plan(machine) -> None:  # type: ignore[no-untyped-def]
    machine(16)
    assert len(plan_workers(ResourcesSection(), max_workers=3)) == 3


def test_one_worker_per_gpu_pinned(machine) -> None:  # type: ignore[no-untyped-def]
    machine(16, gpus=4)
    specs = plan_workers(ResourcesSection())
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1", "2", "3"]
    assert [s.device_label for s in specs] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert all(s.threads == 4 for s in specs)  # the cores are shared out


def test_selected_gpus_and_missing_gpu(machine) -> None:  # type: ignore[no-untyped-def]
    machine(8, gpus=4)
    specs = plan_workers(ResourcesSection(devices=[0, 2]))
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "2"]
    with pytest.raises(ValueError, match=r"no CUDA device \[7\]"):
        plan_workers(ResourcesSection(devices=[7]))


def test_devices_cpu_ignores_gpus(machine) -> None:  # type: ignore[no-untyped-def]
    machine(2, gpus=2)
    assert {s.device_label for s in plan_workers(ResourcesSection(devices="cpu"))} == {"cpu"}


def test_gpus_per_trial_groups_gpus(machine) -> None:  # type: ignore[no-untyped-def]
    machine(16, gpus=4)
    specs = plan_workers(ResourcesSection(gpus_per_trial=2))
    assert [(s.env["CUDA_VISIBLE_DEVICES"], s.processes) for s in specs] == [("0,1", 2), ("2,3", 2)]
    with pytest.raises(ValueError, match="8 GPUs per trial, but the machine has 4"):
        plan_workers(ResourcesSection(gpus_per_trial=8))


def test_trials_per_gpu_shares_each_gpu(machine) -> None:  # type: ignore[no-untyped-def]
    machine(8, gpus=2)
    specs = plan_workers(ResourcesSection(trials_per_gpu=3))
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "0", "0", "1", "1", "1"]
    assert all(s.threads == 1 for s in specs)  # 8 cores over 6 workers


def test_multi_process_trials_on_cpu_use_one_thread_per_rank(machine) -> None:  # type: ignore[no-untyped-def]
    machine(4)
    specs = plan_workers(ResourcesSection(gpus_per_trial=2))
    assert [(s.processes, s.threads) for s in specs] == [(2, 1), (2, 1)]
