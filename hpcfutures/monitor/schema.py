"""The run record's SQLite schema: one file per run family, migrated by ``PRAGMA user_version``.

A *family* is a name for repeated runs of one workflow (by default the script's name); each
executor that records is one *run* in its family's file, so a workflow restarted after a
crash, or resumed from its checkpoint, lands beside its earlier runs and the views can show
them together.

Tables, and what one row is:

- ``run``: one recording executor's life: who and where (host, pid, argv, version, config),
  when, its status, and its task counts, which the writer refreshes at every flush so that
  a live run's status is one row to read.  ``behind_since`` is set while the writer defers
  the task rows of a busy executor (see :mod:`.writer`): the counts are current, the
  rows of what happened since then are not written yet.
- ``task`` (a view): one task.  ``state`` is one of :data:`TASK_STATES`.  It is the union
  of two tables: ``task_full``, written when a task is submitted (if it lives past one
  flush) and when it ends, and ``task_plain``, one short row for each task that ran once,
  succeeded and has nothing more to tell (no dependencies, settings, cache decision or
  output): most tasks of a large run, which so cost the writer one row and one index
  entry instead of two rows and six.
- ``edge``: a dataflow dependency, parent -> child.
- ``try`` (a view over ``try_full`` and ``task_plain``): one attempt at a task: when it was queued, dispatched to a worker, started and
  ended; where (pool, host, worker slot, pid); how it ended, with a bounded traceback; and
  whether it was *charged* to the user's retries (0 for a try lost with its worker pool
  and requeued by the executor).
- ``block``: a batch job's latest state; ``block_state``: every change of it (never a row
  per poll).
- ``pool``: a worker pool that registered, and when and why it was lost.
- ``sample``: a node's load, memory and busy workers, every few seconds; samples are the
  only rows the writer may drop, and ``run.dropped`` counts them.

Times are seconds since the epoch (``time.time()``), as REAL.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

#: The schema this code writes; a file with a higher version was made by a newer hpcfutures.
#: Version 2 split ``task`` and ``try`` into full rows and plain tasks, under views; version 3
#: added ``run.behind_since``.
SCHEMA_VERSION = 3
#: ``PRAGMA application_id``: "HPFM" marks a run record in the file's header.
APPLICATION_ID = 0x4850464D

#: What a task's ``state`` may be.  pending: submitted, waiting for its dependencies or a
#: slot; queued: handed to the executor, not started; running: a worker began it;
#: done / memo_done (answered from the cache or a checkpoint) / failed / dep_fail (a
#: dependency failed, so it never ran) / cancelled are final.
TASK_STATES = ("pending", "queued", "running", "done", "memo_done", "failed", "dep_fail", "cancelled")
FINAL_STATES = frozenset({"done", "memo_done", "failed", "dep_fail", "cancelled"})

#: What a try's ``outcome`` may be.  lost: its worker or pool died (``charged`` says whether
#: that counted against the task's retries); walltime: it ran past its walltime.
TRY_OUTCOMES = ("ok", "error", "lost", "walltime", "cancelled")

_TABLES = (
    """CREATE TABLE run (
        run_id INTEGER PRIMARY KEY,
        family TEXT NOT NULL,
        kind TEXT NOT NULL,
        label TEXT,
        status TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        heartbeat REAL,
        host TEXT,
        pid INTEGER,
        argv TEXT,
        version TEXT,
        config TEXT,
        submitted INTEGER NOT NULL DEFAULT 0,
        running INTEGER NOT NULL DEFAULT 0,
        done INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cached INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        behind_since REAL
    )""",
    """CREATE TABLE task_full (
        run_id INTEGER NOT NULL,
        task_id INTEGER NOT NULL,
        func TEXT,
        name TEXT,
        executor TEXT,
        state TEXT NOT NULL,
        submitted REAL,
        started REAL,
        ended REAL,
        tries INTEGER NOT NULL DEFAULT 0,
        exception TEXT,
        resources TEXT,
        cache TEXT,
        cache_key TEXT,
        cache_reason TEXT,
        PRIMARY KEY (run_id, task_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX task_by_state ON task_full (run_id, state)",
    "CREATE INDEX task_by_ended ON task_full (run_id, ended)",
    "CREATE INDEX task_by_func ON task_full (run_id, func, state)",
    """CREATE TABLE edge (
        run_id INTEGER NOT NULL,
        child INTEGER NOT NULL,
        parent INTEGER NOT NULL,
        PRIMARY KEY (run_id, child, parent)
    ) WITHOUT ROWID""",
    "CREATE INDEX edge_by_parent ON edge (run_id, parent)",
    """CREATE TABLE try_full (
        run_id INTEGER NOT NULL,
        task_id INTEGER NOT NULL,
        try_no INTEGER NOT NULL,
        queued REAL,
        dispatched REAL,
        started REAL,
        ended REAL,
        outcome TEXT,
        charged INTEGER NOT NULL DEFAULT 1,
        exception TEXT,
        traceback TEXT,
        pool TEXT,
        host TEXT,
        worker INTEGER,
        pid INTEGER,
        rss_kb INTEGER,
        cpu REAL,
        exit_code INTEGER,
        stdout_tail TEXT,
        stderr_tail TEXT,
        PRIMARY KEY (run_id, task_id, try_no)
    ) WITHOUT ROWID""",
    "CREATE INDEX try_by_ended ON try_full (run_id, ended)",
    """CREATE TABLE block (
        run_id INTEGER NOT NULL,
        executor TEXT NOT NULL,
        block_id TEXT NOT NULL,
        job_id TEXT,
        state TEXT,
        raw_state TEXT,
        reason TEXT,
        submitted REAL,
        updated REAL,
        PRIMARY KEY (run_id, executor, block_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE block_state (
        run_id INTEGER NOT NULL,
        executor TEXT NOT NULL,
        block_id TEXT NOT NULL,
        at REAL NOT NULL,
        state TEXT,
        raw_state TEXT,
        reason TEXT
    )""",
    "CREATE INDEX block_state_by_block ON block_state (run_id, executor, block_id, at)",
    """CREATE TABLE pool (
        run_id INTEGER NOT NULL,
        executor TEXT NOT NULL,
        pool_id TEXT NOT NULL,
        block_id TEXT,
        host TEXT,
        pid INTEGER,
        workers INTEGER,
        shape TEXT,
        registered REAL,
        lost REAL,
        reason TEXT,
        PRIMARY KEY (run_id, executor, pool_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE sample (
        run_id INTEGER NOT NULL,
        at REAL NOT NULL,
        executor TEXT,
        host TEXT,
        pool_id TEXT,
        cpu_percent REAL,
        load1 REAL,
        mem_percent REAL,
        rss_mb REAL,
        busy INTEGER,
        workers INTEGER
    )""",
    "CREATE INDEX sample_by_time ON sample (run_id, at)",
)


#: Version 2: plain tasks in a table of their own, and the views that join them to the rest.
_PLAIN = (
    """CREATE TABLE task_plain (
        run_id INTEGER NOT NULL,
        task_id INTEGER NOT NULL,
        func TEXT,
        name TEXT,
        executor TEXT,
        submitted REAL,
        queued REAL,
        dispatched REAL,
        started REAL,
        ended REAL,
        try_no INTEGER NOT NULL,
        pool TEXT,
        host TEXT,
        worker INTEGER,
        pid INTEGER,
        rss_kb INTEGER,
        cpu REAL,
        PRIMARY KEY (run_id, task_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX plain_by_ended ON task_plain (run_id, ended)",
    """CREATE VIEW task AS
        SELECT run_id, task_id, func, name, executor, state, submitted, started, ended, tries, exception,
               resources, cache, cache_key, cache_reason FROM task_full
        UNION ALL
        SELECT run_id, task_id, func, name, executor, 'done', submitted, started, ended, try_no, NULL,
               NULL, NULL, NULL, NULL FROM task_plain""",
    """CREATE VIEW try AS
        SELECT run_id, task_id, try_no, queued, dispatched, started, ended, outcome, charged, exception,
               traceback, pool, host, worker, pid, rss_kb, cpu, exit_code, stdout_tail, stderr_tail FROM try_full
        UNION ALL
        SELECT run_id, task_id, try_no, queued, dispatched, started, ended, 'ok', 1, NULL, NULL, pool, host,
               worker, pid, rss_kb, cpu, NULL, NULL, NULL FROM task_plain""",
)
#: Version 1 -> 2: the tables ``task`` and ``try`` become ``task_full`` and ``try_full``.
_V1_TO_V2 = ("ALTER TABLE task RENAME TO task_full", "ALTER TABLE try RENAME TO try_full", *_PLAIN)
#: Version 2 -> 3: the run says since when its task rows lag its counts.
_V2_TO_V3 = ("ALTER TABLE run ADD COLUMN behind_since REAL",)


class RecordError(OSError):
    """A run record cannot be opened, read or written; the message names the file."""


def connect(path: str | os.PathLike[str], *, timeout: float = 10.0) -> sqlite3.Connection:
    """Open (creating it if need be) the run record at ``path`` for writing, migrated.

    The file is put in write-ahead-log mode, so that readers (the CLI, the dashboard)
    never block the writer nor it them.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise RecordError(f"run record {path}: cannot open it for writing: {exc}") from exc
    try:
        journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            raise RecordError(
                f"run record {path}: SQLite could not put it in write-ahead-log mode (journal_mode "
                f"is {journal!r}); keep the record on a local disk (record='/tmp/...' or "
                "HPCFUTURES_RECORD_DIR), not on a parallel file system"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise RecordError(f"run record {path}: {exc}") from exc
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables in a new file, or bring an older schema up to :data:`SCHEMA_VERSION`."""
    conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates; the others then see it
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        application = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables and application != APPLICATION_ID:
            raise RecordError(f"{path} is an SQLite file but not an hpcfutures run record")
        if version > SCHEMA_VERSION:
            raise RecordError(
                f"run record {path} has schema version {version}, newer than this hpcfutures "
                f"reads ({SCHEMA_VERSION}); upgrade hpcfutures or record to another file"
            )
        if version == 0:
            for statement in (*_TABLES, *_PLAIN):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        else:
            for statement in (*(_V1_TO_V2 if version < 2 else ()), *(_V2_TO_V3 if version < 3 else ())):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect_for_reading(path: str | os.PathLike[str], *, timeout: float = 10.0) -> sqlite3.Connection:
    """Open a run record to read, live or finished, never changing it.

    Raises:
        RecordError: no such file, not a run record, or a schema newer than this code.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"run record {path}: no such file")
    try:
        if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
            # read-write with writes refused: the last connection then removes the -wal and
            # -shm files, which a read-only one cannot do
            conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
        else:
            uri = path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        application = conn.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.Error as exc:
        raise RecordError(f"run record {path}: cannot read it: {exc}") from exc
    if application == APPLICATION_ID and 1 <= version < SCHEMA_VERSION:
        conn.close()
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            raise RecordError(
                f"run record {path} has schema version {version}, older than this hpcfutures reads "
                f"({SCHEMA_VERSION}), and cannot be migrated here (read-only); copy it somewhere writable"
            )
        connect(path, timeout=timeout).close()  # migrates it
        return connect_for_reading(path, timeout=timeout)
    if application != APPLICATION_ID or version < 1:
        conn.close()
        raise RecordError(f"{path} is not an hpcfutures run record")
    if version > SCHEMA_VERSION:
        conn.close()
        raise RecordError(
            f"run record {path} has schema version {version}, newer than this hpcfutures reads "
            f"({SCHEMA_VERSION}); upgrade hpcfutures"
        )
    conn.row_factory = sqlite3.Row
    return conn
