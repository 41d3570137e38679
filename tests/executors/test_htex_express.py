"""HighThroughputExecutor's express lane (issue 15): a lone small task goes from the driver
straight to an idle local worker over a Unix socket, and its result comes back the same way.

These tests run real executors and read ``ex._link.express`` (the driver's end of the lane)
only to know which way a task went (``sent`` counts the tasks sent on the lane) and whether
the workers are connected.  They check that the lane is taken when it should be and only
then, that what HTEX promises holds on it (results, exceptions, cancel, a worker or pool
lost under a task, placement of tasks with resources, scale-in, shutdown, the run record),
and that whatever an outsider writes to the socket leaves it serving.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import stat
import struct
import threading
import time
from collections import Counter
from concurrent.futures import as_completed, wait
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from hpcfutures import (
    BrokenExecutorError,
    ExecutorShutdownError,
    HighThroughputExecutor,
    InterchangeLostError,
    Resources,
    WorkerLostError,
)
from hpcfutures.executors.htex import express as express_module
from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex import security
from hpcfutures.executors.htex.express import ExpressLane
from hpcfutures.executors.htex.pipes import encode
from hpcfutures.providers import LocalProvider
from hpcfutures.testing import Gate, Recorder, faults
from hpcfutures.testing.tasks import ConformanceError, raise_error, square

from ..record_rows import rows
from .htex_helpers import CPUS, assert_all_gone, descendants, needs_two_cpus, overlaps, window

TIMEOUT = 60.0


# -- tasks (module level: workers import them) -----------------------------------------------


def gated_window(wait: Callable[[], Any]) -> dict[str, Any]:
    """Wait at a gate; say when the task began and ended and where it ran."""
    start = time.monotonic()
    wait()
    return {"start": start, "end": time.monotonic(), "pid": os.getpid()}


def fork_then_wait(wait: Callable[[], Any], path: str, child_seconds: float) -> int:
    """Fork a helper that outlives this worker if it dies (as multiprocessing's fork context
    makes them), report both pids to ``path``, then wait at a gate."""
    child = os.fork()
    if child == 0:
        time.sleep(child_seconds)
        os._exit(0)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {child}\n")
    wait()
    os.waitpid(child, os.WNOHANG)
    return os.getpid()


def double(x: int) -> int:
    return 2 * x


def add_two(a: int, b: int) -> int:
    return a + b


# -- helpers ----------------------------------------------------------------------------------


def lane_of(ex: HighThroughputExecutor) -> ExpressLane:
    lane = ex._link.express if ex._link is not None else None
    assert lane is not None, "the executor has no express lane"
    return lane


def wait_for_lane(ex: HighThroughputExecutor, workers: int, timeout: float = 30.0) -> ExpressLane:
    """Wait until ``workers`` workers are connected to the lane and idle on it.

    Workers connect once they are configured, so the first task may have gone the usual way
    before they did; nothing tells the test when they have, hence the polling.
    """
    lane = lane_of(ex)
    deadline = time.monotonic() + timeout
    while len(lane.idle) < workers or lane.inflight:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(lane.idle)} of {workers} workers idle on the express lane after {timeout} s"
            )
        time.sleep(0.01)
    return lane


def warm(ex: HighThroughputExecutor, workers: int) -> ExpressLane:
    """Start the executor and wait for its ``workers`` workers on the lane."""
    assert ex.submit(square, 3).result(TIMEOUT) == 9
    return wait_for_lane(ex, workers)


def lone(ex: HighThroughputExecutor, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one task alone; check that it took the lane; return its result."""
    lane = lane_of(ex)
    before = lane.sent
    value = ex.submit(fn, *args).result(TIMEOUT)
    assert lane.sent == before + 1, "a lone task did not take the express lane"
    return value


def assert_serving(ex: HighThroughputExecutor) -> None:
    """The I/O thread is alive and lone tasks still run right, on the lane."""
    assert ex._io_thread is not None and ex._io_thread.is_alive(), "the I/O thread died"
    for i in (0, 7, -3):
        assert lone(ex, square, i) == i * i


def wait_connections(lane: ExpressLane, count: int, timeout: float = 30.0) -> None:
    """Wait until the driver holds ``count`` express connections (it has dropped the others)."""
    deadline = time.monotonic() + timeout
    while len(lane.connections) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the driver holds {len(lane.connections)} express connections, not {count}")
        time.sleep(0.01)


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def outsider(ex: HighThroughputExecutor) -> socket.socket:
    """A connection to the express socket from a process that is no worker (this one)."""
    assert ex._space is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    deadline = time.monotonic() + 10.0
    while True:
        try:
            sock.connect(ex._space.express_path)
            return sock
        except BlockingIOError:  # the listen backlog is full: the driver has yet to accept
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.001)


def message(*frames: Any) -> bytes:
    """The bytes of one framed message, as a worker writes it."""
    return b"".join(bytes(view) for view in encode(frames))


def token_of(ex: HighThroughputExecutor) -> bytes:
    assert ex._space is not None
    return bytes(security.load(ex._space.keys.pool)["token"])


def hello(token: bytes, **changes: Any) -> bytes:
    who = {"pool": "intruder", "block": "0", "pid": os.getpid(), "rank": 0, "tag": 1}
    who.update(changes)
    return message(P.HELLO, token, json.dumps(who).encode())


