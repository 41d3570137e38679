"""HighThroughputExecutor's run record (issue 14): real runs written to a real SQLite file
by the real writer process, read back with SQL.

Every test that records checks that no writer process outlives the executor.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from hpcfutures import ConfigurationError, HighThroughputExecutor, TaskTimeoutError
from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex import recording
from hpcfutures.monitor import Recorder
from hpcfutures.monitor.events import END, STATE, SUBMIT, TRY
from hpcfutures.monitor.execution import Execution, Recordable, execution_of
from hpcfutures.providers import LocalProvider
from hpcfutures.testing import Gate, faults

from ..record_rows import rows
from .htex_helpers import assert_all_gone


def double(x: int) -> int:
    return 2 * x


def fail(x: int) -> None:
    raise ValueError(f"no good: {x}")


def spin(cpu_seconds: float) -> float:
    """Burn ``cpu_seconds`` of this process's CPU time; return the CPU time spent."""
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        pass
    return time.process_time() - start


def grow(megabytes: int) -> int:
    """Touch ``megabytes`` of memory, so that the worker's peak RSS is at least that."""
    block = bytearray(megabytes << 20)
    return len(block)



def wait_until(path: Path, sql: str, timeout: float = 30.0) -> list[tuple[Any, ...]]:
    """Poll the record until ``sql`` returns rows (the writer commits every half second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(path, sql) if path.exists() else []
        if found:
            return found
        assert time.monotonic() < deadline, f"the record never showed: {sql}"
        time.sleep(0.05)


def writers() -> set[int]:
    """The record writer processes below this process."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "hpcfutures.monitor.writer" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def no_env_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No recording unless a test asks: HPCFUTURES_RECORD unset, records under tmp_path."""
    monkeypatch.delenv("HPCFUTURES_RECORD", raising=False)
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path / "records"))
    return tmp_path / "records"


