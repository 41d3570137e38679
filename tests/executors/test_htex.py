"""HighThroughputExecutor on the local provider: conformance, options, environment, security."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import psutil
import pytest

from hpcfutures import (
    BrokenExecutorError,
    HighThroughputExecutor,
    PoolStartError,
    RemoteTraceback,
    Resources,
    SerializationError,
    TaskTimeoutError,
    UnsupportedOptionError,
)
from hpcfutures.errors import ConfigurationError
from hpcfutures.providers import LocalProvider
from hpcfutures.testing import Gate, Recorder, conformance_suite, faults
from hpcfutures.testing.tasks import ConformanceError

from .htex_helpers import assert_all_gone, descendants, fake_pool, fake_results, pool_key

TestHtexConformance = conformance_suite(lambda: HighThroughputExecutor(max_workers=2), workers=2)


@pytest.fixture
def htex():
    before = descendants()
    ex = HighThroughputExecutor(max_workers=2)
    yield ex
    ours = descendants() - before
    ex.terminate()
    assert_all_gone(ours)


def raise_conformance(message: str) -> None:
    raise ConformanceError(message)


def test_exception_keeps_type_and_carries_remote_traceback(htex):
    with pytest.raises(ConformanceError, match="deliberate") as info:
        htex.submit(raise_conformance, "deliberate").result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_conformance" in str(cause)
    assert "worker.py" in str(cause)


def test_workers_see_rank_count_pool_and_block(htex):
    with Gate() as gate:
        futures = [htex.submit(faults.report_pid_then, gate.wait, os.devnull) for _ in range(2)]
        gate.wait_entered(2, timeout=30)
        gate.open()
        [f.result(timeout=30) for f in futures]
    seen = [htex.submit(faults.worker_identity).result(timeout=30) for _ in range(10)]
    env = [s["env"] for s in seen]
    assert {e["HPCFUTURES_WORKER_COUNT"] for e in env} == {"2"}
    assert {e["HPCFUTURES_WORKER_RANK"] for e in env} <= {"0", "1"}
    assert {e["HPCFUTURES_BLOCK_ID"] for e in env} == {"0"}
    (pool_id,) = {e["HPCFUTURES_POOL_ID"] for e in env}
    assert pool_id in htex.pools


def test_walltime_kills_the_task_and_its_children_and_the_pool_recovers(htex, tmp_path):
    child_file = tmp_path / "child.pid"
    with Gate() as gate:
        future = htex.options(walltime=1.0).submit(faults.spawn_child_then, gate.wait, str(child_file))
        with pytest.raises(TaskTimeoutError, match="walltime of 1 s"):
            future.result(timeout=30)
        child = int(child_file.read_text())
        assert_all_gone({child})
    assert htex.submit(pow, 3, 4).result(timeout=30) == 81


def test_priority_orders_the_queue():
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate, Recorder() as recorder:
        blocker = ex.submit(gate.wait)
        gate.wait_entered(1, timeout=30)
        low = [ex.options(priority=0).submit(recorder.record, f"low{i}") for i in range(3)]
        high = [ex.options(priority=5).submit(recorder.record, f"high{i}") for i in range(3)]
        gate.open()
        blocker.result(timeout=30)
        [f.result(timeout=30) for f in low + high]
        assert recorder.values == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_options_reject_what_htex_cannot_honour(htex):
    with pytest.raises(UnsupportedOptionError, match="num_nodes=2"):  # cores=4 is taken since issue 13
        htex.options(resources=Resources(num_nodes=2))
    with pytest.raises(UnsupportedOptionError, match="gpus=1"):  # no accelerators named
        htex.options(resources=Resources(gpus=1))
    with pytest.raises(ConfigurationError, match="walltime"):
        htex.options(walltime=-1)


def test_an_unpicklable_argument_fails_in_submit_naming_it(htex):
    with pytest.raises(SerializationError, match="positional argument 1"):
        htex.submit(faults.sleep_then, 0, threading.Lock())
    with pytest.raises(SerializationError, match="keyword argument 'value'"):
        htex.submit(faults.sleep_then, 0, value=threading.Lock())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": "2"}, "max_workers"),
        ({"provider": object()}, "provider"),
        ({"prefetch": -1}, "prefetch"),
        ({"heartbeat_period": 0}, "heartbeat_period"),
        ({"heartbeat_period": 5, "heartbeat_threshold": 2}, "heartbeat_threshold"),
        ({"initializer": 3}, "initializer"),
        ({"label": ""}, "label"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        HighThroughputExecutor(**kwargs)


def test_initializer_runs_in_every_worker():
    with HighThroughputExecutor(
        max_workers=2, initializer=faults.set_env, initargs=("HPCF_INIT", "yes")
    ) as ex:
        assert set(ex.map(faults.get_env, ["HPCF_INIT"] * 8)) == {"yes"}


def test_failing_initializer_breaks_the_executor_with_its_traceback():
    before = descendants()
    ex = HighThroughputExecutor(max_workers=1, initializer=faults.failing_initializer)
    future = ex.submit(pow, 2, 2)
    error = future.exception(timeout=30)
    assert isinstance(error, PoolStartError)
    assert "initializer" in str(error)
    assert "missing license file" in str(error.__cause__)
    with pytest.raises(BrokenExecutorError):
        ex.submit(pow, 2, 2)
    ex.shutdown()
    assert_all_gone(descendants() - before)


def test_run_dir_keeps_component_logs_and_private_keys(tmp_path):
    with HighThroughputExecutor(max_workers=1, run_dir=tmp_path) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32
        key_dir = Path(ex.key_dir)
        assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
        for key_file in key_dir.iterdir():
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (run,) = tmp_path.iterdir()
    assert (run / "interchange.log").exists()
    assert (run / "pool-0.log").exists()


def test_without_run_dir_nothing_is_left_on_disk():
    ex = HighThroughputExecutor(max_workers=1)
    ex.submit(pow, 1, 1).result(timeout=30)
    key_dir = Path(ex.key_dir)
    ex.shutdown()
    assert not key_dir.exists()
    assert not key_dir.parent.exists()


def test_several_local_pools_share_the_work():
    with HighThroughputExecutor(max_workers=1, provider=LocalProvider(init_blocks=3, max_blocks=3)) as ex:
        with Gate() as gate:
            futures = [ex.submit(faults.report_pid_then, gate.wait, os.devnull) for _ in range(3)]
            gate.wait_entered(3, timeout=60)  # three one-worker pools are busy at once
            gate.open()
            pids = {f.result(timeout=30) for f in futures}
        assert len(pids) == 3
        assert len(ex.pools) == 3
        assert sorted(ex.map(pow, range(50), [2] * 50)) == sorted(i * i for i in range(50))


def test_remote_pools_over_curve_work():
    ex = HighThroughputExecutor(max_workers=1)
    ex._force_tcp = True  # run the pool as if it were on another node: TCP with CurveZMQ
    with ex:
        assert ex.submit(pow, 2, 9).result(timeout=30) == 512


@pytest.mark.parametrize("how", ["no keys over tcp", "own keys over tcp", "no token over the local socket"])
def test_a_process_without_the_keys_can_neither_register_nor_inject_results(htex, how):
    with Gate() as gate:
        future = htex.submit(faults.report_pid_then, gate.wait, os.devnull)
        gate.wait_entered(1, timeout=30)
        endpoints = htex.endpoints
        if how == "no keys over tcp":
            ctx, sock = fake_pool(endpoints["tcp"])
        elif how == "own keys over tcp":
            import zmq

            public, secret = zmq.curve_keypair()
            server = pool_key(htex)["server"]
            ctx, sock = fake_pool(
                endpoints["tcp"],
                curve={"public": public.decode(), "secret": secret.decode(), "server": server},
            )
        else:
            ctx, sock = fake_pool(endpoints["ipc"], token="guess")
        try:
            assert not sock.poll(1500), "the interchange answered a peer without the keys"
            fake_results(sock, [future.task_id], "forged")
            assert len(htex.pools) == 1
            gate.open()
            assert future.result(timeout=30) != "forged"
            assert htex.submit(pow, 2, 3).result(timeout=30) == 8
        finally:
            ctx.destroy(linger=0)


def test_processes_run_with_the_drivers_python(htex):
    import sys

    assert htex.submit(faults.python_version).result(timeout=30) == sys.version
    assert psutil.Process().children()  # the interchange and the pool are our children


def test_large_buffers_travel_through_shared_memory_and_are_cleaned_up(htex):
    from hpcfutures.testing.tasks import identity

    payloads = [b"b" * (1 << 20), bytearray(b"a" * (600 << 10)), memoryview(b"m" * (300 << 10))]
    results = [htex.submit(identity, p).result(timeout=30) for p in payloads]
    assert results[0] == payloads[0] and type(results[0]) is bytes
    assert results[1] == payloads[1] and type(results[1]) is bytearray
    assert bytes(results[2]) == bytes(payloads[2]) and type(results[2]) is memoryview
    spill = htex._space.spill
    if spill is None:
        pytest.skip("no writable /dev/shm here: large buffers travel as frames")
    assert os.listdir(spill.directory) == []  # every argument and result file was removed
    directory = spill.directory
    htex.shutdown()
    assert not os.path.exists(directory)


def test_a_burst_after_short_tasks_spreads_over_all_workers(htex):
    # Short tasks let a worker take many tasks at once; a burst that follows must still
    # reach every idle worker rather than queue behind one.
    assert sum(htex.map(pow, range(200), [2] * 200)) == sum(i * i for i in range(200))
    with Gate() as gate:
        futures = [htex.submit(faults.report_pid_then, gate.wait, os.devnull) for _ in range(4)]
        gate.wait_entered(2, timeout=30)  # both workers hold one of the burst
        gate.open()
        assert len({f.result(timeout=30) for f in futures}) == 2


def test_more_data_than_the_pipes_hold_travels_intact_both_ways(htex):
    # 64 payloads of 200 KiB (under the shared-memory threshold, so they travel in messages)
    # are ~12 MiB, far more than a 1 MiB pipe or socket buffer holds: every link's sender
    # has to queue and finish writing when the reader makes room.
    from hpcfutures.testing.tasks import identity

    payloads = [bytes([i]) * (200 << 10) for i in range(64)]
    futures = [htex.submit(identity, p) for p in payloads]
    assert [f.result(timeout=60) for f in futures] == payloads
