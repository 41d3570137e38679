"""A worker process: runs the tasks its pool manager hands it, one after another.

Workers are forked by the pool manager and talk to it over a pair of pipes (see
:mod:`.pipes`).  Each takes tasks in small batches.  Before it begins a task it claims it on
the board it shares with its manager (see :mod:`.board`), so the manager knows which tasks
began and can cancel the others; each result waits in the board's journal, so a worker that
dies loses none.  Results go to the manager in batches: at once when the worker has nothing
else queued, otherwise when a few milliseconds have passed, so a lone task comes back with
no delay while a stream of short tasks costs few messages.

Each result's RESULT_META says where and how its task ran, for the run record and
``HtexFuture.execution``: when the worker received it and began it, this worker's pid, rank
and pool, and how often it was lost before.  When the driver records, the worker also measures
CPU time and its own peak RSS, where that is worth what it costs.  Reading the CPU clock
(``time.process_time``) is a system call of about 0.7 µs, as much as a tenth of what a no-op
task costs a worker, so it is read at the end of a task that ran :data:`CPU_TASK_SECONDS` or
more, which gets as CPU time what the worker spent since the reading before (loading the
task, running it, pickling its result, and at most :data:`CPU_EVERY_SECONDS` of shorter tasks
before it), and after a shorter task only if that long has passed since the last reading;
a shorter task's CPU time is not measured.  ``getrusage`` costs twice that, so the peak RSS is
read only after a task that ran :data:`RSS_TASK_SECONDS` or more (a shorter one cannot have
touched much memory) or :data:`RSS_EVERY_SECONDS` after the last reading; it is the worker's
peak since it started.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

from ...errors import SerializationError
from ...serialize import (
    LoadedFunctions,
    SharedSpill,
    dumps_exception,
    dumps_result,
    loads,
    loads_call,
)
from . import protocol as P
from .board import JOURNAL_RESULTS, WorkerBoard
from .claims import ClaimFile, claims_path
from .pipes import Receiver, Sender
from .slots import Allocation, pinned

#: Results wait at most this long for company before they are sent.
RESULT_FLUSH_SECONDS = 0.002
RESULT_FLUSH_COUNT = JOURNAL_RESULTS  # as many as the journal holds
#: With measuring on, peak RSS is read after a task that ran at least this long, or this
#: long after the last reading.
RSS_TASK_SECONDS = 0.001
RSS_EVERY_SECONDS = 0.1
#: A task that ran this long or longer has its CPU time measured (see the module docstring).
CPU_TASK_SECONDS = 0.001
#: The CPU clock is read after a shorter task only this long after the last reading.
CPU_EVERY_SECONDS = 0.0002
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Make sure this worker does not outlive the pool manager that forked it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # for kernels without PR_SET_PDEATHSIG, and as a second line
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, name="hpcfutures-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(70)


def _run_one(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], spill: SharedSpill | None
) -> tuple[int, list[Any], float, float]:
    """Run a task: its status, result frames, the seconds it ran and when it began (epoch)."""
    started = time.time()
    start = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the task's exception is its result
        return P.ERROR, dumps_exception(exc), time.perf_counter() - start, started
    elapsed = time.perf_counter() - start
    try:
        return P.OK, dumps_result(value, spill), elapsed, started
    except SerializationError as exc:
        return P.ERROR, dumps_exception(exc), elapsed, started


def _load_and_run(
    frames: list[Any],
    functions: LoadedFunctions,
    spill: SharedSpill | None,
    pin: Allocation | None,
    pin_env: dict[str, str],
) -> tuple[int, list[Any], float, float]:
    """Load a task's call from its frames and run it (on ``pin``'s CPUs, if any): its status,
    result frames, the seconds it ran and when it began; a call that cannot be loaded is
    an error result.  ``frames`` is emptied once the call is loaded, so that its pickles are
    not held while the task runs."""
    try:
        fn, args, kwargs = loads_call(frames, functions)
    except BaseException as exc:  # noqa: BLE001
        frames.clear()
        error = SerializationError(f"the task could not be loaded on the worker: {exc!r}")
        return P.ERROR, dumps_exception(error), 0.0, time.time()
    frames.clear()
    if pin is None:
        return _run_one(fn, args, kwargs, spill)
    with pinned(pin, pin_env):
        return _run_one(fn, args, kwargs, spill)


class _CpuClock:
    """The worker's CPU clock, read only where it tells something (see the module docstring)."""

    __slots__ = ("mark", "read_at")

    def __init__(self) -> None:
        self.mark = time.process_time()  # its last reading
        self.read_at = time.time()  # when that was

    def task_cpu(self, elapsed: float, ended: float) -> float:
        """CPU seconds of a task that ran ``elapsed`` seconds and ended at ``ended`` (epoch
        seconds), or -1 for a task too short to be measured."""
        if elapsed >= CPU_TASK_SECONDS:
            now = time.process_time()
            cpu = now - self.mark
        elif ended - self.read_at >= CPU_EVERY_SECONDS:
            now = time.process_time()
            cpu = -1.0
        else:
            return -1.0
        self.mark, self.read_at = now, ended
        return cpu


