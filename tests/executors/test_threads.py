"""ThreadExecutor: the conformance suite, priorities, options() rejections and views."""

from __future__ import annotations

import queue
import random
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import pytest

import hpcfutures
from hpcfutures import ConfigurationError, Resources, ThreadExecutor, UnsupportedOptionError
from hpcfutures.executors.threads import _WorkQueue
from hpcfutures.testing import Gate, conformance_suite

TIMEOUT = 30.0

TestThreadExecutorConformance = conformance_suite(lambda: ThreadExecutor(max_workers=2), workers=2)


def test_is_a_thread_pool_executor_exported_by_the_package() -> None:
    assert hpcfutures.ThreadExecutor is ThreadExecutor
    with ThreadExecutor(max_workers=1, thread_name_prefix="named") as ex:
        assert isinstance(ex, ThreadPoolExecutor)
        assert ex.submit(lambda: threading.current_thread().name).result(TIMEOUT).startswith("named")


# -- priorities -------------------------------------------------------------------------


def _run_in_order(plan: list[tuple[int | None, str]]) -> list[str]:
    """Queue ``plan`` behind a blocked single worker; return the order the tasks ran in.

    A priority of None means a plain ``submit``.
    """
    order: list[str] = []
    with ThreadExecutor(max_workers=1) as ex, Gate() as gate:
        ex.submit(gate.wait)
        gate.wait_entered(1, TIMEOUT)
        futures = [
            (ex if p is None else ex.options(priority=p)).submit(order.append, name) for p, name in plan
        ]
        gate.open()
        _, not_done = wait(futures, timeout=TIMEOUT)
        assert not not_done
    return order


def test_higher_priority_runs_first_fifo_among_equals() -> None:
    plan: list[tuple[int | None, str]] = [
        (0, "a"), (5, "b"), (-1, "c"), (5, "d"), (None, "e"), (10, "f"), (-1, "g"), (0, "h"),
    ]  # fmt: skip
    assert _run_in_order(plan) == ["f", "b", "d", "a", "e", "h", "c", "g"]


def test_plain_submits_queued_before_a_priority_task_still_run_in_order() -> None:
    plan: list[tuple[int | None, str]] = [(None, f"plain{i}") for i in range(5)]
    plan += [(3, "urgent"), (None, "plain5"), (-3, "last"), (None, "plain6")]
    assert _run_in_order(plan) == ["urgent"] + [f"plain{i}" for i in range(7)] + ["last"]


def test_many_priorities_run_as_a_stable_sort() -> None:
    rng = random.Random(1234)
    plan: list[tuple[int | None, str]] = [(rng.choice([None, -2, -1, 0, 1, 2]), f"t{i}") for i in range(300)]
    expected = [name for _, name in sorted(plan, key=lambda pn: -(pn[0] or 0))]
    assert _run_in_order(plan) == expected


def test_shutdown_wait_runs_low_priority_tasks_before_the_workers_stop() -> None:
    ex = ThreadExecutor(max_workers=2)
    with Gate() as gate:
        blockers = [ex.submit(gate.wait) for _ in range(2)]
        gate.wait_entered(2, TIMEOUT)
        low = [ex.options(priority=-5).submit(pow, 2, i) for i in range(20)]
        ex.shutdown(wait=False)
        with pytest.raises(RuntimeError):
            ex.options(priority=-5).submit(pow, 2, 2)
        gate.open()
        ex.shutdown(wait=True)
    assert all(f.done() for f in blockers)
    assert [f.result(timeout=0) for f in low] == [2**i for i in range(20)]


def test_shutdown_cancel_futures_cancels_queued_priority_tasks() -> None:
    ex = ThreadExecutor(max_workers=1)
    with Gate() as gate:
        blocker = ex.submit(gate.wait, "blocker")
        gate.wait_entered(1, TIMEOUT)
        queued = [ex.options(priority=p).submit(pow, 2, 3) for p in (3, 0, -3)] + [ex.submit(pow, 2, 3)]
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        assert not blocker.cancelled()
        gate.open()
        assert blocker.result(TIMEOUT) == "blocker"
        ex.shutdown(wait=True)


