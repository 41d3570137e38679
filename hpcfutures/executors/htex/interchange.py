"""The interchange: queues the driver's tasks and deals them out to worker pools.

A separate process, started by the driver, which talks to it over two pipes it inherits
(see :mod:`.pipes`).  Pools on the same node connect through a plain Unix stream socket in a
private directory (see :mod:`.stream`; they must present the executor's token); pools on
other nodes connect over TCP with CurveZMQ and must hold the pool key.
Tasks wait in a priority queue (higher priority first, then submission order) and go to
pools as the pools grant credit; results go straight back to the driver, with the ids of
the tasks that pools report their workers began.  A cancel request drops the tasks queued
here and goes on to the pools holding the rest, which cancel what no worker has begun; the
driver is answered once they all have.  Only packed headers are read here; payload frames
pass through untouched.

Nothing a peer sends can stop it.  A local connection is held to small messages until it
presents the executor's token, which is checked before any JSON is parsed; every message
from a pool is checked against the wire format before it is acted on.  A peer that breaks
the format, or whose message raises while it is handled, is dropped and logged: a local
connection is closed, a TCP peer ignored from then on, and a registered pool counts as lost.

It notices a lost pool by the socket closing (a probe of every pool follows each disconnect
event) or, failing that, by missed heartbeats, and requeues the pool's tasks.  It exits when
the driver asks, or when the driver's pipe closes or its process is gone.

For the run record it passes on, as EVENTs, what pools say of lost workers and the node
samples that ride their heartbeats (the newest of each pool, once per heartbeat period), and
it names the tasks it requeued when a pool is lost.

For the driver's block scaling it reports, with each heartbeat, how long each block's pools
have been idle, and it drains a block on request: no new tasks go to its pools, and each is
told to stop once its running tasks have finished, so scale-in never kills a task.  A pool
whose block has a known end (its walltime) gets no task it could not finish: none with a
longer walltime, and none at all in the block's last minutes; its tasks, if the block ends
under them, are requeued without counting as lost.

Run as ``python -m hpcfutures.executors.htex.interchange --keys FILE --ipc-dir DIR
--pool-port M --driver-fds R,W ...`` (see :class:`.components.InterchangeArgs`).  The driver
picks the port, so that pools can connect while this process is still starting.
"""

from __future__ import annotations

import heapq
import hmac
import json
import logging
import os
import shutil
import struct
import sys
import time
from typing import Any

import zmq

from ...errors import PoolLostError, ResourceUnsatisfiableError
from ...serialize import dumps
from . import protocol as P
from . import security
from .components import InterchangeArgs, setup_logging
from .dealing import deal
from .pipes import Receiver, Sender, watch_room
from .slots import MAX_MASKED_NODES, Ledger, Need, gpu_mask, node_mask, place, unsatisfiable
from .stream import StreamConnection, StreamListener

logger = logging.getLogger(__name__)

BATCH_LIMIT = 256
_PROBE_DELAYS = (0.0, 0.05, 0.25, 1.0)
#: A pool stops getting tasks without a walltime this long before its block ends: at most
#: BLOCK_END_MARGIN seconds, and at most this share of the block's whole time.
BLOCK_END_MARGIN = 60.0
BLOCK_END_SHARE = 0.1
#: A local connection that has not registered with the token this long after it was
#: accepted is closed, and at most this many such connections are kept (the oldest goes).
REGISTER_TIMEOUT = 30.0
MAX_UNREGISTERED = 64
#: How many misbehaving TCP peers are remembered, to be ignored (a ROUTER cannot close one).
MAX_IGNORED = 4096


class _Pool:
    __slots__ = (
        "sock", "identity", "key", "reg", "credit", "sent", "outstanding", "last_heard",
        "idle_since", "draining", "end", "closing", "ledger", "plain_out", "tag",
    )  # fmt: skip

    def __init__(self, sock: Any, identity: bytes, reg: P.Registration, credit: int, now: float):
        self.sock = sock
        self.identity = identity
        self.key = (id(sock), identity)
        self.reg = reg
        self.tag = P.pool_tag(reg.pool_id)
        self.credit = credit
        self.sent = 0
        self.outstanding: dict[int, tuple[int, P.Item]] = {}  # task id -> (sequence number, task)
        # What its tasks with resources hold, and how many default tasks it holds.
        self.ledger = Ledger(reg.shape) if reg.shape is not None else None
        self.plain_out = 0
        self.last_heard = now
        self.idle_since: float | None = now  # None while it holds tasks
        self.draining = False  # its block is being scaled in: no new tasks
        # When its block ends (this process's clock), and from when it takes no new tasks.
        self.end: float | None = None
        self.closing: float | None = None
        remaining = reg.block_end_in
        if remaining is not None and remaining > 0:
            self.end = now + remaining
            self.closing = self.end - min(BLOCK_END_MARGIN, BLOCK_END_SHARE * remaining)

    @property
    def block(self) -> str:
        return self.reg.block


