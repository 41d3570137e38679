"""Memoisation and checkpoints through DataflowExecutor: hits, in-flight sharing, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from hpcfutures import DataflowExecutor, File, ThreadExecutor, python_app
from hpcfutures.testing import Gate, Recorder


class Counter:
    """Counts calls across threads (the tests here run tasks in threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[object] = []

    def __call__(self, value: object) -> object:
        with self.lock:
            self.calls.append(value)
        return value


def square(counter: Counter, x: int) -> int:
    counter(x)
    return x * x


def blocked_square(counter: Counter, x: int, wait) -> int:
    wait()
    return square(counter, x)


def fail(counter: Counter, x: int) -> int:
    counter(x)
    raise ValueError(f"no {x}")


@pytest.fixture
def dfx():
    with DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, cache=True) as ex:
        yield ex.options(ignore_for_cache=["counter", "wait"])  # call-local helpers are not part of the call


def test_a_repeated_call_is_answered_from_the_cache(dfx):
    counter = Counter()
    assert dfx.submit(square, counter, 3).result(timeout=30) == 9
    assert dfx.submit(square, counter, 3).result(timeout=30) == 9
    assert dfx.submit(square, counter, 4).result(timeout=30) == 16
    assert counter.calls == [3, 4]


def test_identical_calls_in_flight_run_once():
    counter = Counter()
    with (
        DataflowExecutor(ThreadExecutor(max_workers=4), shutdown_executors=True, cache=True) as ex,
        Gate() as gate,
    ):
        dfx = ex.options(ignore_for_cache=["counter", "wait"])
        first = dfx.submit(blocked_square, counter, 5, gate.wait)
        gate.wait_entered(1, timeout=30)
        others = [dfx.submit(blocked_square, counter, 5, gate.wait) for _ in range(3)]
        gate.open()
        assert [f.result(timeout=30) for f in [first, *others]] == [25] * 4
    assert counter.calls == [5]


def test_failures_are_not_remembered(dfx):
    counter = Counter()
    with pytest.raises(ValueError):
        dfx.submit(fail, counter, 1).result(timeout=30)
    with pytest.raises(ValueError):
        dfx.submit(fail, counter, 1).result(timeout=30)
    assert counter.calls == [1, 1]


def test_cache_is_per_task_setting():
    counter = Counter()
    with DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True) as dfx:
        dfx.submit(square, counter, 2).result(timeout=30)
        dfx.submit(square, counter, 2).result(timeout=30)  # not cached by default
        cached = dfx.options(cache=True, ignore_for_cache=["counter"])
        cached.submit(square, counter, 2).result(timeout=30)
        cached.submit(square, counter, 2).result(timeout=30)
    assert counter.calls == [2, 2, 2]


def test_apps_cache_and_ignore_arguments(dfx):
    counter = Counter()

    @python_app(cache=True, ignore_for_cache=["note", "c"])
    def scaled(c: Counter, x: int, note: str = "") -> int:
        return square(c, x)

    with DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True):
        assert scaled(counter, 6, note="first").result(timeout=30) == 36
        assert scaled(counter, 6, note="second").result(timeout=30) == 36
    assert counter.calls == [6]


def test_explain_names_what_changed():
    with DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, cache=True) as dfx:
        dfx.submit(pow, 2, 7).result(timeout=30)
        assert dfx.explain_cache(pow, 2, 7).startswith("hit")
        text = dfx.explain_cache(pow, 2, 8)
    assert "changed" in text and not text.startswith("hit")


RESUME_SCRIPT = """
import sys
from hpcfutures import DataflowExecutor, ThreadExecutor
from hpcfutures.testing.gate import GateWait, RecordCall

checkpoint, record_address, gate_address, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
record = RecordCall(tuple(record_address.split(",")[:1]) + (int(record_address.split(",")[1]),), 30)
gate = GateWait(tuple(gate_address.split(",")[:1]) + (int(gate_address.split(",")[1]),), 120)

def work(i, block, record, gate):
    record(f"ran-{i}")
    if i == block:
        gate()
    return i * 10

dfx = DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True, cache=True, checkpoint=checkpoint)
cached = dfx.options(ignore_for_cache=["block", "record", "gate"])
futures = []
for i in range(10):
    f = cached.submit(work, i, block, record, gate)
    f.add_done_callback(lambda f, i=i: record(f"done-{i}"))
    futures.append(f)
print(sum(f.result() for f in futures), flush=True)
dfx.shutdown()
"""


def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    checkpoint = str(tmp_path / "run.db")
    script = tmp_path / "workflow.py"
    script.write_text(RESUME_SCRIPT)
    with Recorder() as first, Gate() as never:
        args = [
            sys.executable,
            str(script),
            checkpoint,
            "{},{}".format(*first.address),
            "{},{}".format(*never.address),
            "5",
        ]
        driver = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            never.wait_entered(1, timeout=60)  # task 5 is blocked, so 0..4 are done
            first.wait_for(11, timeout=60)  # ran-0..5 and done-0..4
            done = sorted(v for v in first.values if v.startswith("done-"))
            assert done == [f"done-{i}" for i in range(5)]
        finally:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
    with Recorder() as second, Gate() as gate:
        gate.open()
        args = [
            sys.executable,
            str(script),
            checkpoint,
            "{},{}".format(*second.address),
            "{},{}".format(*gate.address),
            "-1",
        ]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(sum(i * 10 for i in range(10)))
        ran = sorted((v for v in second.values if v.startswith("ran-")), key=lambda v: int(v[4:]))
        assert ran == [f"ran-{i}" for i in range(5, 10)]  # finished tasks never ran again


def make_lock(x: int) -> object:
    return threading.Lock()


def test_a_result_that_cannot_be_checkpointed_is_reported_not_lost(tmp_path):
    with DataflowExecutor(
        ThreadExecutor(max_workers=1), shutdown_executors=True, cache=True, checkpoint=str(tmp_path / "c.db")
    ) as dfx:
        result = dfx.submit(make_lock, 1).result(timeout=30)
        assert hasattr(result, "acquire")  # the caller still gets the result
        ((name, reason),) = dfx.unsaved_results
        assert name == "make_lock" and "lock" in reason.lower()


def count_lines(path: File, counter: Counter) -> int:
    counter(os.fspath(path))
    with open(path) as f:
        return len(f.read().splitlines())


def test_a_file_argument_is_keyed_by_its_content(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("a\nb\n")
    counter = Counter()
    with DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True, cache=True) as ex:
        dfx = ex.options(ignore_for_cache=["counter"])
        assert dfx.submit(count_lines, File(str(data)), counter).result(timeout=30) == 2
        assert dfx.submit(count_lines, File(str(data)), counter).result(timeout=30) == 2
        data.write_text("a\nb\nc\n")
        assert dfx.submit(count_lines, File(str(data)), counter).result(timeout=30) == 3
    assert len(counter.calls) == 2
