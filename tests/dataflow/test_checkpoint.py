"""The SQLite checkpoint: resuming, write modes, refusing bad files, and surviving a kill."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import hpcfutures
from hpcfutures.dataflow import checkpoint as checkpoint_module
from hpcfutures.dataflow.checkpoint import Checkpoint, CheckpointError
from hpcfutures.errors import ConfigurationError, HpcFuturesError


class FakeClock:
    """A monotonic clock the test moves by hand, so that periodic writes need no sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stored_keys(path: Path) -> list[str]:
    """Read the committed keys through a separate connection, as another process would."""
    conn = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in conn.execute("SELECT key FROM results"))
    finally:
        conn.close()


def test_results_survive_into_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as first:
        first.put("k1", {"answer": 42}, function="pkg.mod.f", task_name="f-1")
        first.put("k2", [1, 2, 3], function="pkg.mod.g", task_name="g-2")
        first.put("k3", None, function="pkg.mod.h", task_name="h-3")

    with Checkpoint(str(path)) as resumed:
        assert resumed.get("k1") == (True, {"answer": 42})
        assert resumed.get("k2") == (True, [1, 2, 3])
        assert resumed.get("k3") == (True, None)  # a stored None is found, unlike a missing key
        assert resumed.get("missing") == (False, None)
        assert resumed.keys() == ["k1", "k2", "k3"]
        assert len(resumed) == 3


def test_put_replaces_the_result_of_a_key(tmp_path: Path) -> None:
    with Checkpoint(tmp_path / "run.db") as checkpoint:
        checkpoint.put("k", 1)
        checkpoint.put("k", 2)
        assert checkpoint.get("k") == (True, 2)
        assert len(checkpoint) == 1


def test_task_mode_writes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k", 1)
        assert stored_keys(path) == ["k"]
        assert checkpoint.flush() == 0


