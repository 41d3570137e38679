"""A checkpoint of cached task results: one SQLite file with a table anyone can inspect.

Each result is a row of ``results(key, function, task_name, created, size, value)``: the
cache key, who made it, when (Unix time), and the cloudpickled value (protocol 5).  Unlike
Parsl's pickle streams, the file answers ``sqlite3 run.db "SELECT key, function, task_name,
size FROM results"`` without hpcfutures.

Safety comes from SQLite itself: every write is one transaction (``BEGIN IMMEDIATE`` …
``COMMIT``) in write-ahead-log mode, so a process killed mid-write leaves the file with
exactly the rows committed before.  ``synchronous=NORMAL`` is enough for that: in WAL mode
it loses no committed transaction when the *process* dies, only possibly the last few when
the *machine* loses power, and then the cost is re-running those tasks, not a damaged file.
``FULL`` would add an fsync per task, which is slow on the parallel file systems where
checkpoints usually live.

A file that cannot serve as a checkpoint (not SQLite, damaged, another schema, unreadable,
locked by another writer) raises :class:`CheckpointError` naming the path, the cause and the
fix; it is never replaced by an empty cache.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import threading
import time
from typing import Any, Callable

import cloudpickle

from ..errors import ConfigurationError, HpcFuturesError

logger = logging.getLogger(__name__)

#: The layout this module reads and writes; a file with another version is refused.
SCHEMA_VERSION = 1
#: When buffered results are written: at once, every ``period`` seconds, at close, on request.
MODES = ("task", "periodic", "exit", "manual")

_APPLICATION = "hpcfutures.checkpoint"
_SQLITE_HEADER = b"SQLite format 3\x00"
_COLUMNS = ("key", "function", "task_name", "created", "size", "value")
_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE results (key TEXT PRIMARY KEY, function TEXT, task_name TEXT,"
    " created REAL, size INTEGER, value BLOB)",
)
_INSERT = "INSERT OR REPLACE INTO results (key, function, task_name, created, size, value) VALUES (?, ?, ?, ?, ?, ?)"
_AFRESH = "Move it aside or delete it to start afresh (its tasks will run again)."

_Row = tuple[str, str, str, float, int, bytes]


class CheckpointError(HpcFuturesError):
    """A checkpoint file cannot be opened, read or written, or a result cannot be stored in it."""


class Checkpoint:
    """Results of cached tasks, kept in a SQLite file across runs.

    ``mode`` says when :meth:`put` reaches the file: ``"task"`` (default) at once;
    ``"periodic"`` when ``period`` seconds have passed since the last write, checked at each
    put; ``"exit"`` at :meth:`close`; ``"manual"`` at :meth:`flush`.  Every mode also writes
    at :meth:`close`, so that closing never drops a finished result.  Until written, results
    live in memory, where :meth:`get` finds them too.

    The file is opened, created or validated here, at construction, so that a checkpoint
    that cannot work fails before any task runs.  ``busy_timeout`` is how long to wait for
    another writer's lock before raising; ``clock`` (seconds, monotonic) times ``period``.
    An instance is thread-safe; call :meth:`close` (or use ``with``) when done.

    Raises :class:`~hpcfutures.errors.ConfigurationError` for a bad ``mode``, ``period`` or
    ``busy_timeout``, and :class:`CheckpointError` for a file that cannot serve.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: str = "task",
        period: float = 30.0,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if mode not in MODES:
            raise ConfigurationError(
                f"mode={mode!r} is not a checkpoint mode; use one of {', '.join(map(repr, MODES))}."
            )
        if not isinstance(period, (int, float)) or not period > 0:
            raise ConfigurationError(
                f"period={period!r} must be a positive number of seconds between checkpoint writes."
            )
        if not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise ConfigurationError(
                f"busy_timeout={busy_timeout!r} must be a number of seconds >= 0 to wait for a lock."
            )
        self.path = os.fspath(path)
        self.mode = mode
        self.period = float(period)
        self.busy_timeout = float(busy_timeout)
        self._clock = clock
        # Must be held while using _conn or mutating _pending, _last_flush or _closed: one
        # sqlite3 connection is shared by every thread (check_same_thread=False).
        self._lock = threading.Lock()
        self._pending: dict[str, _Row] = {}  # results put but not yet committed, by key
        self._closed = False
        self._conn = self._open()
        # SQLite refuses a longer blob; catching it in put keeps it from blocking every flush.
        getlimit = getattr(self._conn, "getlimit", None)  # Python >= 3.11
        length = getattr(sqlite3, "SQLITE_LIMIT_LENGTH", None)
        self._max_size: int = getlimit(length) if getlimit and length is not None else 1_000_000_000
        self._last_flush = clock()

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self._check_file()
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        try:
            journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(journal).lower() != "wal":
                raise CheckpointError(
                    f"checkpoint {self.path}: SQLite could not switch it to write-ahead-log mode "
                    f"(journal_mode is {journal!r}); put the checkpoint on a local or POSIX file system."
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            self._check_schema(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error("open", exc) from exc
            raise
        return conn

    def _check_file(self) -> None:
        """Refuse what SQLite would misreport or, for a non-database, might overwrite."""
        if not os.path.lexists(self.path):
            return
        if os.path.isdir(self.path):
            raise CheckpointError(f"checkpoint {self.path} is a directory; give the path of a file.")
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint {self.path} cannot be read ({exc}). Give this user read and write "
                "permission on the file and its directory, or point checkpoint= at another file."
            ) from exc
        if not os.access(self.path, os.R_OK | os.W_OK):
            # SQLite would open a read-only file without complaint and fail at the first write.
            raise CheckpointError(
                f"checkpoint {self.path} is not writable by this user. Give this user read and "
                "write permission on it and its directory, or point checkpoint= at another file."
            )
        # An empty file is what SQLite itself leaves before the first write: nothing is lost.
        if header and header != _SQLITE_HEADER:
            raise CheckpointError(
                f"checkpoint {self.path} is not a SQLite database (it starts with {header[:8]!r}). {_AFRESH}"
            )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            # Serialize creation with any other process opening the same new file.
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO meta (name, value) VALUES (?, ?)",
                        [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            tables = {"meta", "results"}
        if not {"meta", "results"} <= tables:
            raise CheckpointError(
                f"checkpoint {self.path} is a SQLite database but not an hpcfutures checkpoint "
                f"(its tables: {', '.join(sorted(tables))}). Point checkpoint= at another file; "
                "hpcfutures will not write into it."
            )
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if meta.get("application") != _APPLICATION or version != str(SCHEMA_VERSION):
            raise CheckpointError(
                f"checkpoint {self.path} has schema version {version!r} of {meta.get('application')!r}; "
                f"this hpcfutures reads version {SCHEMA_VERSION!r} of {_APPLICATION!r}. "
                f"Use the hpcfutures version that wrote it, or: {_AFRESH}"
            )
        columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(results)"))
        if columns != _COLUMNS:
            raise CheckpointError(
                f"checkpoint {self.path} has a results table with columns {columns}, expected "
                f"{_COLUMNS}. {_AFRESH}"
            )

    def _error(self, action: str, exc: sqlite3.Error) -> CheckpointError:
        """Say what an SQLite failure means for the user, with the fix."""
        name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11
        text = str(exc)
        if "BUSY" in name or "LOCKED" in name or "locked" in text:
            return CheckpointError(
                f"cannot {action} checkpoint {self.path}: it is locked by another process "
                f"(waited {self.busy_timeout:g} s: {text}). Is another run using the same "
                "checkpoint file? Stop it, or point this run at another file."
            )
        if "NOTADB" in name or "CORRUPT" in name or "not a database" in text or "malformed" in text:
            return CheckpointError(
                f"cannot {action} checkpoint {self.path}: it is damaged ({text}). {_AFRESH}"
            )
        if "READONLY" in name or "readonly" in text:
            return CheckpointError(
                f"cannot {action} checkpoint {self.path}: it is read-only ({text}). Give this user "
                "write permission on the file and its directory (SQLite creates -wal and -shm "
                "files beside it), or point checkpoint= at another file."
            )
        if "CANTOPEN" in name or "PERM" in name or "unable to open" in text:
            return CheckpointError(
                f"cannot {action} checkpoint {self.path} ({text}). Check that its directory exists "
                "and that this user may read and write the file and its directory."
            )
        return CheckpointError(f"cannot {action} checkpoint {self.path}: {type(exc).__name__}: {text}")

    # -- reading and writing ---------------------------------------------------------------

    def get(self, key: str) -> tuple[bool, Any]:
        """Return ``(True, value)`` for a stored result, ``(False, None)`` for an unknown key.

        Results put but not yet written are found too.  Raises :class:`CheckpointError` when
        the file cannot be read or the stored value cannot be unpickled (for instance, its
        class no longer exists); delete that row to run the task again.
        """
        with self._lock:
            self._check_open()
            row = self._pending.get(key)
            if row is not None:
                task_name, blob = row[2], row[5]
            else:
                try:
                    found = self._conn.execute(
                        "SELECT task_name, value FROM results WHERE key = ?", (key,)
                    ).fetchone()
                except sqlite3.Error as exc:
                    raise self._error("read", exc) from exc
                if found is None:
                    return False, None
                task_name, blob = found
        try:
            return True, pickle.loads(blob)
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {self.path}: the stored result of task {task_name or key!r} (key {key!r}) "
                f"cannot be unpickled: {type(exc).__name__}: {exc}. Delete its row to run the task "
                f"again: DELETE FROM results WHERE key = '{key}'"
            ) from exc

    def put(self, key: str, value: Any, *, function: str = "", task_name: str = "") -> None:
        """Store ``value`` as the result for ``key``; write it now or later, as ``mode`` says.

        ``function`` and ``task_name`` fill the readable columns.  Raises
        :class:`CheckpointError` if ``value`` cannot be pickled (nothing is stored) or if a
        write that is due fails; the results of a failed write stay buffered and the next
        write (or :meth:`close`) tries them again.
        """
        try:
            blob = cloudpickle.dumps(value, protocol=5)
        except Exception as exc:
            raise CheckpointError(
                f"the result of task {task_name or key!r} ({function or 'unknown function'}) cannot be "
                f"pickled for checkpoint {self.path}: {type(exc).__name__}: {exc}. The task's result "
                "is not checkpointed; the task will run again in the next run."
            ) from exc
        if len(blob) > self._max_size:
            raise CheckpointError(
                f"the result of task {task_name or key!r} ({function or 'unknown function'}) is too large "
                f"for checkpoint {self.path}: {len(blob)} bytes pickled, SQLite stores at most "
                f"{self._max_size}. Return a path to a file instead; the task will run again in the next run."
            )
        row: _Row = (key, function, task_name, time.time(), len(blob), blob)
        with self._lock:
            self._check_open()
            self._pending[key] = row
            due = self.mode == "task" or (
                self.mode == "periodic" and self._clock() - self._last_flush >= self.period
            )
            if due:
                self._flush_locked()

    def flush(self) -> int:
        """Write every buffered result in one transaction and return how many were written.

        Raises :class:`CheckpointError` if the write fails; nothing is then written and the
        results stay buffered.
        """
        with self._lock:
            self._check_open()
            return self._flush_locked()

    def _flush_locked(self) -> int:
        if not self._pending:
            self._last_flush = self._clock()
            return 0
        rows = list(self._pending.values())
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_INSERT, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error("write", exc) from exc
        self._pending.clear()
        self._last_flush = self._clock()
        logger.debug("checkpoint %s: wrote %d results", self.path, len(rows))
        return len(rows)

    def keys(self) -> list[str]:
        """Return the keys of every stored result, written or buffered, sorted."""
        with self._lock:
            self._check_open()
            try:
                stored = [row[0] for row in self._conn.execute("SELECT key FROM results")]
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
            return sorted(set(stored).union(self._pending))

    def __len__(self) -> int:
        return len(self.keys())

    def close(self) -> None:
        """Write buffered results (in every mode) and close the file; closing twice does nothing.

        Raises :class:`CheckpointError` naming how many results were lost if the final write
        fails; the file is closed all the same.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush_locked()
            except CheckpointError as exc:
                lost = len(self._pending)
                raise CheckpointError(
                    f"{exc} {lost} result(s) were not written to the checkpoint and are lost."
                ) from exc
            finally:
                self._pending.clear()
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"checkpoint {self.path} is closed.")

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, mode={self.mode!r})"
