"""The express lane: a lone task goes from the driver straight to an idle worker on its node.

Through the interchange and a pool manager, a task crosses three processes each way, and on
a small machine each crossing is a wake-up of a virtual CPU: a lone ``submit(f).result()``
took about twice the standard library's round trip, which has one crossing each way.  So
when the executor's pools run on the driver's node, each of their workers also connects to
a Unix socket of the driver (in the run's private socket directory) and says who it is,
with the run's token.  A task then takes the express lane when nothing else is out but
other express tasks, it asks for nothing a pool must arrange (no walltime, no resources)
and it is small (its pickles under :data:`MAX_EXPRESS_BYTES`; large arguments go
the usual way, through ``/dev/shm``): the submitting thread writes it to an idle worker's
connection, or behind the one task of a busy worker's (:data:`DEPTH`), and the worker writes
the result back the same way, where the link's I/O thread reads it.  One crossing each way.
With no room on the lane, a task waits in the driver (up to :data:`WAITING_PER_WORKER` per
worker) for a result to make some; one more goes the usual way, after those waiting.

What HTEX promises holds on this lane:

- A worker that dies under an express task: its pool manager sees it die and tells the
  driver (through the interchange, as a ``worker_lost`` event with ``express``) how it
  ended; the driver, which sees the connection close, requeues the task the usual way,
  charged a loss, or fails it with that evidence once it was lost more than
  ``lost_task_retries`` times.  Should no word come (the pool died too), the driver decides
  after :data:`EVIDENCE_WAIT` seconds on what it knows.
- Cancel: an express task counts as begun (``running()``) once its worker has claimed it
  (see :mod:`.claims`); until then a cancel takes it, on the worker's connection or in the
  driver's line.  A task queued behind one whose worker died never began: it is requeued
  as it was, not charged a loss.
- Priority: the lane is taken only when nothing else is out, so no task overtakes another;
  the driver's line holds tasks of one priority, and a task of another priority sends the
  line the usual way before it.
- Cores and walltime: a pool manager learns of an express task only once its worker read it,
  so the driver holds a task with a walltime or resources (and all behind it) until the
  express tasks out have ended (see :meth:`.link.DriverLink.take_outbox`).
- Elastic blocks: a block whose workers ran express tasks lately is not idle (see
  :meth:`ExpressLane.busy_blocks`); once the driver drains a block its workers get no
  express task, and the drain waits until those they run have ended.
- Shutdown: the driver closes the socket; workers keep serving their pool until it stops.

Threads: the submitting threads take a worker with room and write to it under the link's
lock, which also guards ``idle``, ``inflight``, ``waiting`` and the connections' tasks
(:meth:`ExpressLane.started` reads them without it, for ``running()``); the I/O thread alone
accepts connections, reads them and decides about lost tasks (taking the lock to change
what the submitting threads read).
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import time
from collections import deque
from typing import Any

from . import protocol as P
from .claims import ClaimFile, claims_path
from .pipes import Receiver, Sender

logger = logging.getLogger("hpcfutures.executors.htex.executor")

#: Tasks whose pickles are larger than this go the usual way (the bandwidth path).
MAX_EXPRESS_BYTES = 64 << 10
#: Seconds the driver waits, after an express connection closed under a task, for the pool's
#: word on how its worker died before deciding on what it knows.
EVIDENCE_WAIT = 2.0
#: How many express tasks a worker's connection holds at once: the one it runs and one
#: queued behind it, which it begins without waiting for the driver to hear of the first.
DEPTH = 2
#: How many lone tasks may wait in the driver, for each worker of the lane, for room on it.
WAITING_PER_WORKER = 4
#: Default resources of a task (cores, memory, accelerators, nodes, ranks per node).
DEFAULT_RESOURCES = (1, 0, 0, 0, 1)

#: (meta, main pickle, out-of-band frames) of a task, as the link queues it.
Outgoing = tuple[bytes, Any, list[Any]]


class Connection:
    """One worker's express connection."""

    __slots__ = (
        "sock", "fd", "receiver", "sender", "known", "pool", "block", "pid", "rank", "task", "outgoing", "tasks",
        "claims",
    )  # fmt: skip

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.receiver = Receiver(self.fd, max_message=P.HELLO_MAX_MESSAGE, max_frames=4)
        self.sender = Sender(self.fd)
        self.known = False  # its HELLO was accepted
        self.pool = ""
        self.block = ""
        self.pid = 0
        self.rank = -1
        self.task = 0  # the express task it runs (the first of ``tasks``), or 0
        self.outgoing: Outgoing | None = None  # that task, to requeue if the worker dies
        # The tasks sent it, in order (at most DEPTH), a cancelled one (None) until its worker passed it.
        self.tasks: deque[tuple[int, Outgoing | None]] = deque()
        self.claims: ClaimFile | None = None  # its worker's claims, once known (see .claims)

    def describe(self) -> str:
        return f"worker {self.rank} (pid {self.pid}) of pool {self.pool}" if self.known else "an unknown process"


