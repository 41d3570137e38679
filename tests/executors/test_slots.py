"""Slots (issue 13): pool shapes, needs, the interchange's ledger and placing, the pool's
allocator and the worker's pinning, tested as the pure code they are."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from hpcfutures import ConfigurationError, Resources
from hpcfutures.executors.htex.slots import (
    Allocation,
    Allocator,
    Ledger,
    Need,
    PoolShape,
    accelerator_names,
    detect_shape,
    parse_cpu_list,
    pinning_environment,
    place,
    plan_workers,
    shortfall,
    unsatisfiable,
    worker_environment,
)


def shape(cores: int = 4, memory: float | None = 16.0, gpus: tuple[str, ...] = (), per_gpu: int = 1) -> PoolShape:
    return PoolShape(tuple(range(cores)), memory, gpus, per_gpu, "node")


# -- shapes and needs -----------------------------------------------------------------------------


def test_cpu_lists_read_as_linux_writes_them():
    assert parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpu_list("3,1,1") == (1, 3)
    for bad in ["", "a", "3-1", "-1", "1-", ","]:
        with pytest.raises(ConfigurationError, match="CPU list"):
            parse_cpu_list(bad)


def test_accelerators_by_count_or_name():
    assert accelerator_names(3) == ("0", "1", "2")
    assert accelerator_names(["fake0", "fake1"]) == ("fake0", "fake1")
    for bad in [-1, "gpu0", ["a", "a"], ["a,b"], [""], [1]]:
        with pytest.raises(ConfigurationError, match="accelerators"):
            accelerator_names(bad)  # type: ignore[arg-type]


def test_detect_shape_takes_the_affinity_set_or_an_override():
    found = detect_shape(memory_gb=2.0)
    assert found.cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert detect_shape(memory_gb=2.0, environ={"HPCFUTURES_POOL_CPUS": "0-1,5"}).cpus == (0, 1, 5)
    assert detect_shape(cpus="2-3", memory_gb=1.0, accelerators=2).gpus == ("0", "1")
    assert detect_shape().memory_gb is not None and detect_shape().memory_gb > 0  # 90% of what is free


def test_a_shape_travels_as_json_and_malformed_shapes_are_refused():
    original = shape(gpus=("fake0", "fake1"), per_gpu=2)
    assert PoolShape.from_json(json.loads(json.dumps(original.to_json()))) == original
    good = original.to_json()
    bad_values = {
        "cpus": [[], [-1], [1, 1], "0-3", [True], [1 << 40], None],
        "memory_gb": [0, -1, float("nan"), True, "16"],
        "gpus": [[""], [1], "0", None],
        "tasks_per_gpu": [0, True, 1.5, None],
        "host": [None, 3],
    }
    for name, values in bad_values.items():
        for value in values:
            with pytest.raises(ValueError):
                PoolShape.from_json({**good, name: value})
    with pytest.raises(ValueError):
        PoolShape.from_json([1, 2])


def test_random_json_never_breaks_shape_parsing():
    rng = random.Random(13)
    atoms = [None, True, 0, -1, 2, 1.5, float("inf"), "", "x", [], {}, [0, 1], ["a"]]
    keys = ["cpus", "memory_gb", "gpus", "tasks_per_gpu", "host", "other"]
    for _ in range(3000):
        data = {rng.choice(keys): rng.choice(atoms) for _ in range(rng.randrange(6))}
        try:
            PoolShape.from_json(data)
        except ValueError:
            pass


def test_need_of_resources_and_what_can_never_fit():
    assert Need.of(Resources()).plain
    need = Need.of(Resources(cores=2, memory_gb=4, gpus=1))
    assert (need.cores, need.memory_gb, need.gpus, need.plain) == (2, 4.0, 1, False)
    assert shortfall(Need(cores=5), shape()) == "cores=5"
    assert shortfall(Need(memory_gb=32), shape()) == "memory_gb=32"
    assert shortfall(Need(memory_gb=1), shape(memory=None)) == "memory_gb=1"
    assert shortfall(Need(gpus=1), shape()) == "gpus=1"
    assert shortfall(Need(cores=4, memory_gb=16, gpus=2), shape(gpus=("a", "b"))) is None


def test_unsatisfiable_names_the_field_and_the_largest_shape():
    small, large = shape(cores=2), shape(cores=8, gpus=("fake0",))
    assert unsatisfiable(Need(cores=8), [small, large]) is None
    assert unsatisfiable(Need(cores=8), []) is None  # no shape known yet: cannot tell
    message = unsatisfiable(Need(cores=9), [small, large])
    assert message is not None and "cores=9" in message and "8 cores" in message and "GPUs fake0" in message
    message = unsatisfiable(Need(gpus=2), [small, large])
    assert message is not None and "gpus=2" in message


# -- the interchange's ledger and placing ---------------------------------------------------------


def test_a_ledger_reserves_and_releases():
    ledger = Ledger(shape(cores=4, memory=8.0, gpus=("g0",), per_gpu=2))
    assert not ledger.fits(Need(gpus=2)), "two GPUs are two devices, even when a device is shared"
    assert ledger.fits(Need(cores=4, memory_gb=8, gpus=1))
    assert ledger.reserve(1, Need(cores=3, memory_gb=6, gpus=1)) == ("g0",)
    assert not ledger.fits(Need(cores=2))
    assert not ledger.fits(Need(memory_gb=3))
    assert ledger.fits(Need(cores=1, memory_gb=2, gpus=1))
    assert ledger.release(1) and not ledger.release(1)
    assert (ledger.free_cores, ledger.free_memory_gb, ledger.gpu_load) == (4, 8.0, {"g0": 0})


def test_place_goes_in_order_to_the_tightest_fit():
    ledgers = {"a": Ledger(shape(cores=4)), "b": Ledger(shape(cores=2))}
    placed, held = place([(1, Need(cores=2)), (2, Need(cores=4)), (3, Need(cores=1))], ledgers, {})
    assert placed == [(1, "b"), (2, "a")] and held == set()  # 3 fits nowhere now
    assert ledgers["a"].free_cores == 0 and ledgers["b"].free_cores == 0


def test_a_large_task_is_passed_a_bounded_number_of_times_then_its_pools_are_held():
    ledgers = {"a": Ledger(shape(cores=4))}
    ledgers["a"].reserve(100, Need(cores=1))  # a running small task: the large one does not fit
    passes: dict[int, int] = {}
    small = [(i, Need(cores=1)) for i in range(2, 20)]
    for round_ in range(3):
        placed, held = place([(1, Need(cores=4)), *small], ledgers, passes, max_passes=2)
        for task_id, key in placed:
            ledgers[key].release(task_id)  # the small tasks end at once
        small = [(i + 100 * (round_ + 1), n) for i, n in small]
    assert passes[1] >= 2 and held == {"a"}
    placed, held = place([(1, Need(cores=4)), (500, Need(cores=1))], ledgers, passes, max_passes=2)
    assert placed == [] and held == {"a"}, "once held, no small task may take the pool"
    ledgers["a"].release(100)
    placed, held = place([(1, Need(cores=4)), (501, Need(cores=1))], ledgers, passes, max_passes=2)
    assert placed == [(1, "a")] and 1 not in passes


# -- the pool's allocator and the worker's pinning ------------------------------------------------


def test_the_ledger_chooses_the_least_loaded_gpus_and_the_allocator_gives_consecutive_cpus():
    pool = PoolShape((0, 1, 2, 3, 5, 6), 8.0, ("fake0", "fake1"), 2, "n")
    alloc, ledger = Allocator(pool), Ledger(pool)
    assert ledger.reserve(1, Need(cores=1, gpus=1)) == ("fake0",)
    first = alloc.take(Need(cores=1, gpus=1), ("fake0",))
    assert first == Allocation((0,), ("fake0",), 0.0)
    assert ledger.reserve(2, Need(cores=3, gpus=1)) == ("fake1",)
    second = alloc.take(Need(cores=3, gpus=1), ("fake1",))
    assert second is not None and second.cpus == (1, 2, 3) and second.gpus == ("fake1",)
    assert alloc.take(Need(cores=3)) is None, "two CPUs are left"
    assert alloc.take(Need(cores=1, gpus=1), ()) is None, "the GPUs must be named"
    third = alloc.take(Need(cores=2, gpus=2, memory_gb=8), ("fake0", "fake1"))
    assert third is not None and third.cpus == (5, 6) and third.gpus == ("fake0", "fake1")
    assert alloc.take(Need(cores=1)) is None
    assert alloc.take(Need(cores=0 + 1, gpus=1), ("fake0",)) is None
    for a in (first, second, third):
        alloc.give_back(a)
    assert alloc.free_cpus == [0, 1, 2, 3, 5, 6] and alloc.free_memory_gb == 8.0
    assert alloc.gpu_load == {"fake0": 0, "fake1": 0}


def test_random_takes_and_returns_keep_the_books_straight():
    rng = random.Random(7)
    pool = PoolShape(tuple(range(16)), 64.0, ("g0", "g1", "g2"), 2, "n")
    alloc = Allocator(pool)
    ledger = Ledger(pool)
    running: dict[int, Allocation] = {}
    for task_id in range(5000):
        if running and rng.random() < 0.5:
            done = rng.choice(list(running))
            alloc.give_back(running.pop(done))
            assert ledger.release(done)
        need = Need(rng.randint(1, 5), rng.choice([0.0, 0.0, 4.0, 16.0]), rng.choice([0, 0, 1, 2]))
        if not ledger.fits(need):
            continue
        chosen = ledger.reserve(task_id, need)
        got = alloc.take(need, chosen)
        assert got is not None, "the pool refused what the interchange's ledger placed"
        running[task_id] = got
        assert len(alloc.free_cpus) == ledger.free_cores and alloc.gpu_load == ledger.gpu_load
        assert abs(alloc.free_memory_gb - ledger.free_memory_gb) < 1e-9
        in_use = [cpu for a in running.values() for cpu in a.cpus]
        assert len(in_use) == len(set(in_use)), "a CPU was given twice"
        assert all(0 <= load <= 2 for load in alloc.gpu_load.values())
    for a in running.values():
        alloc.give_back(a)
    assert alloc.free_cpus == list(range(16)) and abs(alloc.free_memory_gb - 64.0) < 1e-9


def test_pinning_environment_names_what_the_task_got():
    env = pinning_environment(Allocation((2, 3), ("fake1",), 0.0))
    assert env["OMP_NUM_THREADS"] == "2" and env["HPCFUTURES_CPUS"] == "2,3"
    assert env["CUDA_VISIBLE_DEVICES"] == env["ROCR_VISIBLE_DEVICES"] == env["ZE_AFFINITY_MASK"] == "fake1"
    assert "CUDA_VISIBLE_DEVICES" not in pinning_environment(Allocation((0,)))


def test_pinned_sets_and_restores_affinity_and_environment():
    cpus = sorted(os.sched_getaffinity(0))
    last = cpus[-1]
    script = textwrap.dedent(
        f"""
        import json, os
        from hpcfutures.executors.htex.slots import Allocation, pinned
        os.environ["CUDA_VISIBLE_DEVICES"] = "outer"
        before = sorted(os.sched_getaffinity(0))
        with pinned(Allocation(({last},), ("fake1",))):
            inside = [sorted(os.sched_getaffinity(0)), os.environ["OMP_NUM_THREADS"],
                      os.environ["CUDA_VISIBLE_DEVICES"], os.environ["HPCFUTURES_CPUS"]]
        after = [sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"),
                 os.environ["CUDA_VISIBLE_DEVICES"]]
        print(json.dumps([before, inside, after]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    before, inside, after = json.loads(out.stdout)
    assert inside == [[last], "1", "fake1", str(last)]
    assert after == [before, None, "outer"]


# -- a pool's workers, planned from the executor's defaults --------------------------------------


def test_workers_are_counted_as_parsl_counts_them():
    eight = PoolShape(tuple(range(8)), 32.0, (), 1, "n")
    assert len(plan_workers(eight)) == 8
    assert len(plan_workers(eight, max_workers=3)) == 3
    assert len(plan_workers(eight, cores_per_worker=2)) == 4
    assert len(plan_workers(eight, cores_per_worker=0.5)) == 16
    assert len(plan_workers(eight, mem_per_worker=10)) == 3
    gpus = PoolShape(tuple(range(8)), 32.0, ("fake0", "fake1"), 1, "n")
    plans = plan_workers(gpus)
    assert [p.gpus for p in plans] == [("fake0",), ("fake1",)] and all(not p.cpus for p in plans)


def test_affinity_modes_pin_workers_to_disjoint_cpus():
    six = PoolShape((0, 1, 2, 3, 4, 5), 8.0, (), 1, "n")
    assert [p.cpus for p in plan_workers(six, max_workers=3, cpu_affinity="block")] == [(0, 1), (2, 3), (4, 5)]
    assert [p.cpus for p in plan_workers(six, max_workers=3, cpu_affinity="block-reverse")] == [(4, 5), (2, 3), (0, 1)]
    assert [p.cpus for p in plan_workers(six, max_workers=2, cpu_affinity="alternating")] == [(0, 2, 4), (1, 3, 5)]
    assert [p.cpus for p in plan_workers(six, max_workers=2)] == [(), ()]


def test_a_plan_that_cannot_be_honoured_is_refused_naming_the_setting():
    two = PoolShape((0, 1), 4.0, (), 1, "n")
    with pytest.raises(ConfigurationError, match="cpu_affinity='block' cannot pin 4 workers to 2 CPUs"):
        plan_workers(two, max_workers=4, cpu_affinity="block")
    with pytest.raises(ConfigurationError, match="cores_per_worker=3 is more than the pool's 2 CPUs"):
        plan_workers(two, cores_per_worker=3)
    with pytest.raises(ConfigurationError, match="mem_per_worker=8 GB is more than the pool's 4 GB"):
        plan_workers(two, mem_per_worker=8)
    with pytest.raises(ConfigurationError, match="cpu_affinity must be one of"):
        plan_workers(two, cpu_affinity="diagonal")
    assert len(plan_workers(two, max_workers=4)) == 4, "unpinned workers may outnumber the CPUs"
    assert len(plan_workers(two, max_workers=4, cores_per_worker=1)) == 2, "unless cores_per_worker caps them"


def test_a_workers_environment_names_only_what_it_was_given():
    assert worker_environment(Allocation(())) == {}
    gpu_only = worker_environment(Allocation((), ("fake1",)))
    assert gpu_only["CUDA_VISIBLE_DEVICES"] == "fake1" and "OMP_NUM_THREADS" not in gpu_only
    pinned_env = worker_environment(Allocation((0, 1)))
    assert pinned_env["OMP_NUM_THREADS"] == "2" and pinned_env["HPCFUTURES_CPUS"] == "0,1"


def test_shared_accelerators_give_each_device_several_workers_in_turn():
    gpus = PoolShape(tuple(range(8)), 32.0, ("fake0", "fake1"), 2, "n")
    assert [p.gpus for p in plan_workers(gpus)] == [("fake0",), ("fake1",), ("fake0",), ("fake1",)]


# -- MPI tasks: whole nodes, or ranks packed within a node ---------------------------------------


def test_small_mpi_tasks_share_a_node_and_whole_node_tasks_take_empty_ones():
    block = PoolShape((0, 1, 2, 3), None, (), 1, "lead", ("n1", "n2", "n3"))
    ledger = Ledger(block)
    two_ranks = Need(0, 0.0, 0, 1, 2)
    ledger.reserve(1, two_ranks)
    ledger.reserve(2, two_ranks)
    assert ledger.nodes_of(1) == ledger.nodes_of(2) == (0,), "packed onto the fullest node with room"
    ledger.reserve(3, Need(0, 0.0, 0, 2, 4))
    assert ledger.nodes_of(3) == (1, 2)
    assert not ledger.fits(Need(0, 0.0, 0, 1, 1)), "n1 is full and n2, n3 are held whole"
    ledger.release(1)
    assert ledger.fits(Need(0, 0.0, 0, 1, 2)) and not ledger.fits(Need(0, 0.0, 0, 1, 3))
    assert not ledger.fits(Need(0, 0.0, 0, 1, 4)), "four ranks take a whole node, and none is empty"


def test_random_mpi_placements_keep_the_interchange_and_the_lead_pool_in_step():
    from hpcfutures.executors.htex.slots import node_mask

    rng = random.Random(11)
    block = PoolShape((0, 1, 2, 3), None, (), 1, "lead", tuple(f"n{i}" for i in range(6)))
    ledger, alloc = Ledger(block), Allocator(block)
    running: dict[int, Allocation] = {}
    for task_id in range(5000):
        if running and rng.random() < 0.5:
            done = rng.choice(list(running))
            alloc.give_back(running.pop(done))
            assert ledger.release(done)
        need = Need(0, 0.0, 0, rng.choice([1, 1, 1, 2, 3]), rng.choice([1, 2, 3, 4]))
        if not ledger.fits(need):
            continue
        ledger.reserve(task_id, need)
        got = alloc.take(need, (), node_mask(ledger.nodes_of(task_id)))
        assert got is not None, "the lead pool refused nodes the interchange chose"
        running[task_id] = got
        assert alloc.node_used == ledger.node_used and alloc.node_whole == ledger.node_whole
        for i, used in enumerate(alloc.node_used):
            assert 0 <= used <= 4 and not (used and alloc.node_whole[i])