def test_a_failing_initializer_fails_queued_priority_tasks() -> None:
    def broken() -> None:
        raise RuntimeError("initializer fails on purpose")

    ex = ThreadExecutor(max_workers=1, initializer=broken)
    try:
        fut = ex.options(priority=4).submit(pow, 2, 3)
        with pytest.raises(BrokenThreadPool):
            fut.result(TIMEOUT)
        with pytest.raises(BrokenThreadPool):
            ex.options(priority=4).submit(pow, 2, 3)
    finally:
        ex.shutdown(wait=True)


def test_work_queue_orders_items_and_sentinels() -> None:
    q = _WorkQueue()
    q.put("plain-a")
    q.put_priority("high", 5)
    q.put("plain-b")
    q.put_priority("low", -1)
    q.put(None)
    assert [q.get_nowait() for _ in range(5)] == ["high", "plain-a", "plain-b", "low", None]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_work_queue_hands_out_each_item_once_under_contention() -> None:
    q = _WorkQueue()
    got: list[Any] = []
    got_lock = threading.Lock()

    def consume() -> None:
        while (item := q.get(timeout=TIMEOUT)) is not None:
            with got_lock:
                got.append(item)
        q.put(None)  # pass the sentinel on, as the stdlib worker does

    def produce(base: int) -> None:
        for i in range(base, base + 500):
            if i % 3:
                q.put_priority(i, i % 7 - 3)
            else:
                q.put(i)

    consumers = [threading.Thread(target=consume) for _ in range(4)]
    producers = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join(TIMEOUT)
    q.put(None)
    for t in consumers:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert sorted(got) == [k * 1000 + i for k in range(4) for i in range(500)]


# -- options() --------------------------------------------------------------------------


def test_options_accepts_priority_and_default_resources() -> None:
    with ThreadExecutor(max_workers=1) as ex:
        view = ex.options(priority=3, resources=Resources())
        assert view.task_options.priority == 3
        assert view.submit(pow, 2, 5).result(TIMEOUT) == 32
        assert list(view.map(pow, [2, 3], [2, 2], timeout=TIMEOUT)) == [4, 9]
        assert view.options(priority=-1).task_options.priority == -1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"walltime": 10}, "walltime=10"),
        ({"resources": Resources(cores=4)}, "cores=4"),
        ({"resources": Resources(gpus=1, memory_gb=2.0)}, "memory_gb=2.0, gpus=1"),
        ({"resources": Resources(num_nodes=2)}, "num_nodes=2"),
        ({"resources": Resources(ranks_per_node=4)}, "ranks_per_node=4"),
    ],
)
def test_options_rejects_what_threads_cannot_honour(kwargs: dict[str, Any], named: str) -> None:
    with ThreadExecutor(max_workers=1) as ex:
        with pytest.raises(UnsupportedOptionError) as info:
            ex.options(**kwargs)
        message = str(info.value)
        assert named in message and message.startswith("ThreadExecutor cannot")
        with pytest.raises(UnsupportedOptionError):
            ex.options(priority=1).options(**kwargs)


def test_walltime_hint_says_htex_enforces_it() -> None:
    with (
        ThreadExecutor(max_workers=1) as ex,
        pytest.raises(UnsupportedOptionError, match="HighThroughputExecutor, which enforces walltime"),
    ):
        ex.options(walltime=5.0)


def test_resources_hint_says_what_to_do() -> None:
    with (
        ThreadExecutor(max_workers=1) as ex,
        pytest.raises(UnsupportedOptionError, match="Size the task to one core"),
    ):
        ex.options(resources=Resources(cores=2))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"priority": 1.5}, "priority"), ({"priority": 2**40}, "priority"), ({"walltime": -1}, "walltime")],
)
def test_options_rejects_invalid_values_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with ThreadExecutor(max_workers=1) as ex:
        with pytest.raises(ConfigurationError, match=field) as info:
            ex.options(**kwargs)
        assert not isinstance(info.value, UnsupportedOptionError)


