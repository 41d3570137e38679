"""DataflowExecutor: dependency graphs, lazy failure, cancel, routing, backends, shutdown, memory."""

from __future__ import annotations

import gc
import multiprocessing
import re
import threading
import weakref
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any

import pytest

from hpcfutures import (
    ConfigurationError,
    DataflowExecutor,
    DataflowFuture,
    DependencyError,
    HighThroughputExecutor,
    ThreadExecutor,
    UnsupportedOptionError,
)
from hpcfutures.dataflow import current_executor
from hpcfutures.testing import ConformanceError, Gate, Recorder, conformance_suite
from hpcfutures.testing.tasks import add, identity, raise_error, square

TIMEOUT = 30

TestDataflowConformance = conformance_suite(
    lambda: DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True),
    workers=2,
    name="TestDataflowConformance",
)
TestDataflowHtexConformance = conformance_suite(
    lambda: DataflowExecutor(HighThroughputExecutor(max_workers=2), shutdown_executors=True),
    workers=2,
    name="TestDataflowHtexConformance",
)


class Runs:
    """Counts calls per key across threads; handed to tasks as an argument, not a global."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __call__(self, key: str, value: Any) -> Any:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
        return value


def thread_name(*_deps: Any) -> str:
    return threading.current_thread().name


def fail_when(event: threading.Event) -> None:
    if not event.wait(TIMEOUT):
        raise TimeoutError("the test never set the event")
    raise ValueError("root failure")


class Payload:
    """An argument object whose lifetime the memory tests follow with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n


def payload_value(payload: Payload, *_deps: Any) -> int:
    return payload.n


@pytest.fixture
def dfx():
    ex = DataflowExecutor(ThreadExecutor(max_workers=4), shutdown_executors=True)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


# -- futures and graphs -------------------------------------------------------------------------------


def test_futures_are_concurrent_futures_with_task_ids(dfx):
    a = dfx.submit(square, 3)
    b = dfx.submit(add, a, 1)
    assert isinstance(a, Future) and isinstance(a, DataflowFuture)
    assert b.task_id == a.task_id + 1
    assert (a.name, b.name) == ("square", "add")
    assert b.result(timeout=TIMEOUT) == 10
    assert f"task {b.task_id} (add)" in repr(b)


def test_diamond_runs_each_task_once(dfx):
    runs = Runs()
    top = dfx.submit(runs, "top", 1)
    left = dfx.submit(add, top, 10)
    right = dfx.submit(add, top, 100)
    bottom = dfx.submit(add, left, right)
    assert bottom.result(timeout=TIMEOUT) == 112
    assert runs.counts == {"top": 1}


def test_a_task_waits_for_every_dependency(dfx):
    gates = [threading.Event() for _ in range(3)]
    upstream = [dfx.submit(lambda e, i: e.wait(TIMEOUT) and i, e, i) for i, e in enumerate(gates)]
    total = dfx.submit(sum, upstream)
    gates[0].set()
    gates[2].set()
    upstream[0].result(timeout=TIMEOUT)
    upstream[2].result(timeout=TIMEOUT)
    assert not total.done() and not total.running()
    gates[1].set()
    assert total.result(timeout=TIMEOUT) == 3


def test_a_10000_task_chain_over_threads():
    n = 10_000
    with DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True) as dfx:
        futures = [dfx.submit(add, 0, 1)]
        for _ in range(n - 1):
            futures.append(dfx.submit(add, futures[-1], 1))
        assert futures[-1].result(timeout=TIMEOUT) == n
        # Bounded memory: every finished task's record is gone.
        assert dfx.pending == 0 and not dfx._engine.live
        assert all(f._task is None for f in futures)


def test_waiting_tasks_use_no_thread_each(dfx):
    trigger: Future[Any] = Future()
    before = threading.active_count()
    futures = [dfx.submit(identity, trigger) for _ in range(1000)]
    assert threading.active_count() == before
    assert dfx.pending == 1000
    trigger.set_result("go")
    done, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done and {f.result() for f in done} == {"go"}


