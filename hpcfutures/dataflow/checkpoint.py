"""A checkpoint of cached task results: one SQLite file with tables anyone can inspect.

Each result is a row of ``results(key, function, task_name, created, size, value)``: the
cache key, who made it, when (Unix time), and the cloudpickled value (protocol 5).  Each
failed task is a row of ``failures(key, function, task_name, created, type, message,
traceback)``, as text: it is never reused as a result, only reported.  Unlike Parsl's pickle
streams, the file answers ``sqlite3 run.db "SELECT key, function, task_name, size FROM
results"`` without hpcfutures.

A checkpoint writes to its own file and may also read the files of earlier runs
(``read_from``, Parsl's ``checkpoint_files``); :func:`find_checkpoints` lists those under a
directory.  It opens the other files without ever writing to them.

Safety comes from SQLite itself: every write is one transaction (``BEGIN IMMEDIATE`` …
``COMMIT``) in write-ahead-log mode, so a process killed mid-write leaves the file with
exactly the rows committed before.  ``synchronous=NORMAL`` is enough for that: in WAL mode
it loses no committed transaction when the *process* dies, only possibly the last few when
the *machine* loses power, and then the cost is re-running those tasks, not a damaged file.
``FULL`` would add an fsync per task, which is slow on the parallel file systems where
checkpoints usually live.

A file that cannot serve as a checkpoint (not SQLite, damaged, another schema, unreadable,
locked by another writer) raises :class:`CheckpointError` naming the path, the cause and the
fix; it is never replaced by an empty cache.  A file of an older schema is migrated forward
when it is opened as a checkpoint's own file, and read as it is when only read from.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sqlite3
import stat
import threading
import time
import traceback as traceback_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import cloudpickle

from ..errors import ConfigurationError, HpcFuturesError, RemoteError

logger = logging.getLogger(__name__)

#: The layout this module writes.  Version 1 had ``meta`` and ``results``; version 2 adds
#: ``failures``.  The version is in ``meta`` and, from version 2, in ``PRAGMA user_version``.
SCHEMA_VERSION = 2
#: The oldest layout still read; a checkpoint's own file of this version is migrated forward.
OLDEST_SCHEMA_VERSION = 1
#: When buffered results are written: at once, every ``period`` seconds, at close, on request.
MODES = ("task", "periodic", "exit", "manual")
#: A failure keeps at most this many characters of its exception message and traceback.
MAX_MESSAGE_CHARS = 4_000
MAX_TRACEBACK_CHARS = 16_000

_APPLICATION = "hpcfutures.checkpoint"
# PRAGMA application_id ("HPFC"): marks the file in its 100-byte header from version 2 on.
_APPLICATION_ID = 0x48504643
_SQLITE_HEADER = b"SQLite format 3\x00"
_COLUMNS = ("key", "function", "task_name", "created", "size", "value")
_FAILURE_COLUMNS = ("key", "function", "task_name", "created", "type", "message", "traceback")
_FAILURES_TABLE = (
    "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, function TEXT, task_name TEXT,"
    " created REAL, type TEXT, message TEXT, traceback TEXT)"
)
_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE results (key TEXT PRIMARY KEY, function TEXT, task_name TEXT,"
    " created REAL, size INTEGER, value BLOB)",
    _FAILURES_TABLE,
)
_INSERT = "INSERT OR REPLACE INTO results (key, function, task_name, created, size, value) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_FAILURE = (
    "INSERT OR REPLACE INTO failures (key, function, task_name, created, type, message, traceback)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_AFRESH = "Move it aside or delete it to start afresh (its tasks will run again)."
_PERIOD = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})")
_PERIOD_FORMS = "a positive number of seconds (60, 2.5) or an 'HH:MM:SS' string ('00:01:00', '1:30:00')"

_Row = tuple[str, str, str, float, int, bytes]
_FailureRow = tuple[str, str, str, float, str, str, str]


class CheckpointError(HpcFuturesError):
    """A checkpoint file cannot be opened, read or written, or a result cannot be stored in it."""


@dataclass(frozen=True)
class FailureRecord:
    """How a task failed, as a checkpoint recorded it: text only, never reused as a result.

    ``type`` is the exception's class (``"ValueError"``, ``"mypkg.errors.BadInput"``; for a
    :class:`~hpcfutures.errors.RemoteError`, the remote type's name), ``message`` its text
    and ``traceback`` the formatted traceback with its causes, each cut in the middle beyond
    :data:`MAX_MESSAGE_CHARS` / :data:`MAX_TRACEBACK_CHARS`.  ``when`` is the Unix time of
    the failure and ``path`` the checkpoint file that holds it.
    """

    type: str
    message: str
    traceback: str
    when: float
    task_name: str = ""
    function: str = ""
    path: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True)
class _File:
    """One open file that lookups consult; only the checkpoint's own file is written."""

    path: str
    conn: sqlite3.Connection
    has_failures: bool  # False for a version-1 file that is only read


