"""Retries: the per-task budget, the retry handler, and lost workers retried for free."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from hpcfutures import (
    DataflowExecutor,
    DependencyError,
    HighThroughputExecutor,
    PoolLostError,
    TaskRecord,
    ThreadExecutor,
    WorkerLostError,
)
from hpcfutures.dataflow.retry import INFRASTRUCTURE_RETRIES
from hpcfutures.testing import Recorder, faults
from hpcfutures.testing.tasks import identity, raise_error

TIMEOUT = 30


class Attempts:
    """A thread-safe attempt counter, handed to the task as an argument (not a global)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def next(self) -> int:
        with self._lock:
            self.count += 1
            return self.count


def flaky(attempts: Attempts, failures: int, value: Any = "ok") -> Any:
    """Fail the first ``failures`` attempts, each with its number in the message."""
    n = attempts.next()
    if n <= failures:
        raise RuntimeError(f"attempt {n}")
    return value


def raise_in_turn(attempts: Attempts, errors: list[BaseException]) -> str:
    """Raise ``errors[k]`` on attempt k+1, then succeed."""
    n = attempts.next()
    if n <= len(errors):
        raise errors[n - 1]
    return "ok"


@pytest.fixture
def make_dfx():
    made: list[DataflowExecutor] = []

    def make(**kwargs: Any) -> DataflowExecutor:
        dfx = DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, **kwargs)
        made.append(dfx)
        return dfx

    yield make
    for dfx in made:
        dfx.shutdown(wait=True, cancel_futures=True)


# -- the budget ------------------------------------------------------------------------------------


def test_a_task_that_fails_twice_succeeds_with_two_retries(make_dfx):
    attempts = Attempts()
    assert make_dfx(retries=2).submit(flaky, attempts, 2).result(timeout=TIMEOUT) == "ok"
    assert attempts.count == 3


def test_without_retries_a_failure_is_final(make_dfx):
    attempts = Attempts()
    error = make_dfx().submit(flaky, attempts, 1).exception(timeout=TIMEOUT)
    assert str(error) == "attempt 1" and attempts.count == 1


def test_exhausted_retries_keep_the_last_exception(make_dfx):
    attempts = Attempts()
    fut = make_dfx(retries=2).submit(flaky, attempts, 10)
    with pytest.raises(RuntimeError, match="^attempt 3$"):
        fut.result(timeout=TIMEOUT)
    assert attempts.count == 3


def test_the_budget_is_per_task(make_dfx):
    dfx = make_dfx(retries=1)
    counters = [Attempts() for _ in range(3)]
    futures = [dfx.submit(flaky, c, 1, i) for i, c in enumerate(counters)]
    assert [f.result(timeout=TIMEOUT) for f in futures] == [0, 1, 2]
    assert [c.count for c in counters] == [2, 2, 2]


def test_options_retries_overrides_the_default(make_dfx):
    dfx = make_dfx(retries=0)
    attempts = Attempts()
    assert dfx.options(retries=3).submit(flaky, attempts, 3).result(timeout=TIMEOUT) == "ok"
    assert attempts.count == 4
    none = Attempts()
    assert make_dfx(retries=5).options(retries=0).submit(flaky, none, 1).exception(timeout=TIMEOUT)
    assert none.count == 1


def test_a_retried_task_gets_the_results_of_its_dependencies_again(make_dfx):
    dfx = make_dfx(retries=1)
    attempts = Attempts()
    upstream = dfx.submit(identity, "value")
    assert dfx.submit(flaky, attempts, 1, upstream).result(timeout=TIMEOUT) == "value"
    assert attempts.count == 2


# -- the handler -------------------------------------------------------------------------------