def test_running_is_true_only_while_the_backend_runs_the_task(dfx):
    with Gate() as gate:
        blocked = dfx.submit(gate.wait, "up")
        waiting = dfx.submit(identity, blocked)
        gate.wait_entered(1, TIMEOUT)
        assert blocked.running()
        assert not waiting.running(), "a task waiting for dependencies is not running"
        gate.open()
        assert waiting.result(timeout=TIMEOUT) == "up"
        assert not blocked.running() and not waiting.running()


# -- lazy failure ---------------------------------------------------------------------------------------


def test_lazy_failure_fails_only_the_dependents(dfx):
    root = dfx.submit(identity, 1)
    bad = dfx.submit(raise_error, "broken")
    independent = dfx.submit(add, root, 1)
    child = dfx.submit(add, bad, 1)
    grandchild = dfx.submit(add, child, root)
    after_independent = dfx.submit(add, independent, 1)

    assert independent.result(timeout=TIMEOUT) == 2
    assert after_independent.result(timeout=TIMEOUT) == 3

    original = bad.exception(timeout=TIMEOUT)
    assert type(original) is ConformanceError

    error = child.exception(timeout=TIMEOUT)
    assert type(error) is DependencyError
    assert error.failed == [(bad.task_id, "raise_error", original)]
    assert error.chain == [f"task {bad.task_id} (raise_error)", f"task {child.task_id} (add)"]
    assert error.__cause__ is original
    assert f"task {bad.task_id} (raise_error)" in str(error) and "broken" in str(error)

    deeper = grandchild.exception(timeout=TIMEOUT)
    assert type(deeper) is DependencyError
    ((task_id, name, exc),) = deeper.failed
    assert (task_id, name, exc) == (child.task_id, "add", error)
    assert deeper.chain == [*error.chain, f"task {grandchild.task_id} (add)"]
    assert deeper.__cause__ is original
    with pytest.raises(DependencyError):
        grandchild.result(timeout=TIMEOUT)


def test_every_failed_dependency_is_listed(dfx):
    first = dfx.submit(raise_error, "one")
    second = dfx.submit(divmod, 1, 0)
    fine = dfx.submit(identity, 3)
    joined = dfx.submit(identity, [first, fine, second])
    error = joined.exception(timeout=TIMEOUT)
    assert type(error) is DependencyError
    assert [(i, n, type(e)) for i, n, e in error.failed] == [
        (first.task_id, "raise_error", ConformanceError),
        (second.task_id, "divmod", ZeroDivisionError),
    ]
    assert error.chain[0] == f"task {first.task_id} (raise_error)"
    assert type(error.__cause__) is ConformanceError


def test_a_failure_travels_down_a_10000_task_chain():
    n = 10_000
    release = threading.Event()
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True)
    try:
        root = dfx.submit(fail_when, release)
        futures = [dfx.submit(add, root, 1)]
        for _ in range(n - 1):
            futures.append(dfx.submit(add, futures[-1], 1))
        release.set()  # the failure now reaches every waiting task through done-callbacks
        error = futures[-1].exception(timeout=TIMEOUT)
        assert type(error) is DependencyError
        assert type(error.__cause__) is ValueError
        assert error.chain_length == n + 1
        chain = error.chain
        assert len(chain) == n + 1
        assert chain[0] == f"task {root.task_id} (fail_when)"
        assert chain[-1] == f"task {futures[-1].task_id} (add)"
        assert len(str(error)) < 500, "the message must not spell out 10,000 tasks"
        assert dfx.pending == 0
    finally:
        release.set()
        dfx.shutdown(wait=False, cancel_futures=True)  # a failed test must not hang here


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_a_waiting_task_fails_its_dependents(dfx):
    with Gate() as gate:
        upstream = dfx.submit(gate.wait, "up")
        waiting = dfx.submit(identity, upstream)
        dependent = dfx.submit(add, waiting, "!")
        assert waiting.cancel() is True
        assert waiting.cancelled() and waiting.done()
        done, _ = wait([waiting], timeout=0)
        assert done == {waiting}, "wait() must see the cancel at once"
        error = dependent.exception(timeout=TIMEOUT)
        assert type(error) is DependencyError
        assert isinstance(error.__cause__, CancelledError)
        assert error.failed[0][0] == waiting.task_id
        gate.open()
        assert upstream.result(timeout=TIMEOUT) == "up"
        with pytest.raises(CancelledError):
            waiting.result(timeout=0)