def _kind(msg: list[Any]) -> bytes:
    """The kind of a message from a pool (``msg[0]`` is its identity).

    Raises:
        ProtocolError: there is no kind frame, or it is not one byte.
    """
    if len(msg) < 2:
        raise P.ProtocolError("a message with no frames")
    view = memoryview(msg[1])
    if view.nbytes != 1:
        raise P.ProtocolError(f"a kind frame of {view.nbytes} bytes")
    return view.tobytes()


def _credit(msg: list[Any]) -> int:
    """The credit a pool's message carries in its third frame.

    Raises:
        ProtocolError: the frame is missing or not exactly a CREDIT struct.
    """
    if len(msg) < 3:
        raise P.ProtocolError("a message without its credit frame")
    try:
        return int(P.CREDIT.unpack(msg[2])[0])
    except struct.error:
        raise P.ProtocolError(f"a credit frame of {memoryview(msg[2]).nbytes} bytes") from None


def _ids(frame: Any, what: str) -> list[int]:
    """Task ids packed in a pool's frame.

    Raises:
        ProtocolError: the frame is not a whole number of ids.
    """
    data = bytes(frame)
    if len(data) % 8:
        raise P.ProtocolError(f"{what} of {len(data)} bytes")
    return P.unpack_ids(data) if data else []


def _send(sock: Any, identity: bytes, frames: list[Any]) -> None:
    """Send to one pool: through its ROUTER with its identity, or on its own connection."""
    if isinstance(sock, StreamConnection):
        sock.send_multipart(frames)
    else:
        sock.send_multipart([identity, *frames], copy=False)


def _peer(sock: Any) -> str:
    """Name an unregistered peer in a log message."""
    return "a local connection" if isinstance(sock, StreamConnection) else "a TCP peer"