def test_a_recorded_run_reads_back_by_sql(tmp_path: Path, no_env_record: Path, leak_check: Any) -> None:
    path = tmp_path / "run.db"
    ex = HighThroughputExecutor(max_workers=2, record=path, sample_interval=0.1, block_poll_period=0.1)
    with ex:
        futures = [ex.submit(double, i) for i in range(40)]
        big = ex.submit(grow, 64)
        bad = ex.submit(fail, 7)
        busy = ex.submit(spin, 0.02)
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(40)]
        spent = busy.result(timeout=60)
        assert big.result(timeout=60) == 64 << 20
        assert isinstance(bad.exception(timeout=60), ValueError)
        (writer,) = writers()
        leak_check()
        wait_until(path, "SELECT 1 FROM sample")
        wait_until(path, "SELECT 1 FROM block_state WHERE state = 'running'")

        execution = execution_of(futures[0])
        assert isinstance(execution, Execution)
        assert execution.pool in ex.pools and execution.host == ex.pools[execution.pool]["host"]
        assert execution.worker in (0, 1) and execution.lost == 0
        assert execution.dispatched <= execution.started <= execution.ended  # type: ignore[operator]
        assert execution.rss_kb
        # CPU time is measured for tasks of a millisecond or more, to within CPU_EVERY_SECONDS
        assert execution.cpu is None or execution.ended - execution.started >= 0.001  # type: ignore[operator]
        measured = execution_of(busy)
        assert measured is not None and measured.cpu is not None
        assert spent <= measured.cpu <= spent + 0.05
        assert big.execution.rss_kb >= 64 << 10  # type: ignore[union-attr]
    assert_all_gone({writer})
    assert not writers()

    run = rows(path, "SELECT kind, label, status, submitted, done, failed, running, ended FROM run")
    assert run == [("htex", "htex", "done", 43, 42, 1, 0, run[0][-1])]
    assert run[0][-1] is not None
    tasks = dict(rows(path, "SELECT state, count(*) FROM task GROUP BY state"))
    assert tasks == {"done": 42, "failed": 1}
    assert rows(path, "SELECT func, state, tries, exception FROM task WHERE func = 'fail'") == [
        ("fail", "failed", 1, "ValueError: no good: 7")
    ]
    sql = "SELECT outcome, charged, exception, traceback FROM try WHERE task_id = ?"
    (failed,) = rows(path, sql, bad.task_id)  # type: ignore[attr-defined]
    assert failed[:3] == ("error", 1, "ValueError: no good: 7")
    assert "Traceback" in failed[3] and "in fail" in failed[3] and failed[3].rstrip().endswith("no good: 7")

    tries = rows(
        path,
        "SELECT t.task_id, t.try_no, t.outcome, t.host, t.pid, t.pool, t.worker, t.dispatched, t.started, "
        "t.ended, t.rss_kb, t.cpu, k.submitted FROM try t JOIN task k USING (run_id, task_id)",
    )
    assert len(tries) == 43
    pools = rows(path, "SELECT pool_id, host, pid, workers, block_id, shape FROM pool")
    assert len(pools) == 1 and pools[0][3] == 2 and pools[0][4] == "0" and '"cpus"' in pools[0][5]
    worker_pids = set()
    for task_id, try_no, outcome, host, pid, pool, worker, dispatched, started, ended, rss_kb, cpu, submitted in (
        tries
    ):
        assert try_no == 1 and outcome in ("ok", "error")
        assert (pool, host) == pools[0][:2]
        assert worker in (0, 1) and pid > 0 and rss_kb > 0
        assert (cpu is not None and cpu >= 0) if ended - started >= 0.001 else cpu is None, task_id
        assert submitted <= dispatched <= started <= ended, task_id
        worker_pids.add(pid)
    assert pools[0][2] not in worker_pids  # the pool manager's pid, not a worker's

    history = rows(path, "SELECT state, raw_state, reason FROM block_state WHERE block_id = '0' ORDER BY at")
    assert history[0] == ("pending", None, "submitted")
    connected = [h for h in history if h[2] == "a pool connected (2 workers)"]
    assert connected and connected[0][0] == "running"
    assert any(state == "running" and raw and raw.startswith("running as pid") for state, raw, _ in history)
    assert history[-1][0] in ("completed", "cancelled"), history
    assert len(history) == len(set(history)), "a row per poll"
    (block,) = rows(path, "SELECT job_id, state FROM block")
    assert block == (ex.blocks()[0].job_id, history[-1][0])

    sql = "SELECT executor, host, pool_id, load1, cpu_percent, mem_percent, rss_mb, busy, workers FROM sample"
    samples = rows(path, sql)
    assert samples
    for executor, host, pool_id, load1, cpu_percent, mem_percent, rss_mb, busy, workers in samples:
        assert (executor, host, pool_id) == ("htex", pools[0][1], pools[0][0])
        assert load1 >= 0 and 0 <= cpu_percent <= 100 and 0 < mem_percent <= 100 and rss_mb > 0
        assert 0 <= busy <= workers == 2


def test_a_killed_worker_gives_a_lost_uncharged_try_then_a_good_one(tmp_path: Path, no_env_record: Path) -> None:
    path = tmp_path / "run.db"
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1, record=path) as ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        (first,) = [int(line) for line in pids.read_text().split()]
        os.kill(first, signal.SIGKILL)
        gate.wait_entered(2, timeout=30)  # the requeued task began again, on a new worker
        gate.open()
        second = future.result(timeout=30)
        assert future.execution is not None
        assert future.execution.lost == 1 and future.execution.pid == second != first
    tries = rows(path, "SELECT try_no, outcome, charged, pid, worker, exit_code, exception, ended FROM try ORDER BY try_no")
    assert [t[:6] for t in tries] == [(1, "lost", 0, first, 0, -signal.SIGKILL), (2, "ok", 1, second, 0, None)]
    assert "SIGKILL" in tries[0][6]
    assert tries[0][7] <= tries[1][7]
    assert rows(path, "SELECT state, tries FROM task") == [("done", 2)]


