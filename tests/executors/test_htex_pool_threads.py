"""The pool manager never has a thread but its main one, so every fork of a worker is safe.

A process that forks while another of its threads holds a lock leaves that lock held forever
in the child (Python 3.12 warns about such forks).  A pool manager forks a worker to replace
each one that dies, while tasks run, so it must never have a second thread: a local pool's
manager has no ZeroMQ context at all, and a remote pool's CurveZMQ socket (whose context
runs I/O threads) lives in a relay process.  These tests look at the real processes: the
manager's thread count and ZeroMQ file descriptors before and after a worker is killed and
replaced, the fork warnings in its stderr, what the relay holds, and how the relay, the
manager and the interchange end.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from hpcfutures import HighThroughputExecutor, PoolStartError
from hpcfutures.providers import LocalProvider
from hpcfutures.testing import Gate, faults

from .htex_helpers import assert_all_gone, descendants

POOL_MODULE = "hpcfutures.executors.htex.pool"
INTERCHANGE_MODULE = "hpcfutures.executors.htex.interchange"
#: Send every DeprecationWarning of the pool's processes to their stderr: Python 3.12 and
#: later warn there about a fork of a multi-threaded process.
SHOW_WARNINGS = "export PYTHONWARNINGS=default::DeprecationWarning"


def _runs_pool(process: psutil.Process) -> bool:
    try:
        return POOL_MODULE in " ".join(process.cmdline())
    except psutil.Error:
        return False


def pool_manager() -> psutil.Process:
    """The one pool manager below this process.

    Its workers and relay are forked from it, so they share its command line: the manager is
    the pool process whose parent is not one.
    """
    pools = [p for p in psutil.Process().children(recursive=True) if _runs_pool(p)]
    managers = [p for p in pools if p.ppid() not in {q.pid for q in pools}]
    assert len(managers) == 1, [(p.pid, p.ppid()) for p in pools]
    return managers[0]


def the_relay(manager: psutil.Process, workers: set[int]) -> psutil.Process:
    """The manager's one child that is not one of ``workers``."""
    others = [p for p in manager.children() if p.pid not in workers]
    assert len(others) == 1, [(p.pid, p.cmdline()) for p in others]
    return others[0]


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def context_fds(pid: int) -> list[str]:
    """The file descriptors of process ``pid`` that a ZeroMQ context opens.

    A context makes an eventfd (its mailbox) as it is created, before it has a socket or a
    thread, and its I/O threads each an epoll; a pool manager needs neither.
    """
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target in ("anon_inode:[eventfd]", "anon_inode:[eventpoll]"):
            found.append(target)
    return found


def pipe_ends(pid: int) -> set[tuple[str, int]]:
    """The pipe ends process ``pid`` holds: (``pipe:[inode]``, 0 for a read end, 1 for a write end)."""
    ends = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = next(line for line in info if line.startswith("flags:")).split()[1]
        except OSError:  # closed meanwhile
            continue
        if target.startswith("pipe:"):
            ends.add((target, int(flags, 8) & os.O_ACCMODE))
    return ends


def worker_pipes(manager: int, worker: int) -> set[str]:
    """The pipes between a worker and its manager: each holds one end, the other the other."""
    theirs, ours = pipe_ends(worker), pipe_ends(manager)
    return {pipe for pipe, mode in theirs if (pipe, 1 - mode) in ours and (pipe, 1 - mode) not in theirs}


def block_output(run_dir: Path) -> str:
    """Everything the blocks wrote to stderr and their pool logs."""
    paths = [*run_dir.rglob("*.err"), *run_dir.rglob("pool-*.log")]
    assert paths, f"no block output under {run_dir}"
    return "\n".join(path.read_text() for path in paths)


def fork_warnings(run_dir: Path) -> list[str]:
    """Lines of the blocks' stderr and pool logs that warn about a fork."""
    lines = block_output(run_dir).splitlines()
    return [line for line in lines if "DeprecationWarning" in line and "fork" in line]


def make_executor(run_dir: Path, transport: str, **kwargs: Any) -> HighThroughputExecutor:
    ex = HighThroughputExecutor(run_dir=run_dir, provider=LocalProvider(worker_init=SHOW_WARNINGS), **kwargs)
    ex._force_tcp = transport == "tcp"  # run the pool as if on another node: TCP with CurveZMQ
    return ex


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_the_manager_has_one_thread_before_and_after_replacing_a_killed_worker(tmp_path, transport):
    pids = tmp_path / "pids"
    before = descendants()
    with make_executor(tmp_path / "run", transport, max_workers=1) as ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        manager = pool_manager()
        assert manager.num_threads() == 1
        assert context_fds(manager.pid) == []
        (worker,) = read_pids(pids)
        assert psutil.Process(worker).ppid() == manager.pid
        os.kill(worker, signal.SIGKILL)
        gate.wait_entered(2, timeout=30)  # the task runs again, so its replacement was forked
        (_, replacement) = read_pids(pids)
        assert psutil.Process(replacement).ppid() == manager.pid
        assert manager.num_threads() == 1
        gate.open()
        assert future.result(timeout=30) == replacement
        assert list(ex.map(pow, range(20), [2] * 20)) == [i * i for i in range(20)]
        assert manager.num_threads() == 1
        assert context_fds(manager.pid) == []
    assert_all_gone(descendants() - before)
    assert fork_warnings(tmp_path / "run") == []