def parse_period(value: float | str, name: str = "period") -> float:
    """Return a period in seconds from a number of seconds or an ``"HH:MM:SS"`` string.

    ``name`` is the parameter named in the error.  Raises
    :class:`~hpcfutures.errors.ConfigurationError` for anything else, or a period that is
    not positive.
    """
    if isinstance(value, str):
        match = _PERIOD.fullmatch(value.strip())
        if match is None or int(match[2]) > 59 or int(match[3]) > 59:
            raise ConfigurationError(f"{name}={value!r} is not a period; give {_PERIOD_FORMS}.")
        seconds = float(int(match[1]) * 3600 + int(match[2]) * 60 + int(match[3]))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{name}={value!r} is not a period; give {_PERIOD_FORMS}.")
    if not seconds > 0:  # also refuses NaN
        raise ConfigurationError(
            f"{name}={value!r} must be a positive period between checkpoint writes; give {_PERIOD_FORMS}."
        )
    return seconds


class Checkpoint:
    """Results of cached tasks, kept in a SQLite file across runs.

    ``mode`` says when :meth:`put` and :meth:`record_failure` reach the file: ``"task"``
    (default) at once; ``"periodic"`` when ``period`` has passed since the last write,
    checked at each put; ``"exit"`` at :meth:`close`; ``"manual"`` at :meth:`flush`.  Every
    mode also writes at :meth:`close`, so that closing never drops a finished result.  Until
    written, results live in memory, where :meth:`get` finds them too.  ``period`` is in
    seconds, or an ``"HH:MM:SS"`` string as Parsl's ``checkpoint_period``.

    ``read_from`` names checkpoint files of earlier runs (Parsl's ``checkpoint_files``):
    lookups consult this checkpoint's own file first, then those, in the order given; they
    are read, never written, and may be of an older schema.  The own file, or a file named
    twice, is consulted once.

    Every file is opened, created or validated here, at construction, so that a checkpoint
    that cannot work fails before any task runs.  ``busy_timeout`` is how long to wait for
    another writer's lock before raising; ``clock`` (seconds, monotonic) times ``period``.
    An instance is thread-safe; call :meth:`close` (or use ``with``) when done.

    Raises :class:`~hpcfutures.errors.ConfigurationError` for a bad ``mode``, ``period``,
    ``busy_timeout`` or ``read_from``, and :class:`CheckpointError` for a file that cannot
    serve, including a ``read_from`` file that does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: str = "task",
        period: float | str = 30.0,
        read_from: Iterable[str | os.PathLike[str]] = (),
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if mode not in MODES:
            raise ConfigurationError(
                f"mode={mode!r} is not a checkpoint mode; use one of {', '.join(map(repr, MODES))}."
            )
        seconds = parse_period(period, "period")
        if not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise ConfigurationError(
                f"busy_timeout={busy_timeout!r} must be a number of seconds >= 0 to wait for a lock."
            )
        if isinstance(read_from, (str, bytes, os.PathLike)):
            raise ConfigurationError(
                f"read_from={read_from!r} is one path; give a list of checkpoint files: read_from=[...]."
            )
        self.path = os.fspath(path)
        self.mode = mode
        self.period = seconds
        self.busy_timeout = float(busy_timeout)
        self._clock = clock
        # Must be held while using any connection of _files or mutating _pending,
        # _pending_failures, _last_flush or _closed: each sqlite3 connection is shared by
        # every thread (check_same_thread=False).
        self._lock = threading.Lock()
        self._pending: dict[str, _Row] = {}  # results put but not yet committed, by key
        self._pending_failures: dict[str, _FailureRow] = {}  # failures not yet committed, by key
        self._closed = False
        try:
            others = [os.fspath(other) for other in read_from]
        except TypeError as exc:
            raise ConfigurationError(
                f"read_from={read_from!r} must be a list of paths of checkpoint files ({exc})."
            ) from exc
        # The files to read from are opened first, so that a wrong one leaves no new file.
        files: list[_File] = []
        try:
            for other in others:
                if _same_file(other, self.path) or any(_same_file(other, known.path) for known in files):
                    logger.debug("checkpoint %s: %s is already consulted", self.path, other)
                    continue
                files.append(self._open_for_reading(other))
            self._conn = self._open()
        except BaseException:
            for known in files:
                known.conn.close()
            raise
        self._files = [_File(self.path, self._conn, True), *files]
        #: The other files lookups consult, in order (without the own file and repeats).
        self.read_from: tuple[str, ...] = tuple(known.path for known in self._files[1:])
        # SQLite refuses a longer blob; catching it in put keeps it from blocking every flush.
        getlimit = getattr(self._conn, "getlimit", None)  # Python >= 3.11
        length = getattr(sqlite3, "SQLITE_LIMIT_LENGTH", None)
        self._max_size: int = getlimit(length) if getlimit and length is not None else 1_000_000_000
        self._last_flush = clock()

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        _check_file(self.path, writable=True)
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _error(self.path, self.busy_timeout, "open", exc) from exc
        try:
            journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(journal).lower() != "wal":
                raise CheckpointError(
                    f"checkpoint {self.path}: SQLite could not switch it to write-ahead-log mode "
                    f"(journal_mode is {journal!r}); put the checkpoint on a local or POSIX file system."
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            if not _tables(conn):
                self._create(conn)
            if _check_schema(conn, self.path) < SCHEMA_VERSION:
                self._migrate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _error(self.path, self.busy_timeout, "open", exc) from exc
            raise
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        # Serialize creation with any other process opening the same new file.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _tables(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
                _stamp(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring a version-1 file to this version: add the failures table and the stamps."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it while this one waited for the lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.execute(_FAILURES_TABLE)
                conn.execute(
                    "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),)
                )
                _stamp(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        logger.info("checkpoint %s: migrated to schema version %d", self.path, SCHEMA_VERSION)

    def _open_for_reading(self, path: str) -> _File:
        _check_file(path, writable=False)
        try:
            conn = _connect_for_reading(path, self.busy_timeout)
        except sqlite3.Error as exc:
            raise _error(path, self.busy_timeout, "open", exc) from exc
        try:
            version = _check_schema(conn, path)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _error(path, self.busy_timeout, "open", exc) from exc
            raise
        return _File(path, conn, version >= 2)

    # -- reading and writing ---------------------------------------------------------------

    def get(self, key: str) -> tuple[bool, Any]:
        """Return ``(True, value)`` for a stored result, ``(False, None)`` for an unknown key.

        Results put but not yet written are found first, then the own file, then the
        ``read_from`` files in order.  A recorded failure is never returned.  Raises
        :class:`CheckpointError` when a file cannot be read or the stored value cannot be
        unpickled (for instance, its class no longer exists); delete that row to run the
        task again.
        """
        with self._lock:
            self._check_open()
            path = self.path
            row = self._pending.get(key)
            if row is not None:
                task_name, blob = row[2], row[5]
            else:
                for source in self._files:
                    found = self._query(source, "SELECT task_name, value FROM results WHERE key = ?", (key,))
                    if found is not None:
                        path, (task_name, blob) = source.path, found
                        break
                else:
                    return False, None
        try:
            return True, pickle.loads(blob)
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {path}: the stored result of task {task_name or key!r} (key {key!r}) "
                f"cannot be unpickled: {type(exc).__name__}: {exc}. Delete its row to run the task "
                f"again: DELETE FROM results WHERE key = '{key}'"
            ) from exc

    def failure(self, key: str) -> FailureRecord | None:
        """Return how the last recorded run of ``key`` failed, or None if it did not.

        Consults what is buffered, then the own file, then the ``read_from`` files in order;
        the first that knows ``key`` answers: None if it holds a result (a success replaces
        a failure), its :class:`FailureRecord` if it holds a failure.  Raises
        :class:`CheckpointError` when a file cannot be read.
        """
        with self._lock:
            self._check_open()
            if key in self._pending:
                return None
            row = self._pending_failures.get(key)
            if row is not None:
                return _record(row[1:], self.path)
            for source in self._files:
                if self._query(source, "SELECT 1 FROM results WHERE key = ?", (key,)) is not None:
                    return None
                if source.has_failures:
                    found = self._query(
                        source,
                        "SELECT function, task_name, created, type, message, traceback"
                        " FROM failures WHERE key = ?",
                        (key,),
                    )
                    if found is not None:
                        return _record(found, source.path)
            return None

    def _query(self, source: _File, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            return source.conn.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise _error(source.path, self.busy_timeout, "read", exc) from exc

    def put(self, key: str, value: Any, *, function: str = "", task_name: str = "") -> None:
        """Store ``value`` as the result for ``key``; write it now or later, as ``mode`` says.

        The result replaces a failure recorded for ``key`` in the own file.  ``function`` and
        ``task_name`` fill the readable columns.  Raises :class:`CheckpointError` if
        ``value`` cannot be pickled (nothing is stored) or if a write that is due fails; what
        a failed write held stays buffered and the next write (or :meth:`close`) tries again.
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
            self._pending_failures.pop(key, None)
            self._write_if_due()

    def record_failure(
        self, key: str, *, exception: BaseException, function: str = "", task_name: str = ""
    ) -> None:
        """Record that the task of ``key`` failed with ``exception``; write it as ``mode`` says.

        Stores the exception's type, message and traceback as text (see
        :class:`FailureRecord`), replacing an earlier failure of ``key``; :meth:`get` never
        returns it, :meth:`failure` does until a result for ``key`` is put.  Raises
        :class:`CheckpointError` if a write that is due fails (what it held stays buffered).
        """
        type_name, message, text = _describe(exception)
        row: _FailureRow = (key, function, task_name, time.time(), type_name, message, text)
        with self._lock:
            self._check_open()
            self._pending_failures[key] = row
            self._write_if_due()

    def _write_if_due(self) -> None:
        if self.mode == "task" or (
            self.mode == "periodic" and self._clock() - self._last_flush >= self.period
        ):
            self._flush_locked()

    def flush(self) -> int:
        """Write every buffered result and failure in one transaction; return how many.

        Raises :class:`CheckpointError` if the write fails; nothing is then written and
        everything stays buffered.
        """
        with self._lock:
            self._check_open()
            return self._flush_locked()

    def _flush_locked(self) -> int:
        if not self._pending and not self._pending_failures:
            self._last_flush = self._clock()
            return 0
        rows = list(self._pending.values())
        failures = list(self._pending_failures.values())
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_INSERT, rows)
                self._conn.executemany("DELETE FROM failures WHERE key = ?", [(row[0],) for row in rows])
                self._conn.executemany(_INSERT_FAILURE, failures)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _error(self.path, self.busy_timeout, "write", exc) from exc
        self._pending.clear()
        self._pending_failures.clear()
        self._last_flush = self._clock()
        logger.debug("checkpoint %s: wrote %d results, %d failures", self.path, len(rows), len(failures))
        return len(rows) + len(failures)

    def keys(self) -> list[str]:
        """Return the keys of every result in the own file, written or buffered, sorted.

        Results in ``read_from`` files and failures are not included.
        """
        with self._lock:
            self._check_open()
            try:
                stored = [row[0] for row in self._conn.execute("SELECT key FROM results")]
            except sqlite3.Error as exc:
                raise _error(self.path, self.busy_timeout, "read", exc) from exc
            return sorted(set(stored).union(self._pending))

    def __len__(self) -> int:
        return len(self.keys())

    def close(self) -> None:
        """Write what is buffered (in every mode) and close the files; closing twice does nothing.

        Raises :class:`CheckpointError` naming how many results and failures were lost if the
        final write fails; the files are closed all the same.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush_locked()
            except CheckpointError as exc:
                lost, failures = len(self._pending), len(self._pending_failures)
                raise CheckpointError(
                    f"{exc} {lost} result(s) and {failures} failure record(s) were not written to "
                    "the checkpoint and are lost."
                ) from exc
            finally:
                self._pending.clear()
                self._pending_failures.clear()
                for source in self._files:
                    source.conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"checkpoint {self.path} is closed.")

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = f", read_from={list(self.read_from)!r}" if self.read_from else ""
        return f"Checkpoint({self.path!r}, mode={self.mode!r}{extra})"


def find_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Return every hpcfutures checkpoint file under ``run_dir`` (recursively), newest first.

    A file is recognised by its content, whatever its name: a SQLite database whose ``meta``
    table names hpcfutures (files of any schema version are listed; opening one this version
    cannot read fails then).  Newest means the latest result or failure it stores (its
    ``created`` times, not the file's modification time, which copies change); files that
    store nothing come last, ties in path order.  Newest first is the order ``read_from``
    consults, so ``Checkpoint(path, read_from=find_checkpoints(run_dir))`` prefers the
    latest run, as Parsl does.  A file that looks like a checkpoint but cannot be read is
    skipped with a warning.  Raises :class:`CheckpointError` if ``run_dir`` is not a
    directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise CheckpointError(
            f"find_checkpoints: {root} is not a directory"
            f"{'' if root.exists() else ' (it does not exist)'}; give the directory that holds "
            "the checkpoint files of earlier runs."
        )
    found: list[tuple[float, str]] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in names:
            path = os.path.join(directory, name)
            latest = _inspect(path)
            if latest is not None:
                found.append((latest, path))
    found.sort(key=lambda item: (-item[0], item[1]))
    return [Path(path) for _, path in found]


def _inspect(path: str) -> float | None:
    """Return when the checkpoint at ``path`` last stored something, or None if it is none."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read below
            return None
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        return None  # not SQLite, or an empty file no run finished creating
    application_id = int.from_bytes(header[68:72], "big")
    if application_id not in (0, _APPLICATION_ID):
        return None  # another application's database: not opened at all
    try:
        conn = _connect_for_reading(path, 1.0)
    except sqlite3.Error:
        return None
    try:
        tables = _tables(conn)
        if "meta" not in tables or "results" not in tables:
            return None
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        if meta.get("application") != _APPLICATION:
            return None
        times = [conn.execute("SELECT max(created) FROM results").fetchone()[0]]
        if "failures" in tables:
            times.append(conn.execute("SELECT max(created) FROM failures").fetchone()[0])
        return max((t for t in times if isinstance(t, (int, float))), default=0.0)
    except sqlite3.Error as exc:
        logger.warning("find_checkpoints: skipping %s, which cannot be read: %s", path, exc)
        return None
    finally:
        conn.close()


