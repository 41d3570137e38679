"""Failed tasks in the checkpoint (never reused, only reported) and migrating version-1 files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import cloudpickle
import pytest

from hpcfutures.dataflow import checkpoint as checkpoint_module
from hpcfutures.dataflow.checkpoint import Checkpoint, CheckpointError, FailureRecord
from hpcfutures.errors import RemoteError, RemoteTraceback

# What the version-1 Checkpoint (hpcfutures before failures were recorded) wrote, statement
# for statement: journal_mode=WAL, then one transaction creating both tables and the meta rows.
V1_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE results (key TEXT PRIMARY KEY, function TEXT, task_name TEXT,"
    " created REAL, size INTEGER, value BLOB)",
)
# sqlite_master of a file the version-1 code wrote, recorded from that code.
V1_MASTER = [
    ("table", "meta", "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"),
    ("index", "sqlite_autoindex_meta_1", None),
    (
        "table",
        "results",
        "CREATE TABLE results (key TEXT PRIMARY KEY, function TEXT, task_name TEXT, created REAL, "
        "size INTEGER, value BLOB)",
    ),
    ("index", "sqlite_autoindex_results_1", None),
]


def write_v1_checkpoint(path: Path, results: dict[str, object]) -> None:
    """Write a checkpoint file as the version-1 code did, with ``results`` in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [("application", "hpcfutures.checkpoint"), ("schema_version", "1")],
        )
        conn.execute("COMMIT")
        for key, value in results.items():
            blob = cloudpickle.dumps(value, protocol=5)
            conn.execute(
                "INSERT OR REPLACE INTO results (key, function, task_name, created, size, value)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, "fp", f"task-{key}", time.time(), len(blob), blob),
            )
    finally:
        conn.close()


def inspect(path: Path) -> dict[str, object]:
    """What another process sees in the file: tables, versions, failure rows."""
    conn = sqlite3.connect(path)
    try:
        tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        return {
            "tables": tables,
            "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
            "application_id": conn.execute("PRAGMA application_id").fetchone()[0],
            "meta": dict(conn.execute("SELECT name, value FROM meta").fetchall()),
            "failures": (
                sorted(row[0] for row in conn.execute("SELECT key FROM failures"))
                if "failures" in tables
                else None
            ),
        }
    finally:
        conn.close()


def raise_bad_input(n: int) -> None:
    raise ValueError(f"bad input {n}")


def failed(n: int = 3) -> BaseException:
    try:
        raise_bad_input(n)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


class DomainError(Exception):
    pass


# -- recording failures ------------------------------------------------------------------------


