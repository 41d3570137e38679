"""The run record's writing side: Recorder -> writer process -> a real SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from hpcfutures.monitor import Recorder, RecordError, connect_for_reading
from hpcfutures.monitor import recorder as recorder_module
from hpcfutures.monitor.location import record_dir, resolve_record
from hpcfutures.monitor.schema import APPLICATION_ID, SCHEMA_VERSION, connect

from ..record_rows import rows


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "fam.db"


def test_one_row_per_short_task_and_final_state_wins(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test", config={"workers": 2, "fn": print})
    t = time.time()
    rec.pool_registered("htex", "pool-1", t, host="node7", tag=42, workers=2, block_id=0)
    for i in range(1, 4):
        rec.submitted(i, "step", t, parents=[i - 1] if i > 1 else [])
    rec.state(1, "running", t + 1)
    rec.attempt(1, 1, "ok", started=t + 1, ended=t + 2, pool=42, pid=99, rss_kb=1000, cpu=0.5)
    rec.ended(1, "done", t + 2, tries=1)
    rec.state(1, "running", t + 3)  # late news must not undo the final state
    rec.attempt(2, 1, "lost", charged=False, exception="WorkerLostError: killed")
    rec.attempt(2, 2, "error", exception="ValueError: bad", traceback="Traceback ...\nValueError: bad")
    rec.ended(2, "failed", t + 4, tries=2, exception="ValueError: bad")
    assert rec.flush()
    tasks = rows(record, "SELECT task_id, func, state, tries, started FROM task ORDER BY task_id")
    assert tasks == [(1, "step", "done", 1, t + 1), (2, "step", "failed", 2, None), (3, "step", "pending", 0, None)]
    tries = rows(record, "SELECT task_id, try_no, outcome, charged, pool, host, pid FROM try ORDER BY 1, 2")
    assert tries == [
        (1, 1, "ok", 1, "pool-1", "node7", 99),
        (2, 1, "lost", 0, None, None, None),
        (2, 2, "error", 1, None, None, None),
    ]
    assert rows(record, "SELECT parent, child FROM edge ORDER BY child") == [(1, 2), (2, 3)]
    # the run row's counts are refreshed at each write, so a live run's status is one row
    assert rows(record, "SELECT status, submitted, done, failed, running FROM run") == [("running", 3, 1, 1, 0)]
    rec.ended(3, "cancelled", t + 5)
    rec.close()
    run = rows(record, "SELECT status, ended IS NOT NULL, cancelled, config FROM run")[0]
    assert run[:3] == ("done", 1, 1)
    assert '"workers": 2' in str(run[3]) and "built-in function print" in str(run[3])


def test_tasks_that_span_writes_are_updated_not_duplicated(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test")
    t = time.time()
    rec.submitted(7, "slow", t, resources={"cores": 2})
    rec.cache(7, "miss", "abc", "first run of this key")
    assert rec.flush()
    assert rows(record, "SELECT state, cache, resources FROM task") == [("pending", "miss", '{"cores": 2}')]
    rec.state(7, "running", t + 1)
    assert rec.flush()
    assert rows(record, "SELECT state, started FROM task") == [("running", t + 1)]
    assert rows(record, "SELECT running FROM run") == [(1,)]
    rec.attempt(7, 1, "ok", started=t + 1, ended=t + 9)
    rec.ended(7, "done", t + 9, tries=1)
    rec.close()
    assert rows(record, "SELECT state, started, ended, cache, cache_reason FROM task") == [
        ("done", t + 1, t + 9, "miss", "first run of this key")
    ]
    assert rows(record, "SELECT running, done FROM run") == [(0, 1)]


def test_blocks_keep_every_change_and_pools_their_loss(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test")
    t = time.time()
    rec.block("htex", "0", "PENDING", t, job_id="1234", raw_state="PD", reason="Priority")
    rec.block("htex", "0", "RUNNING", t + 5, raw_state="R")
    rec.pool_registered("htex", "p0", t + 6, block_id="0", host="n1", pid=5, workers=4, shape={"cpus": [0, 1]})
    rec.pool_lost("htex", "p0", t + 9, "its connection closed")
    rec.sample(t + 7, executor="htex", host="n1", load1=1.5, busy=3, workers=4)
    rec.close()
    assert rows(record, "SELECT job_id, state, raw_state, submitted, updated FROM block") == [
        ("1234", "RUNNING", "R", t, t + 5)
    ]
    assert rows(record, "SELECT state, reason FROM block_state ORDER BY at") == [("PENDING", "Priority"), ("RUNNING", None)]
    assert rows(record, "SELECT block_id, workers, lost, reason, shape FROM pool") == [
        ("0", 4, t + 9, "its connection closed", '{"cpus": [0, 1]}')
    ]
    assert rows(record, "SELECT host, load1, busy FROM sample") == [("n1", 1.5, 3)]


def test_samples_are_dropped_and_counted_when_the_writer_is_behind(
    record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "BACKLOG_LIMIT", 3)
    rec = Recorder(record, family="fam", kind="test", flush_interval=3600)
    t = time.time()
    for i in range(3):
        rec.submitted(i, "f", t)  # state changes are kept whatever the backlog
    for _ in range(5):
        rec.sample(t, host="h")
    rec.submitted(3, "f", t)
    rec.close()
    assert rows(record, "SELECT count(*) FROM task") == [(4,)]
    assert rows(record, "SELECT count(*) FROM sample") == [(0,)]
    assert rows(record, "SELECT dropped FROM run") == [(5,)]


def test_runs_of_a_family_share_one_file(record: Path) -> None:
    first = Recorder(record, family="fam", kind="dataflow")
    first.close("failed", "WorkflowStoppedError: boom")
    second = Recorder(record, family="fam", kind="htex")
    second.close()
    assert (first.run_id, second.run_id) == (1, 2)
    assert rows(record, "SELECT run_id, kind, status, error FROM run ORDER BY run_id") == [
        (1, "dataflow", "failed", "WorkflowStoppedError: boom"),
        (2, "htex", "done", None),
    ]


def test_a_killed_process_leaves_an_interrupted_run_and_no_writer(record: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from hpcfutures.monitor import Recorder
        rec = Recorder({str(record)!r}, family="fam", kind="test")
        rec.submitted(1, "f", time.time())
        rec.flush()
        print(os.getpid(), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        writers = psutil.Process(pid).children()
        assert len(writers) == 1
        os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        psutil.wait_procs(writers, timeout=30)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in writers)
    finally:
        proc.kill()
        proc.wait()
    status, error = rows(record, "SELECT status, error FROM run")[0]
    assert status == "interrupted" and "without closing" in str(error)
    assert rows(record, "SELECT task_id, state FROM task") == [(1, "pending")]


def test_a_dead_writer_does_not_stop_the_run(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test", flush_interval=0.01)
    rec._writer.kill()
    rec._writer.wait()
    deadline = time.monotonic() + 30
    while rec.error is None and time.monotonic() < deadline:
        rec.submitted(1, "f", time.time())
        time.sleep(0.01)
    assert isinstance(rec.error, OSError)
    assert rec.flush() is False
    rec.close()  # returns, does not raise


def test_unmarshallable_events_fail_the_record_not_the_run(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test")
    rec.raw("x:y", object())
    assert rec.flush(timeout=30) is False
    assert isinstance(rec.error, ValueError)
    rec.close()
    status, error = rows(record, "SELECT status, error FROM run")[0]
    assert status == "interrupted" and "recording stopped" in str(error)


def test_the_file_is_checked_before_it_is_used(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(RecordError, match="not an hpcfutures run record"):
        connect(other)
    with pytest.raises(RecordError, match="not an hpcfutures run record"):
        connect_for_reading(other)
    with pytest.raises(RecordError, match="no such file"):
        connect_for_reading(tmp_path / "missing.db")
    newer = tmp_path / "newer.db"
    connect(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RecordError, match="newer than this hpcfutures"):
        connect(newer)
    with pytest.raises(RecordError, match="upgrade hpcfutures"):
        connect_for_reading(newer)


def test_a_new_file_is_in_wal_mode_and_stamped(record: Path) -> None:
    connect(record).close()
    conn = sqlite3.connect(record)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_what_record_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path / "dir"))
    monkeypatch.delenv("HPCFUTURES_RECORD", raising=False)
    assert record_dir() == tmp_path / "dir"
    assert resolve_record(None) is None
    assert resolve_record(False) is None
    assert resolve_record("sweep") == (tmp_path / "dir" / "sweep.db", "sweep")
    assert resolve_record(tmp_path / "x.db") == (tmp_path / "x.db", "x")
    assert resolve_record("runs/a.sqlite") == (Path("runs/a.sqlite"), "a")
    path, family = resolve_record(True)  # type: ignore[misc]
    assert path.parent == tmp_path / "dir" and path.name == f"{family}.db"
    monkeypatch.setenv("HPCFUTURES_RECORD", "nightly")
    assert resolve_record(None) == (tmp_path / "dir" / "nightly.db", "nightly")
    assert resolve_record(False) is None
    monkeypatch.setenv("HPCFUTURES_RECORD", "0")
    assert resolve_record(None) is None
    with pytest.raises(ValueError, match="record='bad name!'"):
        resolve_record("bad name!")
    with pytest.raises(TypeError, match="record must be"):
        resolve_record(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [0.001, 0.001, 0.001, 0.2])
def test_no_event_is_lost_while_many_threads_tell_and_it_ships_all_the_time(record: Path, interval: float) -> None:
    # A shipment every millisecond, so that takes interleave with appends from every thread;
    # and shipments of many events, which the writer holds while the executor is busy and
    # writes when it calms down or the run ends.
    rec = Recorder(record, family="fam", kind="test", flush_interval=interval)
    threads_n, per_thread = 8, 5_000
    start = threading.Barrier(threads_n)

    def tell(first: int) -> None:
        start.wait()
        t = time.time()
        for task_id in range(first, first + per_thread):
            rec.submitted(task_id, "f", t, parents=(task_id - 1,) if task_id % per_thread else ())
            rec.attempt(task_id, 1, "ok", started=t, ended=t, traceback=None)
            rec.ended(task_id, "done", t, tries=1)

    workers = [threading.Thread(target=tell, args=(i * per_thread,)) for i in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rec.close()
    total = threads_n * per_thread
    assert rows(record, "SELECT count(*), sum(state = 'done') FROM task") == [(total, total)]
    assert rows(record, "SELECT count(*) FROM try") == [(total,)]
    assert rows(record, "SELECT count(*) FROM edge") == [(total - threads_n,)]
    assert rows(record, "SELECT submitted, done FROM run") == [(total, total)]


def test_events_told_after_close_are_dropped_not_kept(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test")
    rec.close()
    for _ in range(1000):  # an executor lent to a recorded run, still telling of its blocks
        rec.block("htex", "0", "RUNNING", time.time())
        rec.sample(time.time(), host="h")
    assert len(rec._events) == 0
    assert rows(record, "SELECT count(*) FROM block") == [(0,)]


def test_a_plain_task_costs_one_short_row_and_reads_as_a_task_and_a_try(record: Path) -> None:
    rec = Recorder(record, family="fam", kind="test")
    t = time.time()
    rec.pool_registered("htex", "pool-1", t, host="node7", tag=42, workers=2, block_id=0)
    for i in range(1, 6):
        rec.submitted(i, "step", t, name=f"step-{i}", executor="htex", state="queued")
    rec.state(1, "running", t + 1.5)  # its start told after it began (as HTEX does), its end later: still plain
    rec.succeeded(1, 1, t + 2, queued=t, dispatched=t + 0.4, started=t + 1, pool=42, worker=3, pid=99, cpu=0.5)
    rec.succeeded(2, 1, t + 3)
    rec.cache(3, "miss", "k3", "first run of this key")  # told of before its end: a full row
    rec.succeeded(3, 1, t + 4)
    rec.succeeded(4, 2, t + 5)
    rec.attempt(4, 1, "error", exception="ValueError: once")  # told after the end (as a task log does)
    rec.state(5, "running", t + 1)  # started, not ended when the writer wrote
    assert rec.flush()
    assert rows(record, "SELECT task_id FROM task_plain ORDER BY 1") == [(1,), (2,)]
    assert rows(record, "SELECT task_id, state FROM task_full ORDER BY 1") == [
        (3, "done"), (4, "done"), (5, "running"),
    ]  # fmt: skip
    assert rows(record, "SELECT task_id, func, name, executor, state, submitted, started, ended, tries FROM task "
                "ORDER BY 1") == [
        (1, "step", "step-1", "htex", "done", t, t + 1, t + 2, 1),
        (2, "step", "step-2", "htex", "done", t, None, t + 3, 1),
        (3, "step", "step-3", "htex", "done", t, None, t + 4, 1),
        (4, "step", "step-4", "htex", "done", t, None, t + 5, 2),
        (5, "step", "step-5", "htex", "running", t, t + 1, None, 0),
    ]  # fmt: skip
    assert rows(record, "SELECT cache, cache_reason FROM task WHERE task_id = 3") == [("miss", "first run of this key")]
    assert rows(record, "SELECT task_id, try_no, queued, dispatched, started, ended, outcome, charged, pool, host, "
                "worker, pid, cpu FROM try ORDER BY 1, 2") == [
        (1, 1, t, t + 0.4, t + 1, t + 2, "ok", 1, "pool-1", "node7", 3, 99, 0.5),
        (2, 1, None, None, None, t + 3, "ok", 1, None, None, None, None, None),
        (3, 1, None, None, None, t + 4, "ok", 1, None, None, None, None, None),
        (4, 1, None, None, None, None, "error", 1, None, None, None, None, None),
        (4, 2, None, None, None, t + 5, "ok", 1, None, None, None, None, None),
    ]  # fmt: skip
    assert rows(record, "SELECT submitted, running, done FROM run") == [(5, 1, 4)]
    rec.succeeded(5, 1, t + 6, started=t + 1)  # its row was written: updated in place, not doubled
    rec.close()
    assert rows(record, "SELECT task_id, state, ended FROM task WHERE task_id = 5") == [(5, "done", t + 6)]
    assert rows(record, "SELECT count(*), count(DISTINCT task_id) FROM task") == [(5, 5)]
    assert rows(record, "SELECT running, done FROM run") == [(0, 5)]


def test_a_version_1_record_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old)
    conn.executescript(V1_SCHEMA)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO run (run_id, family, kind, status, started) VALUES (1, 'fam', 'test', 'done', 1.0)")
    conn.execute("INSERT INTO task (run_id, task_id, func, state, ended, tries) VALUES (1, 7, 'f', 'done', 2.0, 1)")
    conn.execute("INSERT INTO try (run_id, task_id, try_no, outcome, ended) VALUES (1, 7, 1, 'ok', 2.0)")
    conn.commit()
    conn.close()
    assert rows(old, "SELECT task_id, func, state FROM task") == [(7, "f", "done")]  # a reader migrates it
    assert rows(old, "SELECT task_id, outcome FROM try") == [(7, "ok")]
    assert rows(old, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    rec = Recorder(old, family="fam", kind="test")  # and a writer goes on in it
    rec.submitted(1, "g", time.time())
    rec.succeeded(1, 1, time.time())
    rec.close()
    assert rows(old, "SELECT run_id, task_id, func FROM task ORDER BY 1, 2") == [(1, 7, "f"), (2, 1, "g")]


# The tables of schema version 1 that version 2 changed, as version 1 created them.
V1_SCHEMA = """
CREATE TABLE run (run_id INTEGER PRIMARY KEY, family TEXT NOT NULL, kind TEXT NOT NULL, label TEXT,
    status TEXT NOT NULL, started REAL NOT NULL, ended REAL, heartbeat REAL, host TEXT, pid INTEGER, argv TEXT,
    version TEXT, config TEXT, submitted INTEGER NOT NULL DEFAULT 0, running INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0, error TEXT);