def _connect_for_reading(path: str, timeout: float) -> sqlite3.Connection:
    """Open another run's checkpoint for reading only, leaving its content as it was."""
    if os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        # A read-write connection with writes refused: SQLite then removes the -wal and -shm
        # files it makes beside the file when the last connection closes, which a read-only
        # connection cannot do and would leave behind in the earlier run's directory.
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()
            raise
        return conn
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_file(path: str, *, writable: bool) -> None:
    """Refuse what SQLite would misreport or, for a non-database, might overwrite."""
    if not os.path.lexists(path):
        if writable:
            return  # created by the caller
        raise CheckpointError(
            f"checkpoint {path} to read from does not exist. Give the path of a checkpoint file an "
            "earlier run wrote (find_checkpoints(run_dir) lists them), or leave it out."
        )
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory; give the path of a file.")
    permission = "read and write" if writable else "read"
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({exc}). Give this user {permission} permission on "
            "the file and its directory, or point checkpoint= at another file."
        ) from exc
    if writable and not os.access(path, os.R_OK | os.W_OK):
        # SQLite would open a read-only file without complaint and fail at the first write.
        raise CheckpointError(
            f"checkpoint {path} is not writable by this user. Give this user read and "
            "write permission on it and its directory, or point checkpoint= at another file."
        )
    # An empty file is what SQLite itself leaves before the first write: nothing is lost.
    if header and header != _SQLITE_HEADER:
        raise CheckpointError(
            f"checkpoint {path} is not a SQLite database (it starts with {header[:8]!r}). {_AFRESH}"
        )


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def _stamp(conn: sqlite3.Connection) -> None:
    """Mark the file with this version in its header; part of the caller's transaction."""
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")