def closed_by_driver(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the driver closes ``sock`` within ``timeout`` s (what it read is discarded)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send ``data``; the driver may have closed the connection already."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def count_callbacks(future: Any, calls: Counter[int], key: int, lock: threading.Lock) -> None:
    def called(_f: Any) -> None:
        with lock:
            calls[key] += 1

    future.add_done_callback(called)


# -- which way a task goes ----------------------------------------------------------------------


def test_sequential_lone_tasks_take_the_express_lane_and_come_back_right():
    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        before = lane.sent
        futures = []
        for i in range(200):
            future = ex.submit(square, i)
            assert future.result(TIMEOUT) == i * i
            futures.append(future)
        assert lane.sent == before + 200, f"{lane.sent - before} of 200 sequential lone tasks took the lane"
        workers = descendants()  # the interchange, the pool and its two workers
        for future in futures:
            execution = future.execution
            assert execution is not None and execution.lost == 0
            assert execution.pid in workers and execution.worker in (0, 1) and execution.pool is not None


def test_without_the_express_lane_the_same_tasks_give_the_same_results():
    with HighThroughputExecutor(max_workers=2, express=False) as ex:
        results = [ex.submit(square, i).result(TIMEOUT) for i in range(100)]
        assert ex._link is not None and ex._link.express is None
        with pytest.raises(ConformanceError, match="deliberate"):
            ex.submit(raise_error, "deliberate").result(TIMEOUT)
    assert results == [i * i for i in range(100)]


@pytest.mark.parametrize(
    "how",
    [
        "walltime",
        pytest.param("two cores", marks=needs_two_cpus),
        "one core and memory",
        "a 100 KiB argument",
    ],
)
def test_a_task_a_pool_must_arrange_or_a_large_one_goes_the_usual_way(how):
    payload = b"x" * (100 << 10)
    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        assert lone(ex, square, 4) == 16  # the lane is open
        before = lane.sent
        if how == "walltime":
            value = ex.options(walltime=30).submit(square, 5).result(TIMEOUT)
            assert value == 25
        elif how == "two cores":
            assert ex.options(resources=Resources(cores=2)).submit(square, 5).result(TIMEOUT) == 25
        elif how == "one core and memory":
            assert (
                ex.options(resources=Resources(cores=1, memory_gb=0.01)).submit(square, 5).result(TIMEOUT)
                == 25
            )
        else:
            assert ex.submit(len, payload).result(TIMEOUT) == len(payload)
        assert lane.sent == before, f"a task with {how} took the express lane"
        assert_serving(ex)


def test_results_of_every_size_and_exceptions_come_back_on_the_lane():
    with HighThroughputExecutor(max_workers=1) as ex:
        warm(ex, 1)
        assert lone(ex, faults.sleep_then, 0, None) is None
        for size in (0, 1, 100 << 10, 1 << 20, 4 << 20):  # in the pickle, out of band, through /dev/shm
            assert lone(ex, bytes, size) == bytes(size)
        # A spilled argument (>= 256 KiB, through /dev/shm) leaves small pickles: the lane may take it.
        assert ex.submit(len, b"y" * (1 << 20)).result(TIMEOUT) == 1 << 20
        lane = lane_of(ex)
        before = lane.sent
        future = ex.submit(raise_error, "deliberate", 1)
        with pytest.raises(ConformanceError) as caught:
            future.result(TIMEOUT)
        assert lane.sent == before + 1
        assert caught.value.args == ("deliberate", 1)
        assert_serving(ex)


def test_an_express_task_is_begun_once_its_worker_claims_it_and_then_cannot_be_cancelled():
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(gate.wait, "express")
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        assert future.running()
        assert not future.cancel(), "cancel() of a task its worker runs returned True"
        assert not future.cancelled()
        gate.open()
        assert future.result(TIMEOUT) == "express"
        assert not future.running() and not future.cancel()


def test_a_task_queued_behind_an_express_task_is_not_begun_and_a_cancel_keeps_it_from_running(tmp_path):
    ran = tmp_path / "ran"
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        first = ex.submit(gate.wait, "first")
        gate.wait_entered(1, TIMEOUT)
        queued = [ex.submit(faults.append_line, str(ran), f"q{i}") for i in range(express_module.DEPTH - 1)]
        assert lane.sent == before + express_module.DEPTH, "a task did not queue on the worker's connection"
        assert not any(f.running() for f in queued), "a task queued behind another counts as begun"
        assert all(f.cancel() for f in queued), "a task its worker had not begun could not be cancelled"
        after = ex.submit(faults.append_line, str(ran), "after")  # the connection has room again
        gate.open()
        assert first.result(TIMEOUT) == "first"
        assert after.result(TIMEOUT) == "after"
        assert all(f.cancelled() for f in queued)
        assert_serving(ex)
    assert ran.read_text().split() == ["after"], "a cancelled task ran"


@pytest.mark.parametrize("rounds", [1, 12])
def test_every_task_no_worker_began_can_be_cancelled_however_many_are_cancelled_while_one_runs(tmp_path, rounds):
    # A cancelled task keeps its place on the worker's connection until the worker passes it:
    # were its place given to the next task at once, cancels could pile up ahead of the worker
    # beyond what its claims file can hold, and cancel() would refuse a task not begun.
    ran = tmp_path / "ran"
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        lane = warm(ex, 1)
        held = ex.submit(gate.wait, "held")
        gate.wait_entered(1, TIMEOUT)
        for r in range(rounds):
            queued = [ex.submit(faults.append_line, str(ran), f"{r}-{i}") for i in range(4)]
            assert not any(f.running() for f in queued)
            assert [f.cancel() for f in queued] == [True] * 4, "a task no worker began could not be cancelled"
        after = [ex.submit(faults.append_line, str(ran), f"after{i}") for i in range(3)]
        gate.open()
        assert held.result(TIMEOUT) == "held"
        assert [f.result(TIMEOUT) for f in after] == ["after0", "after1", "after2"]
        assert_serving(ex)
        assert not lane.waiting
    assert ran.read_text().split() == ["after0", "after1", "after2"], "a cancelled task ran"


def fill_the_lane(ex: HighThroughputExecutor, lane: ExpressLane, gate: Gate, workers: int) -> list[Any]:
    """Submit gated lone tasks until every connection of the lane holds all it may (DEPTH
    each: one running, the rest queued behind it, begun); return their futures."""
    before = lane.sent
    futures = [ex.submit(gate.wait, i) for i in range(express_module.DEPTH * workers)]
    assert lane.sent == before + len(futures), "a lone task did not take the lane"
    gate.wait_entered(workers, TIMEOUT)
    assert sum(f.running() for f in futures) == workers, "only the tasks the workers run are begun"
    return futures


def test_lone_tasks_fill_the_lane_then_wait_in_the_driver_for_room_on_it(tmp_path):
    ran = tmp_path / "ran"
    with HighThroughputExecutor(max_workers=2) as ex, Gate() as gate:
        lane = warm(ex, 2)
        sent = fill_the_lane(ex, lane, gate, 2)
        before = lane.sent
        # No room on the lane: the next tasks wait in the driver, not begun; a cancel takes them.
        third = ex.submit(faults.append_line, str(ran), "third")
        assert lane.sent == before and len(lane.waiting) == 1
        assert not third.running() and third.cancel()
        fourth = ex.submit(faults.append_line, str(ran), "fourth")
        assert lane.sent == before and not fourth.running()
        gate.open()
        assert [f.result(TIMEOUT) for f in sent] == list(range(len(sent)))
        assert fourth.result(TIMEOUT) == "fourth"
        assert third.cancelled()
        assert lane.sent == before + 1, "the task that waited did not take the lane"
        assert not lane.waiting
        assert_serving(ex)
    assert ran.read_text().split() == ["fourth"]


def test_when_too_many_wait_for_the_lane_they_go_the_usual_way_first(tmp_path):
    ran = tmp_path / "ran"
    workers = 2
    with HighThroughputExecutor(max_workers=workers) as ex, Gate() as gate:
        lane = warm(ex, workers)
        sent = fill_the_lane(ex, lane, gate, workers)
        before = lane.sent
        limit = express_module.WAITING_PER_WORKER * workers
        waiting = [ex.submit(faults.append_line, str(ran), f"w{i}") for i in range(limit)]
        assert len(lane.waiting) == limit
        # One more finds the driver's line full: it goes the usual way, and those waiting go
        # before it, the usual way too, in order.
        usual = ex.submit(faults.append_line, str(ran), "usual")
        assert not lane.waiting
        gate.open()
        assert [f.result(TIMEOUT) for f in sent] == list(range(len(sent)))
        assert [f.result(TIMEOUT) for f in waiting] == [f"w{i}" for i in range(limit)]
        assert usual.result(TIMEOUT) == "usual"
        assert lane.sent == before
        assert_serving(ex)
    assert sorted(ran.read_text().split()) == sorted(["usual", *(f"w{i}" for i in range(limit))])


def test_a_task_of_another_priority_does_not_wait_for_the_lane_and_those_waiting_go_the_usual_way():
    with HighThroughputExecutor(max_workers=2) as ex, Gate() as gate:
        lane = warm(ex, 2)
        sent = fill_the_lane(ex, lane, gate, 2)
        before = lane.sent
        low = ex.submit(square, 3)
        assert len(lane.waiting) == 1
        high = ex.options(priority=5).submit(square, 4)
        assert not lane.waiting, "a task of another priority left the waiting one in the driver"
        gate.open()
        assert [f.result(TIMEOUT) for f in sent] == list(range(len(sent)))
        assert (low.result(TIMEOUT), high.result(TIMEOUT)) == (9, 16)
        assert lane.sent == before


def test_a_worker_killed_under_an_express_task_frees_the_task_queued_behind_it_uncharged(tmp_path):
    # The task queued on the connection never began: it runs again with no loss counted; the
    # one that waited in the driver goes the usual way (no express task is out to make room).
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1, lost_task_retries=2) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        express = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        behind = [ex.submit(square, 5 + i) for i in range(express_module.DEPTH - 1)]
        assert lane.sent == before + express_module.DEPTH
        waiting = ex.submit(square, 9)
        assert len(lane.waiting) == 1
        gate.wait_entered(1, TIMEOUT)
        os.kill(read_pids(pids)[0], signal.SIGKILL)
        gate.open()  # for the express task's second run
        assert [f.result(TIMEOUT) for f in behind] == [(5 + i) ** 2 for i in range(len(behind))]
        assert waiting.result(TIMEOUT) == 81
        express.result(TIMEOUT)  # run again on the new worker, charged a loss
        assert express.execution is not None and express.execution.lost == 1
        for future in behind:
            assert future.execution is not None and future.execution.lost == 0, "a task that never began was charged"
        assert not lane.waiting
        assert_serving(ex)


