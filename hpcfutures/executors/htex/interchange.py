"""The interchange: queues the driver's tasks and deals them out to worker pools.

A separate process, started by the driver.  It binds two CurveZMQ server sockets — one the
driver connects to, one for pools — and admits only peers holding this executor's keys.
Tasks wait in a priority queue (higher priority first, then submission order) and go to
pools as the pools grant credit; results go straight back to the driver.  Only packed
headers are read here; payload frames pass through untouched.

It notices a lost pool by the socket closing (a probe of every pool follows each disconnect
event) or, failing that, by missed heartbeats, and requeues the pool's tasks.  It exits when
the driver asks, or when the driver's process is gone.

Run as ``python -m hpcfutures.executors.htex.interchange --keys FILE ...``; it prints one
JSON line with the ports it bound.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import sys
import time
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ...errors import PoolLostError
from ...serialize import dumps
from . import protocol as P
from . import security

logger = logging.getLogger(__name__)

BATCH_LIMIT = 256
_PROBE_DELAYS = (0.0, 0.05, 0.25, 1.0)


class _Pool:
    __slots__ = ("identity", "info", "credit", "sent", "outstanding", "last_heard")

    def __init__(self, identity: bytes, info: dict[str, Any], credit: int, now: float):
        self.identity = identity
        self.info = info
        self.credit = credit
        self.sent = 0
        self.outstanding: dict[int, tuple[int, tuple[int, int, float, int, int], list[Any]]] = {}
        self.last_heard = now


class Interchange:
    """Routes tasks from one driver to many pools.  See the module docstring."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        keys = security.load(args.keys)
        self.context = zmq.Context()
        self.zap = security.ZapHandler(self.context, keys)
        self.client = self.context.socket(zmq.DEALER)
        self.pools_sock = self.context.socket(zmq.ROUTER)
        for sock in (self.client, self.pools_sock):
            sock.linger = 0
            sock.sndhwm = sock.rcvhwm = 0
        self.pools_sock.router_mandatory = True
        security.make_server(self.client, keys, security.DRIVER_DOMAIN)
        security.make_server(self.pools_sock, keys, security.POOL_DOMAIN)
        self.client_port = self.client.bind_to_random_port("tcp://127.0.0.1")
        host = args.address
        if args.pool_port:
            self.pools_sock.bind(f"tcp://{host}:{args.pool_port}")
            self.pool_port = args.pool_port
        else:
            self.pool_port = self.pools_sock.bind_to_random_port(f"tcp://{host}")
        self.monitor = self.pools_sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.queue: list[tuple[int, int, tuple[int, int, float, int, int], list[Any]]] = []
        self.seq = 0
        self.pools: dict[bytes, _Pool] = {}
        self.waiting_registrations: list[tuple[bytes, list[zmq.Frame]]] = []
        self.config: list[Any] | None = None
        self.settings = b""
        self.probes: list[float] = []
        self.driver_pid = args.driver_pid
        self.running = True
        self.to_driver_meta: list[bytes] = []
        self.to_driver_frames: list[Any] = []

    # -- driver side ------------------------------------------------------------------------

    def on_driver(self, msg: list[zmq.Frame]) -> None:
        kind = msg[0].bytes
        if kind == P.TASKS:
            seq = self.seq
            queue = self.queue
            for meta, frames in P.iter_tasks(msg[1].bytes, msg, 2):
                seq += 1
                heapq.heappush(queue, (-meta[1], seq, meta, frames))
            self.seq = seq
        elif kind == P.CANCEL:
            self.cancel(msg[1].bytes, set(P.unpack_ids(msg[2].bytes)))
        elif kind == P.CANCEL_QUEUED:
            self.cancel(msg[1].bytes, None)
            for pool in self.pools.values():
                self.send_pool(pool, [P.CANCEL_QUEUED])
        elif kind == P.CONFIG:
            self.settings = msg[1].bytes
            self.config = msg[2:]
            for identity, frames in self.waiting_registrations:
                self.register(identity, frames)
            self.waiting_registrations = []
        elif kind == P.SHUTDOWN:
            self.running = False

    def cancel(self, request: bytes, ids: set[int] | None) -> None:
        """Drop queued tasks (the given ones, or all) and tell the driver which were dropped."""
        kept = []
        dropped = []
        for entry in self.queue:
            if ids is None or entry[2][0] in ids:
                dropped.append(entry[2][0])
            else:
                kept.append(entry)
        if dropped:
            heapq.heapify(kept)
            self.queue = kept
        self.client.send_multipart([P.CANCEL_REPLY, request, P.pack_ids(dropped)])

    def event(self, **info: Any) -> None:
        self.client.send_multipart([P.EVENT, json.dumps(info).encode()])

    # -- pool side ----------------------------------------------------------------------------

    def send_pool(self, pool: _Pool, frames: list[Any]) -> bool:
        try:
            self.pools_sock.send_multipart([pool.identity, *frames], copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.pool_lost(pool, "its connection closed")
            return False

    def register(self, identity: bytes, msg: list[zmq.Frame]) -> None:
        try:
            info = json.loads(msg[3].bytes)
        except (ValueError, IndexError):
            info = {}
        problem = P.version_mismatch(info)
        if problem is not None:
            self.pools_sock.send_multipart([identity, P.REJECT, problem.encode()])
            self.event(event="pool_rejected", reason=problem, block=info.get("block_id"))
            return
        if self.config is None:
            self.waiting_registrations.append((identity, msg))
            return
        pool = _Pool(identity, info, P.CREDIT.unpack(msg[2].bytes)[0], time.monotonic())
        self.pools[identity] = pool
        self.send_pool(pool, [P.ACCEPT, self.settings, *self.config])
        self.event(event="pool_registered", pool=info.get("pool_id"), block=info.get("block_id"),
                   workers=info.get("workers"), host=info.get("host"))

    def on_pool(self, msg: list[zmq.Frame], now: float) -> None:
        identity = msg[0].bytes
        kind = msg[1].bytes
        pool = self.pools.get(identity)
        if pool is None:
            if kind == P.REGISTER:
                self.register(identity, msg)
            return
        pool.last_heard = now
        credit = P.CREDIT.unpack(msg[2].bytes)[0]
        if credit > pool.credit:
            pool.credit = credit
        if kind == P.RESULTS:
            meta = msg[3].bytes
            outstanding = pool.outstanding
            for fields in P.RESULT_META.iter_unpack(meta):
                outstanding.pop(fields[0], None)
            self.to_driver_meta.append(meta)
            self.to_driver_frames.extend(msg[4:])
        elif kind == P.INIT_FAILED:
            info = json.loads(msg[3].bytes)
            self.client.send_multipart(
                [P.EVENT, json.dumps({"event": "pool_failed", "reason": info["reason"],
                                      "block": pool.info.get("block_id")}).encode(), *msg[4:]],
                copy=False,
            )
            self.pool_lost(pool, "its workers could not start", notify=False)

    def pool_lost(self, pool: _Pool, why: str, notify: bool = True) -> None:
        """Forget a pool and requeue its tasks; a task lost too often fails instead."""
        if self.pools.pop(pool.identity, None) is None:
            return
        limit = self.args.lost_task_retries
        for task_id, (seq, meta, frames) in pool.outstanding.items():
            lost = meta[3] + 1
            if lost > limit:
                error = PoolLostError(
                    f"task {task_id}: the worker pool running it was lost ({why}) {lost} time(s); "
                    "it is not retried again"
                )
                out = dumps((error, ""))
                self.to_driver_meta.append(P.RESULT_META.pack(task_id, P.FAILED, 0.0, len(out)))
                self.to_driver_frames.extend(out)
            else:
                heapq.heappush(self.queue, (-meta[1], seq, (meta[0], meta[1], meta[2], lost, meta[4]), frames))
        pool.outstanding.clear()
        if notify:
            self.event(event="pool_lost", pool=pool.info.get("pool_id"), block=pool.info.get("block_id"), reason=why)

    def dispatch(self) -> None:
        queue = self.queue
        if not queue:
            return
        for pool in list(self.pools.values()):
            room = pool.credit - pool.sent
            if room <= 0:
                continue
            room = min(room, BATCH_LIMIT)
            metas = []
            frames: list[Any] = []
            outstanding = pool.outstanding
            pack = P.TASK_META.pack
            while room and queue:
                _p, seq, meta, payload = heapq.heappop(queue)
                metas.append(pack(*meta))
                frames.extend(payload)
                outstanding[meta[0]] = (seq, meta, payload)
                room -= 1
            pool.sent += len(metas)
            self.send_pool(pool, [P.TASKS, b"".join(metas), *frames])
            if not queue:
                return

    def probe_pools(self) -> None:
        """Send every pool a heartbeat; a pool whose connection is gone is found lost."""
        for pool in list(self.pools.values()):
            self.send_pool(pool, [P.HEARTBEAT])

    # -- main loop -----------------------------------------------------------------------

    def driver_alive(self) -> bool:
        if self.driver_pid and os.getppid() != self.driver_pid:
            try:
                os.kill(self.driver_pid, 0)
            except ProcessLookupError:
                return False
        return True

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.client, zmq.POLLIN)
        poller.register(self.pools_sock, zmq.POLLIN)
        poller.register(self.zap.socket, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        period = self.args.heartbeat_period
        threshold = self.args.heartbeat_threshold
        last_beat = time.monotonic()
        client, pools_sock = self.client, self.pools_sock
        while self.running:
            now = time.monotonic()
            wake = last_beat + period
            if self.probes:
                wake = min(wake, self.probes[0])
            events = dict(poller.poll(max(0.0, wake - now) * 1000))
            now = time.monotonic()
            if self.zap.socket in events:
                self.zap.handle()
            if self.monitor in events:
                while self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    parse_monitor_message(self.monitor.recv_multipart())
                self.probes = sorted(now + d for d in _PROBE_DELAYS)
            if client in events:
                while client.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self.on_driver(client.recv_multipart(copy=False))
            if pools_sock in events:
                while pools_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self.on_pool(pools_sock.recv_multipart(copy=False), now)
            if self.probes and now >= self.probes[0]:
                while self.probes and now >= self.probes[0]:
                    self.probes.pop(0)
                self.probe_pools()
            if now - last_beat >= period:
                last_beat = now
                self.probe_pools()
                client.send(P.HEARTBEAT)
                for pool in list(self.pools.values()):
                    if now - pool.last_heard > threshold:
                        self.pool_lost(pool, f"no heartbeat for {threshold:g} s")
                if not self.driver_alive():
                    logger.warning("the driver process is gone; shutting down")
                    self.running = False
            self.dispatch()
            if self.to_driver_meta:
                client.send_multipart([P.RESULTS, b"".join(self.to_driver_meta), *self.to_driver_frames],
                                      copy=False)
                self.to_driver_meta, self.to_driver_frames = [], []

    def close(self) -> None:
        for pool in list(self.pools.values()):
            try:
                self.pools_sock.send_multipart([pool.identity, P.SHUTDOWN])
            except zmq.ZMQError:
                pass
        self.pools_sock.disable_monitor()
        time.sleep(0.05)  # let the shutdown messages leave before the sockets close
        self.zap.close()
        self.context.destroy(linger=0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hpcfutures-interchange")
    parser.add_argument("--keys", required=True, help="the interchange's key file")
    parser.add_argument("--address", default="127.0.0.1", help="the address pools connect to")
    parser.add_argument("--pool-port", type=int, default=0)
    parser.add_argument("--driver-pid", type=int, default=0)
    parser.add_argument("--heartbeat-period", type=float, default=1.0)
    parser.add_argument("--heartbeat-threshold", type=float, default=10.0)
    parser.add_argument("--lost-task-retries", type=int, default=2)
    parser.add_argument("--log-file", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bind, print the ports as one JSON line, then route until told to stop."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.log_file:
        logging.basicConfig(
            filename=args.log_file, level=logging.DEBUG,
            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        )
    interchange = Interchange(args)
    print(json.dumps({"client_port": interchange.client_port, "pool_port": interchange.pool_port}), flush=True)
    try:
        interchange.run()
    finally:
        interchange.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