def test_a_lost_pool_requeues_with_a_lost_try_and_the_pool_row_says_why(tmp_path: Path, no_env_record: Path) -> None:
    path = tmp_path / "run.db"
    pids = tmp_path / "pids"
    with HighThroughputExecutor(max_workers=1, record=path) as ex, Gate() as gate:
        future = ex.submit(faults.report_pid_then, gate.wait, str(pids))
        gate.wait_entered(1, timeout=30)
        (worker,) = [int(line) for line in pids.read_text().split()]
        pool_pid = psutil.Process(worker).ppid()
        os.kill(pool_pid, signal.SIGKILL)
        gate.wait_entered(2, timeout=60)  # ran again, in a new block's pool
        gate.open()
        future.result(timeout=30)
    pools = rows(path, "SELECT pool_id, pid, block_id, lost, reason FROM pool ORDER BY registered")
    assert len(pools) == 2 and pools[0][1] == pool_pid and pools[0][3] is not None and pools[0][4]
    assert pools[1][2] != pools[0][2]  # the replacement block's pool
    tries = rows(path, "SELECT try_no, outcome, charged, pool, exception FROM try ORDER BY try_no")
    assert [t[:4] for t in tries] == [(1, "lost", 0, pools[0][0]), (2, "ok", 1, pools[1][0])]
    assert pools[0][0] in tries[0][4]
    assert rows(path, "SELECT state, tries FROM task") == [("done", 2)]


def test_a_block_scaled_in_has_its_history_and_its_pool_stopped(tmp_path: Path, no_env_record: Path) -> None:
    path = tmp_path / "run.db"
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    fast = dict(block_poll_period=0.1, heartbeat_period=0.2)
    with HighThroughputExecutor(max_workers=1, provider=provider, max_idletime=0.3, record=path, **fast) as ex:
        assert ex.submit(double, 1).result(timeout=60) == 2
        deadline = time.monotonic() + 30
        while [b.state for b in ex.blocks()] != ["ended"]:
            assert time.monotonic() < deadline, "the idle block was never scaled in"
            time.sleep(0.05)
        wait_until(path, "SELECT 1 FROM pool WHERE lost IS NOT NULL")
    history = rows(path, "SELECT state, reason FROM block_state ORDER BY at")
    reasons = [reason for _, reason in history]
    assert reasons[0] == "submitted" and "draining: scaling in" in reasons
    assert reasons.index("a pool connected (1 worker)") < reasons.index("draining: scaling in")
    assert history[-1][0] in ("completed", "cancelled")
    assert rows(path, "SELECT reason FROM pool") == [("stopped: its block was drained",)]


def test_walltime_and_cancels_are_recorded_with_their_outcome(tmp_path: Path, no_env_record: Path) -> None:
    path = tmp_path / "run.db"
    with HighThroughputExecutor(max_workers=1, record=path) as ex, Gate() as gate:
        late = ex.options(walltime=0.5).submit(time.sleep, 60)
        assert isinstance(late.exception(timeout=60), TaskTimeoutError)
        held = ex.submit(gate.wait)
        gate.wait_entered(1, timeout=30)
        queued = [ex.submit(double, i) for i in range(3)]
        assert all(f.cancel() for f in queued)
        gate.open()
        held.result(timeout=30)
    (timed_out,) = rows(path, "SELECT outcome, charged, pid, started, ended, exception FROM try WHERE task_id = 1")
    assert timed_out[:2] == ("walltime", 1) and timed_out[2] > 0
    assert timed_out[4] - timed_out[3] == pytest.approx(0.5, abs=0.4)
    assert "walltime" in timed_out[5]
    assert rows(path, "SELECT resources FROM task WHERE task_id = 1") == [('{"walltime": 0.5}',)]
    ids = [f.task_id for f in queued]  # type: ignore[attr-defined]
    states = rows(path, f"SELECT state, tries FROM task WHERE task_id IN ({','.join('?' * len(ids))})", *ids)
    assert states == [("cancelled", 0)] * 3


