"""A remote pool's relay: the process that holds its ZeroMQ socket, so its manager has no thread.

A pool manager forks its workers, and replaces dead ones while it runs.  A process that
forks must have no thread but the one that forks: a lock another thread holds at that moment
stays held, forever, in the child.  A ZeroMQ context runs I/O threads as soon as it has a
socket, so the manager of a pool on another node cannot hold the CurveZMQ DEALER it reaches
the interchange with.  This small process, forked by the manager before any ZeroMQ context
exists and before any worker, holds it instead.

The relay owns the DEALER, connected to the interchange with the pool's keys, and one end of
a Unix socket pair whose other end the manager reads as a :class:`.stream.StreamConnection`,
exactly as it reads a local pool's connection.  It forwards whole messages both ways and
parses none: the manager keeps registration, heartbeats and every decision.  Frames cross
without a copy where the two sides allow it (ZeroMQ frames are written to the socket pair as
they are; what comes from the manager is handed to ZeroMQ with ``copy=False``).

The relay exits when the manager's end closes (end-of-file), and dies with the manager
(``PR_SET_PDEATHSIG``); the manager sees a relay that died as a connection that closed, just
as it sees a local interchange that went.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from pathlib import Path

import zmq

from . import protocol as P
from . import security
from .pipes import PIPE_SIZE, watch_room
from .stream import StreamConnection

logger = logging.getLogger(__name__)

#: Once the manager has closed its end, what it sent last (say, the report that its workers
#: cannot start) gets this long to leave; a socket with nothing queued closes at once.
FINAL_LINGER_MS = 500
_PR_SET_PDEATHSIG = 1


def start_relay(
    fork: ForkContext, address: str, key_file: str | Path
) -> tuple[BaseProcess, StreamConnection]:
    """Fork a relay to the interchange at ``address``; return it and the manager's connection.

    Call it before this process has a ZeroMQ context or a worker: the relay inherits every
    file descriptor open now, and closes only the manager's end of the socket pair.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (ours, theirs):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:  # large batches cross in fewer wake-ups; the kernel caps what it grants
                sock.setsockopt(socket.SOL_SOCKET, option, PIPE_SIZE)
            except OSError:
                pass
    process = fork.Process(
        target=relay_main,
        args=(theirs, ours, address, str(key_file), os.getpid()),
        name="hpcfutures-relay",
        daemon=True,
    )
    try:
        process.start()
    finally:
        theirs.close()  # the relay's alone: when it exits, the manager reads end-of-file
    return process, StreamConnection(ours)


def _die_with_parent(parent_pid: int) -> None:
    """Make sure the relay does not outlive its manager, even one killed by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # end-of-file on the socket pair still tells it
    if os.getppid() != parent_pid:
        os._exit(70)


def relay_main(
    link_sock: socket.socket, manager_end: socket.socket, address: str, key_file: str, parent_pid: int
) -> None:
    """Relay messages between ``link_sock`` and the interchange until the manager goes."""
    _die_with_parent(parent_pid)
    manager_end.close()
    link = StreamConnection(link_sock)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = dealer.rcvhwm = 0
    dealer.reconnect_ivl = 20  # the interchange may still be starting
    security.make_client(dealer, key_file)
    dealer.connect(address)
    linger = 0
    try:
        relay(link, dealer)
        linger = FINAL_LINGER_MS
    finally:
        dealer.close(linger=linger)
        context.term()
        link.close()


def relay(link: StreamConnection, dealer: zmq.Socket) -> None:
    """Forward whole messages between the manager's link and the DEALER; return once the link closes."""
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(link, zmq.POLLIN)
    link_fd = link.fileno()  # zmq.Poller reports objects that are not ZeroMQ sockets by fd
    while True:
        watch_room(poller, link, link.sender, pollout=zmq.POLLOUT, base=zmq.POLLIN)
        events = dict(poller.poll())
        try:
            if link_fd in events:
                if link.sender.watched:
                    link.flush()
                while link.readable():
                    dealer.send_multipart(link.recv_multipart(), copy=False)
                if link.closed:
                    logger.debug("relay: the manager closed its end")
                    return
            while P.readable(dealer):
                link.send_multipart(dealer.recv_multipart(copy=False))
        except OSError as exc:  # the manager is gone
            logger.debug("relay: the manager's end failed: %s", exc)
            return
