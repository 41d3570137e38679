"""Per-task resources on HighThroughputExecutor (issue 13): cores, memory and accelerators
accounted by the interchange and the pool, tasks pinned in the worker, impossible requests
refused or failed, never left waiting.

This machine has no GPU: accelerators are named devices ("fake0"); pinning one means
setting the variables the GPU runtimes read.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from hpcfutures import (
    HighThroughputExecutor,
    Resources,
    ResourceUnsatisfiableError,
    UnsupportedOptionError,
    WorkerLostError,
)
from hpcfutures.providers import LocalProvider

from .htex_helpers import CPUS, needs_two_cpus, overlaps, window

TIMEOUT = 60
@needs_two_cpus
def test_a_two_core_task_is_pinned_and_runs_with_no_default_task_beside_it():
    with HighThroughputExecutor(max_workers=len(CPUS)) as ex:
        ex.submit(window).result(TIMEOUT)  # the pool is up
        before = [ex.submit(window, 0.05) for _ in range(6)]
        big = ex.options(resources=Resources(cores=len(CPUS))).submit(window, 0.4)
        after = [ex.submit(window, 0.05) for _ in range(6)]
        got = big.result(TIMEOUT)
        plain = [f.result(TIMEOUT) for f in before + after]
    assert got["cpus"] == tuple(CPUS) and got["omp"] == got["cores"] == str(len(CPUS))
    assert not [p for p in plain if overlaps(p, got)], "a default task ran while every core was held"
    assert all(p["omp"] is None for p in plain), "default tasks are not pinned"


def test_accelerators_are_given_to_one_task_at_a_time():
    with HighThroughputExecutor(max_workers=4, available_accelerators=["fake0", "fake1"]) as ex:
        gpu = ex.options(resources=Resources(gpus=1))
        runs = [f.result(TIMEOUT) for f in [gpu.submit(window, 0.1) for _ in range(6)]]
        both = ex.options(resources=Resources(gpus=2)).submit(window).result(TIMEOUT)
    assert {r["gpus"] for r in runs} <= {"fake0", "fake1"} and all(r["rocr"] == r["gpus"] for r in runs)
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            assert not (a["gpus"] == b["gpus"] and overlaps(a, b)), f"two tasks held {a['gpus']} at once"
    assert sorted(both["gpus"].split(",")) == ["fake0", "fake1"]


def test_a_task_without_accelerators_sees_none_even_on_a_worker_that_has_one():
    with HighThroughputExecutor(available_accelerators=["fake0"]) as ex:
        assert ex.submit(window).result(TIMEOUT)["gpus"] == "fake0"  # the worker's own
        two = ex.options(resources=Resources(cores=1, memory_gb=0.01)).submit(window).result(TIMEOUT)
    assert two["gpus"] is None


def test_what_the_settings_rule_out_is_refused_when_the_view_is_made():
    provider = LocalProvider()
    provider.cores_per_node = 2
    ex = HighThroughputExecutor(provider=provider, available_accelerators=["fake0"])
    with pytest.raises(ResourceUnsatisfiableError, match=r"cores=3\) can never run: .*cores_per_node=2"):
        ex.options(resources=Resources(cores=3))
    with pytest.raises(ResourceUnsatisfiableError, match=r"gpus=2\) can never run: .*names 1 \(fake0\)"):
        ex.options(resources=Resources(gpus=2))
    with pytest.raises(ResourceUnsatisfiableError, match="available_accelerators is empty"):
        HighThroughputExecutor().options(resources=Resources(gpus=1))
    with pytest.raises(UnsupportedOptionError, match="one node with one process"):
        ex.options(resources=Resources(num_nodes=2))
    ex.shutdown()


def test_a_task_no_registered_pool_can_run_fails_within_the_bound():
    with HighThroughputExecutor(max_workers=1, unsatisfiable_after=1.0) as ex:
        ex.submit(window).result(TIMEOUT)
        doomed = ex.options(resources=Resources(cores=len(CPUS) + 1)).submit(window)
        fine = ex.submit(window)
        error = doomed.exception(TIMEOUT)
        assert fine.result(TIMEOUT)["omp"] is None
    assert isinstance(error, ResourceUnsatisfiableError)
    assert f"cores={len(CPUS) + 1}" in str(error) and f"{len(CPUS)} core" in str(error)


def kill_own_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@needs_two_cpus
def test_a_worker_dying_under_a_task_gives_its_cores_back():
    with HighThroughputExecutor(max_workers=len(CPUS), lost_task_retries=0) as ex:
        whole = ex.options(resources=Resources(cores=len(CPUS)))
        with pytest.raises(WorkerLostError):
            whole.submit(kill_own_worker).result(TIMEOUT)
        assert whole.submit(window).result(TIMEOUT)["cpus"] == tuple(CPUS)
        assert ex.submit(window).result(TIMEOUT)["omp"] is None


@needs_two_cpus
def test_a_large_task_is_not_starved_by_a_stream_of_small_ones():
    with HighThroughputExecutor(max_workers=len(CPUS)) as ex:
        ex.submit(window).result(TIMEOUT)
        first = [ex.submit(window, 0.01) for _ in range(50)]
        big = ex.options(resources=Resources(cores=len(CPUS))).submit(window)
        later: list[Any] = []
        while not big.done() and len(later) < 5000:  # keep small tasks coming while it waits
            later.extend(ex.submit(window, 0.001) for _ in range(20))
            time.sleep(0.01)
        assert big.result(TIMEOUT)["cpus"] == tuple(CPUS)
        for f in first + later:
            f.result(TIMEOUT)
    assert len(later) < 5000, "the two-core task waited for the whole stream"


def test_a_queued_task_with_resources_can_be_cancelled():
    with HighThroughputExecutor(max_workers=1) as ex:
        ex.submit(window).result(TIMEOUT)
        blocker = ex.submit(window, 1.0)
        queued = ex.options(resources=Resources(cores=1, memory_gb=0.01)).submit(window)
        assert queued.cancel()
        assert blocker.result(TIMEOUT)["omp"] is None
        assert queued.cancelled()


def test_a_shared_accelerator_takes_as_many_tasks_as_allowed_and_no_more():
    with HighThroughputExecutor(max_workers=3, available_accelerators=["fake0"], tasks_per_accelerator=2) as ex:
        gpu = ex.options(resources=Resources(gpus=1))
        runs = [f.result(TIMEOUT) for f in [gpu.submit(window, 0.3) for _ in range(6)]]
    assert {r["gpus"] for r in runs} == {"fake0"}
    most = max(sum(1 for b in runs if b["start"] <= a["start"] < b["end"]) for a in runs)
    assert most <= 2, "more tasks shared the accelerator than tasks_per_accelerator allows"
    assert most == 2, "two tasks never shared the accelerator"


def hog(megabytes: int) -> int:
    """Allocate and touch ``megabytes`` of memory."""
    data = bytearray(megabytes << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1
    return len(data) >> 20


def test_enforce_memory_ends_a_task_that_uses_more_than_it_asked_for():
    from hpcfutures.executors.htex import memlimit

    why = memlimit.unavailable()
    if why is not None:
        pytest.skip(why)
    with HighThroughputExecutor(max_workers=2, enforce_memory=True) as ex:
        small = ex.options(resources=Resources(memory_gb=0.25))
        assert small.submit(hog, 64).result(TIMEOUT) == 64
        error = small.submit(hog, 512).exception(TIMEOUT)
        assert small.submit(hog, 64).result(TIMEOUT) == 64, "the pool goes on with a new worker"
        assert ex.submit(hog, 400).result(TIMEOUT) == 400, "a task without memory_gb is not limited"
    assert isinstance(error, WorkerLostError)
    assert "out-of-memory killer" in str(error) and "memory_gb=0.25" in str(error)
    assert error.signal_name == "SIGKILL"
    leftovers = [p.name for p in memlimit._own_cgroup().iterdir() if p.name.startswith("hpcfutures-")]  # type: ignore[union-attr]
    assert not leftovers, f"memory cgroups left behind: {leftovers}"


@pytest.mark.parametrize("round_", range(2))
def test_thousands_of_mixed_tasks_with_cancels_all_end_and_give_everything_back(round_):
    """Default, multi-core and accelerator tasks at scale, some cancelled while queued: every
    future ends, no two tasks ever hold the same accelerator, and the pool is whole after."""
    import random

    rng = random.Random(round_)
    cores = min(2, len(CPUS))
    with HighThroughputExecutor(max_workers=cores, available_accelerators=["fake0", "fake1"]) as ex:
        views = {
            "one": ex,
            "node": ex.options(resources=Resources(cores=cores)),
            "gpu": ex.options(resources=Resources(gpus=1)),
            "gpus": ex.options(resources=Resources(gpus=2)),
        }
        kinds = rng.choices(list(views), weights=[80, 8, 8, 4], k=1500)
        futures = [(kind, views[kind].submit(window, 0.0005)) for kind in kinds]
        cancelled = {i for i in range(0, len(futures), 7) if futures[i][1].cancel()}
        runs = []
        for i, (kind, fut) in enumerate(futures):
            if i in cancelled:
                assert fut.cancelled()
                continue
            runs.append((kind, fut.result(TIMEOUT)))
        # Afterwards a task can still take every core and both accelerators.
        whole = ex.options(resources=Resources(cores=cores, gpus=2)).submit(window).result(TIMEOUT)
    assert whole["cpus"] == tuple(CPUS[:cores]) or len(whole["cpus"]) == cores
    assert sorted(whole["gpus"].split(",")) == ["fake0", "fake1"]
    held = [(r["gpus"].split(","), r) for kind, r in runs if kind in ("gpu", "gpus")]
    for i, (names, a) in enumerate(held):
        for other, b in held[i + 1 :]:
            if set(names) & set(other):
                assert not (a["start"] < b["end"] and b["start"] < a["end"]), "an accelerator was held twice"
    assert all(r["cpus"] and len(r["cpus"]) == cores for kind, r in runs if kind == "node")