def _peak_rss_kb() -> int:
    """The largest RSS of this worker, or of a child it waited for, in KiB (Linux's unit)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return min(max(own, children), 0xFFFFFFFF)


class _Link:
    """The worker's ends of its pipes to the pool manager, and of its express connection to
    the driver, if it has one (see :mod:`.express`)."""

    def __init__(self, task_fd: int, result_fd: int):
        self.receiver = Receiver(task_fd)
        self.poller = select.poll()
        self.poller.register(task_fd, select.POLLIN)
        self.sender = Sender(result_fd, blocking=True)
        self.inbox: deque[list[memoryview]] = deque()
        self.express: socket.socket | None = None
        self.express_receiver: Receiver | None = None
        self.express_sender: Sender | None = None
        self.express_inbox: deque[list[memoryview]] = deque()
        self.express_claims: ClaimFile | None = None  # see .claims

    def connect_express(self, path: str, token: bytes, who: dict[str, Any]) -> None:
        """Connect to the driver's express socket at ``path`` and say who this worker is.

        A driver that cannot be reached only means no express tasks: the pool's tasks go on.
        """
        try:  # without it the driver queues nothing behind this worker's express task
            self.express_claims = ClaimFile(claims_path(path, os.getpid()), create=True)
        except OSError:
            self.express_claims = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            sender = Sender(sock.fileno(), blocking=True)
            sender.send([P.HELLO, token, json.dumps(who).encode()])
        except OSError:
            sock.close()
            return
        self.express = sock
        self.express_sender = sender
        self.express_receiver = Receiver(sock.fileno())
        self.poller.register(sock.fileno(), select.POLLIN)
        # A process a task forks must not hold the connection open after this worker dies:
        # the driver learns of the death by its end.
        os.register_at_fork(after_in_child=sock.close)

    def send(self, frames: list[Any]) -> None:
        self.sender.send(frames)  # blocking: returns once all is written

    def send_express(self, frames: list[Any]) -> None:
        """Send an express task's result to the driver; if the driver has gone, drop it."""
        sender = self.express_sender
        if sender is None:
            return
        try:
            sender.send(frames)
            while sender.pending:  # the socket is non-blocking (it is read too): wait for room
                select.select([], [sender.fd], [])
                sender.flush()
        except OSError:
            self.close_express()

    def close_express(self) -> None:
        sock = self.express
        if sock is not None:
            self.poller.unregister(sock.fileno())
            sock.close()
            self.express = self.express_sender = self.express_receiver = None

    def recv(self) -> list[memoryview] | None:
        """Wait for the next message from the manager, or for an express task (then None);
        exit the process if the manager has gone."""
        while not self.inbox and not self.express_inbox:
            for fd, _event in self.poller.poll():
                if fd == self.receiver.fd:
                    self._read()
                else:
                    self._read_express()
        return self.inbox.popleft() if self.inbox else None

    def poll(self) -> list[memoryview] | None:
        """The next message from the manager if one has arrived, without waiting.

        The express connection is read only while the worker has nothing queued (in
        :meth:`recv`): the driver sends it a task only when it believes the worker idle, and
        reading it before every queued task would cost a system call each.
        """
        if not self.inbox:
            self._read()
        return self.inbox.popleft() if self.inbox else None

    def _read(self) -> None:
        self.inbox.extend(self.receiver.read())
        if self.receiver.closed:
            os._exit(0)

    def _read_express(self) -> None:
        express = self.express_receiver
        if express is not None:
            self.express_inbox.extend(express.read())
            if express.closed:  # the driver shut down: the manager's tasks go on
                self.close_express()


