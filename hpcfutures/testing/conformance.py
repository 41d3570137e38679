"""Implements conformance_suite: a pytest class that certifies a concurrent.futures backend.

One line in a test module runs every check against a backend::

    from hpcfutures.testing import conformance_suite

    TestMyExecutor = conformance_suite(lambda: MyExecutor(max_workers=2), workers=2)

or, to override a check or the ``timeout``, subclass :class:`ExecutorConformance`::

    class TestMyExecutor(ExecutorConformance):
        factory = staticmethod(make_my_executor)
        workers = 2

Each test makes a fresh executor from the factory and shuts it down afterwards.  Tasks may
run in other processes: they are module-level functions of :mod:`hpcfutures.testing.tasks`,
picklable :class:`~hpcfutures.testing.Gate` / :class:`~hpcfutures.testing.Recorder`
callables, or lambdas and closures (which need a cloudpickle-capable backend).  Tests
synchronise with tasks through real events, never sleeps, and every blocking call has a
timeout (the class attribute ``timeout``), so a broken backend fails instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Executor,
    Future,
    as_completed,
    wait,
)
from typing import Any

import pytest

from .._validate import check_count
from .gate import Gate, Recorder
from .tasks import ConformanceError, add, digest, identity, raise_error, return_none, square

__all__ = ["ExecutorConformance", "conformance_suite"]


def _call_within(timeout: float, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a daemon thread; fail the test if it has not returned after ``timeout`` s."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"conformance: {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within {timeout} s", pytrace=False)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _cancel_each(futures: list[Future[Any]]) -> None:
    for future in futures:
        future.cancel()


class ExecutorConformance:
    """The checks every backend must pass, as a pytest class to subclass.

    A subclass named ``Test…`` sets ``factory`` (as a staticmethod) and ``workers``, and may
    change ``timeout`` or ``queued_tasks``, or override a check that its backend documents
    as unsupported (lambdas on a plain-pickle backend, say).  :func:`conformance_suite` makes
    such a subclass in one call.

    What a backend must do to pass, beyond the stdlib's documented semantics:

    - run ``workers`` tasks at once, each on its own worker, and start queued tasks as
      workers free up;
    - mark a future running (``set_running_or_notify_cancel``) no later than when its task
      starts, so that ``cancel()`` of a started task returns False; and keep fewer than
      ``queued_tasks`` tasks buffered beyond the busy workers, so the last one queued can
      still be cancelled;
    - return plain ``concurrent.futures.Future`` objects (or subclasses that keep its
      waiter machinery), since the checks use ``wait`` and ``as_completed``;
    - let its tasks open loopback TCP connections to the test process (the Gate and the
      Recorder), and unpickle functions of :mod:`hpcfutures.testing.tasks` by reference;
    - let running tasks finish on ``shutdown(cancel_futures=True)``: only queued ones are
      cancelled;
    - accept ``shutdown()`` more than once (each test's teardown shuts down again).
    """

    #: Makes a fresh executor for each test.
    factory: Callable[[], Executor]
    #: How many tasks the executor runs at once; the suite blocks exactly that many.
    workers: int
    #: Seconds any single wait may take before the test fails.
    timeout: float = 30.0
    #: How many tasks to queue behind the blocked workers in the cancel tests.
    queued_tasks: int = 20
    #: Futures per round, and rounds, of the stress checks: races between the standard
    #: library's waiters and results arriving show up at thousands of futures, not at ten.
    stress_tasks: int = 2000
    stress_rounds: int = 10

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def gate(self) -> Iterator[Gate]:
        """A Gate, closed (which releases its tasks) after the executor has shut down."""
        with Gate() as gate:
            yield gate

    @pytest.fixture
    def recorder(self) -> Iterator[Recorder]:
        """A Recorder that lives until after the executor has shut down."""
        with Recorder() as recorder:
            yield recorder

    @pytest.fixture
    def executor(self, gate: Gate, recorder: Recorder) -> Iterator[Executor]:
        """A fresh executor; afterwards the gate opens and the executor shuts down."""
        ex = type(self).factory()
        try:
            yield ex
        finally:
            gate.open()
            self._shutdown(ex, cancel_futures=True)

    # -- helpers ----------------------------------------------------------------------

    def _shutdown(self, ex: Executor, *, cancel_futures: bool = False) -> None:
        _call_within(
            self.timeout,
            f"shutdown(wait=True, cancel_futures={cancel_futures})",
            ex.shutdown,
            wait=True,
            cancel_futures=cancel_futures,
        )

    def _block_workers(self, ex: Executor, gate: Gate) -> list[Future[Any]]:
        blockers = [ex.submit(gate.wait, f"blocker {i}") for i in range(self.workers)]
        gate.wait_entered(self.workers, self.timeout)
        return blockers

    # -- submit and results -----------------------------------------------------------

    def test_submit_returns_result(self, executor: Executor) -> None:
        assert executor.submit(square, 7).result(timeout=self.timeout) == 49
        assert executor.submit(add, 1, b=2).result(timeout=self.timeout) == 3
        assert executor.submit(identity, {"a": [1, 2.5, "x"]}).result(timeout=self.timeout) == {
            "a": [1, 2.5, "x"]
        }

    def test_function_returning_none(self, executor: Executor) -> None:
        fut = executor.submit(return_none, 1, x=2)
        assert fut.result(timeout=self.timeout) is None
        assert fut.exception(timeout=self.timeout) is None
        assert list(executor.map(return_none, range(3), timeout=self.timeout)) == [None, None, None]

    def test_exception_keeps_type_and_args(self, executor: Executor) -> None:
        fut = executor.submit(raise_error, "boom", 42)
        exc = fut.exception(timeout=self.timeout)
        assert type(exc) is ConformanceError, f"expected ConformanceError, got {exc!r}"
        assert exc.args == ("boom", 42)
        with pytest.raises(ConformanceError) as info:
            fut.result(timeout=self.timeout)
        assert info.value.args == ("boom", 42)

        builtin = executor.submit(divmod, 1, 0).exception(timeout=self.timeout)
        assert type(builtin) is ZeroDivisionError, f"expected ZeroDivisionError, got {builtin!r}"

        results = executor.map(raise_error, ["in map"], timeout=self.timeout)
        with pytest.raises(ConformanceError) as info:
            list(results)
        assert info.value.args == ("in map",)

    def test_result_timeout_and_running(self, executor: Executor, gate: Gate) -> None:
        blocked = executor.submit(gate.wait, "late")
        gate.wait_entered(1, self.timeout)
        with pytest.raises(TimeoutError):
            blocked.result(timeout=0.05)
        assert blocked.running(), "a task that has started must report running()"
        assert not blocked.done()
        gate.open()
        assert blocked.result(timeout=self.timeout) == "late"

    # -- map ------------------------------------------------------------------------

    def test_map_keeps_order(self, executor: Executor) -> None:
        results = executor.map(square, range(100), timeout=self.timeout)
        assert list(results) == [i * i for i in range(100)]

    def test_map_multiple_iterables(self, executor: Executor) -> None:
        results = executor.map(add, range(10), range(100, 105), timeout=self.timeout)
        assert list(results) == [100, 102, 104, 106, 108], "map must stop at the shortest iterable"

    def test_map_chunksize(self, executor: Executor) -> None:
        for chunksize in (2, 7, 1000):
            results = executor.map(square, range(50), timeout=self.timeout, chunksize=chunksize)
            assert list(results) == [i * i for i in range(50)], f"chunksize={chunksize}"
        results = executor.map(add, range(20), range(20), timeout=self.timeout, chunksize=3)
        assert list(results) == [2 * i for i in range(20)]

    def test_map_timeout_counts_from_the_call(self, executor: Executor, gate: Gate) -> None:
        timeout = 1.0
        start = time.monotonic()
        results = executor.map(gate.wait, range(self.workers + 1), timeout=timeout)
        # Sleeping here is a measurement, not synchronisation: the deadline passes while no
        # result can arrive (the gate stays closed), so next() must raise at once.
        time.sleep(max(0.0, start + timeout + 0.2 - time.monotonic()))
        before = time.monotonic()
        with pytest.raises(TimeoutError):
            next(results)
        waited = time.monotonic() - before
        assert waited < timeout / 2, (
            f"next() waited {waited:.2f} s after the deadline had passed: map's timeout must "
            "count from the map() call, not from each next()"
        )

    # -- wait, as_completed, callbacks ----------------------------------------------

    def test_wait(self, executor: Executor, gate: Gate) -> None:
        futures = [executor.submit(square, i) for i in range(20)]
        done, not_done = wait(futures, timeout=self.timeout)
        assert not not_done and done == set(futures)

        failing: Future[Any] = executor.submit(raise_error, "first")
        failing.exception(timeout=self.timeout)
        blocked: Future[Any] = executor.submit(gate.wait)
        gate.wait_entered(1, self.timeout)

        done, not_done = wait([failing, blocked], timeout=self.timeout, return_when=FIRST_COMPLETED)
        assert (done, not_done) == ({failing}, {blocked})
        done, not_done = wait([failing, blocked], timeout=self.timeout, return_when=FIRST_EXCEPTION)
        assert (done, not_done) == ({failing}, {blocked})
        done, not_done = wait([blocked], timeout=0.05)
        assert not_done == {blocked}, "wait() must return after its timeout with the task not done"

        gate.open()
        done, not_done = wait([failing, blocked], timeout=self.timeout)
        assert not not_done

    def test_as_completed(self, executor: Executor, gate: Gate) -> None:
        quick = executor.submit(square, 4)
        quick.result(timeout=self.timeout)
        blocked = executor.submit(gate.wait, "late")
        gate.wait_entered(1, self.timeout)

        completed = as_completed([blocked, quick], timeout=self.timeout)
        assert next(completed) is quick
        with pytest.raises(TimeoutError):
            list(as_completed([blocked], timeout=0.05))
        gate.open()
        assert next(completed) is blocked
        assert blocked.result(timeout=self.timeout) == "late"

        futures = {executor.submit(square, i): i for i in range(30)}
        seen = {futures[f]: f.result() for f in as_completed(futures, timeout=self.timeout)}
        assert seen == {i: i * i for i in range(30)}

    def test_done_callback_called_once(self, executor: Executor, gate: Gate) -> None:
        calls: list[Future[Any]] = []
        called = threading.Event()

        def callback(fut: Future[Any]) -> None:
            calls.append(fut)
            called.set()

        fut = executor.submit(gate.wait, "value")
        gate.wait_entered(1, self.timeout)
        fut.add_done_callback(callback)
        assert calls == [], "a done callback ran before its task finished"
        gate.open()
        assert called.wait(self.timeout), f"the done callback was not called within {self.timeout} s"

        late: list[Future[Any]] = []
        fut.add_done_callback(late.append)
        assert late == [fut], "a callback added after completion must be called at once"

        failing = executor.submit(raise_error, "x")
        failed_calls: list[Future[Any]] = []
        failed = threading.Event()

        def failed_callback(fut: Future[Any]) -> None:
            failed_calls.append(fut)
            failed.set()

        failing.add_done_callback(failed_callback)
        assert failed.wait(self.timeout)

        self._shutdown(executor)
        assert calls == [fut], f"callback called {len(calls)} times"
        assert late == [fut]
        assert failed_calls == [failing]

    # -- cancel and shutdown --------------------------------------------------------

    def test_cancel_queued_task(self, executor: Executor, gate: Gate, recorder: Recorder) -> None:
        blockers = self._block_workers(executor, gate)
        n = self.queued_tasks
        queued = [executor.submit(recorder.record, i) for i in range(n)]

        assert not blockers[0].cancel(), "cancel() of a running task must return False"
        assert queued[-1].cancel(), (
            f"cancel() of the last of {n} tasks queued behind {self.workers} busy workers returned "
            "False: the backend marked it running before it started"
        )
        assert queued[-1].cancelled() and queued[-1].done()
        with pytest.raises(CancelledError):
            queued[-1].result(timeout=self.timeout)

        gate.open()
        assert [f.result(timeout=self.timeout) for f in queued[:-1]] == list(range(n - 1))
        assert not blockers[0].cancelled()
        self._shutdown(executor)  # waits for anything the backend runs, cancelled or not
        ran = recorder.values
        assert n - 1 not in ran, "the cancelled task ran"
        assert sorted(ran) == list(range(n - 1))

    def test_shutdown_waits_for_tasks(self, executor: Executor, gate: Gate) -> None:
        blockers = self._block_workers(executor, gate)
        queued = [executor.submit(square, i) for i in range(10)]

        shutting_down = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
        shutting_down.start()
        # The blocked tasks cannot finish while the gate is closed, so a shutdown(wait=True)
        # that returns now did not wait.
        shutting_down.join(0.3)
        assert shutting_down.is_alive(), "shutdown(wait=True) returned while tasks were still running"

        gate.open()
        shutting_down.join(self.timeout)
        assert not shutting_down.is_alive(), f"shutdown(wait=True) did not return within {self.timeout} s"
        assert all(f.done() for f in blockers + queued), (
            "shutdown(wait=True) returned before its tasks were done"
        )
        assert [f.result(timeout=0) for f in queued] == [i * i for i in range(10)]

    def test_shutdown_cancel_futures(self, executor: Executor, gate: Gate, recorder: Recorder) -> None:
        blockers = self._block_workers(executor, gate)
        n = self.queued_tasks
        queued = [executor.submit(recorder.record, i) for i in range(n)]

        _call_within(
            self.timeout,
            "shutdown(wait=False, cancel_futures=True)",
            executor.shutdown,
            wait=False,
            cancel_futures=True,
        )
        # The stdlib process pool cancels from its manager thread, so wait for it; not with
        # wait(), which ignores a future cancelled without set_running_or_notify_cancel().
        last_done = threading.Event()
        queued[-1].add_done_callback(lambda _: last_done.set())
        last_done.wait(self.timeout)
        assert queued[-1].cancelled(), "shutdown(cancel_futures=True) did not cancel the last queued task"
        assert not any(b.cancelled() for b in blockers), (
            "shutdown(cancel_futures=True) cancelled a running task"
        )

        gate.open()
        for b in blockers:
            b.result(timeout=self.timeout)
        self._shutdown(executor)
        cancelled = {i for i, f in enumerate(queued) if f.cancelled()}
        for i, f in enumerate(queued):
            if i not in cancelled:
                assert f.result(timeout=0) == i
        assert sorted(recorder.values) == sorted(set(range(n)) - cancelled), "a cancelled task ran"

    def test_submit_after_shutdown_raises(self, executor: Executor) -> None:
        assert executor.submit(square, 2).result(timeout=self.timeout) == 4
        self._shutdown(executor)
        with pytest.raises(RuntimeError):
            executor.submit(square, 2)
        with pytest.raises(RuntimeError):
            list(executor.map(square, [1, 2]))
        self._shutdown(executor)  # a second shutdown is harmless

    def test_context_manager(self) -> None:
        def body() -> list[Future[Any]]:
            ex = type(self).factory()
            with ex as entered:
                assert entered is ex, "__enter__ must return the executor itself"
                futures = [ex.submit(square, i) for i in range(10)]
            assert all(f.done() for f in futures), "leaving the with block must wait for tasks"
            with pytest.raises(RuntimeError):
                ex.submit(square, 1)
            with pytest.raises(ConformanceError), type(self).factory() as ex2:
                futures.append(ex2.submit(square, 10))
                raise ConformanceError("inside the with block")
            return futures

        futures = _call_within(self.timeout, "using the executor as a context manager", body)
        assert [f.result(timeout=0) for f in futures] == [i * i for i in range(11)]

    # -- what can travel ------------------------------------------------------------

    def test_lambdas_and_closures(self, executor: Executor) -> None:
        assert executor.submit(lambda x: x + 1, 41).result(timeout=self.timeout) == 42

        offset = 100

        def shifted(x: int) -> int:
            return x + offset

        assert executor.submit(shifted, 1).result(timeout=self.timeout) == 101

        def multiplier(k: int) -> Callable[[int], int]:
            return lambda x: x * k

        assert executor.submit(multiplier(3), 5).result(timeout=self.timeout) == 15
        captured = {"key": [1, 2, 3]}
        assert executor.submit(lambda: captured["key"][::-1]).result(timeout=self.timeout) == [3, 2, 1]
        results = executor.map(lambda a, b: a * b, range(5), range(5), timeout=self.timeout)
        assert list(results) == [0, 1, 4, 9, 16]

    def test_large_argument_round_trip(self, executor: Executor) -> None:
        data = os.urandom(10 * 1024 * 1024)
        expected = (len(data), hashlib.sha256(data).hexdigest())
        assert executor.submit(digest, data).result(timeout=self.timeout) == expected
        back = executor.submit(identity, data).result(timeout=self.timeout)
        assert type(back) is bytes and back == data

    def test_many_small_tasks(self, executor: Executor) -> None:
        n = 2000
        futures = [executor.submit(square, i) for i in range(n)]
        _, not_done = wait(futures, timeout=self.timeout)
        assert not not_done, f"{len(not_done)} of {n} tasks were not done within {self.timeout} s"
        assert [f.result() for f in futures] == [i * i for i in range(n)]

    # -- stress: the standard library's waiters while results arrive ----------------------

    def _check_split(self, futures: list[Future[Any]], done: set[Future[Any]], not_done: set[Future[Any]]) -> None:
        assert done.isdisjoint(not_done), "wait() put a future in both sets"
        assert done | not_done == set(futures), "wait() lost a future"
        undone = [f for f in done if not f.done()]
        assert not undone, f"wait() returned {len(undone)} futures as done that are not done"

    def test_stress_as_completed(self, executor: Executor) -> None:
        n = self.stress_tasks
        for round_ in range(self.stress_rounds):
            futures = [executor.submit(square, i) for i in range(n)]
            yielded = [f for f in as_completed(futures, timeout=self.timeout)]
            assert len(yielded) == n and len(set(yielded)) == n, (
                f"round {round_}: as_completed yielded {len(yielded)} futures, "
                f"{len(set(yielded))} distinct, of {n}"
            )
            assert sorted(f.result(timeout=0) for f in yielded) == sorted(i * i for i in range(n))

    def test_stress_wait_all_completed(self, executor: Executor) -> None:
        n = self.stress_tasks
        for round_ in range(self.stress_rounds):
            futures = [executor.submit(square, i) for i in range(n)]
            done, not_done = wait(futures, timeout=self.timeout)
            self._check_split(futures, done, not_done)
            assert not not_done, f"round {round_}: wait(ALL_COMPLETED) left {len(not_done)} of {n} not done"

    def test_stress_wait_first_completed(self, executor: Executor) -> None:
        n = max(1, self.stress_tasks // 4)  # one wait() per arrival: keep the quadratic part small
        for round_ in range(self.stress_rounds):
            futures = [executor.submit(square, i) for i in range(n)]
            pending = set(futures)
            finished: set[Future[Any]] = set()
            while pending:
                done, not_done = wait(pending, timeout=self.timeout, return_when=FIRST_COMPLETED)
                assert done, f"round {round_}: wait(FIRST_COMPLETED) timed out with {len(pending)} pending"
                self._check_split(list(pending), done, not_done)
                finished |= done
                pending = not_done
            assert len(finished) == n

    def test_stress_wait_first_exception(self, executor: Executor) -> None:
        n = self.stress_tasks
        for round_ in range(self.stress_rounds):
            failing = n - 1 - round_ * (n // self.stress_rounds)
            futures: list[Future[Any]] = [
                executor.submit(raise_error, i) if i == failing else executor.submit(square, i) for i in range(n)
            ]
            done, not_done = wait(futures, timeout=self.timeout, return_when=FIRST_EXCEPTION)
            self._check_split(futures, done, not_done)
            assert futures[failing] in done or not not_done, (
                f"round {round_}: wait(FIRST_EXCEPTION) returned before any task failed, with work pending"
            )
            wait(futures, timeout=self.timeout)

    def test_stress_callbacks_added_while_results_arrive(self, executor: Executor) -> None:
        for round_ in range(self.stress_rounds // 2 or 1):
            self._callbacks_round(executor, round_)

    def _callbacks_round(self, executor: Executor, round_: int) -> None:
        n = self.stress_tasks
        calls = [0] * n
        lock = threading.Lock()
        all_called = threading.Event()
        remaining = [n]

        def callback(i: int) -> Callable[[Future[Any]], None]:
            def called(_f: Future[Any]) -> None:
                with lock:
                    calls[i] += 1
                    remaining[0] -= 1
                    if not remaining[0]:
                        all_called.set()

            return called

        futures = [executor.submit(square, i) for i in range(n)]
        # Half the callbacks go on before results arrive, half from another thread as they do.
        for i in range(0, n, 2):
            futures[i].add_done_callback(callback(i))

        def add_the_rest() -> None:
            for i in range(1, n, 2):
                futures[i].add_done_callback(callback(i))

        adder = threading.Thread(target=add_the_rest)
        adder.start()
        adder.join(self.timeout)
        assert all_called.wait(self.timeout), f"round {round_}: {remaining[0]} callbacks never ran"
        assert calls == [1] * n, f"round {round_}: some callback ran more than once"

    def test_stress_cancel_while_results_arrive(self, executor: Executor) -> None:
        n = self.stress_tasks
        for round_ in range(self.stress_rounds // 2 or 1):
            futures = [executor.submit(square, i) for i in range(n)]
            canceller = threading.Thread(target=_cancel_each, args=(futures[::3],))
            canceller.start()
            yielded = list(as_completed(futures, timeout=self.timeout))
            canceller.join(self.timeout)
            assert len(yielded) == n and len(set(yielded)) == n, f"round {round_}: as_completed lost futures"
            for i, f in enumerate(futures):
                assert f.done()
                if not f.cancelled():
                    assert f.result(timeout=0) == i * i

    def test_stress_shutdown_waits_for_everything(self) -> None:
        n = self.stress_tasks
        for round_ in range(3):
            ex = type(self).factory()
            futures = [ex.submit(square, i) for i in range(n)]
            self._shutdown(ex)
            not_done = [f for f in futures if not f.done()]
            assert not not_done, f"round {round_}: shutdown(wait=True) returned with {len(not_done)} tasks pending"


def conformance_suite(
    factory: Callable[[], Executor], *, workers: int, name: str | None = None
) -> type[ExecutorConformance]:
    """Return a pytest test class that checks an Executor backend against the stdlib's semantics.

    Bind the result to a ``Test…`` name in a test module so pytest collects it; see
    :class:`ExecutorConformance` for what the backend must do to pass.

    Args:
        factory: called with no arguments to make a fresh executor for each test.
        workers: how many tasks the executor runs at once; the suite blocks exactly this
            many with a :class:`~hpcfutures.testing.Gate` to test queued tasks.
        name: the class's name (default ``"TestExecutorConformance"``).

    Raises:
        TypeError: ``factory`` is not callable.
        ValueError: ``workers`` is not a positive integer.
    """
    if not callable(factory):
        raise TypeError(f"factory must be a callable that returns an Executor, got {factory!r}")
    check_count("workers", workers, 1, error=ValueError)
    cls_name = name or "TestExecutorConformance"
    caller = sys._getframe(1).f_globals.get("__name__", __name__)
    namespace = {
        "factory": staticmethod(factory),
        "workers": workers,
        "__module__": caller,
        "__qualname__": cls_name,
    }
    return type(cls_name, (ExecutorConformance,), namespace)