def test_periodic_mode_writes_when_the_period_has_passed(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    clock = FakeClock()
    with Checkpoint(path, mode="periodic", period=1.0, clock=clock) as checkpoint:
        checkpoint.put("a", 1)
        clock.now = 0.5
        checkpoint.put("b", 2)
        assert stored_keys(path) == []
        assert checkpoint.get("a") == (True, 1)  # buffered results are found before they are written
        assert len(checkpoint) == 2

        clock.now = 1.0
        checkpoint.put("c", 3)
        assert stored_keys(path) == ["a", "b", "c"]

        clock.now = 1.5  # the period counts from the last write, not from the start
        checkpoint.put("d", 4)
        assert stored_keys(path) == ["a", "b", "c"]
    assert stored_keys(path) == ["a", "b", "c", "d"]  # close writes the rest


def test_exit_mode_writes_on_close_only(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    checkpoint = Checkpoint(path, mode="exit")
    checkpoint.put("a", 1)
    checkpoint.put("b", 2)
    assert stored_keys(path) == []
    assert checkpoint.get("b") == (True, 2)
    checkpoint.close()
    assert stored_keys(path) == ["a", "b"]


def test_manual_mode_writes_on_flush_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    clock = FakeClock()
    checkpoint = Checkpoint(path, mode="manual", clock=clock)
    checkpoint.put("a", 1)
    checkpoint.put("b", 2)
    clock.now = 1e6
    checkpoint.put("c", 3)
    assert stored_keys(path) == []
    assert checkpoint.flush() == 3
    assert stored_keys(path) == ["a", "b", "c"]
    checkpoint.put("d", 4)
    assert stored_keys(path) == ["a", "b", "c"]
    checkpoint.close()  # closing never drops a finished result
    assert stored_keys(path) == ["a", "b", "c", "d"]


def test_an_unpicklable_result_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        with pytest.raises(
            CheckpointError, match=r"task 'make-lock-7' \(pkg.make_lock\) cannot be pickled"
        ) as info:
            checkpoint.put("k", threading.Lock(), function="pkg.make_lock", task_name="make-lock-7")
        assert isinstance(info.value, HpcFuturesError)
        assert isinstance(info.value.__cause__, TypeError)
        assert checkpoint.get("k") == (False, None)
        assert len(checkpoint) == 0
        checkpoint.put("other", 1)  # the checkpoint still works
    assert stored_keys(path) == ["other"]


def test_a_result_too_large_for_sqlite_is_reported_and_does_not_block_others(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path, mode="manual") as checkpoint:
        checkpoint._max_size = 1000  # SQLite's real limit is 1 GB; too much for a test
        with pytest.raises(CheckpointError, match="task 'big-1'.*too large"):
            checkpoint.put("big", b"x" * 2000, task_name="big-1")
        checkpoint.put("small", b"x")
        assert checkpoint.flush() == 1
    assert stored_keys(path) == ["small"]


def test_wal_mode_is_on(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_the_results_table_is_readable_without_hpcfutures(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k1", "x" * 100, function="pkg.mod.f", task_name="f-1")
        checkpoint.put("k2", 7, function="pkg.mod.g", task_name="g-2")

    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT key, function, task_name, size, length(value), created FROM results ORDER BY key"
    )
    (k1, f1, t1, s1, len1, c1), (k2, f2, t2, s2, len2, _) = rows.fetchall()
    conn.close()
    assert (k1, f1, t1, k2, f2, t2) == ("k1", "pkg.mod.f", "f-1", "k2", "pkg.mod.g", "g-2")
    assert (s1, s2) == (len1, len2)  # size is the pickled size
    assert s1 > 100
    assert c1 > 1.6e9  # created is Unix time


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 command-line tool is not installed")
def test_the_sqlite3_command_line_tool_reads_the_table(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k1", 1, function="pkg.mod.f", task_name="f-1")
    out = subprocess.run(
        ["sqlite3", str(path), "SELECT key, function, task_name FROM results"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "k1|pkg.mod.f|f-1"


def test_a_bad_mode_or_period_names_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="mode='sometimes'"):
        Checkpoint(tmp_path / "run.db", mode="sometimes")
    with pytest.raises(ConfigurationError, match="period=0"):
        Checkpoint(tmp_path / "run.db", mode="periodic", period=0)
    with pytest.raises(ConfigurationError, match="busy_timeout=-1"):
        Checkpoint(tmp_path / "run.db", busy_timeout=-1)
    assert not (tmp_path / "run.db").exists()


@pytest.mark.parametrize(
    ("period", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        ("00:00:05", 5.0),
        ("01:30:00", 5400.0),
        ("1:02:03", 3723.0),
        ("48:00:00", 172800.0),
    ],
)
def test_a_period_is_seconds_or_hh_mm_ss(tmp_path: Path, period: float | str, seconds: float) -> None:
    with Checkpoint(tmp_path / "run.db", mode="periodic", period=period) as checkpoint:
        assert checkpoint.period == seconds


def test_an_hh_mm_ss_period_times_the_writes(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    clock = FakeClock()
    with Checkpoint(path, mode="periodic", period="00:01:00", clock=clock) as checkpoint:
        clock.now = 59.0
        checkpoint.put("a", 1)
        assert stored_keys(path) == []
        clock.now = 60.0
        checkpoint.put("b", 2)
        assert stored_keys(path) == ["a", "b"]


@pytest.mark.parametrize(
    "period", ["5", "00:05", "1:60:00", "00:00:75", "-1:00:00", "aa:bb:cc", "", "00:00:00", True]
)
def test_a_malformed_period_names_the_parameter_and_the_accepted_forms(
    tmp_path: Path, period: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Checkpoint(tmp_path / "run.db", mode="periodic", period=period)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"period={period!r} ")
    assert "number of seconds" in message and "'HH:MM:SS'" in message
    assert not (tmp_path / "run.db").exists()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    garbage = b"this is not a database\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(CheckpointError, match="not a SQLite database") as info:
        Checkpoint(path)
    assert str(path) in str(info.value)
    assert "delete it to start afresh" in str(info.value)
    assert path.read_bytes() == garbage


def test_a_damaged_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(CheckpointError, match="damaged") as info:
        Checkpoint(path)
    assert str(path) in str(info.value)


def test_a_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="not an hpcfutures checkpoint.*users"):
        Checkpoint(path)


def test_a_checkpoint_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k", 1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="schema version '99'"):
        Checkpoint(path)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root, which reads any file whatever its mode: chmod 000 cannot make it unreadable",
)
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k", 1)
    path.chmod(0)
    try:
        with pytest.raises(CheckpointError, match="cannot be read") as info:
            Checkpoint(path)
        assert str(path) in str(info.value)
    finally:
        path.chmod(0o600)


def test_a_read_permission_error_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the chmod test checks, made to run as root too by failing the open itself."""
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k", 1)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_module, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match="cannot be read.*Permission denied") as info:
        Checkpoint(path)
    assert str(path) in str(info.value)


def test_a_path_that_cannot_be_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="directory exists"):
        Checkpoint(tmp_path / "missing" / "run.db")


def test_a_new_file_locked_by_another_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CheckpointError, match="locked by another process") as info:
            Checkpoint(path, busy_timeout=0.05)
        assert str(path) in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_write_blocked_by_another_writer_fails_and_keeps_the_result(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    Checkpoint(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    checkpoint = Checkpoint(path, busy_timeout=0.05)  # reading works beside a WAL writer
    try:
        with pytest.raises(CheckpointError, match="locked by another process"):
            checkpoint.put("k", 1, task_name="t")
        assert checkpoint.get("k") == (True, 1)  # still buffered, not lost
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert checkpoint.flush() == 1
    checkpoint.close()
    assert stored_keys(path) == ["k"]


def test_close_reports_results_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    checkpoint = Checkpoint(path, mode="exit", busy_timeout=0.05)
    checkpoint.put("k", 1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CheckpointError, match="1 result"):
            checkpoint.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    checkpoint.close()  # closing twice does nothing
    with pytest.raises(CheckpointError, match="closed"):
        checkpoint.put("k", 1)


def test_a_stored_value_that_cannot_be_loaded_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.put("k", 1, task_name="t-1")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE results SET value = x'8005' WHERE key = 'k'")  # a truncated pickle
    conn.commit()
    conn.close()
    with Checkpoint(path) as checkpoint, pytest.raises(CheckpointError, match="'t-1'.*cannot be unpickled"):
        checkpoint.get("k")


def test_puts_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "run.db"

    def work(checkpoint: Checkpoint, n: int) -> None:
        for i in range(50):
            checkpoint.put(f"{n}-{i}", (n, i))
            assert checkpoint.get(f"{n}-{i}") == (True, (n, i))

    for mode in ("task", "manual"):
        with Checkpoint(path, mode=mode) as checkpoint:
            threads = [threading.Thread(target=work, args=(checkpoint, n)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(checkpoint) == 400
    assert len(stored_keys(path)) == 400


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from hpcfutures.dataflow.checkpoint import Checkpoint

    checkpoint = Checkpoint(sys.argv[1], mode="manual")
    for i in range(10):
        checkpoint.put(f"done-{i}", i)
    checkpoint.flush()

    for i in range(2000):
        checkpoint.put(f"lost-{i}", bytes([i % 256]) * 4096)
    # Spill uncommitted pages to the WAL file early, then stop mid-transaction to be killed.
    checkpoint._conn.execute("PRAGMA cache_size=2")
    inserts = 0
    def pause_midway(statement):
        global inserts
        if statement.startswith("INSERT"):
            inserts += 1
            if inserts == 1000:
                print("mid-transaction", flush=True)
                time.sleep(120)
    checkpoint._conn.set_trace_callback(pause_midway)
    checkpoint.flush()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_writer_killed_mid_transaction_leaves_a_valid_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(hpcfutures.__file__)))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "mid-transaction"
        # Uncommitted pages are on disk in the WAL: the kill hits a half-written transaction.
        assert Path(f"{path}-wal").stat().st_size > 100 * 4096
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with Checkpoint(path) as checkpoint:
        assert checkpoint.keys() == [f"done-{i}" for i in range(10)]
        assert checkpoint.get("done-3") == (True, 3)
        assert checkpoint.get("lost-0") == (False, None)
        checkpoint.put("after", 1)  # and it takes new writes
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
