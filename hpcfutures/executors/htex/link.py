"""DriverLink: the driver's end of the link to the interchange, and the I/O thread that serves it.

The executor's caller threads hand the link work (:meth:`DriverLink.enqueue` a task,
:meth:`DriverLink.control` an order) and wake its one I/O thread, which sends whatever has
queued as one batch, resolves futures from result batches, and answers cancels.  What a
pool or block event means for the executor, and how its processes are stopped, the link
asks of its :class:`LinkHost` (the executor).

Who owns what:

- under ``lock`` (the executor's, which it also holds while changing its lifecycle):
  ``outbox``, ``first_arranged``, ``wake_pending``, ``next_id``, ``taken_upto``, ``skip``,
  ``controls``, ``closed``, adding to ``pending``, the function changes of ``recording``,
  and the express lane's idle connections, tasks out and waiting line;
- the I/O thread alone: resolving ``pending``, ``started_ids``, ``cancel_requests``, the stop
  flags, the pipes to the interchange, ``pool_names`` (read by any thread) and the rest of
  ``recording``.

When the executor records its run, ``recording`` (set before the I/O thread starts) is told
whole batches as they pass (see :mod:`.recording`); when it does not, each hot path pays
one test of it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import ExecutorError, ExecutorShutdownError, SerializationError, WorkerLostError
from ...exits import exit_signal
from ...leanfuture import LeanFuture
from ...serialize import loads, loads_exception
from . import protocol as P
from .express import DEFAULT_RESOURCES, MAX_EXPRESS_BYTES, Connection, ExpressLane
from .lifecycle import Lifecycle
from .pipes import Receiver, Sender, watch_room

if TYPE_CHECKING:
    from ...monitor.execution import Execution
    from ...resources import TaskOptions
    from .recording import TaskRecording

logger = logging.getLogger("hpcfutures.executors.htex.executor")  # one logger for the executor

BATCH_LIMIT = 256
HOUSEKEEPING_SECONDS = 0.2
CANCEL_TIMEOUT = 5.0

#: (meta, main pickle, out-of-band frames) of a task waiting for the I/O thread.
Outgoing = tuple[bytes, Any, list[Any]]


def unlink_spilled(future: Future[Any]) -> None:
    """Remove the shared-memory files that held a task's large arguments."""
    paths = getattr(future, "spilled", None)
    if paths:
        future.spilled = None  # type: ignore[attr-defined]
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class HtexFuture(LeanFuture):
    """A Future whose ``cancel()`` reaches wherever its task waits.

    ``cancel()`` returns True for a task no worker has begun, wherever it is queued (driver,
    interchange, pool, or a worker's prefetched batch), and such a task never runs.  A task
    counts as started (``running()`` is True) once a worker has begun it: pools report the
    tasks their workers claim, batched with their results.

    Once done, :attr:`execution` says where and how the task ran.
    """

    spilled: list[str] | None = None  # shared-memory files holding large arguments
    #: Its result's RESULT_META fields (:data:`.protocol.RESULT_META`), once it came: what
    #: :attr:`execution` is built from, for a run record that packs them as they are.  (A
    #: plain attribute, set by the driver's link, because a property costs a call to read.)
    result_meta: tuple[Any, ...] | None = None
    _execution: Execution | None = None  # built from result_meta on first use

    def __init__(self, link: DriverLink, task_id: int):
        super().__init__()
        self.task_id = task_id
        self._link = link

    def cancel(self) -> bool:
        """Cancel the task unless a worker has begun it; return whether it was cancelled."""
        if self.done():
            return self.cancelled()
        if self._link.is_started(self.task_id):
            return False
        return self._link.cancel([self])

    def running(self) -> bool:
        """Return True if a worker has begun the task and it has not finished."""
        return not self.done() and self._link.is_started(self.task_id)

    @property
    def execution(self) -> Execution | None:
        """Where and how the task ran (times, pool, host, worker, pid, CPU, peak RSS), once
        its result came; None before, and for a task cancelled or failed in the driver.

        CPU time and peak RSS are measured only while the run is recorded.
        """
        built = self._execution
        if built is not None:
            return built
        meta = self.result_meta
        if meta is None:
            return None
        from .recording import execution_from

        built = self._execution = execution_from(meta, self._link.pool_names)
        return built

    def _cancel_locally(self) -> bool:
        if LeanFuture.cancel(self):
            self.set_running_or_notify_cancel()  # wait() and as_completed() see it at once
            return True
        return self.cancelled()