# -- views ------------------------------------------------------------------------------


def test_view_shutdown_leaves_the_backend_running() -> None:
    with ThreadExecutor(max_workers=1) as ex:
        with ex.options(priority=1) as view:
            assert view.submit(pow, 2, 2).result(TIMEOUT) == 4
        with pytest.raises(RuntimeError, match="options\\(\\) view"):
            view.submit(pow, 2, 2)
        with pytest.raises(RuntimeError, match="options\\(\\) view"):
            list(view.map(pow, [2], [2]))
        assert ex.submit(pow, 2, 3).result(TIMEOUT) == 8
        assert ex.options(priority=1).submit(pow, 2, 4).result(TIMEOUT) == 16


def test_view_shutdown_wait_waits_for_its_own_tasks_only() -> None:
    with ThreadExecutor(max_workers=1) as ex, Gate() as gate:
        ex.submit(gate.wait)
        gate.wait_entered(1, TIMEOUT)
        view = ex.options(priority=2)
        mine = [view.submit(pow, 2, i) for i in range(5)]
        theirs = ex.options(priority=-1).submit(gate.wait, "theirs")

        closing = threading.Thread(target=view.shutdown, kwargs={"wait": True}, daemon=True)
        closing.start()
        closing.join(0.2)
        assert closing.is_alive(), "view.shutdown(wait=True) returned before its tasks ran"
        gate.open()
        closing.join(TIMEOUT)
        assert not closing.is_alive()
        assert [f.result(timeout=0) for f in mine] == [2**i for i in range(5)]
        assert theirs.result(TIMEOUT) == "theirs"


def test_view_shutdown_cancel_futures_cancels_its_own_queued_tasks_only() -> None:
    with ThreadExecutor(max_workers=1) as ex, Gate() as gate:
        blocker = ex.submit(gate.wait, "blocker")
        gate.wait_entered(1, TIMEOUT)
        view = ex.options(priority=1)
        mine = [view.submit(pow, 2, i) for i in range(3)]
        theirs = ex.submit(pow, 3, 2)

        # Returns at once although the worker is still blocked: cancelled tasks need no wait.
        closing = threading.Thread(target=view.shutdown, kwargs={"cancel_futures": True}, daemon=True)
        closing.start()
        closing.join(TIMEOUT)
        assert not closing.is_alive(), "view.shutdown(cancel_futures=True) waited for cancelled tasks"
        assert all(f.cancelled() for f in mine)
        assert not blocker.cancelled() and not theirs.cancelled()
        gate.open()
        assert theirs.result(TIMEOUT) == 9


def test_view_submit_after_backend_shutdown_raises() -> None:
    ex = ThreadExecutor(max_workers=1)
    view = ex.options(priority=1)
    plain_view = ex.options()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        view.submit(pow, 2, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        plain_view.submit(pow, 2, 2)


# -- constructor validation ------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_max_workers_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_workers") as info:
        ThreadExecutor(max_workers=bad)
    assert isinstance(info.value, ValueError)  # as the stdlib raises for max_workers <= 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"thread_name_prefix": 3}, "thread_name_prefix"),
        ({"initializer": "not callable"}, "initializer"),
        ({"initializer": print, "initargs": [1]}, "initargs"),
    ],
)
def test_other_parameters_are_validated_by_name(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        ThreadExecutor(**kwargs)


def test_defaults_and_initializer() -> None:
    seen: list[int] = []
    with ThreadExecutor(max_workers=None) as ex:
        assert ex._max_workers >= 1
    with ThreadExecutor(max_workers=2, initializer=seen.append, initargs=(7,)) as ex:
        ex.submit(pow, 1, 1).result(TIMEOUT)
    assert seen and set(seen) == {7}