def test_a_dependency_graph_wider_than_the_pool_mostly_takes_the_lane():
    from hpcfutures.dataflow import DataflowExecutor

    width, layers = 4, 25
    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        with DataflowExecutor(ex) as dfx:
            dfx.submit(double, 1).result(TIMEOUT)
            before = lane.sent
            layer = [dfx.submit(double, j) for j in range(width)]
            futures = list(layer)
            for _ in range(layers - 1):
                layer = [dfx.submit(add_two, layer[j], layer[(j + 1) % width]) for j in range(width)]
                futures.extend(layer)
            values = [f.result(TIMEOUT) for f in futures]
            took = lane.sent - before
    expected = [2 * j for j in range(width)]
    for _ in range(layers - 1):
        expected = [expected[j] + expected[(j + 1) % width] for j in range(width)]
    assert values[-width:] == expected
    # Before tasks could wait for the lane, a layer wider than the pool sent most of the graph
    # the usual way (the lane was taken only while nothing else was out).
    assert took >= 0.8 * width * layers, f"{took} of {width * layers} tasks took the lane"


def test_while_a_task_with_a_walltime_is_out_lone_tasks_go_the_usual_way():
    with HighThroughputExecutor(max_workers=2) as ex, Gate() as gate:
        lane = warm(ex, 2)
        before = lane.sent
        timed = ex.options(walltime=60).submit(gate.wait, "timed")
        gate.wait_entered(1, TIMEOUT)
        assert [ex.submit(square, i).result(TIMEOUT) for i in range(5)] == [0, 1, 4, 9, 16]
        assert lane.sent == before, "a task took the lane while a task with a walltime was out"
        gate.open()
        assert timed.result(TIMEOUT) == "timed"
        assert_serving(ex)