class LinkHost(Protocol):
    """What the link asks of the executor it serves (all on the I/O thread)."""

    label: str

    def _on_event(self, event: dict[str, Any], frames: list[memoryview]) -> None:
        """A pool or block event from the interchange."""

    def _on_block_idle(self, idle: dict[str, float]) -> None:
        """How long each block's pools have been idle, from the interchange's heartbeat."""

    def _check_interchange(self) -> None:
        """Break the executor if the interchange process has died."""

    def _interchange_ended(self) -> None:
        """The pipes to the interchange closed: find out how it ended."""

    def _break(self, error: BaseException) -> None:
        """Break the executor with ``error``."""

    def _stop_processes(self, kill: bool) -> None:
        """The interchange was told to stop: wait for it (not long if ``kill``), stop the blocks."""

    def _release(self) -> None:
        """The link is closed: release everything else the executor holds."""


class DriverLink:
    """The driver's side of the interchange link; see the module docstring."""

    def __init__(self, host: LinkHost, lock: threading.Lock, life: Lifecycle, to_interchange: Sender, from_interchange: Receiver):
        self.host = host
        self.lock = lock
        self.life = life
        self.to_interchange = to_interchange
        self.from_interchange = from_interchange
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Under lock:
        self.outbox: list[Outgoing] = []
        self.wake_pending = False
        self.next_id = itertools.count(1)
        self.taken_upto = 0  # the I/O thread has taken every task with an id up to this
        self.skip: set[int] = set()  # cancelled before the I/O thread took them
        # Where in the outbox the first task a pool must arrange for (a walltime, resources)
        # is, or None: such a task, and all behind it, wait there while an express task is
        # out (see :meth:`take_outbox`).
        self.first_arranged: int | None = None
        self.controls: list[tuple[str, Any]] = []
        self.closed = False  # the I/O thread takes no more controls (it is ending)
        self.pending: dict[int, HtexFuture] = {}
        #: The run record's view of the tasks, when the executor records them.
        self.recording: TaskRecording | None = None
        #: Pools by the tag their results carry: (pool id, host).  Written by the I/O thread.
        self.pool_names: dict[int, tuple[str, str]] = {}
        # The I/O thread's alone:
        # Tasks a worker has begun and not finished: running() asks here, so that marking a
        # task started costs a set insertion instead of a state change on its future.
        self.started_ids: set[int] = set()
        # Cancel requests sent to the interchange, waiting for its answer.
        self.cancel_requests: dict[bytes, tuple[threading.Event, list[HtexFuture]]] = {}
        self.cancel_counter = itertools.count(1)
        self.stop_requested = False
        self.stop_when_idle = False
        self.kill_on_stop = False
        self.ident: int | None = None  # the I/O thread's
        #: The express lane to local workers, if the executor has one (set before the I/O
        #: thread starts), and how often a task may be lost before it fails.
        self.express: ExpressLane | None = None
        self.lost_task_retries = 2
        self.poller: Any = None  # the I/O thread's, once it runs
        # Blocks to drain once the express tasks their workers run have ended.
        self.drains_waiting: list[str] = []

    # -- for the executor's threads ---------------------------------------------------------------

    def enqueue(
        self,
        priority: int,
        walltime: float,
        frames: list[Any],
        resources: tuple[int, ...] = (1, 0, 0, 0, 1),
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        options: TaskOptions | None = None,
    ) -> HtexFuture:
        """Queue a serialized call for the I/O thread and return its future.

        ``fn``, ``args`` and ``options`` are the call's, for the run record.

        Raises:
            RuntimeError, BrokenExecutorError: the executor's lifecycle refuses new tasks.
        """
        with self.lock:
            self.life.check_submit()
            task_id = next(self.next_id)
            future = HtexFuture(self, task_id)
            self.pending[task_id] = future
            recording = self.recording
            if recording is not None and (fn is not recording.fn or options is not recording.options):
                recording.note_submit(task_id, fn, args, options)
            outgoing = (
                P.TASK_META.pack(task_id, priority, walltime, 0, *resources, 0, len(frames[0]), len(frames) - 1),
                frames[0],
                frames[1:],
            )
            express = self.express
            plain = not walltime and resources == DEFAULT_RESOURCES
            if express is not None:
                if (
                    plain
                    and express.open_to(self.pending, priority)
                    and sum(memoryview(f).nbytes for f in frames) <= MAX_EXPRESS_BYTES
                ):
                    if not express.waiting and express.send(task_id, outgoing):
                        self.taken(task_id)
                        self.wake_for_unflushed(express)
                        return future
                    if express.may_wait():
                        express.waiting.append((task_id, outgoing))
                        express.waiting_priority = priority
                        return future
                if express.waiting:  # they were submitted first: they go first, the usual way
                    self.release_waiting(express)
            if not plain and self.first_arranged is None:
                self.first_arranged = len(self.outbox)
            self.outbox.append(outgoing)
            if not self.wake_pending:
                self.wake_pending = True
                # The I/O thread itself (a done-callback submitting a dependent task) looks at
                # the outbox before it next waits; anyone else must wake it.
                if threading.get_ident() != self.ident:
                    os.write(self.wake_w, b"\0")
        return future

    def taken(self, task_id: int) -> None:
        """Task ``task_id`` left the driver on the lane (or, cancelled, its turn passed): every
        task up to it is taken; tell the run record so (under the lock)."""
        first, self.taken_upto = self.taken_upto + 1, task_id
        recording = self.recording
        if recording is not None:
            recording.submitted(first, task_id, recording.take_changes())

    def wake_for_unflushed(self, express: ExpressLane) -> None:
        """Wake the I/O thread to write the rest of an express task the socket took only
        part of, unless the caller is that thread (under the lock)."""
        if express.unflushed and not self.wake_pending and threading.get_ident() != self.ident:
            self.wake_pending = True
            os.write(self.wake_w, b"\0")

    def release_waiting(self, express: ExpressLane) -> None:
        """Put the tasks waiting for the lane at the head of the outbox, in order (under the
        lock; the caller wakes the I/O thread or is it)."""
        released = [outgoing for _task_id, outgoing in express.waiting]
        express.waiting.clear()
        express.waiting_cancelled = 0  # the outbox drops them (they are in skip)
        self.outbox[:0] = released
        if self.first_arranged is not None:
            self.first_arranged += len(released)

    def pump_lane(self, express: ExpressLane) -> None:
        """Hand the tasks waiting for the lane to its workers while they have room, in order;
        if no room can come (no express task is out), send them the usual way (under the
        lock, on the I/O thread or a submitting thread)."""
        waiting = express.waiting
        recording = self.recording
        while waiting:
            task_id, outgoing = waiting[0]
            if task_id in self.skip:  # cancelled while it waited
                self.skip.discard(task_id)
                waiting.popleft()
                express.waiting_cancelled -= 1
                self.taken(task_id)
                if recording is not None:
                    recording.ended([task_id], "cancelled")
                continue
            if not express.send(task_id, outgoing):
                break
            waiting.popleft()
            self.taken(task_id)
        if waiting and not express.inflight:  # no room, and no result will make any
            self.release_waiting(express)

    def is_started(self, task_id: int) -> bool:
        """Whether a worker has begun task ``task_id``: as far as the pools have said, or, on
        the express lane, as its worker's claims say."""
        if task_id in self.started_ids:
            return True
        express = self.express
        return express is not None and express.started(task_id)

    def on_io_thread(self) -> bool:
        """Whether the caller runs on the I/O thread (in a done-callback, say)."""
        return threading.get_ident() == self.ident

    def cancel(self, futures: list[HtexFuture], everything: bool = False) -> bool:
        """Cancel what can be cancelled of ``futures`` (and, if ``everything``, of every task
        not begun); return whether all of ``futures`` were."""
        remote: list[HtexFuture] = []
        with self.lock:
            express = self.express
            for fut in futures:
                if fut.task_id > self.taken_upto:
                    self.skip.add(fut.task_id)
                    if (
                        self.pending.pop(fut.task_id, None) is not None
                        and express is not None
                        and express.waiting
                        and express.is_waiting(fut.task_id)
                    ):
                        express.waiting_cancelled += 1
                    fut._cancel_locally()
                elif express is not None and fut.task_id in express.inflight:
                    if self.cancel_express(express, fut):
                        continue
                elif not fut.done():
                    remote.append(fut)
        if not remote and not everything:
            return all(f.cancelled() for f in futures)
        done = threading.Event()
        self.control("cancel", (remote, done, everything))
        if not self.on_io_thread():
            done.wait(CANCEL_TIMEOUT)
        return all(f.cancelled() for f in futures)

    def cancel_express(self, express: ExpressLane, fut: HtexFuture) -> bool:
        """Cancel a task sent on the express lane if its worker has not begun it (under the
        lock); return whether it was."""
        conn = express.cancel(fut.task_id)
        if conn is None:
            return False
        self.pending.pop(fut.task_id, None)
        fut._cancel_locally()
        if self.recording is not None:
            self.recording.ended([fut.task_id], "cancelled")
        if not conn.tasks and conn.block not in express.draining and conn not in express.broken:
            express.idle.append(conn)  # its worker skips the task and waits for the next
        if express.waiting:
            self.pump_lane(express)
        self.wake_for_unflushed(express)
        return True

    def control(self, kind: str, payload: Any) -> None:
        """Hand an order to the I/O thread: ``cancel``, ``drain``, ``stop`` or ``fail``.

        Once the I/O thread is ending it takes no more: a cancel is then released at once,
        and the others are moot (its teardown fails every future still pending).
        """
        with self.lock:
            if not self.closed:
                self.controls.append((kind, payload))
                if not self.wake_pending:
                    self.wake_pending = True
                    os.write(self.wake_w, b"\0")
                return
        if kind == "cancel":
            payload[1].set()

    def close_wake_pipe(self) -> None:
        """Close the pipe that wakes the I/O thread (under the lock: :meth:`control` writes it)."""
        with self.lock:
            os.close(self.wake_r)
            os.close(self.wake_w)

    # -- the I/O thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """The I/O thread: serve the link until told to stop or the interchange is lost."""
        sock = self.to_interchange
        receiver = self.from_interchange
        poller = self.poller = select.poll()
        poller.register(receiver.fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        express = self.express
        if express is not None:
            poller.register(express.listener.fileno(), select.POLLIN)
        next_check = time.monotonic() + HOUSEKEEPING_SECONDS
        self.ident = threading.get_ident()
        try:
            while True:
                watch_room(poller, sock.fd, sock, pollout=select.POLLOUT)
                timeout = 0 if self.outbox and not self.holding() else max(0.0, next_check - time.monotonic()) * 1000
                events = poller.poll(int(timeout))
                if events:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    if sock.watched:
                        self.write(sock.flush)
                    if express is not None:
                        self.serve_express(express, poller, events)
                with self.lock:
                    outbox = self.take_outbox()
                    controls, self.controls = self.controls, []
                    self.wake_pending = False
                    if outbox:
                        last = P.TASK_META.unpack(outbox[-1][0])[0]
                        if last > self.taken_upto:  # (an express task may have had a later id)
                            first, self.taken_upto = self.taken_upto + 1, last
                            if self.recording is not None:
                                self.recording.submitted(first, last, self.recording.take_changes())
                    skip = self.skip
                    if skip:  # cancels of tasks held back or waiting for the lane are for their turn
                        self.skip = {task_id for task_id in skip if task_id > self.taken_upto}
                        skip = skip - self.skip
                if outbox:
                    if skip and self.recording is not None:
                        self.recording.ended(sorted(skip), "cancelled")
                    self.send_tasks(outbox, skip)
                for kind, payload in controls:
                    self.obey(kind, payload)
                if express is not None and express.unflushed:  # the lane's pump wrote part of a task
                    self.flush_express(express, poller)
                for message in receiver.read():
                    self.on_message(message)
                if receiver.closed:
                    self.host._interchange_ended()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + HOUSEKEEPING_SECONDS
                    self.host._check_interchange()
                    if express is not None and express.orphans:
                        self.settle_orphans(express, time.monotonic())
                if self.stop_requested or (self.stop_when_idle and not self.pending) or self.life.interchange_lost:
                    break
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave futures hanging
            logger.exception("the I/O thread of %s failed", self.host.label)
            self.host._break(ExecutorError(f"the executor's I/O thread failed: {exc!r}"))
        finally:
            self.teardown()

    def holding(self) -> bool:
        """Whether the outbox's head waits for the express tasks out to end (a racy read that
        only decides whether the I/O thread sleeps: an express result wakes it)."""
        return self.first_arranged == 0 and self.express is not None and bool(self.express.inflight)

    def take_outbox(self) -> list[Outgoing]:
        """Take the tasks to send now from the outbox (under the lock).

        A task a pool must arrange for (a walltime, resources) is not sent while an express
        task is out, nor is anything behind it: the pool manager learns that a worker runs an
        express task only once that worker has read it, and meanwhile it would count the
        worker's core as free, pin a task with resources over it, or start a walltime clock
        for a task that waits behind the express one.  Express tasks are sent only when
        nothing else is out, and the tasks waiting for the lane go the usual way ahead of
        this one, so the wait is for the few tasks already on the workers' connections.
        """
        outbox = self.outbox
        cut = self.first_arranged
        if cut is not None and self.express is not None and self.express.inflight:
            self.outbox = outbox[cut:]
            self.first_arranged = 0
            return outbox[:cut]
        self.outbox = []
        self.first_arranged = None
        return outbox

    def serve_express(self, express: ExpressLane, poller: Any, events: list[tuple[int, int]]) -> None:
        """Accept workers on the express socket, and read their hellos and results (I/O thread)."""
        connections = express.connections
        if express.unflushed:
            self.flush_express(express, poller)
        for fd, event in events:
            writable = connections.get(fd)
            if writable is not None and event & select.POLLOUT:
                with self.lock:
                    try:
                        writable.sender.flush()
                    except OSError:
                        pass
                    watch_room(poller, fd, writable.sender, pollout=select.POLLOUT, base=select.POLLIN)
        for fd, _event in events:
            if fd == express.listener.fileno():
                for accepted in express.accept():
                    poller.register(accepted.fd, select.POLLIN)
                continue
            found = connections.get(fd)
            if found is None:
                continue
            conn = found
            for msg in conn.receiver.read():
                if not conn.known:
                    if not express.hello(conn, msg):
                        self.drop_express(express, poller, conn, "did not present this run's token")
                        return
                    with self.lock:
                        if conn.block not in express.draining:
                            express.idle.append(conn)
                            if express.waiting:
                                self.pump_lane(express)
                    continue
                results = express.result_of(conn, msg)
                if results is None:
                    self.drop_express(express, poller, conn, "sent what is not its task's result")
                    return
                with self.lock:
                    express.ended(conn)
                    express.last_busy[conn.block] = time.monotonic()
                    if not conn.tasks and conn.block not in express.draining:
                        express.idle.append(conn)
                    if express.waiting:
                        self.pump_lane(express)
                self.on_results(results)
                if self.drains_waiting:
                    self.send_waiting_drains(express)
            if conn.receiver.closed:
                why = conn.receiver.error or "closed its connection"
                self.drop_express(express, poller, conn, why)

    def flush_express(self, express: ExpressLane, poller: Any) -> None:
        """Write on what the submitting threads (or the lane's pump) left partly written, and
        watch those connections for room for the rest (I/O thread)."""
        with self.lock:
            unflushed, express.unflushed = express.unflushed, []
            for conn in unflushed:
                try:
                    conn.sender.flush()
                except OSError:
                    pass  # it is gone: its end is read when it is next polled
                watch_room(poller, conn.fd, conn.sender, pollout=select.POLLOUT, base=select.POLLIN)

    def send_waiting_drains(self, express: ExpressLane) -> None:
        """Drain the blocks that waited for their express tasks to end, now that they have."""
        with self.lock:
            busy = {conn.block for conn in express.inflight.values()}
        waiting, self.drains_waiting = self.drains_waiting, []
        for block in waiting:
            if block in busy:
                self.drains_waiting.append(block)
            else:
                self.write(self.to_interchange.send, [P.DRAIN, block.encode()])

    def drop_express(self, express: ExpressLane, poller: Any, conn: Connection, why: str) -> None:
        """Stop using an express connection; a task it ran is lost (see :meth:`settle_orphans`)."""
        if conn.known and not self.stop_requested:
            logger.debug("express lane: %s %s", conn.describe(), why)
        elif not conn.known:
            # Any local process of the user may connect: warn once, not once per connection.
            express.refused += 1
            log = logger.warning if express.refused == 1 else logger.debug
            log("express lane: dropped a connection that %s (%d so far)", why, express.refused)
        try:
            poller.unregister(conn.fd)
        except (KeyError, ValueError):
            pass
        with self.lock:
            if conn in express.idle:
                express.idle.remove(conn)
            express.inflight.pop(conn.task, None)
            never_begun = express.lost(conn, why)
            if express.waiting:
                self.pump_lane(express)
        if never_begun:  # queued behind the lost task: requeued as they were, not charged
            self.send_tasks(never_begun, set())
        self.settle_orphans(express, time.monotonic())
        if self.drains_waiting:
            self.send_waiting_drains(express)

    def express_worker_lost(self, news: dict[str, Any]) -> None:
        """A pool's word that a worker died under an express task (I/O thread)."""
        express = self.express
        task_id = news.get("task")
        if express is None or task_id not in self.pending:
            return
        express.evidence[task_id] = news
        conn = express.inflight.get(task_id)
        if conn is not None:  # its connection is still open (a process the task forked holds it)
            self.drop_express(express, self.poller, conn, "died under it")
        else:
            self.settle_orphans(express, time.monotonic())

    def settle_orphans(self, express: ExpressLane, now: float) -> None:
        """Requeue or fail each express task whose worker is gone, once the pool said how it
        ended or it waited long enough for that word (I/O thread)."""
        for task_id, (outgoing, deadline, why) in list(express.orphans.items()):
            news = express.evidence.pop(task_id, None)
            if news is None and now < deadline:
                continue
            del express.orphans[task_id]
            future = self.pending.get(task_id)
            if future is None or future.done():
                continue
            meta, main, oob = outgoing
            fields = P.TASK_META.unpack(meta)
            lost = fields[P.T_LOST] + 1
            if lost <= self.lost_task_retries:
                meta = P.TASK_META.pack(*fields[: P.T_LOST], lost, *fields[P.T_LOST + 1 :])
                self.send_tasks([(meta, main, oob)], set())
                continue
            code = news.get("exit_code") if news is not None else None
            reason = f"its {news['reason']}" if news is not None else f"its express {why}"
            error = WorkerLostError(
                f"task {task_id}: {reason}, {lost} time(s); it is not retried again",
                exit_code=code,
                signal_name=exit_signal(code),
            )
            self.pending.pop(task_id, None)
            if self.recording is not None:
                self.recording.ended([task_id], "failed", f"{type(error).__name__}: {error}")
            try:
                future.set_exception(error)
            except InvalidStateError:
                pass
        if not express.orphans:
            express.evidence.clear()

    def obey(self, kind: str, payload: Any) -> None:
        """Carry out one order from :meth:`control`."""
        if kind == "cancel":
            self.send_cancel(*payload)
        elif kind == "drain":
            express = self.express
            if express is not None:
                block = str(payload)
                with self.lock:  # no new express task for its workers
                    express.draining.add(block)
                    express.idle[:] = [conn for conn in express.idle if conn.block != block]
                    running = any(conn.block == block for conn in express.inflight.values())
                    if express.waiting:
                        self.pump_lane(express)
                if running:  # its pools would stop under them: drain once they have ended
                    self.drains_waiting.append(block)
                    return
            self.write(self.to_interchange.send, [P.DRAIN, str(payload).encode()])
        elif kind == "stop":
            kill, when_idle = payload
            self.kill_on_stop = self.kill_on_stop or kill
            if when_idle:
                self.stop_when_idle = True
            else:
                self.stop_requested = True
        elif kind == "fail":
            self.fail_all(payload)

    def write(self, write: Callable[..., Any], *args: Any) -> None:
        """Write to the interchange; if it has gone, find out how it ended."""
        try:
            write(*args)
        except OSError:  # the interchange is gone; housekeeping reports how it ended
            self.host._interchange_ended()

    def send_tasks(self, outbox: list[Outgoing], skip: set[int]) -> None:
        if skip:
            outbox = [item for item in outbox if P.TASK_META.unpack(item[0])[0] not in skip]
        for start in range(0, len(outbox), BATCH_LIMIT):
            batch = outbox[start : start + BATCH_LIMIT]
            extra: list[Any] = []
            for _meta, _main, oob in batch:
                if oob:
                    extra.extend(oob)
            self.write(
                self.to_interchange.send,
                [P.TASKS, b"".join([item[0] for item in batch]), b"".join([item[1] for item in batch]), *extra],
            )

    def send_cancel(self, futures: list[HtexFuture], done: threading.Event, everything: bool) -> None:
        request = b"%d" % next(self.cancel_counter)
        self.cancel_requests[request] = (done, futures)
        if everything:
            self.write(self.to_interchange.send, [P.CANCEL_QUEUED, request])
        else:
            self.write(self.to_interchange.send, [P.CANCEL, request, P.pack_ids([f.task_id for f in futures])])

    def on_message(self, msg: list[memoryview]) -> None:
        kind = msg[0].tobytes()
        if kind == P.RESULTS:
            self.on_results(msg)
        elif kind == P.STARTED:
            ids = msg[1].tobytes()
            self.started_ids.update(P.unpack_ids(ids))
            if self.recording is not None:
                self.recording.results(ids, b"", None)
        elif kind == P.CANCEL_REPLY:
            waiting = self.cancel_requests.pop(msg[1].tobytes(), None)
            cancelled = P.unpack_ids(msg[2].tobytes())
            for task_id in cancelled:
                fut = self.pending.pop(task_id, None)
                if fut is not None:
                    fut._cancel_locally()
            if cancelled and self.recording is not None:
                self.recording.ended(cancelled, "cancelled")
            if waiting is not None:
                waiting[0].set()
        elif kind == P.EVENT:
            self.host._on_event(json.loads(msg[1].tobytes()), msg[2:])
        elif kind == P.HEARTBEAT and len(msg) > 1:
            self.host._on_block_idle(json.loads(msg[1].tobytes()))

    def on_results(self, msg: list[memoryview]) -> None:
        pending = self.pending
        started = self.started_ids
        recording = self.recording
        failures: list[tuple[int, BaseException]] | None = [] if recording is not None else None
        if len(msg[1]):
            started.update(P.unpack_ids(msg[1].tobytes()))  # before the results discard them
        extra = msg[4:]
        blob = msg[3]
        offset = 0
        frame = 0
        for fields in P.RESULT_META.iter_unpack(msg[2]):
            task_id, status, _e, _d, _s, _c, _p, _pid, _r, _w, _l, size, count = fields
            main = blob[offset : offset + size]
            offset += size
            if count:
                buffers = [main, *extra[frame : frame + count]]
                frame += count
            else:
                buffers = [main]
            fut = pending.pop(task_id, None)
            if fut is None:
                continue
            fut.result_meta = fields
            started.discard(task_id)
            if fut.spilled:
                unlink_spilled(fut)
            try:
                if status == P.OK:
                    try:
                        value = pickle.loads(main) if not count else loads(buffers)
                    except Exception as exc:  # noqa: BLE001
                        error: BaseException = SerializationError(
                            f"the result of task {task_id} could not be loaded: {exc!r}"
                        )
                        fut.set_exception(error)
                        if failures is not None:
                            failures.append((task_id, error))
                    else:
                        fut.set_result(value)
                elif status == P.ERROR or status == P.FAILED:
                    error = loads_exception(buffers) if status == P.ERROR else loads(buffers)[0]
                    if failures is not None:
                        failures.append((task_id, error))
                    fut.set_exception(error)
                else:
                    fut._cancel_locally()
            except InvalidStateError:  # cancelled meanwhile
                pass
        if recording is not None:
            recording.results(msg[1].tobytes(), msg[2].tobytes(), failures)

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending task with ``error`` and release every cancel waiting (I/O thread only)."""
        recording = self.recording
        with self.lock:
            pending, self.pending = self.pending, {}
            self.outbox = []
            self.first_arranged = None
            if self.express is not None:
                self.express.waiting.clear()
                self.express.waiting_cancelled = 0
            first = self.taken_upto + 1
            self.taken_upto = max(self.taken_upto, max(pending, default=0))
            if recording is not None and self.taken_upto >= first:  # tasks never sent: submitted all the same
                recording.submitted(first, self.taken_upto, recording.take_changes())
        if recording is not None and pending:
            recording.ended(sorted(pending), "failed", f"{type(error).__name__}: {error}")
        self.started_ids = set()
        for fut in pending.values():
            try:
                fut.set_exception(error)
            except InvalidStateError:
                pass
        self.release_cancels()

    def release_cancels(self) -> None:
        """Let every cancel that waits for an answer go: none will come (I/O thread only)."""
        for done, _futures in self.cancel_requests.values():
            done.set()
        self.cancel_requests.clear()

    def stop_taking_controls(self) -> None:
        """The I/O thread is ending: take no more controls; release every cancel still waiting.

        No answer to a cancel can come any more, so none waits ``CANCEL_TIMEOUT`` for one; its
        futures simply were not cancelled.
        """
        with self.lock:
            self.closed = True
            controls, self.controls = self.controls, []
        for kind, payload in controls:
            if kind == "cancel":
                payload[1].set()
            elif kind == "fail":
                self.fail_all(payload)
        self.release_cancels()

    def teardown(self) -> None:
        """After the loop: stop the interchange and the blocks, fail what is left, close the link."""
        self.stop_taking_controls()
        try:
            try:
                self.to_interchange.send([P.SHUTDOWN])
            except OSError:
                pass
            self.host._stop_processes(self.kill_on_stop)
            self.fail_all(ExecutorShutdownError("the executor shut down before this task finished"))
        finally:
            if self.express is not None:
                with self.lock:
                    self.express.close()
                    self.express.inflight.clear()
            for fd in (self.to_interchange.fd, self.from_interchange.fd):
                os.close(fd)
            self.close_wake_pipe()
            self.host._release()