def test_a_broken_executor_ends_its_run_failed_and_terminate_interrupted(tmp_path: Path, no_env_record: Path) -> None:
    broken = tmp_path / "broken.db"
    with HighThroughputExecutor(max_workers=1, record=broken) as ex, Gate() as gate:
        pending = ex.submit(gate.wait)
        gate.wait_entered(1, timeout=30)
        (interchange,) = [p for p in psutil.Process().children() if "interchange" in " ".join(p.cmdline())]
        interchange.kill()
        assert pending.exception(timeout=60) is not None
    assert not writers()
    ((status, error),) = rows(broken, "SELECT status, error FROM run")
    assert status == "failed" and "InterchangeLostError" in error
    assert rows(broken, "SELECT state FROM task") == [("failed",)]

    stopped = tmp_path / "stopped.db"
    ex = HighThroughputExecutor(max_workers=1, record=stopped)
    with Gate() as gate:
        ex.submit(gate.wait)
        gate.wait_entered(1, timeout=30)
        ex.terminate()
    assert not writers()
    assert rows(stopped, "SELECT status FROM run") == [("interrupted",)]
    assert rows(stopped, "SELECT state, exception FROM task") == [
        ("failed", "ExecutorShutdownError: the executor shut down before this task finished")
    ]


def test_recording_off_writes_nothing_and_starts_no_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env_record: Path
) -> None:
    monkeypatch.setenv("HPCFUTURES_RECORD", "1")  # record=False wins over the environment
    with HighThroughputExecutor(max_workers=1, record=False) as ex:
        future = ex.submit(double, 3)
        assert future.result(timeout=60) == 6
        assert not writers()
        execution = future.execution
        assert execution is not None and execution.pid and execution.started and execution.pool in ex.pools
        assert execution.cpu is None and execution.rss_kb is None  # measured only while recording
    assert not no_env_record.exists()


def test_the_environment_variable_turns_recording_on(monkeypatch: pytest.MonkeyPatch, no_env_record: Path) -> None:
    monkeypatch.setenv("HPCFUTURES_RECORD", "sweep")
    with HighThroughputExecutor(max_workers=1, label="envrec") as ex:
        assert ex.submit(double, 4).result(timeout=60) == 8
        assert writers()
    assert not writers()
    path = no_env_record / "sweep.db"
    assert rows(path, "SELECT family, label, status, done FROM run") == [("sweep", "envrec", "done", 1)]


@pytest.mark.parametrize("value", [3, 2.5, ["a.db"], "not a name!"])
def test_a_bad_record_value_fails_at_construction_naming_record(value: Any, no_env_record: Path) -> None:
    with pytest.raises(ConfigurationError, match="record"):
        HighThroughputExecutor(record=value)


def test_a_bad_environment_value_fails_at_construction_naming_it(
    monkeypatch: pytest.MonkeyPatch, no_env_record: Path
) -> None:
    monkeypatch.setenv("HPCFUTURES_RECORD", "two words")
    with pytest.raises(ConfigurationError, match=r"\$HPCFUTURES_RECORD"):
        HighThroughputExecutor()
    with pytest.raises(ConfigurationError, match="sample_interval"):
        HighThroughputExecutor(record=False, sample_interval=-1)


