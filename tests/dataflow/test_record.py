"""Tests of a DataflowExecutor's run record (hpcfutures/dataflow/recording.py and tasklog.py).

Real graphs run over real backends (threads, a HighThroughputExecutor whose worker is killed),
write a real SQLite record through the real writer process, and are read back with SQL,
during the run (after ``recorder.flush()``) and after shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from hpcfutures import (
    ConfigurationError,
    DataflowExecutor,
    HighThroughputExecutor,
    ThreadExecutor,
    WorkerLostError,
    bash_app,
    join_app,
)
from hpcfutures.monitor import connect_for_reading
from hpcfutures.monitor.execution import execution_of
from hpcfutures.testing import Gate, faults

# HTEX workers need not be able to import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 60


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def fail_until(path: str, failures: int) -> int:
    """Fail the first ``failures`` calls (counted in the file at ``path``), then return the count."""
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        calls = len(f.read().split())
    if calls <= failures:
        raise RuntimeError(f"call {calls} fails")
    return calls


def square(x: int) -> int:
    return x * x


def wait_then(wait: Any, x: int) -> int:
    wait()
    return x


def query(path: Path | str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = connect_for_reading(path)
    try:
        return [tuple(row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def tasks(path: Path | str, run_id: int) -> dict[int, dict[str, Any]]:
    conn = connect_for_reading(path)
    try:
        return {row["task_id"]: dict(row) for row in conn.execute("SELECT * FROM task WHERE run_id = ?", (run_id,))}
    finally:
        conn.close()


def tries(path: Path | str, run_id: int, task_id: int) -> list[dict[str, Any]]:
    conn = connect_for_reading(path)
    try:
        return [
            dict(row)
            for row in conn.execute(
                "SELECT * FROM try WHERE run_id = ? AND task_id = ? ORDER BY try_no", (run_id, task_id)
            )
        ]
    finally:
        conn.close()


def edges(path: Path | str, run_id: int) -> set[tuple[int, int]]:
    return set(query(path, "SELECT parent, child FROM edge WHERE run_id = ?", run_id))


@pytest.fixture(autouse=True)
def _no_record_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPCFUTURES_RECORD", raising=False)
    monkeypatch.delenv("HPCFUTURES_RECORD_DIR", raising=False)


# -- one graph, over each backend -------------------------------------------------------------------


def run_graph(dfx: DataflowExecutor, tmp_path: Path, gate: Gate) -> dict[str, Any]:
    """Submit a graph with every kind of outcome; check the record while one task is held
    at ``gate``; let it go and wait for everything.  Return the futures by name."""
    f: dict[str, Any] = {}
    f["a"] = dfx.submit(add, 1, 2)
    f["b"] = dfx.submit(add, f["a"], 10)
    f["bad"] = dfx.submit(fail, "boom")  # the executor's retries=2: three tries
    f["after_bad"] = dfx.submit(add, f["bad"], 1)
    f["flaky"] = dfx.submit(fail_until, str(tmp_path / "flaky"), 2)
    cached = dfx.options(cache=True)
    f["miss"] = cached.submit(square, 4)
    assert f["miss"].result(TIMEOUT) == 16
    f["hit"] = cached.submit(square, 4)
    f["other"] = cached.submit(square, 5)
    f["held"] = dfx.submit(gate.wait, 7)
    f["after_held"] = dfx.submit(add, f["held"], 1)
    f["cancelled"] = dfx.submit(add, f["held"], 2)
    assert f["cancelled"].cancel()

    @join_app(executor=dfx)
    def both(x: int) -> list[Any]:
        return [dfx.submit(add, x, 100), dfx.submit(add, x, 200)]

    f["join"] = both(f["a"])

    gate.wait_entered(1, timeout=TIMEOUT)
    recorder = dfx.recorder
    assert recorder is not None and recorder.flush()
    live = tasks(recorder.path, recorder.run_id)
    held, after_held = f["held"].task_id, f["after_held"].task_id
    assert live[held]["state"] == "queued" and live[held]["func"] == "GateWait"
    assert live[after_held]["state"] == "pending"
    assert live[f["cancelled"].task_id]["state"] == "cancelled"
    assert {(held, after_held), (held, f["cancelled"].task_id)} <= edges(recorder.path, recorder.run_id)
    assert query(recorder.path, "SELECT status FROM run WHERE run_id = ?", recorder.run_id) == [("running",)]

    gate.open()
    for name, future in f.items():
        if name != "cancelled":
            future.exception(TIMEOUT)
    return f


def check_graph(path: Path, run_id: int, f: dict[str, Any], more_done: int = 0) -> dict[int, dict[str, Any]]:
    """Check what every backend records alike (``more_done`` tasks done besides the graph's);
    return the tasks by id."""
    rows = tasks(path, run_id)
    ids = {name: future.task_id for name, future in f.items()}
    state = {name: rows[ids[name]]["state"] for name in ids}
    assert state == {
        "a": "done", "b": "done", "bad": "failed", "after_bad": "dep_fail", "flaky": "done", "miss": "done",
        "hit": "memo_done", "other": "done", "held": "done", "after_held": "done", "cancelled": "cancelled",
        "join": "done",
    }  # fmt: skip
    assert rows[ids["a"]]["func"] == "add" and rows[ids["a"]]["executor"] == "default"
    assert rows[ids["bad"]]["exception"] == "ValueError: boom" and rows[ids["bad"]]["tries"] == 3
    assert rows[ids["after_bad"]]["exception"].startswith("DependencyError: ")
    assert rows[ids["after_bad"]]["tries"] == 0

    bad = tries(path, run_id, ids["bad"])
    assert [(t["try_no"], t["outcome"], t["charged"]) for t in bad] == [(1, "error", 1), (2, "error", 1), (3, "error", 1)]
    assert all(t["exception"] == "ValueError: boom" and "in fail" in t["traceback"] for t in bad)
    assert all(t["queued"] <= t["ended"] for t in bad)
    flaky = tries(path, run_id, ids["flaky"])
    assert [(t["outcome"], t["exception"]) for t in flaky] == [
        ("error", "RuntimeError: call 1 fails"), ("error", "RuntimeError: call 2 fails"), ("ok", None),
    ]  # fmt: skip
    assert tries(path, run_id, ids["after_bad"]) == [] and tries(path, run_id, ids["hit"]) == []

    miss, hit, other = rows[ids["miss"]], rows[ids["hit"]], rows[ids["other"]]
    assert (miss["cache"], miss["cache_reason"]) == ("miss", "first run of this key")
    assert (hit["cache"], hit["cache_key"]) == ("hit", miss["cache_key"]) and len(hit["cache_key"]) == 64
    assert other["cache"] == "miss" and other["cache_key"] != miss["cache_key"]
    assert other["cache_reason"] == "unlike the last call of this function: argument 'x' changed"
    assert rows[ids["a"]]["cache"] is None

    join = ids["join"]
    inner = {task_id for task_id, row in rows.items() if task_id > join and row["func"] == "add"}
    assert len(inner) == 2
    assert {(ids["a"], ids["b"]), (ids["bad"], ids["after_bad"]), (ids["a"], join)} | {
        (i, join) for i in inner
    } <= edges(path, run_id)
    (run,) = query(path, "SELECT status, ended IS NOT NULL, done, failed, cached, cancelled FROM run WHERE run_id = ?", run_id)
    assert run == ("done", 1, 10 + more_done, 2, 1, 1)  # failed counts the dep_fail too
    return rows


def test_a_graph_over_threads_is_recorded(tmp_path: Path) -> None:
    record = tmp_path / "runs" / "graph.db"
    dfx = DataflowExecutor(ThreadExecutor(max_workers=4), retries=2, shutdown_executors=True, record=record)
    with Gate() as gate:
        f = run_graph(dfx, tmp_path, gate)
    recorder = dfx.recorder
    assert recorder is not None
    dfx.shutdown()
    assert recorder.closed
    rows = check_graph(record, recorder.run_id, f)
    (only,) = tries(record, recorder.run_id, f["a"].task_id)
    assert (only["outcome"], only["charged"], only["host"], only["pid"]) == ("ok", 1, None, None)
    assert only["queued"] == rows[f["a"].task_id]["submitted"] and only["ended"] >= only["queued"]
    assert query(record, "SELECT family, kind FROM run") == [("graph", "dataflow")]


@pytest.fixture
def htex() -> Any:
    ex = HighThroughputExecutor(max_workers=2)
    yield ex
    ex.terminate()  # bounded even if a failed test left a task stuck


def test_a_graph_over_htex_with_a_killed_worker_is_recorded(htex: HighThroughputExecutor, tmp_path: Path) -> None:
    record = tmp_path / "graph.db"
    dfx = DataflowExecutor(htex, retries=2, record=record)
    pids = tmp_path / "pids"
    with Gate() as gate, Gate() as kill_gate:
        killed = dfx.submit(faults.report_pid_then, kill_gate.wait, str(pids))
        kill_gate.wait_entered(1, timeout=TIMEOUT)
        first = int(pids.read_text().split()[0])
        os.kill(first, signal.SIGKILL)
        kill_gate.wait_entered(2, timeout=TIMEOUT)  # the executor ran it again on a new worker
        kill_gate.open()
        second = killed.result(TIMEOUT)
        f = run_graph(dfx, tmp_path, gate)
    recorder = dfx.recorder
    assert recorder is not None
    dfx.shutdown()
    rows = check_graph(record, recorder.run_id, f, more_done=1)
    assert rows[killed.task_id]["state"] == "done"
    lost, ran = tries(record, recorder.run_id, killed.task_id)
    assert (lost["outcome"], lost["charged"]) == ("lost", 0), "a requeue after a lost worker is not charged"
    assert (ran["try_no"], ran["outcome"], ran["charged"]) == (2, "ok", 1)
    probe = htex.submit(add, 1)
    probe.result(TIMEOUT)
    if execution_of(probe) is None:
        pytest.skip("HighThroughputExecutor futures carry no Execution yet: no host or pid to check")
    assert (ran["pid"], ran["host"]) == (second, socket.gethostname())
    assert ran["pool"] and ran["dispatched"] <= ran["started"] <= ran["ended"]
    assert ran["rss_kb"] > 0 and ran["cpu"] >= 0
    (ok_a,) = tries(record, recorder.run_id, f["a"].task_id)
    assert ok_a["pid"] is not None and ok_a["host"] == socket.gethostname()


def test_a_worker_lost_in_the_dataflow_retry_is_not_charged(tmp_path: Path) -> None:
    record = tmp_path / "lost.db"
    ex = HighThroughputExecutor(max_workers=1, lost_task_retries=0)  # losses reach the dataflow layer
    try:
        dfx = DataflowExecutor(ex, retries=0, record=record)
        with Gate() as gate:
            future = dfx.submit(faults.report_pid_then, gate.wait, str(tmp_path / "pids"))
            gate.wait_entered(1, timeout=TIMEOUT)
            os.kill(int((tmp_path / "pids").read_text().split()[0]), signal.SIGKILL)
            gate.wait_entered(2, timeout=TIMEOUT)
            gate.open()
            future.result(TIMEOUT)
        recorder = dfx.recorder
        assert recorder is not None
        dfx.shutdown()
    finally:
        ex.terminate()
    lost, ran = tries(record, recorder.run_id, future.task_id)
    assert (lost["outcome"], lost["charged"]) == ("lost", 0)
    assert lost["exception"].startswith(f"{WorkerLostError.__name__}: ") and "SIGKILL" in lost["exception"]
    assert (ran["outcome"], ran["charged"]) == ("ok", 1)


# -- the rest of the record --------------------------------------------------------------------------


def test_a_workflow_stopped_by_a_failure_records_a_failed_run(tmp_path: Path) -> None:
    record = tmp_path / "stopped.db"
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2), lazy_errors=False, shutdown_executors=True, record=record)
    with Gate() as gate:
        held = dfx.submit(gate.wait, 1)
        waiting = dfx.submit(add, held, 1)
        gate.wait_entered(1, timeout=TIMEOUT)
        bad = dfx.submit(fail, "stop here")
        assert isinstance(bad.exception(TIMEOUT), ValueError)
        waiting.exception(TIMEOUT)
        gate.open()
    recorder = dfx.recorder
    assert recorder is not None
    dfx.shutdown()
    rows = tasks(record, recorder.run_id)
    assert rows[bad.task_id]["state"] == "failed"
    assert rows[waiting.task_id]["state"] == "cancelled"
    assert rows[waiting.task_id]["exception"].startswith("WorkflowStoppedError: the workflow stopped")
    ((status, error),) = query(record, "SELECT status, error FROM run")
    assert status == "failed" and "ValueError: stop here" in error


def test_a_bash_app_records_its_exit_code_and_output_tails(tmp_path: Path) -> None:
    record = tmp_path / "bash.db"
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, record=record)

    @bash_app(executor=dfx)
    def shout(code: int, stdout: str | None = None, stderr: str | None = None) -> str:
        return f"echo hello {code}; echo oops {code} >&2; exit {code}"

    good = shout(0, stdout=str(tmp_path / "good.out"), stderr=str(tmp_path / "good.err"))
    bad = shout(3, stdout=str(tmp_path / "bad.out"), stderr=str(tmp_path / "bad.err"))
    plain = shout(0)
    assert good.result(TIMEOUT) == 0 and plain.result(TIMEOUT) == 0
    bad.exception(TIMEOUT)
    recorder = dfx.recorder
    assert recorder is not None
    dfx.shutdown()
    (ok,) = tries(record, recorder.run_id, good.task_id)
    assert (ok["outcome"], ok["exit_code"], ok["stdout_tail"], ok["stderr_tail"]) == ("ok", 0, "hello 0", "oops 0")
    (failed,) = tries(record, recorder.run_id, bad.task_id)
    assert (failed["outcome"], failed["exit_code"]) == ("error", 3)
    assert (failed["stdout_tail"], failed["stderr_tail"]) == ("hello 3", "oops 3")
    assert failed["exception"].startswith("BashExitFailure: bash app shout exited with code 3")
    ((exit_code, out),) = query(record, "SELECT exit_code, stdout_tail FROM try WHERE task_id = ?", plain.task_id)
    assert (exit_code, out) == (0, None)
    assert tasks(record, recorder.run_id)[bad.task_id]["func"] == "test_a_bash_app_records_its_exit_code_and_output_tails.<locals>.shout"


def test_a_retried_task_keeps_its_submit_time_and_every_task_its_function(tmp_path: Path) -> None:
    # A plain task's submit is packed at the next shipment, by which time this one has
    # failed, been queued again and succeeded, and given back its function (released).
    record = tmp_path / "retried.db"
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2), retries=1, shutdown_executors=True, record=record)
    def local_square(x: int) -> int:  # its qualified name is not its name
        return x * x

    before = time.time()
    flaky = dfx.submit(fail_until, str(tmp_path / "count"), 1)
    plain = [dfx.submit(local_square, i) for i in range(200)]
    assert flaky.result(TIMEOUT) == 2 and [f.result(TIMEOUT) for f in plain] == [i * i for i in range(200)]
    recorder = dfx.recorder
    assert recorder is not None
    dfx.shutdown()
    first, second = tries(record, recorder.run_id, flaky.task_id)
    assert (first["outcome"], second["outcome"]) == ("error", "ok")
    recorded = tasks(record, recorder.run_id)
    assert before <= recorded[flaky.task_id]["submitted"] == first["queued"] < second["queued"]
    assert recorded[flaky.task_id]["func"] == "fail_until"
    assert {recorded[f.task_id]["func"] for f in plain} == {local_square.__qualname__}
    assert all(recorded[f.task_id]["state"] == "done" for f in plain)


def test_a_follower_and_a_checkpoint_are_recorded_as_cache_decisions(tmp_path: Path) -> None:
    record, checkpoint = tmp_path / "cache.db", tmp_path / "checkpoint.db"
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, checkpoint=checkpoint, record=record)
    cached = dfx.options(cache=True, ignore_for_cache=["wait"])
    with Gate() as gate:
        leader = cached.submit(wait_then, gate.wait, 3)
        gate.wait_entered(1, timeout=TIMEOUT)
        follower = cached.submit(wait_then, gate.wait, 3)
        gate.open()
        assert leader.result(TIMEOUT) == follower.result(TIMEOUT) == 3
    first = dfx.recorder
    assert first is not None
    dfx.shutdown()
    rows = tasks(record, first.run_id)
    assert rows[follower.task_id]["state"] == "memo_done" and rows[follower.task_id]["cache"] == "dedup"
    assert rows[follower.task_id]["cache_reason"] == f"followed task {leader.task_id}, the same call already running"
    assert tries(record, first.run_id, follower.task_id) == []

    again = DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, checkpoint=checkpoint, record=record)
    reused = again.options(cache=True, ignore_for_cache=["wait"]).submit(wait_then, lambda: None, 3)
    assert reused.result(TIMEOUT) == 3
    second = again.recorder
    assert second is not None and second.run_id != first.run_id
    again.shutdown()
    row = tasks(record, second.run_id)[reused.task_id]
    assert (row["state"], row["cache"], row["cache_key"]) == ("memo_done", "checkpoint", rows[leader.task_id]["cache_key"])


@pytest.mark.parametrize("other_records", [False, True], ids=["other-unrecorded", "other-recorded"])
def test_a_future_of_another_executor_is_no_parent(tmp_path: Path, other_records: bool) -> None:
    record = tmp_path / "two.db"
    other_record = tmp_path / "other.db" if other_records else False
    with DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True, record=other_record) as other:
        outside = other.submit(add, 1)
        dfx = DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True, record=record)
        inside = dfx.submit(add, 2)
        child = dfx.submit(add, outside, inside)
        assert child.result(TIMEOUT) == 3
        recorder = dfx.recorder
        assert recorder is not None
        dfx.shutdown()
    assert edges(record, recorder.run_id) == {(inside.task_id, child.task_id)}


class _Scaler:
    def __init__(self, factor: int):
        self.factor = factor

    def times(self, x: int) -> int:
        return self.factor * x


def negate(x: int) -> int:
    return -x


@pytest.mark.parametrize("round_", range(3))
def test_plain_tasks_from_many_threads_keep_their_functions_while_the_log_ships_all_the_time(
    tmp_path: Path, round_: int
) -> None:
    # The submit of a plain task is packed by the thread that submits it, which reuses the
    # kind (function, name) of the task before when it is the same: eight threads submit
    # tasks of four functions at once, one of them a bound method made anew for each call,
    # in an order of their own, while the record ships every millisecond.
    record = tmp_path / "threads.db"
    dfx = DataflowExecutor(ThreadExecutor(max_workers=4), shutdown_executors=True, record=record)
    recorder = dfx.recorder
    assert recorder is not None
    recorder.flush_interval = 0.001
    scaler = _Scaler(3)
    per_thread, threads = 1500, 8
    submitted: list[list[tuple[Any, str]]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def submit_many(index: int) -> None:
        names = ("add", "negate", "_Scaler.times", "square")
        start.wait(TIMEOUT)
        for n in range(per_thread):
            which = (n * (index + 1) + n // 7) % len(names)
            fn = (add, negate, scaler.times, square)[which]  # scaler.times: a new bound method each time
            submitted[index].append((dfx.submit(fn, n), names[which]))

    workers = [threading.Thread(target=submit_many, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(TIMEOUT)
    everything = [pair for part in submitted for pair in part]
    assert len(everything) == per_thread * threads
    for future, _ in everything:
        future.result(TIMEOUT)
    dfx.shutdown()
    recorded = tasks(record, recorder.run_id)
    assert len(recorded) == len(everything)
    wrong = [(f.task_id, func, recorded[f.task_id]["func"]) for f, func in everything if recorded[f.task_id]["func"] != func]
    assert wrong == []
    assert {row["state"] for row in recorded.values()} == {"done"}
    assert all(row["tries"] == 1 and row["submitted"] <= row["ended"] for row in recorded.values())


class _RecordingThreads(ThreadExecutor):
    """A backend that records its infrastructure: one block, told when it is attached."""

    attached: list[tuple[Any, str]]

    def attach_recorder(self, recorder: Any, label: str) -> None:
        self.attached = [(recorder, label)]
        recorder.block(label, "0", "running", time.time(), job_id="4242")


def test_a_backend_that_records_its_infrastructure_records_into_the_run(tmp_path: Path) -> None:
    record = tmp_path / "infra.db"
    backend = _RecordingThreads(max_workers=1)
    dfx = DataflowExecutor(executors={"cpu": backend}, shutdown_executors=True, record=record)
    assert dfx.submit(add, 1).result(TIMEOUT) == 1
    recorder = dfx.recorder
    assert backend.attached == [(recorder, "cpu")]
    dfx.shutdown()
    assert query(record, "SELECT executor, block_id, job_id, state FROM block") == [("cpu", "0", "4242", "running")]
    assert query(record, "SELECT executor FROM task") == [("cpu",)]


# -- turning it on and off ---------------------------------------------------------------------------


def test_record_false_writes_nothing_whatever_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCFUTURES_RECORD", "sweep")
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path))
    dfx = DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True, record=False)
    assert dfx.submit(add, 1).result(TIMEOUT) == 1
    assert dfx.recorder is None
    dfx.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_the_environment_turns_recording_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCFUTURES_RECORD", "sweep")
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path / "records"))
    with DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True) as dfx:
        assert dfx.submit(add, 1).result(TIMEOUT) == 1
    assert query(tmp_path / "records" / "sweep.db", "SELECT family, kind, status, done FROM run") == [
        ("sweep", "dataflow", "done", 1)
    ]
    monkeypatch.setenv("HPCFUTURES_RECORD", "0")
    with DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True) as off:
        assert off.recorder is None


@pytest.mark.parametrize(
    ("record", "environment", "named"),
    [
        (3, None, "record must be True, False, None, a family name or a path"),
        ("no good!", None, "record='no good!' is not a family name"),
        (None, "no good!", r"\$HPCFUTURES_RECORD='no good!' is not a family name"),
    ],
)
def test_a_bad_record_is_refused_at_construction(
    record: Any, environment: str | None, named: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if environment is not None:
        monkeypatch.setenv("HPCFUTURES_RECORD", environment)
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match=named):
        DataflowExecutor(ThreadExecutor(max_workers=1), record=record)
    assert list(tmp_path.iterdir()) == []
