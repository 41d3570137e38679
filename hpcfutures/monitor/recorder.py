"""The Recorder: what an executor tells about its run, shipped to a writer process.

Executors call the Recorder's methods on their own hot paths, from any thread; each call
appends one tuple to a list and returns (``list.append`` is atomic: no lock).  A shipping
thread ("hpcfutures-record") takes the list every ``flush_interval`` seconds, marshals it
(about 0.2 µs an event) and writes it to the run's writer process
(:mod:`hpcfutures.monitor.writer`), which folds it into SQLite rows at the lowest CPU
priority.  So recording costs the executor's process an append per event and a share of
one marshal, not the several microseconds an SQLite row costs.

Task, try, block and pool events are never dropped.  Node samples are dropped, and
counted in ``run.dropped``, while more than :data:`BACKLOG_LIMIT` events wait to be shipped
(the writer fell behind).  If the writer process dies, the run goes on: the first error is
logged and kept in :attr:`Recorder.error`, and later events are discarded.  If the
executor's process dies, the writer writes what it was sent and marks the run interrupted.

Threads: the event list is appended by any thread and emptied from the front by the shipping thread,
which alone writes to the writer's pipe (``flush`` and ``close`` hand it their requests).
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import marshal
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, overload

from .. import __version__
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
)
from .schema import RecordError, connect

logger = logging.getLogger(__name__)

#: Longest traceback and output tail kept per try, in characters (the end is kept).
TEXT_LIMIT = 8000
#: Events waiting to be shipped beyond which samples are dropped.
BACKLOG_LIMIT = 1_000_000
#: Seconds :meth:`Recorder.close` waits for the writer to finish before leaving it.
CLOSE_TIMEOUT = 300.0

_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


class _Discarded(list):
    """The event list of a closed Recorder: events told after the end are dropped."""

    def append(self, _event: object) -> None:
        pass


@overload
def clip_tail(text: str) -> str: ...
@overload
def clip_tail(text: None) -> None: ...
def clip_tail(text: str | None) -> str | None:
    """``text`` cut to its last :data:`TEXT_LIMIT` characters, marked with an ellipsis."""
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return "…" + text[-(TEXT_LIMIT - 1) :]


def _json(value: Mapping[str, Any] | None) -> str | None:
    return json.dumps(dict(value), default=repr, sort_keys=True) if value else None


class Recorder:
    """One run in a run record: opened by an executor made with ``record=``, closed at its shutdown.

    Args:
        path: the record file (created, with its directory, if missing).
        family: the run family's name, shown by ``hpcfutures monitor ls``.
        kind: what records: ``"dataflow"``, ``"htex"``, ….
        label: the executor's label, if it has one.
        config: the executor's settings, stored as JSON (values that are not JSON are
            stored as their ``repr``).
        flush_interval: seconds between two shipments to the writer.

    Raises:
        RecordError: the file cannot be opened, is not a run record, or is newer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        family: str,
        kind: str,
        label: str | None = None,
        config: Mapping[str, Any] | None = None,
        flush_interval: float = 0.5,
    ) -> None:
        self.path = Path(path).absolute()
        self.family = family
        self.kind = kind
        self.flush_interval = flush_interval
        self.error: BaseException | None = None
        self.started = time.time()
        conn = connect(self.path)
        try:
            cursor = conn.execute(
                "INSERT INTO run (family, kind, label, status, started, heartbeat, host, pid, argv, "
                "version, config) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    family, kind, label, self.started, self.started, socket.gethostname(), os.getpid(),
                    json.dumps(sys.argv), __version__, _json(config) or "{}",
                ),
            )  # fmt: skip
            self.run_id: int = int(cursor.lastrowid or 0)
        finally:
            conn.close()
        self._events: list[tuple[Any, ...]] = []
        self._sources: list[Callable[[], Iterable[tuple[Any, ...]]]] = []
        self._dropped = 0
        self._flush_seq = itertools.count(1)
        self._answers: dict[int, threading.Event] = {}
        self._closing: tuple[str, str | None] | None = None
        self._closed = False
        self._wake = threading.Event()
        try:
            self._writer = subprocess.Popen(
                [sys.executable, "-m", "hpcfutures.monitor.writer", str(self.path), str(self.run_id)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as exc:
            raise RecordError(f"run record {self.path}: cannot start its writer process: {exc}") from exc
        assert self._writer.stdin is not None and self._writer.stdout is not None
        self._pipe = self._writer.stdin
        self._replies = self._writer.stdout
        self._thread = threading.Thread(target=self._ship_loop, name="hpcfutures-record", daemon=True)
        self._thread.start()
        self._reader = threading.Thread(target=self._read_replies, name="hpcfutures-record-replies", daemon=True)
        self._reader.start()
        _live.add(self)

    # -- events (any thread; each is one append) -------------------------------------------

    def submitted(
        self,
        task_id: int,
        func: str,
        at: float,
        *,
        name: str | None = None,
        executor: str | None = None,
        parents: Iterable[int] = (),
        resources: Mapping[str, Any] | None = None,
        state: str = "pending",
    ) -> None:
        """A task was submitted (``parents`` are the tasks it depends on)."""
        self._events.append((SUBMIT, task_id, func, name, executor, state, at, tuple(parents), _json(resources)))

    def state(self, task_id: int, state: str, at: float) -> None:
        """A task moved to ``queued`` or ``running`` (final states come with :meth:`ended`)."""
        self._events.append((STATE, task_id, state, at))

    def attempt(
        self,
        task_id: int,
        try_no: int,
        outcome: str,
        *,
        queued: float | None = None,
        dispatched: float | None = None,
        started: float | None = None,
        ended: float | None = None,
        charged: bool = True,
        exception: str | None = None,
        traceback: str | None = None,
        pool: str | int | None = None,
        host: str | None = None,
        worker: int | None = None,
        pid: int | None = None,
        rss_kb: int | None = None,
        cpu: float | None = None,
        exit_code: int | None = None,
        stdout_tail: str | None = None,
        stderr_tail: str | None = None,
    ) -> None:
        """One try of a task ended with ``outcome`` (one of :data:`~.schema.TRY_OUTCOMES`).

        ``charged`` is False for a try lost with its worker or pool and requeued by the
        executor, which does not count against the user's retries.  ``pool`` may be the
        ``tag`` given to :meth:`pool_registered`; the writer turns it into the pool's id and
        host.
        """
        self._events.append(
            (
                TRY, task_id, try_no, queued, dispatched, started, ended, outcome, int(charged),
                exception, clip_tail(traceback), pool, host, worker, pid, rss_kb, cpu, exit_code,
                clip_tail(stdout_tail), clip_tail(stderr_tail),
            )
        )  # fmt: skip

    def succeeded(
        self,
        task_id: int,
        try_no: int,
        ended: float,
        *,
        queued: float | None = None,
        dispatched: float | None = None,
        started: float | None = None,
        pool: str | int | None = None,
        host: str | None = None,
        worker: int | None = None,
        pid: int | None = None,
        rss_kb: int | None = None,
        cpu: float | None = None,
    ) -> None:
        """Try ``try_no`` of a task succeeded at ``ended`` and the task is done: what
        :meth:`attempt` with outcome ``ok`` and :meth:`ended` with ``done`` say, in one event.

        A task of which nothing else was told but its submit costs the writer one short row.
        """
        self._events.append(
            (PLAIN, task_id, try_no, queued, dispatched, started, ended, pool, host, worker, pid, rss_kb, cpu)
        )

    def ended(self, task_id: int, state: str, at: float, *, tries: int = 0, exception: str | None = None) -> None:
        """A task reached a final state (done, memo_done, failed, dep_fail or cancelled)."""
        self._events.append((END, task_id, state, at, tries, exception))

    def edges(self, child: int, parents: Iterable[int]) -> None:
        """``child`` depends on ``parents`` too, found after it was submitted (a join app's
        inner tasks, which its result waits for)."""
        self._events.append((EDGE, child, tuple(parents)))

    def cache(self, task_id: int, decision: str, key: str | None, reason: str | None = None) -> None:
        """How the cache answered a task: ``hit``, ``miss``, ``dedup`` (it followed a running
        twin), ``checkpoint`` (a stored result) or ``off``; ``reason`` says why, for a miss."""
        self._events.append((CACHE, task_id, decision, key, reason))

    def block(
        self,
        executor: str,
        block_id: str,
        state: str,
        at: float,
        *,
        job_id: str | None = None,
        raw_state: str | None = None,
        reason: str | None = None,
    ) -> None:
        """A batch job changed state (call on a change, not on every poll)."""
        self._events.append((BLOCK, executor, str(block_id), state, at, job_id, raw_state, reason))

    def pool_registered(
        self,
        executor: str,
        pool_id: str,
        at: float,
        *,
        block_id: str | None = None,
        host: str | None = None,
        pid: int | None = None,
        workers: int | None = None,
        shape: Mapping[str, Any] | None = None,
        tag: int | None = None,
    ) -> None:
        """A worker pool joined; ``tag`` is a number tries may name it by (see :meth:`attempt`)."""
        self._events.append(
            (POOL, executor, pool_id, at, None if block_id is None else str(block_id), host, pid, workers, _json(shape), tag)
        )

    def pool_lost(self, executor: str, pool_id: str, at: float, reason: str | None) -> None:
        """A worker pool was lost (or stopped), and why."""
        self._events.append((POOL_LOST, executor, pool_id, at, reason))

    def sample(
        self,
        at: float,
        *,
        executor: str | None = None,
        host: str | None = None,
        pool_id: str | None = None,
        cpu_percent: float | None = None,
        load1: float | None = None,
        mem_percent: float | None = None,
        rss_mb: float | None = None,
        busy: int | None = None,
        workers: int | None = None,
    ) -> None:
        """A node's load; dropped, and counted, while the writer has fallen behind."""
        if len(self._events) >= BACKLOG_LIMIT:
            self._dropped += 1
            return
        self._events.append((SAMPLE, at, executor, host, pool_id, cpu_percent, load1, mem_percent, rss_mb, busy, workers))

    def raw(self, decoder: str, payload: Any) -> None:
        """Events in an executor's own compact form: the writer calls ``decoder``
        (``"module:function"``) with ``payload`` (marshallable) for the events it stands for."""
        self._events.append((RAW, decoder, payload))

    def add_source(self, drain: Callable[[], Iterable[tuple[Any, ...]]]) -> None:
        """Ship the events ``drain()`` returns at every shipment, ahead of those told since
        the one before: an executor that keeps a compact log of its own (bytes that a
        :meth:`raw` decoder reads, say) has it shipped on time and written by :meth:`flush`.
        ``drain`` runs on the shipping thread and must be quick."""
        self._sources.append(drain)

    # -- shipping -----------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing
            self._ship()
            if closing is not None:
                break
        try:
            self._pipe.close()
        except OSError:
            pass

    def _ship(self) -> None:
        # Take what is there by slicing, never by swapping the list for a new one: a thread
        # may have looked up ``self._events`` before a swap and append to the old list after.
        pending = self._events
        count = len(pending)
        events = pending[:count]
        del pending[:count]
        for drain in self._sources:  # after the take: what they logged before those events is in
            try:
                events[:0] = drain()
            except Exception:  # noqa: BLE001 - a broken source loses its events, not the run's
                logger.exception("run record %s: a source of events failed", self.path)
        if self.error is not None:
            return
        if self._closing is not None:
            events.append((CLOSE, self._closing[0], self._closing[1], self._dropped))
        try:
            body = marshal.dumps(events)
            self._pipe.write(FRAME.pack(len(body)))
            self._pipe.write(body)
            self._pipe.flush()
        except (OSError, ValueError) as exc:  # the writer died; ValueError: an event was not marshallable
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            logger.error("run record %s: the writer cannot take events (%r); the run goes on unrecorded", self.path, exc)
            try:  # tell the writer, if it still listens, why the record stops here; then let it end
                body = marshal.dumps([(CLOSE, "interrupted", f"recording stopped: {exc!r}", self._dropped)])
                self._pipe.write(FRAME.pack(len(body)) + body)
                self._pipe.flush()
            except (OSError, ValueError):
                pass
            try:
                self._pipe.close()
            except OSError:
                pass
        for waiter in list(self._answers.values()):
            waiter.set()

    def _read_replies(self) -> None:
        for line in self._replies:
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"flushed":
                waiter = self._answers.pop(int(parts[1]), None)
                if waiter is not None:
                    waiter.set()
        # the writer ended: nobody will answer
        for waiter in list(self._answers.values()):
            waiter.set()

    def flush(self, timeout: float = 60.0) -> bool:
        """Have everything told so far written to the file; return whether it was in time.

        The writer does this on its own every ``flush_interval``; tests and the dashboard's
        "now" use this to read what was just told.
        """
        if self._closed or self.error is not None:
            return False
        seq = next(self._flush_seq)
        waiter = self._answers[seq] = threading.Event()
        self._events.append((FLUSH, seq))
        self._wake.set()
        return waiter.wait(timeout) and self.error is None

    # -- the end ----------------------------------------------------------------------------

    def close(self, status: str = "done", error: str | None = None) -> None:
        """Ship what is left, mark the run ``status`` (done, failed, interrupted), and wait
        for the writer to finish (at most :data:`CLOSE_TIMEOUT` seconds).

        Safe to call more than once, and from ``atexit``.  Events told after it are dropped.
        """
        if self._closed:
            return
        self._closed = True
        self._closing = (status, error)
        self._wake.set()
        self._thread.join(CLOSE_TIMEOUT)
        try:
            self._writer.wait(5.0)
        except subprocess.TimeoutExpired:
            logger.info("run record %s: waiting for its writer to write the last events", self.path)
            try:
                self._writer.wait(CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("run record %s: its writer did not finish; stopping it", self.path)
                self._writer.kill()
                self._writer.wait()
        self._reader.join(5.0)
        self._replies.close()
        # An executor that outlives the run (one lent to a recording DataflowExecutor) may
        # still tell of its blocks: drop that, rather than keep it for nobody.
        self._events = _Discarded()
        _live.discard(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


def open_recorder(
    record: Any, *, kind: str, label: str | None = None, config: Mapping[str, Any] | None = None
) -> Recorder | None:
    """The Recorder an executor's ``record=`` argument asks for, or None when recording is off.

    See :mod:`hpcfutures.monitor.location` for what ``record`` may be.
    """
    from .location import resolve_record

    where = resolve_record(record)
    if where is None:
        return None
    path, family = where
    return Recorder(path, family=family, kind=kind, label=label, config=config)


@atexit.register
def _close_all() -> None:
    for recorder in list(_live):
        recorder.close("interrupted", "the process exited without shutting its executor down")