def test_a_failure_is_recorded_but_never_a_hit(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    before = time.time()
    with Checkpoint(path) as checkpoint:
        checkpoint.record_failure("k", function="fp-1", task_name="simulate-7", exception=failed(3))
        assert checkpoint.get("k") == (False, None)
        assert checkpoint.keys() == []  # results only
        record = checkpoint.failure("k")
    assert isinstance(record, FailureRecord)
    assert (record.type, record.message) == ("ValueError", "bad input 3")
    assert str(record) == "ValueError: bad input 3"
    assert "raise_bad_input" in record.traceback  # the frames of the failure
    assert record.traceback.rstrip().endswith("ValueError: bad input 3")
    assert before <= record.when <= time.time()
    assert (record.task_name, record.function, record.path) == ("simulate-7", "fp-1", str(path))
    assert inspect(path)["failures"] == ["k"]  # task mode: written at once

    with Checkpoint(path) as resumed:  # and it outlives the run
        assert resumed.get("k") == (False, None)
        assert resumed.failure("k") == record
        assert resumed.failure("other") is None


def test_a_later_success_replaces_the_failure(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.record_failure("k", exception=failed())
        checkpoint.put("k", 42)
        assert checkpoint.failure("k") is None
        assert checkpoint.get("k") == (True, 42)
    assert inspect(path)["failures"] == []  # the row is gone, not just hidden
    with Checkpoint(path) as resumed:
        assert resumed.failure("k") is None
        assert resumed.get("k") == (True, 42)


def test_a_later_failure_replaces_the_earlier_one(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.record_failure("k", exception=failed(1))
        checkpoint.record_failure("k", exception=DomainError("disk full"))
    with Checkpoint(path) as resumed:
        record = resumed.failure("k")
    assert record is not None
    assert (record.type, record.message) == (f"{__name__}.DomainError", "disk full")


def test_a_success_is_not_hidden_by_a_failure_of_the_same_key(tmp_path: Path) -> None:
    """A stored result is never thrown away: a failure recorded after it does not replace it."""
    with Checkpoint(tmp_path / "run.db") as checkpoint:
        checkpoint.put("k", 1)
        checkpoint.record_failure("k", exception=failed())
        assert checkpoint.get("k") == (True, 1)
        assert checkpoint.failure("k") is None


def test_failures_follow_the_write_mode(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    checkpoint = Checkpoint(path, mode="manual")
    checkpoint.record_failure("a", exception=failed())
    checkpoint.put("b", 2)
    assert inspect(path)["failures"] == []
    assert checkpoint.failure("a") is not None  # found while buffered
    assert checkpoint.flush() == 2  # one result and one failure
    assert inspect(path)["failures"] == ["a"]
    checkpoint.record_failure("c", exception=failed())
    checkpoint.close()  # closing writes failures too
    assert inspect(path)["failures"] == ["a", "c"]


def test_close_counts_lost_failures(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    checkpoint = Checkpoint(path, mode="exit", busy_timeout=0.05)
    checkpoint.put("k", 1)
    checkpoint.record_failure("f1", exception=failed())
    checkpoint.record_failure("f2", exception=failed())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CheckpointError, match=r"1 result\(s\) and 2 failure record\(s\)"):
            checkpoint.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_long_message_and_traceback_are_cut_in_the_middle(tmp_path: Path) -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise RuntimeError("start " + "x" * 50_000 + " end")
        deep(n - 1)

    try:
        try:
            deep(200)
        except RuntimeError as exc:
            raise DomainError("the task failed") from exc
    except DomainError as exc:
        error = exc

    with Checkpoint(tmp_path / "run.db") as checkpoint:
        checkpoint.record_failure("k", exception=error)
        record = checkpoint.failure("k")
    assert record is not None
    assert record.message == "the task failed"
    limit = checkpoint_module.MAX_TRACEBACK_CHARS
    assert limit < len(record.traceback) < limit + 100
    assert "characters cut" in record.traceback
    assert record.traceback.startswith("Traceback")  # the root cause's start is kept
    assert record.traceback.rstrip().endswith("DomainError: the task failed")  # and the end

    with Checkpoint(tmp_path / "other.db") as checkpoint:
        checkpoint.record_failure("k", exception=ValueError("y" * 100_000))
        record = checkpoint.failure("k")
    assert record is not None
    assert len(record.message) < checkpoint_module.MAX_MESSAGE_CHARS + 100
    assert record.message.startswith("yyy") and record.message.endswith("yyy")


def test_a_remote_error_is_recorded_under_the_remote_type(tmp_path: Path) -> None:
    error = RemoteError("numpy.linalg.LinAlgError", "Singular matrix")
    error.__cause__ = RemoteTraceback('Traceback (most recent call last):\n  File "task.py", line 3\n')
    with Checkpoint(tmp_path / "run.db") as checkpoint:
        checkpoint.record_failure("k", exception=error)
        record = checkpoint.failure("k")
    assert record is not None
    assert str(record) == "numpy.linalg.LinAlgError: Singular matrix"
    assert 'File "task.py", line 3' in record.traceback  # the remote traceback, kept as the cause


def test_an_exception_that_cannot_be_printed_is_still_recorded(tmp_path: Path) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    with Checkpoint(tmp_path / "run.db") as checkpoint:
        checkpoint.record_failure("k", exception=Unprintable())
        record = checkpoint.failure("k")
    assert record is not None
    assert record.type.endswith("Unprintable")
    assert record.message == "<unprintable Unprintable>"


def test_the_failures_table_is_readable_without_hpcfutures(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint(path) as checkpoint:
        checkpoint.record_failure("k", function="fp", task_name="t-1", exception=failed(5))
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT key, function, task_name, type, message, created FROM failures").fetchone()
    conn.close()
    assert row[:5] == ("k", "fp", "t-1", "ValueError", "bad input 5")
    assert row[5] > 1.6e9


# -- schema versions and migration -------------------------------------------------------------


def test_a_new_file_has_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    Checkpoint(path).close()
    seen = inspect(path)
    assert seen["tables"] == ["failures", "meta", "results"]
    assert seen["user_version"] == checkpoint_module.SCHEMA_VERSION == 2
    assert seen["meta"] == {"application": "hpcfutures.checkpoint", "schema_version": "2"}
    assert seen["application_id"] == 0x48504643


def test_the_v1_writer_of_these_tests_matches_what_version_1_wrote(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    write_v1_checkpoint(path, {})
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall() == V1_MASTER
    conn.close()


def test_a_version_1_file_still_reads_and_gains_the_failures_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_v1_checkpoint(path, {"k1": {"answer": 42}, "k2": [1, 2]})
    assert inspect(path)["user_version"] == 0
    assert inspect(path)["failures"] is None

    with Checkpoint(path) as checkpoint:
        assert checkpoint.get("k1") == (True, {"answer": 42})
        assert checkpoint.keys() == ["k1", "k2"]
        seen = inspect(path)  # migrated at construction, in the file already
        assert seen["tables"] == ["failures", "meta", "results"]
        assert seen["user_version"] == 2
        assert seen["meta"] == {"application": "hpcfutures.checkpoint", "schema_version": "2"}
        checkpoint.record_failure("k3", exception=failed())
        checkpoint.put("k4", 4)

    with Checkpoint(path) as reopened:  # opening it again is a plain open
        assert reopened.get("k2") == (True, [1, 2])
        assert reopened.get("k4") == (True, 4)
        assert reopened.failure("k3") is not None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_migrating_a_file_locked_by_another_writer_fails_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_v1_checkpoint(path, {"k": 1})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(CheckpointError, match="locked by another process"):
            Checkpoint(path, busy_timeout=0.05)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert inspect(path)["user_version"] == 0
    with Checkpoint(path) as checkpoint:  # and it migrates once the lock is free
        assert checkpoint.get("k") == (True, 1)
    assert inspect(path)["user_version"] == 2


def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    Checkpoint(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '3' WHERE name = 'schema_version'")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="schema version '3'.*reads versions 1 to 2") as info:
        Checkpoint(path)
    assert str(path) in str(info.value)


def test_a_file_whose_versions_disagree_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    Checkpoint(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="'1' in its meta table but 2 in PRAGMA user_version"):
        Checkpoint(path)