CREATE TABLE task (run_id INTEGER NOT NULL, task_id INTEGER NOT NULL, func TEXT, name TEXT, executor TEXT,
    state TEXT NOT NULL, submitted REAL, started REAL, ended REAL, tries INTEGER NOT NULL DEFAULT 0, exception TEXT,
    resources TEXT, cache TEXT, cache_key TEXT, cache_reason TEXT, PRIMARY KEY (run_id, task_id)) WITHOUT ROWID;
CREATE INDEX task_by_state ON task (run_id, state);
CREATE INDEX task_by_ended ON task (run_id, ended);
CREATE INDEX task_by_func ON task (run_id, func, state);
CREATE TABLE edge (run_id INTEGER NOT NULL, child INTEGER NOT NULL, parent INTEGER NOT NULL,
    PRIMARY KEY (run_id, child, parent)) WITHOUT ROWID;
CREATE INDEX edge_by_parent ON edge (run_id, parent);
CREATE TABLE try (run_id INTEGER NOT NULL, task_id INTEGER NOT NULL, try_no INTEGER NOT NULL, queued REAL,
    dispatched REAL, started REAL, ended REAL, outcome TEXT, charged INTEGER NOT NULL DEFAULT 1, exception TEXT,
    traceback TEXT, pool TEXT, host TEXT, worker INTEGER, pid INTEGER, rss_kb INTEGER, cpu REAL, exit_code INTEGER,
    stdout_tail TEXT, stderr_tail TEXT, PRIMARY KEY (run_id, task_id, try_no)) WITHOUT ROWID;