def test_cancel_a_task_queued_behind_a_busy_worker():
    with (
        DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True) as dfx,
        Gate() as gate,
        Recorder() as recorder,
    ):
        blocker = dfx.submit(gate.wait, "blocker")
        gate.wait_entered(1, TIMEOUT)
        queued = dfx.submit(recorder.record, "queued")
        dependent = dfx.submit(recorder.record, queued)
        after = dfx.submit(recorder.record, "after")

        assert blocker.cancel() is False, "cancel() of a running task must return False"
        assert queued.cancel() is True
        assert queued.cancelled()
        assert type(dependent.exception(timeout=TIMEOUT)) is DependencyError

        gate.open()
        assert blocker.result(timeout=TIMEOUT) == "blocker"
        assert after.result(timeout=TIMEOUT) == "after"
        assert recorder.values == ["after"], "the cancelled task ran"


def test_cancel_of_a_finished_task_returns_false(dfx):
    fut = dfx.submit(square, 2)
    assert fut.result(timeout=TIMEOUT) == 4
    assert fut.cancel() is False and not fut.cancelled()


# -- routing to several executors ------------------------------------------------------------------


@pytest.fixture
def two():
    ex = DataflowExecutor(
        executors={
            "a": ThreadExecutor(1, thread_name_prefix="A"),
            "b": ThreadExecutor(1, thread_name_prefix="B"),
        },
        shutdown_executors=True,
    )
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_plain_submit_goes_to_the_first_label(two):
    assert two.default_label == "a"
    assert two.submit(thread_name).result(timeout=TIMEOUT).startswith("A")


def test_options_routes_by_label(two):
    on_b = two.options(executors="b")
    first = on_b.submit(thread_name)
    assert first.result(timeout=TIMEOUT).startswith("B")
    # A task on "a" that depends on a task on "b".
    assert two.options(executors=["a"]).submit(thread_name, first).result(timeout=TIMEOUT).startswith("A")
    either = two.options(executors=("a", "b"))
    names = {either.submit(thread_name).result(timeout=TIMEOUT)[0] for _ in range(20)}
    assert names <= {"A", "B"} and names


def test_unknown_label_fails_at_options(two):
    with pytest.raises(ConfigurationError, match="nowhere"):
        two.options(executors="nowhere")
    with pytest.raises(ConfigurationError, match="unknown executor label"):
        two.options(executors=["a", "nowhere"])
    with pytest.raises(ConfigurationError):
        two.options(executors=[])


def test_backend_options_the_backend_cannot_honour_fail_at_options():
    with DataflowExecutor(ThreadPoolExecutor(max_workers=1), shutdown_executors=True) as dfx:
        with pytest.raises(UnsupportedOptionError, match="options"):
            dfx.options(priority=1)
    with DataflowExecutor() as dfx:
        with pytest.raises(UnsupportedOptionError):
            dfx.options(walltime=10)
        with pytest.raises(ConfigurationError, match="walltime"):
            dfx.options(walltime=0)
        with pytest.raises(ConfigurationError, match="retries"):
            dfx.options(retries=-1)
        assert dfx.options(priority=5).submit(add, 2, 3).result(timeout=TIMEOUT) == 5


# -- backends ---------------------------------------------------------------------------------------


def _process_pool():
    return ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("forkserver"))


def _loky():
    loky = pytest.importorskip("loky", reason="loky is not installed")
    return loky.ProcessPoolExecutor(max_workers=2)