def _check_schema(conn: sqlite3.Connection, path: str) -> int:
    """Return the schema version of a checkpoint file, or raise if hpcfutures cannot read it."""
    tables = _tables(conn)
    if not {"meta", "results"} <= tables:
        raise CheckpointError(
            f"checkpoint {path} is a SQLite database but not an hpcfutures checkpoint "
            f"(its tables: {', '.join(sorted(tables)) or 'none'}). Point checkpoint= at another "
            "file; hpcfutures will not write into it."
        )
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    version = meta.get("schema_version")
    readable = [str(v) for v in range(OLDEST_SCHEMA_VERSION, SCHEMA_VERSION + 1)]
    if meta.get("application") != _APPLICATION or version not in readable:
        raise CheckpointError(
            f"checkpoint {path} has schema version {version!r} of {meta.get('application')!r}; "
            f"this hpcfutures reads versions {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION} of "
            f"{_APPLICATION!r}. Use the hpcfutures version that wrote it, or: {_AFRESH}"
        )
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    if user_version not in (0, int(version)):  # version-1 files never set user_version
        raise CheckpointError(
            f"checkpoint {path} has schema version {version!r} in its meta table but "
            f"{user_version} in PRAGMA user_version; it was altered by hand. {_AFRESH}"
        )
    columns = _columns(conn, "results")
    if columns != _COLUMNS:
        raise CheckpointError(
            f"checkpoint {path} has a results table with columns {columns}, expected {_COLUMNS}. {_AFRESH}"
        )
    if int(version) >= 2 and _columns(conn, "failures") != _FAILURE_COLUMNS:
        raise CheckpointError(
            f"checkpoint {path} has schema version {version} but its failures table has columns "
            f"{_columns(conn, 'failures')}, expected {_FAILURE_COLUMNS}. {_AFRESH}"
        )
    return int(version)