def test_a_handler_charging_half_allows_more_attempts(make_dfx):
    seen: list[tuple[str, int, float, int, str]] = []

    def half(error: BaseException, task: TaskRecord) -> float:
        seen.append((str(error), task.attempts, task.fail_cost, len(task.exceptions), task.executor))
        return 0.5

    dfx = make_dfx(retries=1, retry_handler=half)
    attempts = Attempts()
    fut = dfx.submit(flaky, attempts, 10)
    with pytest.raises(RuntimeError, match="^attempt 3$"):
        fut.result(timeout=TIMEOUT)
    # Costs 0.5 and 1.0 stay within the budget of 1; 1.5 does not.
    assert attempts.count == 3
    assert seen == [
        ("attempt 1", 1, 0.0, 1, "default"),
        ("attempt 2", 2, 0.5, 2, "default"),
        ("attempt 3", 3, 1.0, 3, "default"),
    ]


def test_the_handler_is_told_which_task_failed(make_dfx):
    records: list[TaskRecord] = []

    def keep(error: BaseException, task: TaskRecord) -> float:
        records.append(task)
        return 1

    dfx = make_dfx(retries=1, retry_handler=keep)
    attempts = Attempts()
    fut = dfx.submit(flaky, attempts, 1, "done")
    assert fut.result(timeout=TIMEOUT) == "done"
    (record,) = records
    assert (record.id, record.name, record.retries) == (fut.task_id, "flaky", 1)
    assert record.args == (attempts, 1, "done")


def test_an_infinite_cost_stops_at_once(make_dfx):
    attempts = Attempts()
    dfx = make_dfx(retries=5, retry_handler=lambda error, task: float("inf"))
    with pytest.raises(RuntimeError, match="^attempt 1$"):
        dfx.submit(flaky, attempts, 10).result(timeout=TIMEOUT)
    assert attempts.count == 1


def test_a_handler_that_raises_stops_the_retries(make_dfx):
    def broken(error: BaseException, task: TaskRecord) -> float:
        raise KeyError("handler bug")

    attempts = Attempts()
    dfx = make_dfx(retries=5, retry_handler=broken)
    error = dfx.submit(flaky, attempts, 10).exception(timeout=TIMEOUT)
    assert type(error) is RuntimeError and str(error) == "attempt 1", "the task's own error is kept"
    assert attempts.count == 1


def test_a_handler_can_charge_some_failures_more_than_others(make_dfx):
    def by_kind(error: BaseException, task: TaskRecord) -> float:
        return 0 if isinstance(error, ConnectionError) else float("inf")

    dfx = make_dfx(retries=0, retry_handler=by_kind)
    transient = Attempts()
    errors: list[BaseException] = [ConnectionError("flap")] * 5
    assert dfx.submit(raise_in_turn, transient, errors).result(timeout=TIMEOUT) == "ok"
    assert transient.count == 6

    fatal = Attempts()
    errors = [ConnectionError("flap"), ConnectionError("flap"), ValueError("bad input")]
    with pytest.raises(ValueError, match="bad input"):
        dfx.submit(raise_in_turn, fatal, errors).result(timeout=TIMEOUT)
    assert fatal.count == 3


# -- never retried -----------------------------------------------------------------------------


def test_a_dependency_error_is_never_retried(make_dfx):
    handler_calls: list[BaseException] = []

    def count_calls(error: BaseException, task: TaskRecord) -> float:
        handler_calls.append(error)
        return 1

    dfx = make_dfx(retries=2, retry_handler=count_calls)
    bad = dfx.submit(raise_error, "upstream")
    attempts = Attempts()
    downstream = dfx.submit(flaky, attempts, 0, bad)
    assert type(downstream.exception(timeout=TIMEOUT)) is DependencyError
    assert attempts.count == 0, "a task whose dependency failed must never run"
    assert len(handler_calls) == 3  # the upstream task's own three attempts, nothing else


def test_a_task_raising_dependency_or_cancelled_error_runs_once(make_dfx):
    dfx = make_dfx(retries=3)
    for error in (DependencyError("raised by the task", [], []), CancelledError("raised by the task")):
        attempts = Attempts()
        fut = dfx.submit(raise_in_turn, attempts, [error] * 5)
        assert fut.exception(timeout=TIMEOUT) is error
        assert attempts.count == 1


# -- lost workers -------------------------------------------------------------------------------


