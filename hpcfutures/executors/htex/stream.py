"""A local pool's connection to the interchange: framed messages over a Unix stream socket.

Pools on the interchange's own node need neither CurveZMQ nor ZeroMQ's routing, and a plain
socket spares every message the two I/O-thread wake-ups a ZeroMQ socket adds (see
:mod:`.pipes`, whose framing this uses).  The socket sits in the driver's private directory
(mode 0700), and a pool still presents the executor's token when it registers.

:class:`StreamConnection` offers the few socket calls the pool manager and the interchange
make (``send_multipart``, ``recv_multipart``, ``poll``, ``fileno``), so their loops treat it
like a ZeroMQ socket; ``zmq.Poller`` accepts it as it accepts any object with ``fileno()``.

The listener's connections read under the limits it was given (see :class:`.pipes.Receiver`),
so a peer that has not proved who it is cannot make the interchange allocate much.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from typing import Any, Sequence

from .pipes import UNLIMITED, Receiver, Sender

logger = logging.getLogger(__name__)

SCHEME = "unix://"


class StreamConnection:
    """One end of a framed-message connection over a stream socket; never blocks on sends."""

    def __init__(self, sock: socket.socket, *, max_message: int = UNLIMITED, max_frames: int = UNLIMITED):
        self.sock = sock
        fd = sock.fileno()
        self.sender = Sender(fd)  # also makes the socket non-blocking
        self.receiver = Receiver(fd, max_message=max_message, max_frames=max_frames)
        self.inbox: deque[list[memoryview]] = deque()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    @classmethod
    def connect(cls, address: str, timeout: float) -> StreamConnection:
        """Connect to ``unix://PATH``, retrying while the listener is not up yet.

        Raises:
            OSError: nothing listened at the path within ``timeout`` seconds.
        """
        path = address[len(SCHEME) :]
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def fileno(self) -> int:
        """The socket's file descriptor; -1 once closed."""
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        """Whether the peer has gone and every message it sent has been taken."""
        return self.receiver.closed and not self.inbox

    @property
    def error(self) -> str | None:
        """Why reading stopped, if the peer broke the framing or the limits."""
        return self.receiver.error

    def limit(self, max_message: int, max_frames: int) -> None:
        """Set the limits on the messages still to come (see :class:`.pipes.Receiver`)."""
        self.receiver.max_message = max_message
        self.receiver.max_frames = max_frames

    def send_multipart(self, frames: Sequence[Any], flags: int = 0, copy: bool = False) -> None:
        """Send one message; what the socket cannot take now goes when it has room.

        Raises:
            OSError: the peer has gone.
        """
        self.sender.send(frames)

    def flush(self) -> bool:
        """Write what waits for room; return True if some still waits."""
        return self.sender.flush()

    def readable(self) -> bool:
        """Whether a whole message has arrived (reads what the socket holds, without waiting)."""
        if not self.inbox and not self.receiver.closed:
            self.inbox.extend(self.receiver.read())
        return bool(self.inbox)

    def poll(self, timeout: float) -> bool:
        """Wait up to ``timeout`` milliseconds for a whole message; return whether one came."""
        deadline = time.monotonic() + timeout / 1000
        while not self.readable():
            left = deadline - time.monotonic()
            if left <= 0 or self.receiver.closed:
                return False
            self.poller.poll(left * 1000)
        return True

    def recv_multipart(self, copy: bool = False) -> list[memoryview]:
        """Return the next message, waiting for it.

        Raises:
            ConnectionError: the peer went before sending one.
        """
        while not self.readable():
            if self.receiver.closed:
                raise ConnectionError("the connection closed")
            self.poller.poll()
        return self.inbox.popleft()

    def close(self) -> None:
        """Close the socket; what was received and not yet taken is dropped."""
        self.receiver.closed = True
        self.inbox.clear()
        self.sock.close()


class StreamListener:
    """The interchange's listening socket for local pools.

    Each accepted connection starts with the limits ``max_message`` and ``max_frames``.
    """

    def __init__(self, address: str, *, max_message: int = UNLIMITED, max_frames: int = UNLIMITED):
        self.max_message = max_message
        self.max_frames = max_frames
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(address[len(SCHEME) :])
        self.sock.listen(64)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> list[StreamConnection]:
        """Accept every connection waiting now (none more while out of file descriptors)."""
        accepted: list[StreamConnection] = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return accepted
            except OSError as exc:  # e.g. EMFILE: the peer waits in the backlog meanwhile
                logger.warning("cannot accept a local connection now: %s", exc)
                return accepted
            accepted.append(StreamConnection(sock, max_message=self.max_message, max_frames=self.max_frames))

    def close(self) -> None:
        self.sock.close()