def _describe(exception: BaseException) -> tuple[str, str, str]:
    """Return the type name, message and traceback text of an exception, bounded."""
    if isinstance(exception, RemoteError):
        type_name, message = exception.type_name, exception.message
    else:
        cls = type(exception)
        module = getattr(cls, "__module__", "")
        qualname = getattr(cls, "__qualname__", cls.__name__)
        type_name = qualname if module in ("builtins", "") else f"{module}.{qualname}"
        try:
            message = str(exception)
        except Exception:  # noqa: BLE001 - a broken __str__ must not lose the record
            message = f"<unprintable {cls.__name__}>"
    try:
        text = "".join(traceback_module.format_exception(exception))
    except Exception:  # noqa: BLE001 - as above
        text = f"{type_name}: {message}\n"
    return type_name, _bounded(message, MAX_MESSAGE_CHARS), _bounded(text, MAX_TRACEBACK_CHARS)


def _bounded(text: str, limit: int) -> str:
    """Cut ``text`` in the middle to at most about ``limit`` characters.

    The middle goes because a chained traceback starts with its root cause and ends with the
    error the task raised, and both matter.
    """
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-tail:]}"


def _record(row: tuple[Any, ...], path: str) -> FailureRecord:
    function, task_name, created, type_name, message, text = row
    return FailureRecord(
        type=type_name or "",
        message=message or "",
        traceback=text or "",
        when=float(created or 0.0),
        task_name=task_name or "",
        function=function or "",
        path=path,
    )