class LossyExecutor(Executor):
    """A third-party backend whose first ``losses`` tasks fail with ``error`` without running."""

    def __init__(self, losses: int, error: BaseException) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._losses = losses
        self._error = error
        self.submits = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submits += 1
        if self.submits <= self._losses:
            lost: Future[Any] = Future()
            lost.set_exception(self._error)
            return lost
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@pytest.mark.parametrize("error", [WorkerLostError("worker died"), PoolLostError("pool died")])
def test_infrastructure_failures_of_any_backend_are_retried_for_free(error):
    backend = LossyExecutor(INFRASTRUCTURE_RETRIES, error)
    with DataflowExecutor(backend, retries=0, shutdown_executors=True) as dfx:
        assert dfx.submit(identity, "ran").result(timeout=TIMEOUT) == "ran"
    assert backend.submits == 1 + INFRASTRUCTURE_RETRIES


def test_infrastructure_failures_beyond_the_bound_spend_the_budget():
    backend = LossyExecutor(INFRASTRUCTURE_RETRIES + 2, PoolLostError("pool died"))
    with DataflowExecutor(backend, retries=1, shutdown_executors=True) as dfx:
        assert isinstance(dfx.submit(identity, "ran").exception(timeout=TIMEOUT), PoolLostError)
    assert backend.submits == INFRASTRUCTURE_RETRIES + 2

    backend = LossyExecutor(INFRASTRUCTURE_RETRIES + 1, PoolLostError("pool died"))
    with DataflowExecutor(backend, retries=1, shutdown_executors=True) as dfx:
        assert dfx.submit(identity, "ran").result(timeout=TIMEOUT) == "ran"


def test_a_broken_executor_is_not_retried():
    backend = LossyExecutor(1, BrokenProcessPool("a worker died"))
    with DataflowExecutor(backend, retries=5, shutdown_executors=True) as dfx:
        assert isinstance(dfx.submit(identity, 1).exception(timeout=TIMEOUT), BrokenProcessPool)
    assert backend.submits == 1


@pytest.fixture(scope="module")
def htex():
    """One worker and no retries of its own: the HTEX reports every lost worker at once."""
    ex = HighThroughputExecutor(max_workers=1, lost_task_retries=0)
    yield ex
    ex.terminate()  # bounded even if a failed test left a task stuck, unlike shutdown(wait=True)


def test_htex_reports_a_killed_worker(htex):
    error = htex.submit(faults.kill_self).exception(timeout=60)
    assert isinstance(error, WorkerLostError) and error.signal_name == "SIGKILL"


def test_a_lost_worker_is_retried_for_free_up_to_a_bound(htex):
    dfx = DataflowExecutor(htex, retries=0)
    with Recorder() as recorder:
        error = dfx.submit(faults.record_then_kill, recorder.record).exception(timeout=120)
        assert isinstance(error, WorkerLostError)
        pids = recorder.values
    assert len(pids) == 1 + INFRASTRUCTURE_RETRIES, "each free retry ran the task again"
    assert len(set(pids)) == len(pids), "each attempt ran on a new worker"
    dfx.shutdown()


def test_a_worker_lost_once_does_not_spend_the_budget(htex, tmp_path):
    handler_calls: list[BaseException] = []

    def count_calls(error: BaseException, task: TaskRecord) -> float:
        handler_calls.append(error)
        return 1

    dfx = DataflowExecutor(htex, retries=0, retry_handler=count_calls)
    fut = dfx.submit(faults.kill_self_once, str(tmp_path / "died-once"), "survived")
    assert fut.result(timeout=60) == "survived"
    assert (tmp_path / "died-once").exists()
    assert handler_calls == [], "a lost worker is not charged to the task"
    dfx.shutdown()


def test_retries_over_htex_counted_in_a_file(htex, tmp_path):
    dfx = DataflowExecutor(htex, retries=2)
    counter = tmp_path / "attempts"
    assert dfx.submit(faults.fail_until, str(counter), 2, "third time").result(timeout=60) == "third time"
    assert counter.read_text() == "xxx"
    dfx.shutdown()
    assert htex.submit(pow, 2, 5).result(timeout=60) == 32, "the given HTEX is still running"