def test_a_lone_task_is_not_handed_to_a_worker_busy_with_a_usual_task(tmp_path):
    # An idle connection does not mean an idle worker: its worker may run a task its pool sent
    # it.  (With f5ca1f1's rule, "no more tasks out than workers", the lone task below was
    # handed to the busy worker and waited behind its task, counted as running.)
    paths = [tmp_path / f"pids{i}" for i in range(4)]
    with (
        HighThroughputExecutor(max_workers=2) as ex,
        Gate() as gate0,
        Gate() as gate1,
        Gate() as gate2,
        Gate() as gate3,
    ):
        gates = [gate0, gate1, gate2, gate3]
        lane = warm(ex, 2)
        before = lane.sent
        futures = [ex.submit(faults.report_pid_then, g.wait, str(p)) for g, p in zip(gates[:2], paths[:2])]
        # Two take the lane, one to each worker; the other two go the usual way (a walltime
        # keeps them off the lane), one behind each.
        timed = ex.options(walltime=120)
        futures += [timed.submit(faults.report_pid_then, g.wait, str(p)) for g, p in zip(gates[2:], paths[2:])]
        assert lane.sent == before + 2
        for i in (0, 1):
            gates[i].wait_entered(1, TIMEOUT)
            gates[i].open()
            futures[i].result(TIMEOUT)
        gates[2].wait_entered(1, TIMEOUT)
        gates[3].wait_entered(1, TIMEOUT)
        usual = [read_pids(paths[i])[0] for i in (2, 3)]
        assert sorted(usual) == sorted(c.pid for c in lane.idle), "each worker runs one usual task"
        handed_to = lane.idle[-1].pid  # the connection the lane hands its next task to
        freed = 2 if usual[0] != handed_to else 3
        gates[freed].open()
        futures[freed].result(TIMEOUT)
        # One worker is idle, the other runs a usual task at its gate: a lone task must not wait.
        lone_task = ex.submit(faults.worker_identity)
        try:
            got = lone_task.result(5)
        finally:
            for gate in gates:
                gate.open()
        assert got["pid"] != handed_to


@pytest.mark.parametrize("seed", range(2))
def test_threads_mixing_lone_tasks_bursts_and_cancels_resolve_every_future_once(tmp_path, seed):
    """Four threads each submit lone tasks (waiting for each) between small bursts they leave
    pending, and cancel a random few: every future ends once, with its task's own value, a
    task whose cancel() returned True never ran, and every other task ran exactly once."""
    ran = tmp_path / "ran"
    threads_n, rounds = 4, 4
    records: list[tuple[int, Any, bool | None]] = []  # (task id, future, what cancel() returned)
    calls: Counter[int] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        before = lane.sent

        def submit(task_id: int, rng: random.Random, cancel_chance: float) -> Any:
            future = ex.submit(faults.append_line, str(ran), task_id)
            count_callbacks(future, calls, task_id, lock)
            cancelled = future.cancel() if rng.random() < cancel_chance else None
            with lock:
                records.append((task_id, future, cancelled))
            return future, cancelled

        def body(index: int) -> None:
            rng = random.Random(seed * 100 + index)
            task_id = index * 1_000_000
            try:
                for _round in range(rounds):
                    for _ in range(3):
                        for _ in range(rng.randint(20, 40)):  # lone tasks, one after another
                            task_id += 1
                            future, cancelled = submit(task_id, rng, 0.1)
                            if not cancelled:
                                assert future.result(TIMEOUT) == task_id
                        burst = []
                        for _ in range(rng.randint(5, 40)):  # a burst, left pending
                            task_id += 1
                            burst.append(submit(task_id, rng, 0.3))
                        if rng.random() < 0.5:
                            wait([f for f, _ in burst], timeout=TIMEOUT)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        workers = [threading.Thread(target=body, args=(i,)) for i in range(threads_n)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(TIMEOUT * 2)
        assert not [t for t in workers if t.is_alive()], "a submitting thread hung"
        assert not errors, errors[0]
        futures = [f for _, f, _ in records]
        done, not_done = wait(futures, timeout=TIMEOUT)
        assert not not_done, f"{len(not_done)} futures never finished"
        completed = list(as_completed(futures, timeout=TIMEOUT))
        assert len(completed) == len(set(completed)) == len(futures)
        taken = lane.sent - before
        assert_serving(ex)

    counts = Counter(int(line) for line in ran.read_text().split())
    assert len(records) > 2000
    cancelled_ids = set()
    for task_id, future, cancel_returned in records:
        if cancel_returned:
            assert future.cancelled()
            cancelled_ids.add(task_id)
            assert task_id not in counts, f"task {task_id} ran though its cancel() returned True"
        else:
            assert not future.cancelled(), (
                f"task {task_id} was cancelled though its cancel() returned {cancel_returned}"
            )
            assert future.result() == task_id
            assert counts[task_id] == 1, f"task {task_id} ran {counts[task_id]} times"
    assert set(counts) == {t for t, _, _ in records} - cancelled_ids
    assert calls == Counter({t: 1 for t, _, _ in records}), "a done-callback was not called exactly once"
    assert cancelled_ids, "no cancel succeeded: the test did not exercise cancels"
    assert 0 < taken < len(records), f"{taken} of {len(records)} tasks took the express lane"


# -- workers and pools lost under express tasks ---------------------------------------------------


def test_a_worker_killed_under_an_express_task_runs_it_again_charged_a_loss(tmp_path, leak_check):
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=2) as ex, Gate() as gate:
        lane = warm(ex, 2)
        before = lane.sent
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        leak_check()
        (first,) = read_pids(pids)
        os.kill(first, signal.SIGKILL)
        gate.wait_entered(2, TIMEOUT)  # the requeued task reached the gate again
        leak_check()
        gate.open()
        second = future.result(TIMEOUT)
        assert second != first and read_pids(pids) == [first, second]
        execution = future.execution
        assert execution is not None and execution.lost == 1 and execution.pid == second
        # The replacement worker joins the lane, and lone tasks take it again.
        wait_for_lane(ex, 2)
        assert lane.workers == 2
        assert_serving(ex)
        assert lane.sent >= before + 4
    assert_all_gone({first})


def test_an_express_task_that_kills_its_worker_fails_with_the_pools_evidence(leak_check):
    with HighThroughputExecutor(max_workers=1, lost_task_retries=0) as ex:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(faults.kill_self, signal.SIGKILL)
        assert lane.sent == before + 1
        error = future.exception(TIMEOUT)
        leak_check()
        assert isinstance(error, WorkerLostError), repr(error)
        # The pool's word, not the driver's guess: the exit code and signal are known.
        assert error.signal_name == "SIGKILL" and error.exit_code == -signal.SIGKILL, repr(error)
        assert "worker 0" in str(error) and "SIGKILL" in str(error) and "1 time(s)" in str(error)
        # The only worker's replacement reconnects: lone tasks take the lane again.
        wait_for_lane(ex, 1)
        assert lane.workers == 1
        assert_serving(ex)


