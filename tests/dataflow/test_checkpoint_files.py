"""Reading the checkpoint files of earlier runs (``read_from``) and finding them (``find_checkpoints``)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from hpcfutures import DataflowExecutor, ThreadExecutor
from hpcfutures.dataflow.checkpoint import Checkpoint, CheckpointError, find_checkpoints
from hpcfutures.errors import ConfigurationError

from .test_checkpoint_failures import failed, inspect, write_v1_checkpoint


def make(path: Path, results: dict[str, object], *, created: float | None = None) -> Path:
    """Write a checkpoint holding ``results``; ``created`` backdates them all."""
    with Checkpoint(path) as checkpoint:
        for key, value in results.items():
            checkpoint.put(key, value, task_name=f"task-{key}")
    if created is not None:
        set_created(path, created)
    return path


def set_created(path: Path, created: float) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE results SET created = ?", (created,))
    conn.commit()
    conn.close()


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under a directory, with a file's mtime and content, to check that nothing changed.

    Directories change mtime when SQLite makes and removes its -wal and -shm files in them;
    that those are gone shows in the names.
    """
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes()) if p.is_file() else (0, b"")
        for p in sorted(directory.rglob("*"))
    }


# -- read_from ---------------------------------------------------------------------------------


def test_lookups_consult_the_own_file_then_the_others_in_order(tmp_path: Path) -> None:
    first = make(tmp_path / "first.db", {"a": "first", "b": "first", "c": "first"})
    second = make(tmp_path / "second.db", {"b": "second", "d": "second"})
    own = make(tmp_path / "own.db", {"a": "own"})
    with Checkpoint(own, read_from=[second, first]) as checkpoint:
        assert checkpoint.get("a") == (True, "own")
        assert checkpoint.get("b") == (True, "second")
        assert checkpoint.get("c") == (True, "first")
        assert checkpoint.get("d") == (True, "second")
        assert checkpoint.get("e") == (False, None)
        assert checkpoint.read_from == (str(second), str(first))
        assert checkpoint.keys() == ["a"]  # what the own file holds
        checkpoint.put("b", "own")  # a result of this run comes first from now on
        assert checkpoint.get("b") == (True, "own")
    with Checkpoint(own, read_from=[first, second]) as checkpoint:
        assert checkpoint.get("d") == (True, "second")
        assert checkpoint.get("c") == (True, "first")


