"""The executor-level worker settings Parsl users know (issue 13): cores_per_worker,
mem_per_worker, available_accelerators and cpu_affinity, run on real local pools.

This machine has no GPU: accelerators are named devices ("fake0"), which is all a worker's
pinning deals with (it sets the variables the GPU runtimes read).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from hpcfutures import ConfigurationError, HighThroughputExecutor, PoolStartError

TIMEOUT = 60
CPUS = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to pin two workers apart")


def probe(_: Any = None) -> tuple[str | None, tuple[int, ...], str | None, str | None, str | None]:
    """What a task sees: its worker's rank, CPUs, accelerator and thread count."""
    return (
        os.environ.get("HPCFUTURES_WORKER_RANK"),
        tuple(sorted(os.sched_getaffinity(0))),
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        os.environ.get("ZE_AFFINITY_MASK"),
        os.environ.get("OMP_NUM_THREADS"),
    )


def seen_by_workers(ex: HighThroughputExecutor, workers: int) -> dict[str, tuple[Any, ...]]:
    """Run probes until every one of ``workers`` workers has answered; what each saw, by rank."""
    seen: dict[str, tuple[Any, ...]] = {}
    deadline = time.monotonic() + TIMEOUT  # a worker may become ready seconds after another
    while len(seen) < workers and time.monotonic() < deadline:
        for rank, *rest in ex.map(probe, range(4 * workers), timeout=TIMEOUT):
            assert rank is not None
            seen[rank] = tuple(rest)
    return seen


def test_each_worker_sees_only_its_own_accelerator():
    with HighThroughputExecutor(available_accelerators=["fake0", "fake1"]) as ex:
        seen = seen_by_workers(ex, 2)
    assert {rank: gpu for rank, (_cpus, gpu, ze, _omp) in seen.items()} == {"0": "fake0", "1": "fake1"}
    assert all(ze == gpu for _cpus, gpu, ze, _omp in seen.values())
    assert all(omp is None for *_rest, omp in seen.values()), "unpinned workers leave OMP_NUM_THREADS alone"


def test_an_accelerator_count_names_them_0_to_n_minus_1_and_caps_the_workers():
    with HighThroughputExecutor(max_workers=4, available_accelerators=1) as ex:
        seen = seen_by_workers(ex, 1)
        assert ex.submit(probe).result(TIMEOUT)[0] == "0"
    assert list(seen) == ["0"] and seen["0"][1] == "0"


@two_cpus
@pytest.mark.parametrize("mode", ["block", "alternating", "block-reverse"])
def test_pinned_workers_run_on_disjoint_cpus(mode):
    with HighThroughputExecutor(max_workers=2, cpu_affinity=mode) as ex:
        seen = seen_by_workers(ex, 2)
    cpus = {rank: cpus for rank, (cpus, _gpu, _ze, _omp) in seen.items()}
    assert len(cpus["0"]) == len(cpus["1"]) == len(CPUS) // 2
    assert not set(cpus["0"]) & set(cpus["1"]), f"workers share CPUs: {cpus}"
    assert all(omp == str(len(CPUS) // 2) for *_rest, omp in seen.values())
    first = CPUS[-1] if mode == "block-reverse" else CPUS[0]
    assert first in cpus["0"]


@two_cpus
def test_cores_per_worker_gives_each_worker_its_cores():
    with HighThroughputExecutor(cores_per_worker=len(CPUS), cpu_affinity="block") as ex:
        seen = seen_by_workers(ex, 1)
    assert list(seen) == ["0"] and seen["0"][0] == tuple(CPUS)
    assert seen["0"][3] == str(len(CPUS))


def test_the_pool_cpus_can_be_narrowed_from_the_environment(monkeypatch):
    monkeypatch.setenv("HPCFUTURES_POOL_CPUS", str(CPUS[0]))
    with HighThroughputExecutor(cpu_affinity="block") as ex:
        seen = seen_by_workers(ex, 1)
    assert seen == {"0": ((CPUS[0],), None, None, "1")}


def test_a_pool_that_cannot_honour_its_settings_is_refused_with_its_reason():
    with HighThroughputExecutor(max_workers=len(CPUS) + 2, cpu_affinity="block", start_timeout=20) as ex:
        with pytest.raises(PoolStartError, match=r"cpu_affinity='block' cannot pin \d+ workers to \d+ CPUs"):
            ex.submit(probe).result(TIMEOUT)
    with HighThroughputExecutor(mem_per_worker=1e6, start_timeout=20) as ex:
        with pytest.raises(PoolStartError, match=r"mem_per_worker=1e\+06 GB is more than the pool's"):
            ex.submit(probe).result(TIMEOUT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores_per_worker": 0}, "cores_per_worker must be"),
        ({"cores_per_worker": True}, "cores_per_worker must be"),
        ({"mem_per_worker": -1}, "mem_per_worker must be"),
        ({"available_accelerators": ["a", "a"]}, "available_accelerators must be distinct"),
        ({"available_accelerators": "gpu0"}, "available_accelerators must be a count or a list"),
        ({"available_accelerators": -1}, "available_accelerators must be"),
        ({"cpu_affinity": "diagonal"}, "cpu_affinity must be one of"),
    ],
    ids=repr,
)
def test_bad_worker_settings_fail_in_the_constructor(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        HighThroughputExecutor(**kwargs)


def test_cores_per_worker_beyond_the_providers_nodes_fails_in_the_constructor():
    from hpcfutures.providers import LocalProvider

    provider = LocalProvider()
    provider.cores_per_node = 2
    with pytest.raises(ConfigurationError, match="cores_per_worker=4 is more than the provider's cores_per_node=2"):
        HighThroughputExecutor(provider=provider, cores_per_worker=4)
