"""The record writer: a child process that folds a run's events into its SQLite record.

A :class:`~.recorder.Recorder` starts one writer per run (``python -m
hpcfutures.monitor.writer FILE RUN_ID``) and sends it frames on its standard input: a 4-byte
little-endian length, then a :mod:`marshal`-ed list of event tuples.  The writer runs at the
lowest CPU priority (SCHED_IDLE on Linux, else nice 19), so that on a busy node it takes
only time nobody else wants, and the executor's process spends nothing on SQLite: folding
events into rows and writing them costs about 6 µs a task here, a third of what a no-op
task costs the executor.

The writer folds the events of each task into as few rows as it can (a task that ran once
and succeeded, with nothing else to tell, is one short ``task_plain`` row), writes each
batch in one transaction, and refreshes the run's counts and heartbeat.  While the executor
is busy it defers the folding (see :func:`serve`): the counts stay current, the rows follow
when it calms down.  A flush request is answered on standard output with one line,
``flushed SEQ``, once what came before it is committed.  When its input ends it writes what
is left and marks the run ended: with the status the recorder sent last, or
``interrupted`` if the executor's process went away without one.

Raw events, ``(RAW, "module:function", payload)``, let an executor send its own compact
form (for HTEX, the result metadata of a whole batch as bytes): the writer imports the
function once and calls it with the payload for the events it stands for.  A decoder that
has a ``tally`` attribute (a function of the same payload) says what its events add to the
run's counts without decoding them, which lets the writer defer them while the executor is
busy; a frame with a raw event whose decoder has none is folded at once.
"""

from __future__ import annotations

import importlib
import logging
import marshal
import os
import select
import sqlite3
import sys
import tempfile
import time
from collections import deque
from typing import Any, BinaryIO, Callable, Iterable

from .events import (
    BLOCK,
    CACHE,
    CLOSE,
    EDGE,
    END,
    FLUSH,
    FRAME,
    PLAIN,
    POOL,
    POOL_LOST,
    RAW,
    SAMPLE,
    STATE,
    SUBMIT,
    TRY,
    counted_as,
)
from .schema import FINAL_STATES, connect

logger = logging.getLogger(__name__)

#: A frame this large or larger (about 1,000 tasks in half a second) means the executor is busy.
BUSY_BYTES = 64 * 1024
#: Seconds after the last busy frame before the executor counts as calm again.
CALM_SECONDS = 1.0
#: Bytes of deferred frames folded in one transaction while catching up.
DRAIN_BYTES = 4 * 1024 * 1024
#: The share of one CPU the executor's process uses at or above which it counts as busy.
BUSY_SHARE = 0.5
#: Seconds over which that share is measured before catching up, and measured again.
SHARE_SECONDS = 0.25

# Indices into a task's folded row: the columns of TASK_COLUMNS.
TASK_COLUMNS = (
    "func, name, executor, state, submitted, started, ended, tries, exception, resources, "
    "cache, cache_key, cache_reason"
)
_FUNC, _NAME, _EXECUTOR, _STATE, _SUBMITTED, _STARTED, _ENDED, _TRIES, _EXC, _RES, _CACHE, _KEY, _REASON = range(13)
_FINAL_SQL = "(" + ",".join(f"'{state}'" for state in sorted(FINAL_STATES)) + ")"

Decoder = Callable[[Any], Iterable[tuple[Any, ...]]]