def worker_main(
    rank: int,
    task_fd: int,
    result_fd: int,
    board: WorkerBoard,
    close_fds: list[int],
    env: dict[str, str],
    parent_pid: int,
    shm_dir: str = "",
    cpus: tuple[int, ...] = (),
    pool_tag: int = 0,
    express: tuple[str, bytes, dict[str, Any]] | None = None,
) -> None:
    """Serve tasks from the pool manager over the given pipes until told to stop; never returns.

    ``cpus``, if any, are the CPUs this worker is pinned to for its life (``cpu_affinity``);
    ``pool_tag`` names its pool in its results (:func:`~.protocol.pool_tag`); ``express``,
    if given, is the driver's express socket, its token and what to tell it of this worker:
    the worker then also runs lone tasks the driver sends it there (see :mod:`.express`).
    """
    os.setpgid(0, 0)  # one process group per worker, so a walltime kill takes its children too
    if cpus:
        os.sched_setaffinity(0, cpus)
    _die_with_parent(parent_pid)
    for fd in close_fds:  # the manager's ends, and other workers' pipes: ours alone keep them open
        try:
            os.close(fd)
        except OSError:
            pass
    os.environ.update(env)
    link = _Link(task_fd, result_fd)
    link.send([P.READY])
    try:
        config = link.recv()  # [CONFIG, settings JSON, initializer frames...]
        assert config is not None  # (no express connection yet)
        settings = json.loads(config[1].tobytes()) if len(config) > 1 and len(config[1]) else {}
        if len(config) > 2:
            initializer, initargs = loads(config[2:])
            try:
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the driver
                link.send([P.INIT_FAILED, *dumps_exception(exc)])
                os._exit(3)
        spill = SharedSpill(shm_dir, f"r{os.getpid()}-", unlink_on_load=True) if shm_dir else None
        if express is not None:
            path, token, who = express
            link.connect_express(path, token, {**who, "pid": os.getpid(), "rank": rank})
        _serve(link, board, spill, rank, pool_tag, bool(settings.get("measure")))
    finally:
        os._exit(0)