def test_files_read_from_are_never_written(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    old = make(earlier / "run.db", {"a": 1})
    before = snapshot(earlier)
    with Checkpoint(tmp_path / "own.db", read_from=[old]) as checkpoint:
        assert checkpoint.get("a") == (True, 1)
        checkpoint.put("a", 2)
        checkpoint.put("b", 3)
        checkpoint.record_failure("c", exception=failed())
        assert checkpoint.get("a") == (True, 2)
    assert snapshot(earlier) == before  # no change, and no -wal or -shm file left behind
    with Checkpoint(old) as checkpoint:
        assert checkpoint.keys() == ["a"]


def test_a_file_read_through_a_read_only_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file this user may not write (an archived run) is opened read-only."""
    old = make(tmp_path / "old.db", {"a": 1})
    own = tmp_path / "own.db"
    real_access = os.access

    def no_write_on_old(path: object, mode: int, **kwargs: object) -> bool:
        if mode & os.W_OK and os.fspath(path) in (str(old), str(tmp_path)):  # type: ignore[arg-type]
            return False
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    Checkpoint(own).close()  # the own file is made before access is restricted
    monkeypatch.setattr(os, "access", no_write_on_old)
    with Checkpoint(own, read_from=[old]) as checkpoint:
        assert checkpoint.get("a") == (True, 1)
        conn = checkpoint._files[1].conn
        assert conn.execute("PRAGMA query_only").fetchone()[0] == 0  # read-only by its mode=ro
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM results")


def test_a_missing_file_to_read_from_fails_at_construction_and_creates_nothing(tmp_path: Path) -> None:
    present = make(tmp_path / "present.db", {"a": 1})
    missing = tmp_path / "runs" / "3.db"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        Checkpoint(tmp_path / "own.db", read_from=[present, missing])
    assert str(missing) in str(info.value)
    assert "find_checkpoints" in str(info.value)
    assert not (tmp_path / "own.db").exists()


@pytest.mark.parametrize("kind", ["not sqlite", "another application", "newer schema", "a directory"])
def test_a_file_to_read_from_that_is_no_checkpoint_is_refused(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.db"
    if kind == "not sqlite":
        bad.write_text("my notes")
        expected = "not a SQLite database"
    elif kind == "another application":
        conn = sqlite3.connect(bad)
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
        conn.close()
        expected = "not an hpcfutures checkpoint"
    elif kind == "newer schema":
        make(bad, {"a": 1})
        conn = sqlite3.connect(bad)
        conn.execute("UPDATE meta SET value = '7' WHERE name = 'schema_version'")
        conn.execute("PRAGMA user_version = 7")
        conn.commit()
        conn.close()
        expected = "schema version '7'"
    else:
        bad.mkdir()
        expected = "is a directory"
    own = tmp_path / "own.db"
    with pytest.raises(CheckpointError, match=expected) as info:
        Checkpoint(own, read_from=[bad])
    assert str(bad) in str(info.value)
    assert not own.exists()  # the files to read from are checked before the own file is made
    with Checkpoint(own, busy_timeout=0) as checkpoint:  # the failed attempt left nothing open
        checkpoint.put("k", 1)


def test_read_from_takes_a_list_not_one_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"read_from=.*one path.*read_from=\[...\]"):
        Checkpoint(tmp_path / "own.db", read_from=str(tmp_path / "old.db"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="read_from=None must be a list of paths"):
        Checkpoint(tmp_path / "own.db", read_from=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"read_from=\[3\] must be a list of paths"):
        Checkpoint(tmp_path / "own.db", read_from=[3])  # type: ignore[list-item]
    assert not (tmp_path / "own.db").exists()


def test_the_own_file_and_repeats_are_consulted_once(tmp_path: Path) -> None:
    old = make(tmp_path / "old.db", {"a": 1})
    own = make(tmp_path / "own.db", {"b": 2})
    with Checkpoint(own, read_from=[own, old, str(old), tmp_path / "." / "old.db"]) as checkpoint:
        assert checkpoint.read_from == (str(old),)
        assert checkpoint.get("a") == (True, 1)
        assert "read_from=" in repr(checkpoint)


def test_a_version_1_file_is_read_as_it_is(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    write_v1_checkpoint(old, {"a": 1})
    with Checkpoint(tmp_path / "own.db", read_from=[old]) as checkpoint:
        assert checkpoint.get("a") == (True, 1)
        assert checkpoint.failure("a") is None
        assert checkpoint.failure("b") is None  # it has no failures table to look in
    assert inspect(old)["user_version"] == 0  # not migrated: it is only read
    assert inspect(old)["failures"] is None


def test_failures_in_files_read_from(tmp_path: Path) -> None:
    older = tmp_path / "older.db"
    with Checkpoint(older) as checkpoint:
        checkpoint.put("fixed-later", 1)
        checkpoint.record_failure("still-failing", exception=failed(1))
        checkpoint.record_failure("failed-once", exception=failed(2))
    newer = tmp_path / "newer.db"
    with Checkpoint(newer) as checkpoint:
        checkpoint.record_failure("fixed-later", exception=failed(3))
        checkpoint.record_failure("still-failing", exception=failed(4))
        checkpoint.put("failed-once", 5)
    with Checkpoint(tmp_path / "own.db", read_from=[newer, older]) as checkpoint:
        # The first file that knows a key says how its last run ended.
        record = checkpoint.failure("still-failing")
        assert record is not None and (record.message, record.path) == ("bad input 4", str(newer))
        assert checkpoint.failure("failed-once") is None
        # A failure never hides a result: an older success is still a hit.
        assert checkpoint.get("fixed-later") == (True, 1)
        assert checkpoint.get("still-failing") == (False, None)
        checkpoint.put("still-failing", 6)
        assert checkpoint.failure("still-failing") is None


def test_a_value_that_cannot_be_loaded_names_the_file_it_is_in(tmp_path: Path) -> None:
    old = make(tmp_path / "old.db", {"k": 1})
    conn = sqlite3.connect(old)
    conn.execute("UPDATE results SET value = x'8005' WHERE key = 'k'")
    conn.commit()
    conn.close()
    with Checkpoint(tmp_path / "own.db", read_from=[old]) as checkpoint:
        with pytest.raises(CheckpointError, match="cannot be unpickled") as info:
            checkpoint.get("k")
    assert f"checkpoint {old}:" in str(info.value)


# -- find_checkpoints --------------------------------------------------------------------------


def test_find_checkpoints_lists_the_newest_first_whatever_their_names(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "b" / "deep").mkdir(parents=True)
    (runs / "a").mkdir()
    monday = make(runs / "a" / "monday.db", {"k": 1}, created=1_700_000_000.0)
    wednesday = make(runs / "b" / "deep" / "results.sqlite", {"k": 2}, created=1_700_200_000.0)
    tuesday = make(runs / "tuesday-checkpoint", {"k": 3}, created=1_700_100_000.0)
    old_format = runs / "v1.db"
    write_v1_checkpoint(old_format, {"k": 4})
    set_created(old_format, 1_600_000_000.0)
    empty = make(runs / "empty.db", {})
    thursday = tmp_path / "runs" / "thursday.db"
    with Checkpoint(thursday) as checkpoint:  # a failure counts as something stored
        checkpoint.record_failure("k", exception=failed())

    # None of these is a checkpoint.
    (runs / "notes.db").write_text("my notes")
    (runs / "zero.db").write_bytes(b"")
    conn = sqlite3.connect(runs / "other-app.db")
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    conn = sqlite3.connect(runs / "marked.db")
    conn.execute("PRAGMA application_id = 12345")
    conn.execute("CREATE TABLE meta (name TEXT)")
    conn.commit()
    conn.close()
    if hasattr(os, "mkfifo"):
        os.mkfifo(runs / "pipe.db")  # reading it would block

    before = snapshot(runs)
    found = find_checkpoints(runs)
    assert found == [thursday, wednesday, tuesday, monday, old_format, empty]
    assert all(isinstance(path, Path) for path in found)
    assert snapshot(runs) == before  # looking changed nothing, left no -wal or -shm file
    assert find_checkpoints(str(runs / "a")) == [monday]


def test_find_checkpoints_refuses_what_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a directory \\(it does not exist\\)"):
        find_checkpoints(tmp_path / "missing")
    path = make(tmp_path / "run.db", {})
    with pytest.raises(CheckpointError, match="run.db is not a directory;"):
        find_checkpoints(path)
    assert find_checkpoints(tmp_path / ".") == [tmp_path / "." / "run.db"]


def test_find_checkpoints_lists_a_file_a_run_is_writing(tmp_path: Path) -> None:
    with Checkpoint(tmp_path / "live.db", mode="task") as live:
        live.put("k", 1)
        assert find_checkpoints(tmp_path) == [tmp_path / "live.db"]
        live.put("j", 2)  # and the run goes on writing


def square(x: int) -> int:
    return x * x


def test_a_workflow_resumes_from_the_files_of_its_earlier_runs(tmp_path: Path) -> None:
    """Each run writes its own file and reads every earlier one, as with Parsl's checkpoint_files."""
    runs = tmp_path / "runs"
    runs.mkdir()

    def run(number: int, inputs: range) -> tuple[list[int], list[str]]:
        checkpoint = Checkpoint(runs / f"{number}.db", read_from=find_checkpoints(runs))
        with DataflowExecutor(
            ThreadExecutor(max_workers=2), shutdown_executors=True, cache=True, checkpoint=checkpoint
        ) as dfx:
            results = list(dfx.map(square, inputs))
            return results, [keys for keys in checkpoint.keys()]

    first, first_keys = run(1, range(3))
    second, second_keys = run(2, range(5))
    third, third_keys = run(3, range(5))
    assert first == [0, 1, 4] and second == third == [0, 1, 4, 9, 16]
    assert (len(first_keys), len(second_keys), len(third_keys)) == (3, 2, 0)  # only new work is stored
    assert find_checkpoints(runs)[-1] == runs / "3.db"  # it stored nothing: oldest
