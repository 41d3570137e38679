"""HighThroughputExecutor's honest accounting: which task a crash is charged to, which tasks
count as running, and which can still be cancelled, wherever they wait.

Workers claim each task on a board shared with their pool manager before they begin it, and
write each result as soon as the task ends; these tests check what a user sees of that.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import CancelledError, wait

import pytest

from hpcfutures import HighThroughputExecutor, WorkerLostError
from hpcfutures.testing import Gate, Recorder, faults
from hpcfutures.testing.tasks import square


def _eventually(predicate, timeout: float = 30.0) -> bool:
    """Whether ``predicate()`` holds within ``timeout`` s (running() has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("round_", range(3))
def test_only_the_crashing_tasks_fail_beside_thousands_of_short_ones(tmp_path, round_):
    ran = tmp_path / "ran"
    n = 3000
    crashes = {n // 7 * k + round_ for k in range(1, 7)}
    with HighThroughputExecutor(max_workers=2, lost_task_retries=0) as ex:
        futures = [
            ex.submit(faults.kill_self, signal.SIGSEGV) if i in crashes else ex.submit(faults.append_line, str(ran), i)
            for i in range(n)
        ]
        done, not_done = wait(futures, timeout=120)
        assert not not_done
    failed = {i for i, f in enumerate(futures) if f.exception() is not None}
    assert failed == crashes, f"innocent tasks failed: {sorted(failed - crashes)}"
    for i in crashes:
        error = futures[i].exception()
        assert isinstance(error, WorkerLostError) and error.signal_name == "SIGSEGV", repr(error)
    counts = Counter(int(line) for line in ran.read_text().split())
    assert set(counts) == set(range(n)) - crashes
    twice = sorted(i for i, c in counts.items() if c > 1)
    assert not twice, f"{len(twice)} finished tasks ran again after a crash: {twice[:10]}"


def test_running_is_true_only_once_a_worker_has_begun_the_task():
    with HighThroughputExecutor(max_workers=4) as ex, Gate() as gate:
        ex.submit(square, 2).result(timeout=60)  # warm: pools and workers up
        futures = [ex.submit(gate.wait, i) for i in range(50)]
        gate.wait_entered(4, timeout=60)
        assert _eventually(lambda: sum(f.running() for f in futures) == 4), "the four begun tasks never showed running()"
        for _ in range(50):
            running = [i for i, f in enumerate(futures) if f.running()]
            assert len(running) == 4, f"running() is true for {len(running)} tasks with 4 workers"
        assert futures[-1].cancel(), "the last of 50 tasks behind 4 busy workers could not be cancelled"
        gate.open()
        assert [f.result(timeout=60) for f in futures[:-1]] == list(range(49))


def test_tasks_held_in_a_workers_batch_can_be_cancelled_and_never_run():
    with HighThroughputExecutor(max_workers=1) as ex, Gate() as gate, Recorder() as recorder:
        # Thousands of short tasks teach the pool to hand its worker long batches.
        assert list(ex.map(square, range(3000))) == [i * i for i in range(3000)]
        blocker = ex.submit(gate.wait, "blocker")
        queued = [ex.submit(recorder.record, i) for i in range(20)]
        gate.wait_entered(1, timeout=60)
        assert not blocker.cancel(), "cancel() of a running task returned True"
        cancelled = [f.cancel() for f in queued[::2]]
        assert all(cancelled), f"cancel() returned False for {cancelled.count(False)} tasks not begun"
        gate.open()
        assert blocker.result(timeout=60) == "blocker"
        for i, f in enumerate(queued):
            if i % 2:
                assert f.result(timeout=60) == i
            else:
                assert f.cancelled()
                with pytest.raises(CancelledError):
                    f.result(timeout=0)
    assert sorted(recorder.values) == list(range(1, 20, 2)), "a cancelled task ran"


def test_shutdown_cancel_futures_cancels_every_task_not_begun():
    with Gate() as gate, Recorder() as recorder:
        ex = HighThroughputExecutor(max_workers=1)
        assert list(ex.map(square, range(2000)))[-1] == 1999**2  # long batches from now on
        blocker = ex.submit(gate.wait, "blocker")
        queued = [ex.submit(recorder.record, i) for i in range(40)]
        gate.wait_entered(1, timeout=60)
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued), (
            f"{sum(not f.cancelled() for f in queued)} of 40 tasks not begun were not cancelled"
        )
        assert not blocker.cancelled()
        gate.open()
        assert blocker.result(timeout=60) == "blocker"
        ex.shutdown(wait=True)
    assert recorder.values == [], "a cancelled task ran"