class Interchange:
    """Routes tasks from one driver to many pools.  See the module docstring."""

    def __init__(self, args: InterchangeArgs):
        self.args = args
        keys = security.load(args.keys)
        self.context = zmq.Context()
        self.zap = security.ZapHandler(self.context, keys)
        self.token = keys["token"]
        down, up = args.driver_fds
        self.from_driver = Receiver(down)
        self.client = Sender(up)
        # Local pools reach this process through a Unix socket in a private directory (mode
        # 0700): only the owner can connect, and encryption would only cost bandwidth.
        # Remote pools come over TCP and must hold the CurveZMQ pool key.
        self.tcp_pools = self.context.socket(zmq.ROUTER)
        self.tcp_pools.linger = 0
        self.tcp_pools.sndhwm = self.tcp_pools.rcvhwm = 0
        self.tcp_pools.router_mandatory = True
        self.tcp_pools.maxmsgsize = P.MAX_MESSAGE  # a larger frame disconnects the peer
        security.make_server(self.tcp_pools, keys, security.POOL_DOMAIN)
        self.tcp_pools.bind(f"tcp://{args.address}:{args.pool_port}")
        self.local_pools = StreamListener(
            f"unix://{args.ipc_dir}/pools",
            max_message=P.UNREGISTERED_MAX_MESSAGE,
            max_frames=P.UNREGISTERED_MAX_FRAMES,
        )
        self.connections: list[StreamConnection] = []  # local pools' connections
        # Local connections yet to present the token, with when they must have; TCP peers
        # that misbehaved, whose messages are ignored.
        self.unregistered: dict[StreamConnection, float] = {}
        self.ignored: dict[bytes, None] = {}
        self.pool_socks = (self.tcp_pools,)
        self.monitors = [s.get_monitor_socket(zmq.EVENT_DISCONNECTED) for s in self.pool_socks]
        self.queue: list[tuple[int, int, P.Item]] = []  # (-priority, sequence number, task)
        # Tasks with resources, placed by slots.place instead of dealt by credit.
        self.resourced: list[tuple[int, int, P.Item]] = []
        self.passes: dict[int, int] = {}  # times a task with resources was passed
        self.unplaceable_since: dict[int, float] = {}  # tasks no registered pool could ever run
        self.seq = 0
        self.pools: dict[tuple[int, bytes], _Pool] = {}
        # (socket, identity, registration, credit) of pools that came before the CONFIG
        self.waiting_registrations: list[tuple[Any, bytes, P.Registration, int]] = []
        self.config: list[Any] | None = None
        self.settings = b""
        self.probes: list[float] = []
        self.driver_pid = args.driver_pid
        self.running = True
        self.orphaned = False  # the driver died: clean up what it would have
        self.refused = 0
        self.started: list[int] = []
        self.draining: set[str] = set()  # blocks being scaled in
        # Cancel requests forwarded to pools: request -> (pools yet to answer, ids cancelled).
        self.cancels: dict[bytes, tuple[set[tuple[int, bytes]], list[int]]] = {}
        self.to_driver_meta: list[bytes] = []
        self.to_driver_mains: list[Any] = []
        self.to_driver_extra: list[Any] = []
        # The newest node sample of each pool since the last heartbeat to the driver.
        self.samples: dict[tuple[int, bytes], dict[str, Any]] = {}
        self.stopped: dict[str, list[str]] = {}  # draining blocks' pools stopped so far

    # -- driver side ------------------------------------------------------------------------

    def on_driver(self, msg: list[memoryview]) -> None:
        kind = msg[0].tobytes()
        if kind == P.TASKS:
            seq = self.seq
            queue = self.queue
            resourced = self.resourced
            for item in P.split(P.TASK_META, msg[1].tobytes(), msg[2], msg[3:]):
                seq += 1
                fields = item[0]
                if P.has_resources(fields):
                    heapq.heappush(resourced, (-fields[1], seq, item))
                else:
                    heapq.heappush(queue, (-fields[1], seq, item))
            self.seq = seq
        elif kind == P.CANCEL:
            self.cancel(msg[1].tobytes(), set(P.unpack_ids(msg[2].tobytes())))
        elif kind == P.CANCEL_QUEUED:  # every task no worker has begun
            self.cancel(msg[1].tobytes(), None)
        elif kind == P.CONFIG:
            self.settings = msg[1].tobytes()
            self.config = msg[2:]
            waiting, self.waiting_registrations = self.waiting_registrations, []
            for sock, identity, reg, credit in waiting:
                self.accept_pool(sock, identity, reg, credit)
        elif kind == P.DRAIN:
            block = msg[1].tobytes().decode()
            for pool in list(self.pools.values()):
                if pool.block == block:
                    pool.draining = True
            self.draining.add(block)
        elif kind == P.SHUTDOWN:
            self.running = False

    def cancel(self, request: bytes, ids: set[int] | None) -> None:
        """Cancel the given tasks (or all) that no worker has begun, and tell the driver which.

        Tasks queued here are dropped at once; the pools holding the others are asked, and
        the driver is answered when the last of them has (or was lost).
        """
        dropped = P.take_queued(self.queue, ids) + P.take_queued(self.resourced, ids)
        for task_id in dropped:
            self.passes.pop(task_id, None)
            self.unplaceable_since.pop(task_id, None)
        asked: set[tuple[int, bytes]] = set()
        for pool in list(self.pools.values()):
            if ids is None:
                message = [P.CANCEL_QUEUED, request] if pool.outstanding else None
            else:
                held = [i for i in ids if i in pool.outstanding]
                message = [P.CANCEL, request, P.pack_ids(held)] if held else None
            if message is not None and self.send_pool(pool, message):
                asked.add(pool.key)
        self.cancels[request] = (asked, dropped)
        self.answer_cancel(request)

    def answer_cancel(self, request: bytes) -> None:
        """Reply to a cancel request once no pool it went to is left to answer."""
        asked, cancelled = self.cancels[request]
        if not asked:
            del self.cancels[request]
            self.to_driver([P.CANCEL_REPLY, request, P.pack_ids(cancelled)])

    def cancelled_by_pool(self, pool: _Pool, request: bytes, ids: list[int]) -> None:
        """A pool's answer to a cancel request: these of its tasks will never run."""
        for task_id in ids:
            pool.outstanding.pop(task_id, None)
        if not pool.outstanding:
            pool.idle_since = time.monotonic()
        waiting = self.cancels.get(request)
        if waiting is not None and pool.key in waiting[0]:
            waiting[0].discard(pool.key)
            waiting[1].extend(ids)
            self.answer_cancel(request)

    def event(self, **info: Any) -> None:
        self.to_driver([P.EVENT, json.dumps(info).encode()])

    def to_driver(self, frames: list[Any]) -> None:
        """Send to the driver without ever blocking (what the pipe cannot take waits here)."""
        try:
            self.client.send(frames)
        except OSError:  # the driver closed its end: it is gone or shutting down
            self.driver_gone()

    def driver_gone(self) -> None:
        self.running = False
        if not self.driver_alive():
            self.orphaned = True

    # -- pool side ----------------------------------------------------------------------------

    def send_pool(self, pool: _Pool, frames: list[Any]) -> bool:
        try:
            _send(pool.sock, pool.identity, frames)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
        except OSError:
            pass
        self.pool_lost(pool, "its connection closed")
        return False

    def on_pool(self, sock: Any, msg: list[Any], now: float) -> bool:
        """Handle one message from a pool's socket; return False if the peer was dropped for it.

        ``msg[0]`` is the peer's identity (empty on a local connection).  A message that is
        malformed, or that raises while it is handled, drops the peer: its input cannot stop
        the interchange.
        """
        identity = bytes(msg[0])
        pool = self.pools.get((id(sock), identity))
        try:
            if pool is not None:
                self.from_pool(pool, msg, now)
            elif isinstance(sock, StreamConnection):
                if sock in self.unregistered:
                    self.register(sock, identity, msg)
                # else it waits for the CONFIG, or its pool was forgotten: nothing to do
            elif identity not in self.ignored and _kind(msg) == P.REGISTER:
                self.register(sock, identity, msg)
            # else a TCP peer that is no pool (any more): its messages are stale
        except Exception as exc:  # noqa: BLE001 - whatever a peer sends, the interchange goes on
            if isinstance(exc, P.ProtocolError):
                self.misbehaved(sock, identity, str(exc))
            else:
                logger.warning("a message from a pool raised", exc_info=True)
                self.misbehaved(sock, identity, f"a message that raised {exc!r}")
            return False
        return True

    def from_pool(self, pool: _Pool, msg: list[Any], now: float) -> None:
        """Act on a registered pool's message, once it is known to be well-formed.

        Raises:
            ProtocolError: it is not: see :func:`_kind` and :func:`_credit`, and below.
        """
        kind = _kind(msg)
        credit = _credit(msg)
        if kind == P.RESULTS:
            if len(msg) < 6:
                raise P.ProtocolError(f"a RESULTS message of {len(msg) - 1} frames")
            started = _ids(msg[3], "a started frame")
            view = memoryview(msg[4])
            if view.nbytes % P.RESULT_META.size:
                raise P.ProtocolError(f"a RESULTS meta frame of {view.nbytes} bytes")
            meta = view.tobytes()
            blob = memoryview(msg[5])
            # The driver cuts every pool's results out of one joined batch, so each message's
            # blob and frames must be exactly what its meta declares.
            ids = []
            size = frames = 0
            for fields in P.RESULT_META.iter_unpack(meta):
                if fields[P.R_STATUS] > P.CANCELLED:
                    raise P.ProtocolError(f"a result of status {fields[P.R_STATUS]}")
                ids.append(fields[P.R_ID])
                size += fields[-2]
                frames += fields[-1]
            if size != blob.nbytes or frames != len(msg) - 6:
                raise P.ProtocolError(
                    f"results declaring {size} bytes in {frames} extra frames "
                    f"with {blob.nbytes} bytes in {len(msg) - 6}"
                )
            self.started.extend(started)
            outstanding = pool.outstanding
            for task_id in ids:
                if outstanding.pop(task_id, None) is not None:
                    if pool.ledger is None or not pool.ledger.release(task_id):
                        pool.plain_out -= 1
            if not outstanding:
                pool.idle_since = now
            self.to_driver_meta.append(meta)
            self.to_driver_mains.append(blob)
            if len(msg) > 6:
                self.to_driver_extra.extend(msg[6:])
        elif kind == P.HEARTBEAT:
            if len(msg) not in (4, 5):
                raise P.ProtocolError(f"a HEARTBEAT message of {len(msg) - 1} frames")
            started = _ids(msg[3], "a started frame")
            if len(msg) == 5:  # with a node sample
                sample: dict[str, Any] = P.parse_sample(msg[4])
                reg = pool.reg
                sample.update(at=time.time(), pool=reg.pool_id, host=reg.host, block=reg.block_id)
                self.samples[pool.key] = sample
            self.started.extend(started)
        elif kind == P.EVENT:
            if len(msg) != 4:
                raise P.ProtocolError(f"an EVENT message of {len(msg) - 1} frames")
            news = P.parse_pool_event(msg[3])
            # else news of a task no longer there; an express task the pool never had from here
            if news["task"] in pool.outstanding or news.get("express"):
                self.event(**news, pool=pool.reg.pool_id, block=pool.reg.block_id)
        elif kind == P.CANCEL_REPLY:
            if len(msg) != 5:
                raise P.ProtocolError(f"a CANCEL_REPLY message of {len(msg) - 1} frames")
            self.cancelled_by_pool(pool, bytes(msg[3]), _ids(msg[4], "a cancelled frame"))
        elif kind == P.INIT_FAILED:
            info = P.load_json(msg[3], P.MAX_CONTROL_JSON, "an INIT_FAILED reason") if len(msg) > 3 else None
            reason = info.get("reason") if isinstance(info, dict) else None
            if not isinstance(reason, str):
                raise P.ProtocolError("an INIT_FAILED message without its reason")
            event = {"event": "pool_failed", "reason": reason, "block": pool.reg.block_id}
            self.to_driver([P.EVENT, json.dumps(event).encode(), *msg[4:]])
            self.pool_lost(pool, "its workers could not start", notify=False)
            return
        else:
            raise P.ProtocolError(f"a message of kind {kind!r} from a registered pool")
        pool.last_heard = now
        if credit > pool.credit:
            pool.credit = credit

    def register(self, sock: Any, identity: bytes, msg: list[Any]) -> None:
        """Check a would-be pool's registration: its token first, then its JSON.

        A registration without the right token is counted and never answered; one from a
        pool of other versions is refused with the reason, which the driver is told.

        Raises:
            ProtocolError: the message is no registration, or its JSON is malformed.
        """
        kind = _kind(msg)
        if kind != P.REGISTER:
            raise P.ProtocolError(f"a message of kind {kind!r} before registering")
        local = isinstance(sock, StreamConnection)
        if len(msg) == 4:  # protocol 1: the token inside the JSON, which cannot be read first
            if local:
                self.refuse(sock, identity, "a registration in an older format, without a token frame")
                return
            # A TCP peer has passed CurveZMQ, so its JSON may be read to say what it speaks.
            try:
                P.parse_registration(msg[3])
            except P.VersionMismatch as exc:
                self.reject(sock, identity, exc)
                return
            raise P.ProtocolError("a registration of the current versions in an older format")
        if len(msg) != 5:
            raise P.ProtocolError(f"a registration of {len(msg) - 1} frames")
        credit = _credit(msg)
        if not hmac.compare_digest(memoryview(msg[3]), self.token):
            self.refuse(sock, identity, "a registration without the executor's token")
            return
        if local:
            del self.unregistered[sock]
            sock.limit(P.MAX_MESSAGE, P.MAX_FRAMES)
        try:
            reg = P.parse_registration(msg[4])
        except P.VersionMismatch as exc:
            self.reject(sock, identity, exc)
            return
        if self.config is None:
            self.waiting_registrations.append((sock, identity, reg, credit))
        else:
            self.accept_pool(sock, identity, reg, credit)

    def refuse(self, sock: Any, identity: bytes, why: str) -> None:
        """Count and log a refused registration, saying nothing to the peer.

        A local connection stays open until its next message or its deadline (see
        :data:`REGISTER_TIMEOUT`); a TCP peer is ignored from then on.
        """
        self.refused += 1
        logger.warning("refused %s: it sent %s", _peer(sock), why)
        if not isinstance(sock, StreamConnection):
            self.ignore(identity)

    def reject(self, sock: Any, identity: bytes, mismatch: P.VersionMismatch) -> None:
        """Tell a pool of other versions why it is refused, and tell the driver."""
        reason = str(mismatch)
        try:
            _send(sock, identity, [P.REJECT, reason.encode()])
        except (zmq.ZMQError, OSError):
            pass
        self.event(event="pool_rejected", reason=reason, block=mismatch.block_id)

    def accept_pool(self, sock: Any, identity: bytes, reg: P.Registration, credit: int) -> None:
        """Take a registered pool on: send it the settings and tell the driver."""
        pool = _Pool(sock, identity, reg, credit, time.monotonic())
        pool.draining = pool.block in self.draining
        self.pools[pool.key] = pool
        self.send_pool(pool, [P.ACCEPT, self.settings, *(self.config or ())])
        self.event(
            event="pool_registered",
            pool=reg.pool_id,
            block=reg.block_id,
            workers=reg.workers,
            host=reg.host,
            pid=reg.pid,
            shape=reg.shape.to_json() if reg.shape is not None else None,
        )

    def misbehaved(self, sock: Any, identity: bytes, why: str) -> None:
        """Drop a peer that broke the wire format: close its connection, or ignore it on TCP.

        A registered pool counts as lost (its tasks are requeued); an unregistered peer is
        counted in ``refused``.
        """
        pool = self.pools.get((id(sock), identity))
        if pool is None:
            self.refused += 1
        logger.warning(
            "dropped %s: it sent %s", _peer(sock) if pool is None else f"pool {pool.reg.pool_id}", why
        )
        if isinstance(sock, StreamConnection):
            self.drop_connection(sock, f"it sent {why}")
            return
        self.ignore(identity)
        if pool is not None:
            self.pool_lost(pool, f"it sent {why}")
            try:
                _send(sock, identity, [P.SHUTDOWN])
            except (zmq.ZMQError, OSError):
                pass

    def ignore(self, identity: bytes) -> None:
        """Ignore a TCP peer's messages from now on (the oldest such peer is forgotten)."""
        self.ignored[identity] = None
        if len(self.ignored) > MAX_IGNORED:
            del self.ignored[next(iter(self.ignored))]

    def accept_connections(self, now: float) -> None:
        """Take new local connections, each held to small messages until it registers."""
        for connection in self.local_pools.accept():
            self.connections.append(connection)
            self.poller.register(connection, zmq.POLLIN)
            self.unregistered[connection] = now + REGISTER_TIMEOUT
            if len(self.unregistered) > MAX_UNREGISTERED:
                oldest = next(iter(self.unregistered))
                self.refused += 1
                logger.warning("closed a local connection: more than %d waited to register", MAX_UNREGISTERED)
                self.drop_connection(oldest, "too many connections waited to register")

    def expire_connections(self, now: float) -> None:
        """Close the local connections that did not register in time."""
        for connection, deadline in list(self.unregistered.items()):
            if now < deadline:
                break  # in order of acceptance, so of deadline
            self.refused += 1
            logger.warning("closed a local connection: no registration within %g s", REGISTER_TIMEOUT)
            self.drop_connection(connection, "it did not register in time")

    def drop_connection(self, connection: StreamConnection, why: str) -> None:
        """Close a local connection and forget it; a pool on it is lost, for ``why``."""
        self.poller.unregister(connection)
        self.connections.remove(connection)
        self.unregistered.pop(connection, None)
        if any(waiting[0] is connection for waiting in self.waiting_registrations):
            self.waiting_registrations = [w for w in self.waiting_registrations if w[0] is not connection]
        connection.close()
        pool = self.pools.get((id(connection), b""))
        if pool is not None:
            self.pool_lost(pool, why)

    def on_connection(self, connection: StreamConnection, event: int, now: float) -> None:
        """Handle what a local pool's connection says, its room to write, or its end."""
        if event & zmq.POLLOUT:
            try:
                connection.flush()
            except OSError:
                pass
        while connection.readable():
            if not self.on_pool(connection, [b"", *connection.recv_multipart()], now):
                return  # dropped
        if connection.closed:
            error = connection.error
            if error is None:
                self.drop_connection(connection, "its connection closed")
            else:  # it broke the framing or the limits
                self.misbehaved(connection, b"", error)

    def pool_lost(self, pool: _Pool, why: str, notify: bool = True) -> None:
        """Forget a pool and requeue its tasks; a task lost too often fails instead."""
        if self.pools.pop(pool.key, None) is None:
            return
        limit = self.args.lost_task_retries
        # A block that reached its end took its tasks with it: not the tasks' fault.
        charge = 0 if pool.closing is not None and time.monotonic() >= pool.closing else 1
        requeued = []
        for task_id, (seq, (fields, main, oob)) in pool.outstanding.items():
            lost = fields[P.T_LOST] + charge
            if lost > limit:
                error = PoolLostError(
                    f"task {task_id}: the worker pool running it was lost ({why}) {lost} time(s); "
                    "it is not retried again"
                )
                out = dumps((error, ""))
                meta = P.result_meta(task_id, P.FAILED, len(out[0]), len(out) - 1, tag=pool.tag, lost=lost)
                self.to_driver_meta.append(meta)
                self.to_driver_mains.append(out[0])
                self.to_driver_extra.extend(out[1:])
            else:
                plain = pool.ledger is None or task_id not in pool.ledger.held
                fields = (*fields[: P.T_LOST], lost, *fields[P.T_LOST + 1 :])
                heapq.heappush(self.queue if plain else self.resourced, (-fields[1], seq, (fields, main, oob)))
                requeued.append(task_id)
        pool.outstanding.clear()
        self.samples.pop(pool.key, None)
        for request, (asked, _cancelled) in list(self.cancels.items()):
            if pool.key in asked:
                asked.discard(pool.key)
                self.answer_cancel(request)
        if notify:
            reg = pool.reg
            self.event(event="pool_lost", pool=reg.pool_id, block=reg.block_id, reason=why, requeued=requeued)

    def dispatch(self) -> None:
        """Place tasks with resources where they fit now, then hand queued default tasks to
        pools with credit, spreading a burst evenly across them."""
        now = time.monotonic()
        held: set[tuple[int, bytes]] = set()
        if self.resourced:
            held = self.place_resourced(now)
        if not self.queue:
            return
        ready = [
            p
            for p in self.pools.values()
            if p.credit > p.sent and not p.draining and (p.closing is None or now < p.closing) and p.key not in held
        ]
        if not ready:
            return
        dealt = deal(self.queue, [p.credit - p.sent for p in ready], [p.end for p in ready], now)
        any_dealt = False
        for pool, entries in zip(ready, dealt):
            if not entries:
                continue
            any_dealt = True
            outstanding = pool.outstanding
            for _p, seq, item in entries:
                outstanding[item[0][0]] = (seq, item)
            pool.sent += len(entries)
            pool.plain_out += len(entries)
            pool.idle_since = None
            for start in range(0, len(entries), BATCH_LIMIT):
                items = [entry[2] for entry in entries[start : start + BATCH_LIMIT]]
                if not self.send_pool(pool, P.join(P.TASKS, P.TASK_META, items)):
                    break  # lost: pool_lost requeued what it held
        if any_dealt:  # default tasks passed the tasks with resources that wait
            for _p, _seq, item in self.resourced:
                self.passes[item[0][0]] = self.passes.get(item[0][0], 0) + 1

    def place_resourced(self, now: float) -> set[tuple[int, bytes]]:
        """Send each task with resources, in priority order, to a pool where it fits now.

        Returns the pools held for a task that was passed too often (see :func:`place`).  A
        task that no registered pool could ever run fails once it has waited
        ``unsatisfiable_after`` seconds with pools registered.
        """
        pools = {
            p.key: p
            for p in self.pools.values()
            if p.ledger is not None and not p.draining and (p.closing is None or now < p.closing)
        }
        ledgers = {}
        for key, pool in pools.items():
            assert pool.ledger is not None
            pool.ledger.plain = min(pool.plain_out, pool.reg.workers)
            ledgers[key] = pool.ledger
        entries = sorted(self.resourced)
        needs = [(entry[2][0][0], Need.from_wire(*entry[2][0][P.T_CORES : P.T_RANKS + 1])) for entry in entries]
        placed, held = place(needs, ledgers, self.passes)
        where = dict(placed)
        if placed:
            kept: list[tuple[int, int, P.Item]] = []
            for entry in entries:
                task_id = entry[2][0][0]
                if task_id not in where:
                    kept.append(entry)
                    continue
                pool = pools[where[task_id]]
                assert pool.ledger is not None
                fields, main, oob = entry[2]
                shape = pool.ledger.shape
                if fields[P.T_NODES]:  # an MPI task: the mask names its nodes, when the block is small enough
                    masked = len(shape.nodes) <= MAX_MASKED_NODES
                    mask = node_mask(pool.ledger.nodes_of(task_id)) if masked else 0
                else:
                    mask = gpu_mask(shape, pool.ledger.held[task_id][1])
                item = ((*fields[: P.T_GPU_MASK], mask, *fields[P.T_GPU_MASK + 1 :]), main, oob)
                pool.outstanding[task_id] = (entry[1], item)
                pool.sent += 1
                pool.idle_since = None
                self.unplaceable_since.pop(task_id, None)
                self.send_pool(pool, P.join(P.TASKS, P.TASK_META, [item]))
            heapq.heapify(kept)
            self.resourced = kept
        self.fail_unsatisfiable(now, [n for n in needs if n[0] not in where])
        return held

    def fail_unsatisfiable(self, now: float, waiting: list[tuple[int, Need]]) -> None:
        """Fail the waiting tasks that no registered pool could ever run, after a while."""
        shapes = [p.ledger.shape for p in self.pools.values() if p.ledger is not None]
        if not shapes:
            return
        doomed: dict[int, str] = {}
        for task_id, need in waiting:
            why = unsatisfiable(need, shapes)
            if why is None:
                self.unplaceable_since.pop(task_id, None)
                continue
            since = self.unplaceable_since.setdefault(task_id, now)
            if now - since >= self.args.unsatisfiable_after:
                doomed[task_id] = why
        if not doomed:
            return
        self.resourced = [e for e in self.resourced if e[2][0][0] not in doomed]
        heapq.heapify(self.resourced)
        for task_id, why in doomed.items():
            self.unplaceable_since.pop(task_id, None)
            self.passes.pop(task_id, None)
            error = ResourceUnsatisfiableError(
                f"task {task_id}: {why}; no pool that registered in "
                f"{self.args.unsatisfiable_after:g} s could run it"
            )
            out = dumps((error, ""))
            self.to_driver_meta.append(P.result_meta(task_id, P.FAILED, len(out[0]), len(out) - 1))
            self.to_driver_mains.append(out[0])
            self.to_driver_extra.extend(out[1:])

    def idle_blocks(self, now: float) -> dict[str, float]:
        """Seconds each block's pools have all been idle (0 for a block with a busy pool)."""
        idle: dict[str, float] = {}
        for pool in self.pools.values():
            seconds = 0.0 if pool.idle_since is None else now - pool.idle_since
            block = pool.block
            idle[block] = min(idle.get(block, seconds), seconds)
        return idle

    def finish_draining(self) -> None:
        """Stop the idle pools of draining blocks; report each block, with the pools it had,
        once all its pools are gone."""
        for pool in list(self.pools.values()):
            if pool.draining and not pool.outstanding:
                self.pools.pop(pool.key, None)
                self.samples.pop(pool.key, None)
                self.stopped.setdefault(pool.block, []).append(pool.reg.pool_id)
                try:
                    _send(pool.sock, pool.identity, [P.SHUTDOWN])
                except (zmq.ZMQError, OSError):
                    pass
        remaining = {pool.block for pool in self.pools.values()}
        for block in list(self.draining):
            if block not in remaining:
                self.draining.discard(block)
                self.event(event="block_drained", block=block, pools=self.stopped.pop(block, []))

    def probe_pools(self) -> None:
        """Send every pool a heartbeat; a pool whose connection is gone is found lost."""
        for pool in list(self.pools.values()):
            self.send_pool(pool, [P.HEARTBEAT])

    # -- main loop -----------------------------------------------------------------------

    def driver_alive(self) -> bool:
        """Whether the driver process still exists (the interchange is its child)."""
        if self.driver_pid and os.getppid() != self.driver_pid:
            try:
                os.kill(self.driver_pid, 0)
            except ProcessLookupError:
                return False
        return True

    def run(self) -> None:
        poller = zmq.Poller()
        from_driver = self.from_driver
        poller.register(from_driver.fd, zmq.POLLIN)
        for sock in (*self.pool_socks, *self.monitors, self.zap.socket, self.local_pools):
            poller.register(sock, zmq.POLLIN)
        self.poller = poller
        period = self.args.heartbeat_period
        threshold = self.args.heartbeat_threshold
        last_beat = time.monotonic()
        client = self.client
        while self.running:
            watch_room(poller, client.fd, client, pollout=zmq.POLLOUT)
            now = time.monotonic()
            wake = last_beat + period
            if self.probes:
                wake = min(wake, self.probes[0])
            events = dict(poller.poll(int(max(0.0, wake - now) * 1000)))
            now = time.monotonic()
            if self.zap.socket in events:
                self.zap.handle()
            for monitor in self.monitors:
                if monitor in events:
                    while P.readable(monitor):
                        monitor.recv_multipart()
                    self.probes = sorted(now + d for d in _PROBE_DELAYS)
            if from_driver.fd in events:
                for message in from_driver.read():
                    self.on_driver(message)
                if from_driver.closed:
                    self.driver_gone()
            if client.fd in events:
                try:
                    client.flush()
                except OSError:
                    self.driver_gone()
            for sock in self.pool_socks:
                if sock in events:
                    while P.readable(sock):
                        self.on_pool(sock, sock.recv_multipart(copy=False), now)
            # zmq.Poller reports objects that are not ZeroMQ sockets by their file descriptors.
            if self.local_pools.fileno() in events:
                self.accept_connections(now)
            for connection in list(self.connections):
                event = events.get(connection.fileno())  # none for a connection closed meanwhile
                if event:
                    self.on_connection(connection, event, now)
            if self.probes and now >= self.probes[0]:
                while self.probes and now >= self.probes[0]:
                    self.probes.pop(0)
                self.probe_pools()
            if self.draining:
                self.finish_draining()
            if now - last_beat >= period:
                last_beat = now
                self.probe_pools()
                self.to_driver([P.HEARTBEAT, json.dumps(self.idle_blocks(now)).encode()])
                if self.samples:
                    self.event(event="samples", samples=list(self.samples.values()))
                    self.samples = {}
                for pool in list(self.pools.values()):
                    if now - pool.last_heard > threshold:
                        self.pool_lost(pool, f"no heartbeat for {threshold:g} s")
                if self.unregistered:
                    self.expire_connections(now)
                if not self.driver_alive():
                    logger.warning("the driver process is gone; shutting down")
                    self.running = False
                    self.orphaned = True
            self.dispatch()
            for connection in self.connections:
                watch_room(poller, connection, connection.sender, pollout=zmq.POLLOUT, base=zmq.POLLIN)
            if self.to_driver_meta:
                started, self.started = self.started, []
                self.to_driver(
                    [
                        P.RESULTS,
                        P.pack_ids(started),
                        b"".join(self.to_driver_meta),
                        b"".join(self.to_driver_mains),
                        *self.to_driver_extra,
                    ]
                )
                self.to_driver_meta, self.to_driver_mains, self.to_driver_extra = [], [], []
            elif self.started:  # pools report starts already batched: pass them on at once
                self.to_driver([P.STARTED, P.pack_ids(self.started)])
                self.started = []

    def close(self) -> None:
        for pool in list(self.pools.values()):
            try:
                _send(pool.sock, pool.identity, [P.SHUTDOWN])
            except (zmq.ZMQError, OSError):
                pass
        for connection in self.connections:
            try:
                connection.flush()
            except OSError:
                pass
        for sock in self.pool_socks:
            sock.disable_monitor()
        time.sleep(0.05)  # let the shutdown messages leave before the sockets close
        self.zap.close()
        self.context.destroy(linger=0)
        for connection in self.connections:
            connection.close()
        self.local_pools.close()
        if self.orphaned or not self.driver_alive():
            for directory in self.args.cleanup:
                shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bind the given ports, then route until told to stop."""
    args = InterchangeArgs.parse(sys.argv[1:] if argv is None else argv)
    setup_logging(args.log_file)
    interchange = Interchange(args)
    try:
        interchange.run()
    finally:
        interchange.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