def test_a_task_killing_its_worker_each_time_is_retried_then_fails():
    with HighThroughputExecutor(max_workers=1, lost_task_retries=2) as ex, Recorder() as recorder:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(faults.record_then_kill, recorder.record)
        assert lane.sent == before + 1
        error = future.exception(TIMEOUT)
        assert isinstance(error, WorkerLostError) and error.signal_name == "SIGKILL", repr(error)
        assert "3 time(s)" in str(error), str(error)
        # Once on the lane, twice the usual way: three workers died, no more.
        assert len(recorder.values) == len(set(recorder.values)) == 3, recorder.values
        wait_for_lane(ex, 1)
        assert lane.workers == 1
        assert_serving(ex)


@pytest.mark.parametrize("retries", [0, 2])
def test_a_pool_killed_under_an_express_task_is_settled_without_its_word(tmp_path, retries):
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1, lost_task_retries=retries) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        (worker,) = read_pids(pids)
        pool = psutil.Process(worker).ppid()
        killed = time.monotonic()
        os.kill(pool, signal.SIGKILL)  # its workers die with it; no pool is left to tell how
        if retries:
            gate.wait_entered(2, TIMEOUT)  # requeued after the wait for evidence, to a new block
            waited = time.monotonic() - killed
            gate.open()
            second = future.result(TIMEOUT)
            assert second != worker
            assert psutil.Process(second).ppid() != pool
            assert future.execution is not None and future.execution.lost == 1
        else:
            error = future.exception(TIMEOUT)
            waited = time.monotonic() - killed
            assert isinstance(error, WorkerLostError), repr(error)
            assert error.exit_code is None and error.signal_name is None, repr(error)
            assert "express" in str(error) and f"pid {worker}" in str(error), str(error)
        assert waited >= express_module.EVIDENCE_WAIT * 0.9, "the driver did not wait for the pool's word"
        wait_for_lane(ex, 1)
        assert lane.workers == 1
        assert_serving(ex)
    assert_all_gone({worker, pool})


def test_a_worker_killed_under_an_express_task_that_forked_a_child_is_settled_on_the_pools_word(tmp_path):
    pids = tmp_path / "pids"
    child = 0
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(fork_then_wait, gate.wait, str(pids), 120.0)
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        worker, child = (int(pid) for pid in pids.read_text().split())
        try:
            os.kill(worker, signal.SIGKILL)
            gate.wait_entered(2, 5)  # requeued on the pool's word: well under a second
        finally:
            os.kill(child, signal.SIGKILL)
        gate.open()
        assert future.result(TIMEOUT) != worker
        assert future.execution is not None and future.execution.lost == 1
    assert_all_gone({worker, child})


def test_a_killed_interchange_fails_a_running_express_task_and_leaves_no_process(tmp_path, leak_check):
    pids = tmp_path / "pids"
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        (worker,) = read_pids(pids)
        leak_check()
        assert ex._space is not None
        os.kill(ex._space.interchange.pid, signal.SIGKILL)
        error = future.exception(TIMEOUT)
        assert isinstance(error, InterchangeLostError) and "SIGKILL" in str(error), repr(error)
        with pytest.raises(BrokenExecutorError):
            ex.submit(square, 2)
    ex.shutdown()
    assert_all_gone({worker})


# -- placement beside express tasks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("one express task, a task for every core", marks=needs_two_cpus),
        "an express task on each worker, a task with memory",
    ],
)
def test_a_task_with_resources_waits_for_express_tasks_and_their_end_wakes_the_pool(case):
    # Heartbeats every 30 s: the pool learns that the express tasks ended from their workers,
    # or the task with resources would wait for the next heartbeat.
    workers = len(CPUS)
    with (
        HighThroughputExecutor(max_workers=workers, heartbeat_period=30, heartbeat_threshold=120) as ex,
        Gate() as gate,
    ):
        lane = warm(ex, workers)
        if case.startswith("one"):
            express_count, resources = 1, Resources(cores=workers)
        else:
            express_count, resources = workers, Resources(cores=1, memory_gb=0.01)
        before = lane.sent
        express = [ex.submit(gated_window, gate.wait) for _ in range(express_count)]
        assert lane.sent == before + express_count
        gate.wait_entered(express_count, TIMEOUT)
        placed = ex.options(resources=resources).submit(window)
        # Nothing says when the task has reached the pool: give it time to get there and be
        # held, so that the express tasks' end is what releases it (the checks below hold
        # whichever comes first).
        time.sleep(0.5)
        assert not placed.done(), "a task with resources ran beside the express tasks"
        opened = time.monotonic()
        gate.open()
        got = placed.result(10)  # far less than a heartbeat period
        took = time.monotonic() - opened
        ended = [f.result(TIMEOUT) for f in express]
    assert took < 10
    if express_count == 1:  # it needs every core: it runs once the express task has ended
        assert not overlaps(ended[0], got), f"a task for every core ran beside an express task: {got} {ended}"
    else:  # it needs one core: it runs once one is free, which may be beside the other express task
        assert got["start"] >= min(run["end"] for run in ended), (
            f"it ran while every core was busy: {got} {ended}"
        )
        for run in ended:
            if run["pid"] == got["pid"]:
                assert not overlaps(run, got), f"it ran on a worker busy with an express task: {got} {ended}"