def test_a_remote_pools_relay_holds_the_socket_and_no_worker_pipe(tmp_path):
    pids = tmp_path / "pids"
    before = descendants()
    with make_executor(tmp_path / "run", "tcp", max_workers=2) as ex, Gate() as gate:
        futures = [ex.submit(faults.report_pid_then, gate.wait, str(pids)) for _ in range(2)]
        gate.wait_entered(2, timeout=30)
        manager = pool_manager()
        workers = set(read_pids(pids))
        relay = the_relay(manager, workers)
        assert relay.num_threads() > 1  # it, not the manager, runs ZeroMQ's I/O threads
        assert context_fds(relay.pid)
        assert manager.num_threads() == 1
        assert context_fds(manager.pid) == []
        relay_pipes = {pipe for pipe, _mode in pipe_ends(relay.pid)}
        for worker in workers:
            pipes = worker_pipes(manager.pid, worker)
            assert len(pipes) >= 2  # tasks down, results up (and the process sentinels)
            assert not pipes & relay_pipes
        gate.open()
        assert {f.result(timeout=30) for f in futures} == workers
    assert_all_gone(descendants() - before)


@contextlib.contextmanager
def a_task_held_on_a_remote_pool(tmp_path: Path) -> Iterator[tuple[Any, Gate, psutil.Process, int, psutil.Process]]:
    """An executor whose one remote pool runs a task held at a gate.

    Yields the task's future, the gate, the pool manager, the worker's pid and the relay.
    """
    pids = tmp_path / "pids"
    with make_executor(tmp_path / "run", "tcp", max_workers=1) as ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        manager = pool_manager()
        (worker,) = read_pids(pids)
        yield future, gate, manager, worker, the_relay(manager, {worker})


def test_a_pool_whose_relay_dies_exits_and_its_task_runs_on_a_new_pool(tmp_path):
    before = descendants()
    with a_task_held_on_a_remote_pool(tmp_path) as (future, gate, manager, worker, relay):
        relay.kill()
        gate.wait_entered(2, timeout=60)  # the pool was lost and a new block's pool runs it
        assert_all_gone({manager.pid, worker, relay.pid})
        gate.open()
        assert future.result(timeout=30) != worker
    assert_all_gone(descendants() - before)
    assert "this pool's relay was killed by SIGKILL" in block_output(tmp_path / "run")


def test_the_relay_ends_with_its_manager(tmp_path):
    before = descendants()
    with a_task_held_on_a_remote_pool(tmp_path) as (future, gate, manager, worker, relay):
        manager.kill()
        assert_all_gone({manager.pid, worker, relay.pid})
        gate.wait_entered(2, timeout=60)
        gate.open()
        assert future.result(timeout=30) != worker
    assert_all_gone(descendants() - before)


def test_a_silent_interchange_behind_a_live_relay_is_found_by_missed_heartbeats(tmp_path):
    pids = tmp_path / "pids"
    before = descendants()
    ex = make_executor(tmp_path / "run", "tcp", max_workers=1, heartbeat_period=0.2, heartbeat_threshold=1.0)
    with ex:
        assert ex.submit(faults.report_pid_then, str, str(pids)).result(timeout=30)
        manager = pool_manager()
        (worker,) = read_pids(pids)
        relay = the_relay(manager, {worker})
        (interchange,) = [p for p in psutil.Process().children() if INTERCHANGE_MODULE in p.cmdline()]
        interchange.suspend()  # its sockets stay open: only the silence tells
        try:
            assert_all_gone({manager.pid, worker, relay.pid}, timeout=30)
        finally:
            interchange.resume()
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32  # on a new block
    assert_all_gone(descendants() - before)
    assert "lost the interchange: nothing heard for 1.0 s" in block_output(tmp_path / "run")


def test_a_remote_pools_failing_initializer_reaches_the_driver_through_the_relay(tmp_path):
    before = descendants()
    ex = make_executor(tmp_path / "run", "tcp", max_workers=1, initializer=faults.failing_initializer)
    future = ex.submit(pow, 2, 2)
    error = future.exception(timeout=60)
    assert isinstance(error, PoolStartError)
    assert "missing license file" in str(error.__cause__)
    ex.shutdown()
    assert_all_gone(descendants() - before)