BACKENDS = {
    "ThreadPoolExecutor": lambda: ThreadPoolExecutor(max_workers=2),
    "ProcessPoolExecutor": _process_pool,
    "HighThroughputExecutor": lambda: HighThroughputExecutor(max_workers=2),
    "loky": _loky,
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_dependency_graph_over_any_executor(backend):
    inner = BACKENDS[backend]()
    dfx = DataflowExecutor(inner, shutdown_executors=True)
    try:
        a = dfx.submit(square, 3)
        b = dfx.submit(add, a, 1)
        c = dfx.submit(add, a, b=b)
        d = dfx.submit(identity, {"all": [a, b, c], "pair": (b, c)})
        assert d.result(timeout=60) == {"all": [9, 10, 19], "pair": (10, 19)}

        bad = dfx.submit(raise_error, "remote")
        after_bad = dfx.submit(add, bad, 1)
        error = after_bad.exception(timeout=60)
        assert type(error) is DependencyError
        assert type(error.__cause__) is ConformanceError and error.__cause__.args == ("remote",)

        assert list(dfx.map(add, [a, b, 5], [1, c, 1], timeout=60)) == [10, 29, 6]
        dfx.shutdown(wait=True)
    finally:
        dfx.shutdown(wait=False, cancel_futures=True)  # a failed test must not hang here


# -- shutdown ---------------------------------------------------------------------------------------


def test_shutdown_leaves_a_given_executor_running():
    with ThreadPoolExecutor(max_workers=1) as given:
        dfx = DataflowExecutor(given)
        assert dfx.submit(square, 4).result(timeout=TIMEOUT) == 16
        dfx.shutdown()
        assert given.submit(square, 5).result(timeout=TIMEOUT) == 25
        with pytest.raises(RuntimeError):
            dfx.submit(square, 6)


def test_shutdown_executors_shuts_down_given_executors():
    given = {"x": ThreadPoolExecutor(max_workers=1), "y": ThreadExecutor(max_workers=1)}
    dfx = DataflowExecutor(executors=given, shutdown_executors=True)
    assert dfx.options(executors="y").submit(square, 3).result(timeout=TIMEOUT) == 9
    dfx.shutdown()
    for ex in given.values():
        with pytest.raises(RuntimeError):
            ex.submit(square, 1)


def test_shutdown_stops_the_executor_it_created():
    dfx = DataflowExecutor()
    created = dfx.executors["default"]
    assert isinstance(created, ThreadExecutor)
    assert dfx.submit(square, 2).result(timeout=TIMEOUT) == 4
    dfx.shutdown()
    with pytest.raises(RuntimeError):
        created.submit(square, 1)


def test_shutdown_without_wait_still_runs_waiting_tasks():
    dfx = DataflowExecutor()
    with Gate() as gate:
        upstream = dfx.submit(gate.wait, 20)
        waiting = dfx.submit(add, upstream, 1)
        gate.wait_entered(1, TIMEOUT)
        dfx.shutdown(wait=False)
        with pytest.raises(RuntimeError):
            dfx.submit(square, 1)
        gate.open()
        assert waiting.result(timeout=TIMEOUT) == 21
    dfx.shutdown(wait=True)


def test_shutdown_cancel_futures_cancels_waiting_and_queued_tasks():
    dfx = DataflowExecutor(ThreadExecutor(max_workers=1))
    with Gate() as gate, Recorder() as recorder:
        running = dfx.submit(gate.wait, "ran")
        gate.wait_entered(1, TIMEOUT)
        queued = dfx.submit(recorder.record, "queued")
        waiting = dfx.submit(recorder.record, running)
        dfx.shutdown(wait=False, cancel_futures=True)
        assert queued.cancelled() and waiting.cancelled()
        assert not running.cancelled()
        gate.open()
        assert running.result(timeout=TIMEOUT) == "ran"
        dfx.shutdown(wait=True)
        assert recorder.values == []


def test_shutdown_of_a_loky_executor_with_cancel_futures():
    loky = pytest.importorskip("loky", reason="loky is not installed")
    dfx = DataflowExecutor(loky.ProcessPoolExecutor(max_workers=1), shutdown_executors=True)
    assert dfx.submit(square, 5).result(timeout=60) == 25
    dfx.shutdown(wait=True, cancel_futures=True)  # loky's shutdown() has no cancel_futures
    with pytest.raises(RuntimeError):
        dfx.executors["default"].submit(square, 1)


def test_submit_after_shutdown_raises(dfx):
    view = dfx.options(retries=1)
    dfx.shutdown()
    with pytest.raises(RuntimeError):
        dfx.submit(square, 2)
    with pytest.raises(RuntimeError):
        view.submit(square, 2)


def test_with_block_sets_the_current_executor_and_shuts_down():
    assert current_executor.get() is None
    with DataflowExecutor() as dfx:
        assert current_executor.get() is dfx
        fut = dfx.submit(square, 9)
    assert current_executor.get() is None
    assert fut.result(timeout=0) == 81
    with pytest.raises(RuntimeError):
        dfx.submit(square, 1)


# -- constructor ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"executor": "ThreadPool", "executors": {"a": "ThreadPool"}}, r"executor=.*executors="),
        ({"executors": {}}, r"^executors must"),
        ({"executors": {"": "ThreadPool"}}, r"label"),
        ({"executors": {"a": object()}}, r"^executors\['a'\]"),
        ({"executor": 42}, r"^executor must"),
        ({"retries": -1}, r"^retries"),
        ({"retries": 1.5}, r"^retries"),
        ({"retries": True}, r"^retries"),
        ({"retry_handler": 3}, r"^retry_handler"),
    ],
)
def test_bad_arguments_raise_configuration_error_naming_the_parameter(kwargs, pattern):
    with ThreadPoolExecutor(max_workers=1) as pool:

        def real(value: Any) -> Any:
            if value == "ThreadPool":
                return pool
            if isinstance(value, dict):
                return {k: real(v) for k, v in value.items()}
            return value

        with pytest.raises(ConfigurationError) as info:
            DataflowExecutor(**{k: real(v) for k, v in kwargs.items()})
        assert re.search(pattern, str(info.value)), str(info.value)