CREATE INDEX try_by_ended ON try (run_id, ended);
CREATE TABLE block (run_id INTEGER NOT NULL, executor TEXT NOT NULL, block_id TEXT NOT NULL, job_id TEXT,
    state TEXT, raw_state TEXT, reason TEXT, submitted REAL, updated REAL,
    PRIMARY KEY (run_id, executor, block_id)) WITHOUT ROWID;
CREATE TABLE block_state (run_id INTEGER NOT NULL, executor TEXT NOT NULL, block_id TEXT NOT NULL, at REAL NOT NULL,
    state TEXT, raw_state TEXT, reason TEXT);
CREATE TABLE pool (run_id INTEGER NOT NULL, executor TEXT NOT NULL, pool_id TEXT NOT NULL, block_id TEXT, host TEXT,
    pid INTEGER, workers INTEGER, shape TEXT, registered REAL, lost REAL, reason TEXT,
    PRIMARY KEY (run_id, executor, pool_id)) WITHOUT ROWID;
CREATE TABLE sample (run_id INTEGER NOT NULL, at REAL NOT NULL, executor TEXT, host TEXT, pool_id TEXT,
    cpu_percent REAL, load1 REAL, mem_percent REAL, rss_mb REAL, busy INTEGER, workers INTEGER);
"""