class ExpressLane:
    """The driver's end of the express lane; see the module docstring."""

    def __init__(self, path: str, token: bytes):
        self.path = path
        self.token = token
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(256)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        self.connections: dict[int, Connection] = {}  # by fd; the I/O thread's
        # Under the link's lock:
        self.idle: list[Connection] = []  # known, connected, running nothing
        self.inflight: dict[int, Connection] = {}  # express tasks sent and not answered, by id
        # Lone tasks that wait for a worker of the lane to end its express task, in order, and
        # the priority they share (see open_to and may_wait).
        self.waiting: deque[tuple[int, Outgoing]] = deque()
        self.waiting_priority = 0
        self.waiting_cancelled = 0  # of those, how many were cancelled (dropped in their turn)
        self.broken: set[Connection] = set()  # connections a write to failed, until their end is read
        self.sent = 0  # tasks sent on the lane, for tests and benchmarks
        self.workers = 0  # known connections: the workers that take express tasks
        self.draining: set[str] = set()  # blocks being drained: their workers get no express task
        self.refused = 0  # connections dropped before they proved to be this run's workers
        self.unflushed: list[Connection] = []  # connections with a task partly written
        # The I/O thread's: tasks whose connection closed under them, waiting for the pool's
        # word: (the task, when to decide without it, the connection's description).
        self.orphans: dict[int, tuple[Outgoing, float, str]] = {}
        self.evidence: dict[int, dict[str, Any]] = {}  # the pools' words on express tasks lost
        self.last_busy: dict[str, float] = {}  # block -> when one of its workers last ran one

    # -- the submitting threads (under the link's lock) -------------------------------------------

    def open_to(self, pending: dict[int, Any], priority: int) -> bool:
        """Whether a task of ``priority`` may take the lane, with ``pending`` (this one
        included) out: nothing out but the lane's tasks (sent or waiting), and, if some wait,
        the same priority as theirs.

        Only while nothing else is out is an idle connection's worker surely idle: a worker
        that runs a task its manager sent it may still count as idle here, and a task handed
        to it would wait behind that one (counted as begun meanwhile) while another worker
        may be free.
        """
        waiting = self.waiting
        return len(pending) == len(self.inflight) + len(waiting) - self.waiting_cancelled + 1 and (
            not waiting or priority == self.waiting_priority
        )

    def may_wait(self) -> bool:
        """Whether a task for the lane that finds no room on it may wait in the driver: while
        express tasks are out (their results make room), up to :data:`WAITING_PER_WORKER`
        for each worker of the lane (a dependency graph's next tasks, say; a burst goes
        the usual way)."""
        return bool(self.inflight) and len(self.waiting) - self.waiting_cancelled < WAITING_PER_WORKER * self.workers

    def is_waiting(self, task_id: int) -> bool:
        """Whether task ``task_id`` waits for the lane (at most one per worker: a short scan)."""
        return any(waiting_id == task_id for waiting_id, _ in self.waiting)

    def send(self, task_id: int, outgoing: Outgoing) -> bool:
        """Hand the task to an idle worker, else queue it behind the one task of a busy
        worker's connection; return whether it was sent."""
        idle = self.idle
        while True:
            roomy = idle.pop() if idle else self._roomy()
            if roomy is None:
                return False
            conn = roomy
            meta, main, oob = outgoing
            # Before the write: its result may be read (on the I/O thread) before it returns.
            tasks = conn.tasks
            tasks.append((task_id, outgoing))
            if not conn.task:
                conn.task = task_id
                conn.outgoing = outgoing
            self.inflight[task_id] = conn
            try:
                if conn.sender.send([P.TASKS, meta, main, *oob]):
                    self.unflushed.append(conn)  # the socket took part of it: the I/O thread writes the rest
            except OSError:  # it is gone: the I/O thread drops it (and what it holds) when it reads the end
                tasks.pop()
                if conn.task == task_id:
                    conn.task = 0
                    conn.outgoing = None
                del self.inflight[task_id]
                self.broken.add(conn)
                continue
            self.last_busy[conn.block] = time.monotonic()
            self.sent += 1
            return True

    def _roomy(self) -> Connection | None:
        """A connection of a worker that runs an express task and has room for one more (one
        of its pool's blocks not being drained; one whose write failed is not chosen again)."""
        for conn in self.connections.values():
            if (
                conn.tasks
                and conn.claims is not None
                and conn.block not in self.draining
                and conn not in self.broken
                and self._room(conn)
            ):
                return conn
        return None

    @staticmethod
    def _room(conn: Connection) -> bool:
        """Whether ``conn`` may take one more task, once the cancelled tasks its worker has
        passed are forgotten."""
        tasks = conn.tasks
        if tasks[0][1] is None and conn.claims is not None:
            try:
                passed = conn.claims.claimed()
            except (ValueError, OSError):
                return False
            while tasks and tasks[0][1] is None and tasks[0][0] <= passed:
                tasks.popleft()
        return len(tasks) < DEPTH

    @staticmethod
    def _head(conn: Connection) -> None:
        """Point ``task`` and ``outgoing`` at the first task of ``conn`` not cancelled."""
        for task_id, outgoing in conn.tasks:
            if outgoing is not None:
                conn.task, conn.outgoing = task_id, outgoing
                return
        conn.task = 0
        conn.outgoing = None

    def ended(self, conn: Connection) -> None:
        """The first task of ``conn`` not cancelled sent its result (its worker passed every
        task before it): the next one, if any, runs now."""
        tasks = conn.tasks
        while tasks:
            task_id, outgoing = tasks.popleft()
            if outgoing is not None:
                self.inflight.pop(task_id, None)
                break
        self._head(conn)

    # -- the I/O thread -----------------------------------------------------------------------------

    def accept(self) -> list[Connection]:
        """Take the connections waiting on the socket; return them (to poll)."""
        accepted: list[Connection] = []
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as exc:  # out of descriptors, say: the usual path still serves
                logger.warning("express lane: cannot accept a worker: %s", exc)
                return accepted
            conn = Connection(sock)
            self.connections[conn.fd] = conn
            accepted.append(conn)

    def hello(self, conn: Connection, msg: list[memoryview]) -> bool:
        """Check a connection's first message; return whether it is a worker of this run."""
        if len(msg) != 3 or msg[0].tobytes() != P.HELLO or not hmac.compare_digest(msg[1].tobytes(), self.token):
            return False
        try:
            who = P.load_json(msg[2], P.HELLO_MAX_MESSAGE, "a HELLO")
        except P.ProtocolError:
            return False
        if not isinstance(who, dict):
            return False
        pool, block, pid, rank = who.get("pool"), who.get("block"), who.get("pid"), who.get("rank")
        if not (isinstance(pool, str) and isinstance(block, str) and isinstance(pid, int) and isinstance(rank, int)):
            return False
        if not (_is_int(pid) and _is_int(rank)):
            return False
        conn.pool, conn.block, conn.pid, conn.rank = pool[:200], block[:200], pid, rank
        conn.known = True
        try:  # without them, its tasks count as begun once sent, and none queue behind them
            conn.claims = ClaimFile(claims_path(self.path, pid))
        except OSError:
            conn.claims = None
        self.workers += 1
        conn.receiver.max_message = P.MAX_MESSAGE
        conn.receiver.max_frames = P.MAX_FRAMES
        return True

    def result_of(self, conn: Connection, msg: list[memoryview]) -> list[memoryview] | None:
        """A known worker's message as a RESULTS message of the interchange's form, or None if
        it is not the one result of the task that worker runs."""
        if len(msg) < 3 or msg[0].tobytes() != P.RESULTS or msg[1].nbytes != P.RESULT_META.size:
            return None
        fields = P.RESULT_META.unpack(msg[1])
        if not conn.task or fields[P.R_ID] != conn.task or fields[-1] != len(msg) - 3 or fields[-2] != msg[2].nbytes:
            return None
        return [msg[0], memoryview(b""), msg[1], *msg[2:]]

    def lost(self, conn: Connection, why: str) -> list[Outgoing]:
        """``conn`` closed or broke the protocol: forget it.  The task it ran waits for the
        evidence; return those queued behind it, which it never began (to requeue as they were)."""
        if self.connections.pop(conn.fd, None) is not None and conn.known:
            self.workers -= 1
        conn.sock.close()
        self.broken.discard(conn)
        claims = conn.claims
        # The task its worker began (without claims: the first, begun once sent) waits for the
        # pool's word; those after it never began.
        begun = claims.claimed() if claims is not None else conn.task
        never_begun: list[Outgoing] = []
        for task_id, outgoing in conn.tasks:
            if outgoing is None:  # cancelled: nothing to run again
                continue
            self.inflight.pop(task_id, None)
            if task_id <= begun:
                self.orphans[task_id] = (outgoing, time.monotonic() + EVIDENCE_WAIT, f"{conn.describe()} {why}")
            else:
                never_begun.append(outgoing)
        conn.tasks.clear()
        if claims is not None:
            conn.claims = None
            claims.close()
        conn.task = 0
        conn.outgoing = None
        return never_begun

    def started(self, task_id: int) -> bool:
        """Whether express task ``task_id`` (sent, not answered) has begun: its worker
        claimed it, or, without claims, it was sent."""
        conn = self.inflight.get(task_id)  # (read without the lock: running() may be asked anywhere)
        if conn is None:
            return False
        claims = conn.claims
        if claims is None:
            return True
        try:
            return claims.claimed() >= task_id
        except (ValueError, OSError):  # its worker was lost meanwhile: what it held may have begun
            return True

    def cancel(self, task_id: int) -> Connection | None:
        """Cancel express task ``task_id`` if its worker has not begun it; return its
        connection if it was (it no longer holds it), else None."""
        conn = self.inflight.get(task_id)
        if conn is None or conn.claims is None or not conn.claims.cancel(task_id):
            return None
        del self.inflight[task_id]
        # It keeps its place (and counts against DEPTH) until its worker has passed it: only
        # so are two cancel slots enough.
        conn.tasks = deque((t, None if t == task_id else outgoing) for t, outgoing in conn.tasks)
        self._head(conn)
        return conn

    def busy_blocks(self, within: float) -> set[str]:
        """Blocks whose workers run an express task or ran one in the last ``within`` seconds."""
        now = time.monotonic()
        busy = {conn.block for conn in self.inflight.values()}
        busy.update(block for block, when in self.last_busy.items() if now - when < within)
        return busy

    def close(self) -> None:
        """Close the socket and every connection (the link's teardown)."""
        for conn in list(self.connections.values()):
            conn.sock.close()
            if conn.claims is not None:
                conn.claims.close()
                conn.claims = None
        self.connections.clear()
        self.idle.clear()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32
