"""HighThroughputExecutor under failure: killed workers, pools and interchange; broken starts.

Each test asserts what the user sees (the future's outcome and the evidence it carries) and
that no process of the executor is left running afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil
import pytest

from hpcfutures import (
    BrokenExecutorError,
    ExecutorShutdownError,
    HighThroughputExecutor,
    InterchangeLostError,
    PoolStartError,
    VersionMismatchError,
    WorkerLostError,
)
from hpcfutures.providers import LocalProvider
from hpcfutures.testing import Gate, Recorder, faults

from .htex_helpers import assert_all_gone, fake_pool, pool_key


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]



def test_killed_worker_task_runs_again_on_a_new_worker(tmp_path, leak_check):
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        leak_check()
        (first,) = read_pids(pids)
        os.kill(first, signal.SIGKILL)
        gate.wait_entered(2, timeout=30)  # the requeued task reached the gate again
        leak_check()
        gate.open()
        second = future.result(timeout=30)
        assert second != first
        assert read_pids(pids) == [first, second]


def test_a_task_that_keeps_killing_its_worker_fails_with_the_signal(leak_check):
    with HighThroughputExecutor(max_workers=1, lost_task_retries=1) as ex:
        future = ex.submit(faults.kill_self, signal.SIGKILL)
        leak_check()
        error = future.exception(timeout=60)
        assert isinstance(error, WorkerLostError)
        assert "SIGKILL" in str(error)
        assert error.signal_name == "SIGKILL"
        assert "2 time(s)" in str(error)
        assert ex.submit(pow, 2, 3).result(timeout=30) == 8  # the pool replaced the worker


def test_os_exit_in_a_task_reports_the_exit_code(leak_check):
    with HighThroughputExecutor(max_workers=1, lost_task_retries=0) as ex:
        error = ex.submit(faults.exit_now, 7).exception(timeout=60)
        leak_check()
        assert isinstance(error, WorkerLostError)
        assert error.exit_code == 7
        assert "exited with code 7" in str(error)


def pool_of(worker_pid: int) -> int:
    return psutil.Process(worker_pid).ppid()


def test_killed_pool_tasks_are_requeued_to_a_replacement(tmp_path, leak_check):
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        leak_check()
        (worker,) = read_pids(pids)
        pool = pool_of(worker)
        os.kill(pool, signal.SIGKILL)
        gate.wait_entered(2, timeout=60)  # ran again, in a new block's pool
        leak_check()
        gate.open()
        second = future.result(timeout=30)
        assert pool_of(second) != pool
        assert_all_gone({worker, pool})  # the old worker died with its pool


def test_a_silent_pool_is_found_by_heartbeat_and_replaced(tmp_path, leak_check):
    pids = tmp_path / "pids"
    ex = HighThroughputExecutor(max_workers=1, heartbeat_period=0.2, heartbeat_threshold=1.0)
    with ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        leak_check()
        (worker,) = read_pids(pids)
        pool = pool_of(worker)
        os.kill(pool, signal.SIGSTOP)  # alive but silent: no socket event, only missed heartbeats
        gate.wait_entered(2, timeout=60)
        leak_check()
        gate.open()
        assert pool_of(future.result(timeout=30)) != pool


def test_killed_interchange_fails_every_pending_future_with_evidence(leak_check):
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate:
        running = ex.submit(gate.wait)
        gate.wait_entered(1, timeout=30)
        queued = [ex.submit(pow, 2, i) for i in range(5)]
        leak_check()
        interchange = [p for p in psutil.Process().children() if "interchange" in " ".join(p.cmdline())]
        assert len(interchange) == 1
        interchange[0].kill()
        for future in [running, *queued]:
            error = future.exception(timeout=30)
            assert isinstance(error, InterchangeLostError)
            assert "SIGKILL" in str(error)
        with pytest.raises(BrokenExecutorError):
            ex.submit(pow, 2, 2)
    ex.shutdown()


def test_a_pool_that_cannot_start_fails_futures_with_its_stderr(leak_check):
    provider = LocalProvider(worker_init="echo 'module load: no such module python/9' >&2; exit 3")
    ex = HighThroughputExecutor(max_workers=1, provider=provider)
    future = ex.submit(pow, 2, 2)
    leak_check()
    error = future.exception(timeout=60)
    assert isinstance(error, PoolStartError)
    assert error.exit_code == 3
    assert "no such module python/9" in error.stderr_tail
    assert "no such module python/9" in str(error)
    with pytest.raises(BrokenExecutorError):
        ex.submit(pow, 2, 2)
    ex.shutdown()


def test_a_pool_of_another_version_is_refused_with_a_clear_error(leak_check):
    # The block never starts a pool (worker_init replaces it with a sleep); an outdated pool
    # holding the right keys registers instead.
    ex = HighThroughputExecutor(max_workers=1, provider=LocalProvider(worker_init="exec sleep 1000"))
    future = ex.submit(pow, 2, 2)
    leak_check()
    ctx, sock = fake_pool(ex.endpoints["tcp"], curve=pool_key(ex), send_timeout=30_000, protocol=0)
    try:
        assert sock.poll(30_000), "the interchange did not answer the outdated pool"
        reply = sock.recv_multipart()
        assert reply[0] == b"N"
        assert b"protocol 0" in reply[1]
        error = future.exception(timeout=30)
        assert isinstance(error, VersionMismatchError)
        assert "protocol 0" in str(error) and "install the same" in str(error)
    finally:
        ctx.destroy(linger=0)
        ex.terminate()


def test_terminate_returns_even_with_a_task_stuck_in_c_code(leak_check):
    ex = HighThroughputExecutor(max_workers=1)
    with Recorder() as recorder:
        stuck = ex.submit(faults.record_then_stuck, recorder.record)
        queued = ex.submit(pow, 2, 2)
        recorder.wait_for(1, timeout=30)
        leak_check()
        done = threading.Thread(target=ex.terminate)
        done.start()
        done.join(60)
        assert not done.is_alive(), "terminate() did not return"
    assert isinstance(stuck.exception(timeout=0), ExecutorShutdownError)
    assert queued.cancelled() or isinstance(queued.exception(timeout=0), ExecutorShutdownError)


def test_shutdown_wait_leaves_no_process_behind(leak_check):
    ex = HighThroughputExecutor(max_workers=2)
    assert list(ex.map(pow, range(20), [2] * 20)) == [i * i for i in range(20)]
    leak_check()
    ex.shutdown(wait=True)
    assert not [p for p in psutil.Process().children(recursive=True) if "hpcfutures" in " ".join(p.cmdline())]


def test_shutdown_without_wait_finishes_running_tasks_in_the_background(leak_check):
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate:
        running = ex.submit(gate.wait, "finished")
        gate.wait_entered(1, timeout=30)
        leak_check()
        ex.shutdown(wait=False)
        with pytest.raises(RuntimeError):
            ex.submit(pow, 2, 2)
        gate.open()
        assert running.result(timeout=30) == "finished"
    ex.shutdown(wait=True)  # a second call waits for the background release


DRIVER_SCRIPT = """
import os, sys, psutil
from hpcfutures import HighThroughputExecutor
ex = HighThroughputExecutor(max_workers=1)
assert ex.submit(pow, 2, 2).result(timeout=60) == 4
pids = [p.pid for p in psutil.Process().children(recursive=True)]
print(" ".join(map(str, pids)), flush=True)
sys.stdin.read()  # wait until the test kills this process
"""


def test_a_killed_driver_leaves_no_interchange_or_pool_behind():
    import subprocess
    import sys

    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = driver.stdout.readline()
        pids = {int(p) for p in line.split()}
        assert len(pids) >= 3, f"expected interchange, pool and worker, got {line!r}"
        driver.kill()
        driver.wait()
        assert_all_gone(pids, timeout=30)
    finally:
        driver.kill()
        driver.wait()