def test_an_attached_recorder_gets_blocks_pools_and_samples_but_no_tasks(tmp_path: Path, no_env_record: Path) -> None:
    path = tmp_path / "flow.db"
    recorder = Recorder(path, family="flow", kind="dataflow")
    ex = HighThroughputExecutor(
        max_workers=1, record="ignored-when-attached", sample_interval=0.1, provider=LocalProvider(init_blocks=1)
    )
    assert isinstance(ex, Recordable)
    ex.attach_recorder(recorder, "backend")
    try:
        with ex:
            future = ex.submit(spin, 0.005)
            assert future.result(timeout=60) >= 0.005
            execution = execution_of(future)
            assert execution is not None and execution.cpu is not None and execution.rss_kb  # measured for the layer above
            assert writers() == {recorder._writer.pid}
            deadline = time.monotonic() + 30
            while not rows(path, "SELECT 1 FROM sample"):
                assert time.monotonic() < deadline, "no sample reached the attached record"
                assert recorder.flush()
    finally:
        recorder.close()
    assert not writers()
    assert not (no_env_record / "ignored-when-attached.db").exists()
    assert rows(path, "SELECT count(*) FROM task") == [(0,)]
    assert rows(path, "SELECT executor, block_id FROM pool") == [("backend", "0")]
    assert rows(path, "SELECT DISTINCT executor FROM block_state") == [("backend",)]
    assert rows(path, "SELECT DISTINCT executor FROM sample") == [("backend",)]


# -- the wire and the decoders, without processes -----------------------------------------------


def test_result_meta_keeps_its_lengths_last_and_split_reads_them():
    meta = P.RESULT_META.pack(9, P.OK, 0.5, 1.0, 2.0, 0.25, 77, 1234, 4096, 3, 1, 5, 2)
    ((fields, main, oob),) = P.split(P.RESULT_META, meta, memoryview(b"abcde"), [b"x", b"y"])
    assert fields[P.R_ID] == 9 and fields[P.R_POOL] == 77 and fields[P.R_LOST] == 1
    assert bytes(main) == b"abcde" and oob == [b"x", b"y"]
    assert P.PROTOCOL_VERSION == 6
    execution = recording.execution_from(fields, {77: ("pool-a", "node1")})
    assert execution == Execution(1.0, 2.0, 2.5, "pool-a", "node1", 3, 1234, 4096, 0.25, 1)
    unknown = recording.execution_from(P.RESULT_META.unpack(P.result_meta(9, P.FAILED, 0, 0)), {})
    assert unknown == Execution(None, None, None, None, None, None, None, None, None, 0)


def test_the_decoders_number_tries_across_losses():
    at = 1000.0
    submits = list(
        recording.decode_submits((1, 3, at, [(1, "f", None), (3, "g", '{"priority": 2}')], "htex"))
    )
    assert [(e[0], e[1], e[2], e[8]) for e in submits] == [
        (SUBMIT, 1, "f", None), (SUBMIT, 2, "f", None), (SUBMIT, 3, "g", '{"priority": 2}'),
    ]  # fmt: skip
    assert list(recording.decode_submits((4, 4, at, [], "htex")))[0][2] == "g"  # carried across batches
    lost = list(recording.decode_lost((at + 1, [2], "worker 0 was killed", 5, 42, 0, -9)))
    assert [e[0] for e in lost] == [TRY, STATE] and lost[0][2] == 1 and lost[0][7:9] == ("lost", 0)
    metas = P.RESULT_META.pack(2, P.OK, 0.5, at + 2, at + 3, 0.1, 5, 43, 100, 0, 1, 0, 0)
    metas += P.result_meta(3, P.FAILED, 0, 0)  # failed in the interchange: it never ran
    started = struct.pack("<2Q", 1, 2)
    events = list(recording.decode_results((started, metas, at + 4, [(3, "error", "E: x", None, None)])))
    assert events[0] == (STATE, 1, "running", at + 4)  # 2 started and ended in this batch
    tried = [e for e in events if e[0] == TRY]
    assert [(e[1], e[2], e[3], e[7]) for e in tried] == [(2, 2, at + 1, "ok")]
    ends = [e for e in events if e[0] == END]
    assert ends == [(END, 2, "done", at + 3.5, 2, None), (END, 3, "failed", at + 4, 0, "E: x")]