@pytest.mark.parametrize("arranged", ["resources", "walltime"])
@needs_two_cpus
def test_a_task_a_pool_must_arrange_waits_in_the_driver_until_the_express_task_out_has_ended(arranged):
    # A pool learns that its worker runs an express task only once the worker has read it;
    # until then (here the worker is stopped before it can) the pool counts it idle, and would
    # pin a task for every core beside it or start a walltime clock behind it.  So the driver
    # keeps such a task, and everything behind it, until the express task's result is back.
    workers = len(CPUS)
    for _round in range(3):
        with HighThroughputExecutor(max_workers=workers) as ex:
            lane = warm(ex, workers)
            first = ex.submit(window, 0.2)
            with ex._lock:
                conn = lane.inflight.get(first.task_id)
            assert conn is not None, "the lone task did not take the express lane"
            os.kill(conn.pid, signal.SIGSTOP)
            try:
                if arranged == "resources":
                    view = ex.options(resources=Resources(cores=workers))
                else:
                    view = ex.options(walltime=60)
                held = view.submit(window, 0.05)
                behind = ex.submit(window, 0.05)
                assert ex._link is not None
                with ex._lock:
                    assert ex._link.taken_upto < held.task_id, "the task went to the pool beside the express task"
                    assert ex._link.taken_upto < behind.task_id, "a task overtook the one held"
            finally:
                os.kill(conn.pid, signal.SIGCONT)
            ran_first = first.result(TIMEOUT)
            ran_held = held.result(TIMEOUT)
            ran_behind = behind.result(TIMEOUT)
        assert ran_held["start"] >= ran_first["end"], f"it began before the express task ended: {ran_held} {ran_first}"
        if arranged == "resources":
            assert not overlaps(ran_behind, ran_held), "a default task ran while every core was held"
            assert ran_held["cpus"] == tuple(CPUS)


def test_a_task_held_behind_an_express_task_can_be_cancelled_and_the_rest_go_on():
    with HighThroughputExecutor(max_workers=len(CPUS)) as ex, Gate() as gate:
        lane = warm(ex, len(CPUS))
        first = ex.submit(gated_window, gate.wait)
        assert lane.inflight, "the lone task did not take the express lane"
        held = ex.options(walltime=60).submit(window)
        behind = [ex.submit(double, i) for i in range(20)]
        assert held.cancel(), "a task still in the driver could not be cancelled"
        assert behind[5].cancel()
        gate.open()
        assert first.result(TIMEOUT)["end"] > 0
        got = {i: f.result(TIMEOUT) for i, f in enumerate(behind) if i != 5}
    assert held.cancelled() and behind[5].cancelled()
    assert got == {i: 2 * i for i in range(20) if i != 5}


def test_a_block_serving_express_tasks_is_not_scaled_in():
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    fast = dict(block_poll_period=0.1, heartbeat_period=0.2, heartbeat_threshold=10.0)
    with (
        HighThroughputExecutor(max_workers=1, provider=provider, max_idletime=0.5, **fast) as ex,
        Gate() as gate,
    ):
        lane = warm(ex, 1)
        pools = set(ex.pools)
        # A stream of lone tasks, then one long express task: the interchange sees no task
        # at all, yet the block is busy.
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            lone(ex, square, 2)
            assert [b.state for b in ex.blocks()] == ["connected"], (
                "the block was scaled in under a stream of express tasks"
            )
        before = lane.sent
        future = ex.submit(gate.wait, "long")
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        end = time.monotonic() + 1.5  # three times max_idletime
        while time.monotonic() < end:
            assert [b.state for b in ex.blocks()] == ["connected"], (
                "the block was scaled in under an express task"
            )
            time.sleep(0.05)
        assert set(ex.pools) == pools
        gate.open()
        assert future.result(TIMEOUT) == "long"
        # Idle for real now: it goes (so the checks above could have failed).
        deadline = time.monotonic() + 30
        while [b.state for b in ex.blocks()] != ["ended"]:
            assert time.monotonic() < deadline, "the idle block was never scaled in"
            time.sleep(0.05)


def test_a_lone_task_submitted_while_its_block_is_scaled_in_is_not_lost():
    # The interchange stops a draining block's pools once it sees them idle, and it sees
    # nothing of express tasks: the lane must not hand the block's workers a task then.
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    fast = dict(block_poll_period=0.1, heartbeat_period=0.2, heartbeat_threshold=10.0)
    with HighThroughputExecutor(
        max_workers=1, provider=provider, max_idletime=0.5, lost_task_retries=0, **fast
    ) as ex:
        for _attempt in range(5):
            lane = warm(ex, 1)  # a block is up (a new one after the first attempt)
            # The block falls idle and is scaled in; nothing tells the test when but its state.
            deadline = time.monotonic() + 30
            while not (draining := [b.block_id for b in ex.blocks() if b.state == "draining"]):
                assert time.monotonic() < deadline, "the idle block was never scaled in"
                time.sleep(0.0005)
            connected = {conn.block for conn in list(lane.connections.values()) if conn.known}
            if draining[0] in connected:  # its worker is still on the lane: the case under test
                break
        else:
            pytest.fail("never caught a block scaled in while its worker was still on the lane")
        future = ex.submit(faults.sleep_then, 2.0, "done")
        assert future.result(TIMEOUT) == "done"
        assert future.execution is not None and future.execution.lost == 0


# -- outsiders on the express socket -----------------------------------------------------------------

HOSTILE = [
    "garbage",
    "a wrong token",
    "a header declaring a huge message",
    "a header declaring too many frames",
    "a message of no frames",
    "a hello cut short",
    "the token with a who that is no object",
    "the token with a who of wrong types",
    "the token then a bogus result",
    "the token then a result of no task it was given",
    "the token then a message of kind tasks",
    "the token then a header declaring more than the limit",
]


def hostile_bytes(case: str, token: bytes) -> bytes:
    if case == "garbage":
        return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8
    if case == "a wrong token":
        return hello(b"0" * len(token))
    if case == "a header declaring a huge message":
        return struct.pack("<I3Q", 3, 1, 1 << 60, 1) + b"H"
    if case == "a header declaring too many frames":
        return struct.pack("<I", 1 << 20) + b"\0" * 64
    if case == "a message of no frames":
        return struct.pack("<I", 0)
    if case == "a hello cut short":
        return hello(token)[:-5]  # then closed by the test
    if case == "the token with a who that is no object":
        return message(P.HELLO, token, b"[1, 2]")
    if case == "the token with a who of wrong types":
        return hello(token, pid="1", rank=True)
    if case == "the token then a bogus result":
        return hello(token) + message(P.RESULTS, b"x", b"y")
    if case == "the token then a result of no task it was given":
        main = json.dumps("forged").encode()
        return hello(token) + message(P.RESULTS, P.result_meta(1, P.OK, len(main), 0), main)
    if case == "the token then a message of kind tasks":
        return hello(token) + message(P.TASKS, b"", b"")
    if case == "the token then a header declaring more than the limit":
        return hello(token) + struct.pack("<I2Q", 2, 1, P.MAX_MESSAGE)
    raise AssertionError(case)


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_bytes_on_the_express_socket_are_dropped_and_the_lane_serves_on(case):
    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        token = token_of(ex)
        sock = outsider(ex)
        try:
            send_quietly(sock, hostile_bytes(case, token))
            if case == "a hello cut short":
                sock.shutdown(socket.SHUT_WR)  # the driver reads the end of a message cut short
            assert closed_by_driver(sock), "the driver kept a connection that broke the protocol"
        finally:
            sock.close()
        wait_connections(lane, 2)
        assert len(lane.idle) == 2 and not lane.inflight and lane.workers == 2
        assert_serving(ex)