class Folder:
    """Folds events into rows and writes them: the writer's state, one per run."""

    def __init__(self, conn: sqlite3.Connection, run_id: int) -> None:
        self.conn = conn
        self.run_id = run_id
        self.written: set[int] = set()  # tasks not yet final that have a row
        self.state_of: dict[int, str] = {}  # tasks not yet final, and their state
        self.counts = dict.fromkeys(("submitted", "running", "done", "failed", "cached", "cancelled"), 0)
        self.dropped = 0
        self.pool_tags: dict[int, tuple[str, str | None]] = {}
        self.decoders: dict[str, Decoder] = {}
        self.status: tuple[str, str | None] | None = None  # what CLOSE said
        self.behind_since: float | None = None  # when the oldest frame not yet folded came

    def decoder(self, name: str) -> Decoder:
        found = self.decoders.get(name)
        if found is None:
            module, _, function = name.partition(":")
            found = self.decoders[name] = getattr(importlib.import_module(module), function)
        return found

    def expand(self, events: Iterable[tuple[Any, ...]]) -> Iterable[tuple[Any, ...]]:
        for event in events:
            if event[0] == RAW:
                yield from self.decoder(event[1])(event[2])
            else:
                yield event

    def tally(self, events: Iterable[tuple[Any, ...]]) -> dict[str, int] | None:
        """What folding ``events`` would add to the run's final counts (submitted, done, …),
        found without folding them; None if a raw event's decoder cannot tell (it has no
        ``tally``), so that they must be folded to be counted."""
        delta = dict.fromkeys(("submitted", "done", "failed", "cached", "cancelled"), 0)
        for event in events:
            code = event[0]
            if code == SUBMIT:
                delta["submitted"] += 1
            elif code == PLAIN:
                delta["done"] += 1
            elif code == END:
                delta[counted_as(event[2])] += 1
            elif code == RAW:
                count = getattr(self.decoder(event[1]), "tally", None)
                if count is None:
                    return None
                for key, n in count(event[2]).items():
                    delta[key] += n
        return delta

    def add_counts(self, delta: dict[str, int]) -> None:
        """Add a :meth:`tally` to the run's counts and write them (with the heartbeat)."""
        for key, n in delta.items():
            self.counts[key] += n
        self.conn.execute(*self._run_update())

    def _run_update(self) -> tuple[str, tuple[Any, ...]]:
        counts = self.counts
        return (
            "UPDATE run SET heartbeat = ?, submitted = ?, running = ?, done = ?, failed = ?, cached = ?, "
            "cancelled = ?, dropped = ?, behind_since = ? WHERE run_id = ?",
            (
                time.time(), counts["submitted"], counts["running"], counts["done"], counts["failed"],
                counts["cached"], counts["cancelled"], self.dropped, self.behind_since, self.run_id,
            ),
        )  # fmt: skip

    def write(self, events: Iterable[tuple[Any, ...]], *, counted: bool = False) -> list[int]:
        """Fold ``events`` and write them in one transaction; return the flush requests met.

        ``counted``: their :meth:`tally` is in the counts already (they were deferred);
        only the count of running tasks, which a tally cannot know, is kept here.
        """
        run = self.run_id
        written = self.written
        state_of = self.state_of
        counts = self.counts
        ending = dict.fromkeys(counts, 0) if counted else counts  # where the final counts go
        tasks: dict[int, list[Any]] = {}
        edges: list[tuple[int, int, int]] = []
        tries: list[tuple[Any, ...]] = []
        blocks: list[tuple[Any, ...]] = []
        pools: list[tuple[Any, ...]] = []
        lost: list[tuple[Any, ...]] = []
        samples: list[tuple[Any, ...]] = []
        flushes: list[int] = []
        tags = self.pool_tags
        if not isinstance(events, list):
            events = list(events)
        for event in events:  # pools first: a compact log's events come ahead of the pool's in a frame
            if event[0] == POOL and event[9] is not None:
                tags[event[9]] = (event[2], event[5])

        # A task whose only news in this write is its SUBMIT keeps that event here, and moves
        # to ``plain`` (a task_plain row) if a PLAIN event ends it; any other news of either
        # gives it a full row in ``tasks`` (see row_of).
        pending: dict[int, tuple[Any, ...]] = {}
        plain: dict[int, tuple[Any, ...]] = {}

        def row_of(task_id: int) -> list[Any]:
            row = tasks.get(task_id)
            if row is None:
                row = tasks[task_id] = [None] * 13
                row[_TRIES] = 0
                submit = pending.pop(task_id, None)
                if submit is not None:
                    row[_FUNC], row[_NAME], row[_EXECUTOR], row[_STATE], row[_SUBMITTED] = submit[2:7]
                    if len(submit) > 9:  # it started (see STATE)
                        row[_STARTED] = submit[9]
                elif task_id in plain:
                    (_, _, row[_FUNC], row[_NAME], row[_EXECUTOR], row[_SUBMITTED], queued, dispatched, started,
                     ended, try_no, pool, host, worker, pid, rss_kb, cpu) = plain.pop(task_id)  # fmt: skip
                    row[_STATE], row[_STARTED], row[_ENDED], row[_TRIES] = "done", started, ended, try_no
                    tries.append((
                        run, task_id, try_no, queued, dispatched, started, ended, "ok", 1, None, None, pool,
                        host, worker, pid, rss_kb, cpu, None, None, None,
                    ))  # fmt: skip
            return row

        def move(task_id: int, new: str) -> None:
            if state_of.get(task_id) == "running":
                counts["running"] -= 1
            if new in FINAL_STATES:
                state_of.pop(task_id, None)
            else:
                state_of[task_id] = new
                if new == "running":
                    counts["running"] += 1

        def fold_try(event: tuple[Any, ...]) -> None:
            values = list(event[1:])
            pool = values[10]
            if isinstance(pool, int):
                values[10], host = tags.get(pool, (None, None))
                if values[11] is None:
                    values[11] = host
            tries.append((run, *values))
            row = row_of(event[1])
            row[_TRIES] = max(row[_TRIES] or 0, event[2])
            started = event[5]
            if started is not None and (row[_STARTED] is None or started < row[_STARTED]):
                row[_STARTED] = started

        def fold_end(task_id: int, state: str, at: float, n_tries: int, exception: str | None) -> None:
            row = row_of(task_id)
            row[_STATE], row[_ENDED], row[_EXC] = state, at, exception
            row[_TRIES] = max(row[_TRIES] or 0, n_tries)
            move(task_id, state)
            ending[counted_as(state)] += 1

        for event in self.expand(events):
            code = event[0]
            if code == PLAIN:
                task_id = event[1]
                submit = pending.pop(task_id, None)
                if submit is not None and len(submit) > 9 and (event[5] is None or submit[9] < event[5]):
                    # told running before its try began (another clock): a task row keeps that
                    # earlier start, the try its own
                    pending[task_id] = submit
                    row_of(task_id)
                    submit = None
                if submit is None:  # something else was said of it: a try and an end like any other
                    _, _, try_no, queued, dispatched, started, ended, pool, host, worker, pid, rss_kb, cpu = event
                    fold_try((
                        TRY, task_id, try_no, queued, dispatched, started, ended, "ok", 1, None, None, pool, host,
                        worker, pid, rss_kb, cpu, None, None, None,
                    ))  # fmt: skip
                    fold_end(task_id, "done", ended, try_no, None)
                    continue
                pool = event[7]
                host = event[8]
                if isinstance(pool, int):
                    pool, tagged_host = tags.get(pool, (None, None))
                    if host is None:
                        host = tagged_host
                plain[task_id] = (run, task_id, *submit[2:5], submit[6], *event[3:7], event[2], pool, host, *event[9:])
                if state_of.pop(task_id, None) == "running":
                    counts["running"] -= 1
                ending["done"] += 1
            elif code == SUBMIT:
                _, task_id, func, name, executor, state, at, parents, resources = event
                ending["submitted"] += 1
                for parent in parents:
                    edges.append((run, task_id, parent))
                if resources is None and task_id not in tasks and task_id not in written:
                    pending[task_id] = event
                    state_of[task_id] = state
                    if state == "running":
                        counts["running"] += 1
                    continue
                row = row_of(task_id)
                row[_FUNC], row[_NAME], row[_EXECUTOR], row[_SUBMITTED], row[_RES] = func, name, executor, at, resources
                if row[_STATE] is None:
                    row[_STATE] = state
                    move(task_id, state)
            elif code == STATE:
                _, task_id, state, at = event
                if task_id not in state_of:
                    continue  # final already: news that came late
                submit = pending.get(task_id)
                if submit is not None and state == "running":  # still plain, if it ends well
                    pending[task_id] = (*submit[:5], state, *submit[6:9], at)
                    move(task_id, state)
                    continue
                row = row_of(task_id)
                row[_STATE] = state
                if state == "running" and row[_STARTED] is None:
                    row[_STARTED] = at
                move(task_id, state)
            elif code == TRY:
                fold_try(event)
            elif code == END:
                fold_end(*event[1:])
            elif code == CACHE:
                _, task_id, decision, key, reason = event
                row = row_of(task_id)
                row[_CACHE], row[_KEY], row[_REASON] = decision, key, reason
            elif code == EDGE:
                edges.extend((run, event[1], parent) for parent in event[2])
            elif code == BLOCK:
                blocks.append(event[1:])
            elif code == POOL:
                tag = event[9]
                if tag is not None:
                    tags[tag] = (event[2], event[5])
                pools.append(event[1:9])
            elif code == POOL_LOST:
                lost.append(event[1:])
            elif code == SAMPLE:
                samples.append((run, *event[1:]))
            elif code == FLUSH:
                flushes.append(event[1])
            elif code == CLOSE:
                self.status = (event[1], event[2])
                self.dropped = max(self.dropped, event[3])
        for task_id in list(pending):  # submitted, not ended: a full row
            row_of(task_id)

        conn = self.conn
        conn.execute("BEGIN")
        try:
            fresh = []
            updates = []
            for task_id, row in tasks.items():
                final = row[_STATE] in FINAL_STATES
                if task_id in written or row[_FUNC] is None:
                    updates.append((*row, run, task_id))
                    if final:
                        written.discard(task_id)
                else:
                    fresh.append((run, task_id, *row))
                    if not final:
                        written.add(task_id)
            if plain:
                conn.executemany(
                    "INSERT OR REPLACE INTO task_plain (run_id, task_id, func, name, executor, submitted, queued, "
                    "dispatched, started, ended, try_no, pool, host, worker, pid, rss_kb, cpu) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    plain.values(),
                )
            if fresh:
                conn.executemany(
                    f"INSERT OR REPLACE INTO task_full (run_id, task_id, {TASK_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, coalesce(?, 'pending'), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
            if updates:
                conn.executemany(
                    "UPDATE task_full SET func = coalesce(?1, func), name = coalesce(?2, name), "
                    "executor = coalesce(?3, executor), "
                    f"state = CASE WHEN ?4 IS NULL OR (state IN {_FINAL_SQL} AND ?4 NOT IN {_FINAL_SQL}) "
                    "THEN state ELSE ?4 END, "
                    "submitted = coalesce(?5, submitted), started = CASE WHEN started IS NULL OR ?6 < started THEN ?6 ELSE started END, "
                    "ended = coalesce(?7, ended), tries = max(tries, ?8), exception = coalesce(?9, exception), "
                    "resources = coalesce(?10, resources), cache = coalesce(?11, cache), "
                    "cache_key = coalesce(?12, cache_key), cache_reason = coalesce(?13, cache_reason) "
                    "WHERE run_id = ?14 AND task_id = ?15",
                    updates,
                )
            if edges:
                conn.executemany("INSERT OR IGNORE INTO edge (run_id, child, parent) VALUES (?, ?, ?)", edges)
            if tries:
                conn.executemany(
                    "INSERT OR REPLACE INTO try_full (run_id, task_id, try_no, queued, dispatched, started, ended, "
                    "outcome, charged, exception, traceback, pool, host, worker, pid, rss_kb, cpu, exit_code, "
                    "stdout_tail, stderr_tail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    tries,
                )
            for executor, block_id, state, at, job_id, raw_state, reason in blocks:
                conn.execute(
                    "INSERT INTO block (run_id, executor, block_id, job_id, state, raw_state, reason, "
                    "submitted, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, executor, block_id) DO UPDATE SET "
                    "job_id = coalesce(excluded.job_id, job_id), state = excluded.state, "
                    "raw_state = excluded.raw_state, reason = excluded.reason, updated = excluded.updated",
                    (run, executor, block_id, job_id, state, raw_state, reason, at, at),
                )
                conn.execute(
                    "INSERT INTO block_state (run_id, executor, block_id, at, state, raw_state, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run, executor, block_id, at, state, raw_state, reason),
                )
            for executor, pool_id, at, block_id, host, pid, workers, shape in pools:
                conn.execute(
                    "INSERT OR REPLACE INTO pool (run_id, executor, pool_id, block_id, host, pid, workers, "
                    "shape, registered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run, executor, pool_id, block_id, host, pid, workers, shape, at),
                )
            for executor, pool_id, at, reason in lost:
                conn.execute(
                    "UPDATE pool SET lost = ?, reason = ? WHERE run_id = ? AND executor = ? AND pool_id = ?",
                    (at, reason, run, executor, pool_id),
                )
            if samples:
                conn.executemany("INSERT INTO sample VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", samples)
            conn.execute(*self._run_update())
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        return flushes

    def finish(self) -> None:
        """Mark the run ended: with the status the recorder sent, else ``interrupted``."""
        status, error = self.status or ("interrupted", "the executor's process ended without closing its record")
        self.conn.execute(
            "UPDATE run SET status = ?, ended = ?, error = coalesce(?, error), heartbeat = ? WHERE run_id = ?",
            (status, time.time(), error, time.time(), self.run_id),
        )


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(stream: BinaryIO) -> tuple[list[tuple[Any, ...]], bytes] | None:
    """One frame's events and its marshalled body, or None at the end of the input."""
    head = _read_exactly(stream, FRAME.size)
    if head is None:
        return None
    body = _read_exactly(stream, FRAME.unpack(head)[0])
    if body is None:
        return None
    events: list[tuple[Any, ...]] = marshal.loads(body)
    return events, body


class Backlog:
    """Frames received but not yet folded, oldest first, in an unnamed temporary file.

    The file is made at the first frame, beside the record (else in the temporary
    directory), and emptied each time the writer catches up; it never holds frames in memory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._file: BinaryIO | None = None
        self._read_at = 0
        self._write_at = 0
        self._arrived: deque[float] = deque()  # when each frame came (epoch seconds)

    def __len__(self) -> int:
        return len(self._arrived)

    @property
    def since(self) -> float | None:
        """When the oldest frame waiting came, or None when none waits."""
        return self._arrived[0] if self._arrived else None

    def append(self, body: bytes, at: float) -> None:
        """Keep one frame's body, which came at ``at``."""
        if self._file is None:
            try:
                self._file = tempfile.TemporaryFile(prefix="hpcfutures-record-", dir=self.directory)
            except OSError:
                self._file = tempfile.TemporaryFile(prefix="hpcfutures-record-")
        self._file.seek(self._write_at)
        self._file.write(FRAME.pack(len(body)))
        self._file.write(body)
        self._write_at += FRAME.size + len(body)
        self._arrived.append(at)

    def pop(self) -> bytes:
        """The oldest frame's body; the file is emptied when it was the last."""
        assert self._file is not None and self._arrived
        self._file.seek(self._read_at)
        size = FRAME.unpack(self._file.read(FRAME.size))[0]
        body = self._file.read(size)
        self._read_at += FRAME.size + size
        self._arrived.popleft()
        if not self._arrived:
            self._file.seek(0)
            self._file.truncate()
            self._read_at = self._write_at = 0
        return body

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ProcessLoad:
    """How busy the executor's process is: the share of a CPU it used between two looks.

    Frames tell how many tasks the executor handles, not what else its process does: a
    driver that runs several executors, or the user's own computation beside one, is busy
    while this run's frames are small.  The writer catches up only when this process is
    quiet too, so that its folding never competes with the executor's process for a CPU (on
    a small machine a hyperthread sibling or the caches are enough to slow it down).
    """

    def __init__(self, pid: int) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._error = psutil.Error
        self._last: tuple[float, float] | None = None  # (monotonic time, CPU seconds) at the last look

    def forget(self) -> None:
        """Drop the last look: the next share is measured from a new one."""
        self._last = None

    def busy(self) -> bool:
        """Whether the process used :data:`BUSY_SHARE` of a CPU or more since the last look,
        and True on the first look (nothing to compare yet); False once it has ended."""
        try:
            times = self._process.cpu_times()
        except self._error:
            return False
        now, spent = time.monotonic(), times.user + times.system
        last, self._last = self._last, (now, spent)
        if last is None:
            return True
        elapsed = now - last[0]
        return elapsed > 0 and (spent - last[1]) / elapsed >= BUSY_SHARE


def _readable(source: BinaryIO, timeout: float) -> bool:
    """Whether ``source`` has input (or has ended) within ``timeout`` seconds."""
    try:
        fd = source.fileno()
    except (AttributeError, OSError, ValueError):
        return True  # not a pipe (a test's buffer): it never waits
    return bool(select.select([fd], [], [], timeout)[0])


def serve(path: str, run_id: int, source: BinaryIO, answers: BinaryIO, *, executor_pid: int | None = None) -> None:
    """Read frames from ``source`` until it ends, writing them to run ``run_id`` of ``path``.

    While the executor is busy (a frame of :data:`BUSY_BYTES` or more came in the last
    :data:`CALM_SECONDS`), frames are not folded: the writer only adds their :meth:`~Folder.tally`
    to the run's counts, keeps them in a :class:`Backlog` and marks the run ``behind_since``.
    On a small machine even a writer of the lowest priority takes a share of the CPUs (a
    hyperthread sibling, caches), and folding costs several microseconds a task; so the
    task rows of a busy spell are written once it ends (or when a flush asks for them, or at
    the end of the run), in order, while the counts stay current.  With ``executor_pid``,
    the executor also counts as busy while that process uses :data:`BUSY_SHARE` of a CPU or
    more (:class:`ProcessLoad`), whatever its frames say.
    """
    load = ProcessLoad(executor_pid) if executor_pid is not None else None
    conn = connect(path)
    folder = Folder(conn, run_id)
    backlog = Backlog(os.path.dirname(os.path.abspath(path)))
    busy_until = 0.0  # time.monotonic() before which the executor counts as busy
    failed = False
    backlog_failed = False

    def write(events: list[tuple[Any, ...]], counted: bool) -> None:
        nonlocal failed
        try:
            flushes = folder.write(events, counted=counted)
        except Exception:  # noqa: BLE001 - log once, keep reading so the executor never blocks
            if not failed:
                logger.exception("run record %s: cannot write run %d", path, run_id)
                failed = True
            flushes = [event[1] for event in events if event[0] == FLUSH]
        for seq in flushes:
            answers.write(b"flushed %d\n" % seq)
            answers.flush()

    def catch_up(all_of_it: bool) -> None:
        """Fold deferred frames, :data:`DRAIN_BYTES` at a time (all of them if asked)."""
        while backlog:
            events: list[tuple[Any, ...]] = []
            size = 0
            while backlog and size < DRAIN_BYTES:
                body = backlog.pop()
                size += len(body)
                events.extend(marshal.loads(body))
            folder.behind_since = backlog.since
            write(events, True)
            if not all_of_it:
                return

    try:
        while True:
            if backlog:
                wait = busy_until - time.monotonic()
                if not _readable(source, max(wait, 0.0)):
                    if wait > 0:
                        continue
                    if load is not None and load.busy():
                        busy_until = time.monotonic() + SHARE_SECONDS
                    else:
                        catch_up(False)  # calm, and nothing came meanwhile
                    continue
            got = read_frame(source)
            if got is None:
                break
            events, body = got
            now = time.monotonic()
            if len(body) >= BUSY_BYTES:
                busy_until = now + CALM_SECONDS
                if load is not None:
                    load.forget()  # its share is measured afresh once the frames calm down
            urgent = any(event[0] == FLUSH or event[0] == CLOSE for event in events)
            if not backlog and (urgent or now >= busy_until):
                write(events, False)
                continue
            try:
                delta = folder.tally(events)
            except Exception:  # noqa: BLE001 - a decoder that cannot be loaded or cannot count
                delta = None  # folded at once, where write() logs what is wrong with it
            if delta is None:  # it cannot wait: what came before it goes first
                catch_up(True)
                write(events, False)
                continue
            try:
                backlog.append(body, time.time())
            except OSError as exc:  # no room for it: fold it now, after what came before it
                if not backlog_failed:
                    logger.warning("run record %s: cannot keep frames to write later (%s); writing them now", path, exc)
                    backlog_failed = True
                catch_up(True)
                write(events, False)
                continue
            if folder.behind_since is None:
                folder.behind_since = backlog.since
            folder.add_counts(delta)
            if urgent:
                catch_up(True)
    finally:
        try:
            try:
                catch_up(True)
            finally:
                folder.finish()
        finally:
            backlog.close()
            conn.close()


def main(argv: list[str]) -> int:
    """``python -m hpcfutures.monitor.writer FILE RUN_ID``: write a run's record from stdin."""
    if len(argv) != 2:
        print("usage: python -m hpcfutures.monitor.writer FILE RUN_ID (started by a Recorder)", file=sys.stderr)
        return 2
    try:  # run only on CPU time nobody else wants; where that policy is missing, at least last
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING, format="hpcfutures record writer: %(message)s")
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as source:
        serve(argv[0], int(argv[1]), source, sys.stdout.buffer, executor_pid=os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