def _error(path: str, busy_timeout: float, action: str, exc: sqlite3.Error) -> CheckpointError:
    """Say what an SQLite failure means for the user, with the fix."""
    name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11
    text = str(exc)
    if "BUSY" in name or "LOCKED" in name or "locked" in text:
        return CheckpointError(
            f"cannot {action} checkpoint {path}: it is locked by another process "
            f"(waited {busy_timeout:g} s: {text}). Is another run using the same "
            "checkpoint file? Stop it, or point this run at another file."
        )
    if "NOTADB" in name or "CORRUPT" in name or "not a database" in text or "malformed" in text:
        return CheckpointError(f"cannot {action} checkpoint {path}: it is damaged ({text}). {_AFRESH}")
    if "READONLY" in name or "readonly" in text:
        return CheckpointError(
            f"cannot {action} checkpoint {path}: it is read-only ({text}). Give this user "
            "write permission on the file and its directory (SQLite creates -wal and -shm "
            "files beside it), or point checkpoint= at another file."
        )
    if "CANTOPEN" in name or "PERM" in name or "unable to open" in text:
        return CheckpointError(
            f"cannot {action} checkpoint {path} ({text}). Check that its directory exists "
            "and that this user may read and write the file and its directory."
        )
    return CheckpointError(f"cannot {action} checkpoint {path}: {type(exc).__name__}: {text}")