def test_a_hello_with_the_token_and_deeply_nested_json_leaves_the_lane_serving():
    # json.loads raises RecursionError, which is no ValueError.  Only a holder of the run's
    # token gets as far as the JSON, but the interchange refuses the same input in a
    # registration and carries on (test_htex_hostile); an escaped error kills the I/O thread.
    with HighThroughputExecutor(max_workers=1) as ex:
        lane = warm(ex, 1)
        sock = outsider(ex)
        try:
            send_quietly(sock, message(P.HELLO, token_of(ex), b"[" * 3000))
            assert closed_by_driver(sock)
        finally:
            sock.close()
        assert_serving(ex)
        wait_connections(lane, 1)


def test_a_token_holder_cannot_answer_for_a_task_a_worker_runs():
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(gate.wait, "genuine")
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        main = json.dumps("forged").encode()
        sock = outsider(ex)
        try:
            send_quietly(
                sock,
                hello(token_of(ex))
                + message(P.RESULTS, P.result_meta(future.task_id, P.OK, len(main), 0), main),
            )
            assert closed_by_driver(sock)
        finally:
            sock.close()
        assert not future.done()
        gate.open()
        assert future.result(TIMEOUT) == "genuine"
        wait_connections(lane, 1)
        assert_serving(ex)


def test_a_token_holder_that_takes_a_task_and_vanishes_has_it_requeued():
    with HighThroughputExecutor(max_workers=1) as ex:
        lane = warm(ex, 1)
        sock = outsider(ex)
        try:
            sock.sendall(hello(token_of(ex)))
            wait_for_lane(ex, 2)  # the outsider idles on the lane too, last in: it is taken first
            before = lane.sent
            future = ex.submit(square, 12)
            assert lane.sent == before + 1
            assert future.running()
            sock.settimeout(10.0)
            got = sock.recv(65536)
            (count,) = struct.unpack_from("<I", got)
            assert count == 3 and got[4 + 8 * count :].startswith(P.TASKS), (
                "the outsider was not sent the task"
            )
        finally:
            sock.close()  # gone without a word, and no pool knows of it
        closed = time.monotonic()
        assert future.result(TIMEOUT) == 144
        assert time.monotonic() - closed >= express_module.EVIDENCE_WAIT * 0.9
        assert future.execution is not None and future.execution.lost == 1
        assert future.execution.pid != os.getpid()
        wait_connections(lane, 1)
        assert_serving(ex)