# -- map ----------------------------------------------------------------------------------------------


def test_map_keeps_order_and_stops_at_the_shortest(dfx):
    assert list(dfx.map(square, range(50))) == [i * i for i in range(50)]
    assert list(dfx.map(add, range(10), range(100, 103))) == [100, 102, 104]
    assert list(dfx.map(square, range(20), chunksize=7)) == [i * i for i in range(20)]


def test_map_over_futures(dfx):
    inputs = [dfx.submit(square, i) for i in range(10)]
    assert list(dfx.map(add, inputs, inputs, timeout=TIMEOUT)) == [2 * i * i for i in range(10)]


def test_map_raises_the_first_failure_in_order(dfx):
    results = dfx.map(divmod, [4, 1, 9], [2, 0, 3], timeout=TIMEOUT)
    assert next(results) == (2, 0)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(dfx):
    blocked: Future[Any] = Future()
    results = dfx.map(identity, [blocked, 1], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    # As in the stdlib, the tasks not done yet are cancelled: nothing is left waiting.
    assert dfx.pending == 0


# -- bounded memory -------------------------------------------------------------------------------


def test_a_finished_task_drops_its_arguments(dfx):
    # The test keeps the upstream future, whose done-callbacks still reference the task.
    upstream: Future[Any] = Future()
    payload = Payload(7)
    ref = weakref.ref(payload)
    fut = dfx.submit(payload_value, payload, upstream)
    upstream.set_result(1)
    assert fut.result(timeout=TIMEOUT) == 7
    del payload
    gc.collect()
    assert ref() is None, "the finished task still holds its argument"
    assert fut._task is None and dfx.pending == 0


def test_a_retried_task_drops_its_arguments(dfx):
    upstream: Future[Any] = Future()
    payload = Payload(8)
    ref = weakref.ref(payload)
    failures = Runs()

    def fail_once(payload: Payload, _dep: Any, runs: Runs) -> int:
        if runs("attempt", 1) and runs.counts["attempt"] == 1:
            raise RuntimeError(f"first attempt with {payload.n}")
        return payload.n

    fut = dfx.options(retries=1).submit(fail_once, payload, upstream, failures)
    upstream.set_result(1)
    assert fut.result(timeout=TIMEOUT) == 8
    assert failures.counts == {"attempt": 2}
    del payload
    gc.collect()
    assert ref() is None, "the retry record still holds the argument"
