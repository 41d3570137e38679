"""LeanFuture and FinishedReadsFuture against the stdlib Future's contract, including racing setters and waiters."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, CancelledError, InvalidStateError, as_completed, wait

import pytest

from hpcfutures.leanfuture import FinishedReadsFuture, LeanFuture


def test_result_exception_and_states():
    f = LeanFuture()
    assert not f.done() and not f.running() and not f.cancelled()
    assert "_condition" not in f.__dict__  # nothing built until needed
    f.set_result(5)
    assert f.done() and f.result() == 5 and f.exception() is None
    with pytest.raises(InvalidStateError):
        f.set_result(6)
    g = LeanFuture()
    g.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        g.result()
    assert isinstance(g.exception(), KeyError)


def test_cancel_and_notify():
    f = LeanFuture()
    calls = []
    f.add_done_callback(calls.append)
    assert f.cancel() and f.cancelled() and f.done()
    assert f.cancel()  # again: still cancelled
    assert calls == [f]
    assert f.set_running_or_notify_cancel() is False
    with pytest.raises(CancelledError):
        f.result()
    running = LeanFuture()
    assert running.set_running_or_notify_cancel() is True
    assert running.running() and not running.cancel()


def test_callbacks_run_once_whether_added_before_or_after():
    f = LeanFuture()
    before, after = [], []
    f.add_done_callback(before.append)
    f.set_result(1)
    f.add_done_callback(after.append)
    assert before == [f] and after == [f]


def test_wait_and_as_completed_see_results_set_later():
    futures = [LeanFuture() for _ in range(4)]
    # The setter may run before or after wait() blocks: either way wait() must see every result.
    setter = threading.Thread(target=lambda: [f.set_result(i) for i, f in enumerate(futures)])
    setter.start()
    done, _ = wait(futures, timeout=10)
    assert done == set(futures)
    assert sorted(f.result() for f in as_completed(futures, timeout=10)) == [0, 1, 2, 3]


@pytest.mark.parametrize("round_", range(5))
def test_racing_setters_waiters_and_callbacks_lose_nothing(round_):
    # Many futures, each set by one thread while others block in result(), wait() or add
    # callbacks: every waiter returns and every callback runs exactly once.
    futures = [LeanFuture() for _ in range(300)]
    counts = [0] * len(futures)
    lock = threading.Lock()

    def count(i):
        def callback(_f):
            with lock:
                counts[i] += 1

        return callback

    results = []

    def waiter(fs):
        results.extend(f.result(timeout=30) for f in fs)

    def adder():
        for i, f in enumerate(futures):
            f.add_done_callback(count(i))

    def setter():
        for i, f in enumerate(futures):
            f.set_result(i)

    threads = [
        threading.Thread(target=waiter, args=(futures[::-1],)),
        threading.Thread(target=adder),
        threading.Thread(target=setter),
        threading.Thread(target=lambda: wait(futures, timeout=30)),
    ]
    for t in threads:
        t.start()
    done, _ = wait(futures, timeout=30, return_when=FIRST_COMPLETED)
    assert done
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert sorted(results) == list(range(len(futures)))
    assert counts == [1] * len(futures)


def test_a_finished_reads_future_reads_its_outcome_without_its_lock():
    ok, failed = FinishedReadsFuture(), FinishedReadsFuture()
    ok.set_result(3)
    error = ValueError("no")
    failed.set_exception(error)
    took = threading.Event()

    def hold_locks() -> None:
        with ok._condition, failed._condition:
            took.set()
            release.wait(10)

    release = threading.Event()
    holder = threading.Thread(target=hold_locks)
    holder.start()
    try:
        assert took.wait(10)
        # With the Conditions held elsewhere, the stdlib's reads would block here.
        assert ok.result() == 3 and ok.exception() is None
        assert failed.exception() is error
        with pytest.raises(ValueError):
            failed.result()
    finally:
        release.set()
        holder.join()
    pending = FinishedReadsFuture()
    with pytest.raises(TimeoutError):
        pending.result(timeout=0.01)


def test_the_lazy_parts_are_made_on_first_read_and_a_missing_attribute_is_missing():
    future = LeanFuture()
    assert getattr(future, "execution", None) is None  # a probe: no error, nothing made
    with pytest.raises(AttributeError, match="execution"):
        future.execution  # noqa: B018 - the read is the test
    assert not {"_condition", "_waiters", "_done_callbacks"} & future.__dict__.keys()
    assert future._waiters == [] and future._done_callbacks == []
    condition = future._condition
    assert isinstance(condition, threading.Condition)
    assert future._condition is condition  # made once, then read from the instance
    assert {"_condition", "_waiters", "_done_callbacks"} <= future.__dict__.keys()
    assert LeanFuture()._condition is not condition  # each future has its own