def random_bytes(rng: random.Random, token: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # noise
        return rng.randbytes(rng.randint(1, 9000))
    if kind == 1:  # a plausible header, a body of the declared size or not
        count = rng.randint(0, 6)
        sizes = [rng.choice([0, 1, rng.randint(0, 5000), rng.randint(0, 1 << 40)]) for _ in range(count)]
        body = rng.randbytes(min(sum(sizes), rng.randint(0, 6000)))
        return struct.pack(f"<I{count}Q", count, *sizes) + body
    if kind == 2:  # a hello with a random token
        return hello(rng.randbytes(len(token)), pid=rng.randint(0, 1 << 20))
    if kind == 3:  # a hello-shaped message of random frames
        return message(P.HELLO, rng.randbytes(rng.randint(0, 80)), rng.randbytes(rng.randint(0, 500)))
    # a well-formed message of a random kind, then noise
    return message(rng.randbytes(1), rng.randbytes(rng.randint(0, 100))) + rng.randbytes(rng.randint(0, 100))


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_on_the_express_socket_in_rounds_leave_the_lane_serving(seed):
    rng = random.Random(seed)
    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        token = token_of(ex)
        for _round in range(5):
            socks = [outsider(ex) for _ in range(12)]
            try:
                for sock in socks:
                    send_quietly(sock, random_bytes(rng, token))
                for sock in socks[::2]:
                    sock.close()
                # With half of them still connected, possibly mid-message:
                assert len(lane.idle) == 2
                assert_serving(ex)
            finally:
                for sock in socks:
                    sock.close()
            wait_connections(lane, 2)
            assert_serving(ex)


def test_many_connections_opened_and_closed_leave_the_lane_serving():
    with HighThroughputExecutor(max_workers=2) as ex:
        lane = warm(ex, 2)
        held = [outsider(ex) for _ in range(200)]
        try:
            for i, sock in enumerate(held):
                if i % 3 == 0:
                    send_quietly(sock, b"\x03")  # the start of a header, never finished
            wait_connections(lane, 202)
            assert_serving(ex)
        finally:
            for sock in held:
                sock.close()
        wait_connections(lane, 2)
        for _ in range(300):
            outsider(ex).close()
        wait_connections(lane, 2)
        assert len(lane.idle) == 2
        assert_serving(ex)


# -- shutdown -------------------------------------------------------------------------------------------


def test_shutdown_leaves_no_process_and_removes_the_express_socket(leak_check):
    ex = HighThroughputExecutor(max_workers=2)
    try:
        warm(ex, 2)
        assert ex._space is not None
        path = ex._space.express_path
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert_serving(ex)
        leak_check()
    finally:
        ex.shutdown()
    assert not os.path.exists(path), "the express socket outlived the executor"


def test_shutdown_with_cancel_futures_lets_a_running_express_task_finish(leak_check):
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate, Recorder() as recorder:
        lane = warm(ex, 1)
        before = lane.sent
        running = ex.submit(gate.wait, "express")
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        # Behind it: one queued on the worker's connection, some waiting in the driver, the
        # rest the usual way; none begun.
        queued = [ex.submit(recorder.record, i) for i in range(10)]
        assert lane.sent == before + express_module.DEPTH and not queued[0].running()
        leak_check()
        stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
        stopper.start()
        deadline = time.monotonic() + TIMEOUT
        while not all(f.cancelled() for f in queued):
            assert time.monotonic() < deadline, "tasks queued behind an express task were not cancelled"
            time.sleep(0.01)
        assert stopper.is_alive(), "shutdown(wait=True) returned before the express task ended"
        assert not running.done() and running.running()
        gate.open()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive(), "shutdown(wait=True) hung"
        assert running.result(0) == "express"
        assert recorder.values == [], "a cancelled task ran"


def test_terminate_under_an_express_task_fails_it_and_leaves_no_process(tmp_path, leak_check):
    pids = tmp_path / "pids"
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate:
        lane = warm(ex, 1)
        assert ex._space is not None
        path = ex._space.express_path
        before = lane.sent
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        leak_check()
        (worker,) = read_pids(pids)
        done = threading.Thread(target=ex.terminate)
        done.start()
        done.join(TIMEOUT)
        assert not done.is_alive(), "terminate() hung under an express task"
        assert isinstance(future.exception(TIMEOUT), ExecutorShutdownError)
    assert_all_gone({worker})
    assert not os.path.exists(path)


# -- the run record ---------------------------------------------------------------------------------------



@pytest.fixture
def no_env_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No recording unless a test asks: HPCFUTURES_RECORD unset, records under tmp_path."""
    monkeypatch.delenv("HPCFUTURES_RECORD", raising=False)
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path / "records"))


def test_a_recorded_run_has_each_express_task_done_once_with_its_try(tmp_path, no_env_record, leak_check):
    path = tmp_path / "r.db"
    n = 100
    with HighThroughputExecutor(max_workers=2, record=path) as ex:
        lane = warm(ex, 2)
        before = lane.sent
        futures = []
        for i in range(n):
            future = ex.submit(double, i)
            assert future.result(TIMEOUT) == 2 * i
            futures.append(future)
        assert lane.sent == before + n
        leak_check()
    total = n + 1  # and the warm-up task
    assert rows(path, "SELECT count(*), sum(state = 'done') FROM task") == [(total, total)]
    assert rows(path, "SELECT count(*) FROM task WHERE func LIKE '%double%'") == [(n,)]
    tries = rows(
        path,
        "SELECT task_id, count(*), min(try_no), sum(outcome = 'ok'), min(pid), min(worker), min(pool) "
        "FROM try GROUP BY task_id ORDER BY task_id",
    )
    assert len(tries) == total
    assert all(t[1:4] == (1, 1, 1) for t in tries), [t for t in tries if t[1:4] != (1, 1, 1)][:5]
    worker_pids = {f.execution.pid for f in futures}
    express_tries = {t[0]: t for t in tries[1:]}
    for future in futures:
        task_id, _count, _try, _ok, pid, worker, pool = express_tries[future.task_id]
        assert pid == future.execution.pid and worker == future.execution.worker and pool is not None
    assert worker_pids and os.getpid() not in worker_pids


def test_a_recorded_express_task_whose_worker_was_killed_has_a_lost_try_then_a_good_one(
    tmp_path, no_env_record, leak_check
):
    path = tmp_path / "r.db"
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1, record=path) as ex, Gate() as gate:
        lane = warm(ex, 1)
        before = lane.sent
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        (first,) = read_pids(pids)
        os.kill(first, signal.SIGKILL)
        gate.wait_entered(2, TIMEOUT)
        gate.open()
        second = future.result(TIMEOUT)
        leak_check()
    task = future.task_id
    tries = rows(
        path,
        "SELECT try_no, outcome, charged, pid, worker, exit_code FROM try WHERE task_id = ? ORDER BY try_no",
        task,
    )
    assert tries == [(1, "lost", 0, first, 0, -signal.SIGKILL), (2, "ok", 1, second, 0, None)]
    assert rows(path, "SELECT state, tries FROM task WHERE task_id = ?", task) == [("done", 2)]


def test_node_samples_count_a_worker_running_an_express_task_as_busy(tmp_path, no_env_record):
    path = tmp_path / "r.db"
    with HighThroughputExecutor(max_workers=2, record=path, sample_interval=0.1) as ex, Gate() as gate:
        lane = warm(ex, 2)
        before = lane.sent
        future = ex.submit(gate.wait, "express")
        assert lane.sent == before + 1
        gate.wait_entered(1, TIMEOUT)
        entered = time.time()
        # Samples reach the record through the writer, which commits now and then: wait for
        # one taken while the task surely runs.
        deadline = time.monotonic() + TIMEOUT
        while not path.exists() or not rows(path, "SELECT count(*) FROM sample WHERE at > ?", entered)[0][0]:
            assert time.monotonic() < deadline, "no node sample was recorded"
            time.sleep(0.05)
        gate.open()
        assert future.result(TIMEOUT) == "express"
    execution = future.execution
    assert execution is not None and execution.started is not None and execution.ended is not None
    samples = rows(
        path, "SELECT busy, workers FROM sample WHERE at BETWEEN ? AND ?", execution.started, execution.ended
    )
    assert samples, "no sample was taken while the express task ran"
    assert all(workers == 2 for _busy, workers in samples)
    # (Before the pool counted workers running express tasks, every one of them said 0.)
    assert max(busy for busy, _workers in samples) >= 1, (
        f"samples (busy, workers) while an express task ran: {samples}"
    )


def test_connections_refused_for_the_token_are_logged_once_as_a_warning(caplog):
    with HighThroughputExecutor(max_workers=1) as ex:
        lane = warm(ex, 1)
        with caplog.at_level(logging.DEBUG, logger="hpcfutures.executors.htex.executor"):
            for _ in range(5):
                sock = outsider(ex)
                try:
                    send_quietly(sock, message(P.HELLO, b"not the token", b"{}"))
                    assert closed_by_driver(sock)
                finally:
                    sock.close()
        refused = [r for r in caplog.records if "dropped a connection" in r.getMessage()]
        assert [r.levelno for r in refused] == [logging.WARNING] + [logging.DEBUG] * 4
        assert lane.refused == 5
        assert_serving(ex)