def _serve(link: _Link, board: WorkerBoard, spill: SharedSpill | None, rank: int, tag: int, measure: bool) -> None:
    functions = LoadedFunctions()
    queue: deque[P.Item] = deque()
    ordinal = 0  # of the next task taken from the queue: tasks are claimed in arrival order
    received = 0  # tasks received
    # When each batch of tasks arrived: (the ordinal after its last task, epoch seconds).
    arrivals: deque[tuple[int, float]] = deque()
    pid = os.getpid()
    rss_kb = 0
    rss_read = 0.0  # when rss_kb was read
    clock = _CpuClock()
    unsent = 0  # results in the board's journal
    first_unsent = 0.0
    pack = P.RESULT_META.pack
    pin: Allocation | None = None  # what the next task runs on, if it has resources
    pin_env: dict[str, str] = {}  # and its MPI launch variables, if it is an MPI task

    def send_journal() -> None:
        metas, pickles = board.journaled()
        link.send([P.RESULTS, metas, pickles])
        board.clear()

    while True:
        if link.express_inbox:
            if unsent:
                send_journal()
                unsent = 0
            _run_express(link, board, functions, spill, rank, tag, pid, clock if measure else None)
            continue
        if not queue:
            if unsent:
                send_journal()
                unsent = 0
            msg: list[memoryview] | None = link.recv()
            if msg is None:
                continue  # an express task came
        else:
            msg = link.poll()
        if msg is not None:
            kind = msg[0].tobytes()
            if kind == P.TASKS:
                items = P.split(P.TASK_META, msg[1].tobytes(), msg[2], msg[3:])
                queue.extend(items)
                received += len(items)
                arrivals.append((received, time.time()))
            elif kind == P.PIN:  # the next task (sent alone) has resources of its own
                info = json.loads(msg[1].tobytes())
                pin = Allocation(tuple(info["cpus"]), tuple(info["gpus"]), info["memory_gb"])
                pin_env = info.get("env", {})
            elif kind == P.SHUTDOWN:
                return
            continue
        fields, main, oob = queue.popleft()
        while arrivals[0][0] <= ordinal:
            arrivals.popleft()
        dispatched = arrivals[0][1]
        if not board.claim(ordinal):  # cancelled by the manager before it began
            ordinal += 1
            del main, oob
            meta = P.result_meta(
                fields[0], P.CANCELLED, 0, 0, dispatched=dispatched, tag=tag, pid=pid, worker=rank, lost=fields[P.T_LOST]
            )
            out = [b""]
        else:
            ordinal += 1
            frames = [main, *oob]
            del main, oob  # the call's pickles go once it is loaded (_load_and_run empties the list)
            status, out, elapsed, started = _load_and_run(frames, functions, spill, pin, pin_env)
            if measure:
                cpu = clock.task_cpu(elapsed, started + elapsed)
                if elapsed >= RSS_TASK_SECONDS or started - rss_read >= RSS_EVERY_SECONDS:
                    rss_kb = _peak_rss_kb()
                    rss_read = started
            else:
                cpu = -1.0
            meta = pack(
                fields[0], status, elapsed, dispatched, started, cpu, tag, pid, rss_kb, rank, fields[P.T_LOST],
                len(out[0]), len(out) - 1,
            )  # fmt: skip
        pin = None  # it was for this task alone (run or cancelled)
        if len(out) == 1 and board.journal(meta, out[0]):
            if not unsent:
                first_unsent = time.monotonic()
            unsent += 1
        else:  # out-of-band frames, or too large to wait: send it now, after those before it
            if unsent:
                send_journal()
                unsent = 0
            link.send([P.RESULTS, meta, *out])
        del out
        if unsent and (unsent >= RESULT_FLUSH_COUNT or time.monotonic() - first_unsent >= RESULT_FLUSH_SECONDS):
            send_journal()
            unsent = 0


def _run_express(
    link: _Link,
    board: WorkerBoard,
    functions: LoadedFunctions,
    spill: SharedSpill | None,
    rank: int,
    tag: int,
    pid: int,
    clock: _CpuClock | None,
) -> None:
    """Run the next task the driver sent straight to this worker and send its result back
    the same way; ``clock`` measures its CPU time when the run is recorded.

    The board says which express task runs, so that the manager can tell the driver if this
    worker dies under it.  A message that is not one task ends the express connection.
    """
    msg = link.express_inbox.popleft()
    received = time.time()
    try:
        if msg[0].tobytes() != P.TASKS:
            raise ValueError(f"an express message of kind {msg[0].tobytes()!r}")
        items = P.split(P.TASK_META, msg[1].tobytes(), msg[2], msg[3:])
        if len(items) != 1:
            raise ValueError(f"an express message of {len(items)} tasks")
    except (ValueError, IndexError, P.ProtocolError):
        link.close_express()
        return
    fields, main, oob = items[0]
    claims = link.express_claims
    if claims is not None and not claims.claim(fields[0]):
        return  # the driver cancelled it before this worker began it
    frames = [main, *oob]
    del msg, items, main, oob  # the call's pickles go once it is loaded (_load_and_run empties the list)
    board.running_express(fields[0])
    status, out, elapsed, started = _load_and_run(frames, functions, spill, None, {})
    cpu = -1.0
    rss_kb = 0
    if clock is not None:
        cpu = clock.task_cpu(elapsed, started + elapsed)
        rss_kb = _peak_rss_kb()
    meta = P.RESULT_META.pack(
        fields[0], status, elapsed, received, started, cpu, tag, pid, rss_kb, rank, fields[P.T_LOST],
        len(out[0]), len(out) - 1,
    )  # fmt: skip
    link.send_express([P.RESULTS, meta, *out])
    if board.express_ended():
        link.send([P.EXPRESS_DONE])
