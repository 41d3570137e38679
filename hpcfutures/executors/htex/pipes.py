"""Framed messages over a pair of pipes: the link between a pool manager and one worker.

A worker and its pool manager are parent and child on one node, so they need neither
ZeroMQ's routing nor its I/O threads.  A write on a pipe wakes the reader directly; through a
ZeroMQ socket the same message wakes the sender's I/O thread, then the receiver's, then the
receiver.  On a small machine those extra wake-ups are most of a short task's round trip.

A message is a list of frames, written as one header (frame count, then each frame's
length) followed by the frames, with one ``writev`` and no joining copy.  The manager's ends
never block: what a busy worker's pipe cannot take waits in :class:`Sender` until the pipe
drains.  A worker blocks on its own ends, since its manager always reads.

A :class:`Receiver` on a link to an untrusted peer (the interchange's end of a local pool's
connection) takes limits on a message's size and frame count, checked as soon as a header
is in and before anything is allocated for the body: a peer that breaks them ends the link
instead of making the reader allocate what it declared.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections import deque
from typing import Any, Sequence

_COUNT = struct.Struct("<I")
#: Ask the kernel for pipes this large, so a batch of tasks rarely waits in user space.
PIPE_SIZE = 1 << 20
#: ``writev`` takes at most IOV_MAX (1024 on Linux) buffers per call.
_MAX_BUFFERS = 512
#: Read at least this much per call; bodies larger than this are read straight into place.
_CHUNK = 1 << 16
#: No limit: a header cannot declare more than 2**32 - 1 frames of 2**64 - 1 bytes each.
UNLIMITED = 1 << 96


def pipe_pair() -> tuple[int, int]:
    """Return ``(read_fd, write_fd)`` of a new pipe, enlarged if the kernel allows."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # above /proc/sys/fs/pipe-max-size for this user: keep the default
        pass
    return read_fd, write_fd


def encode(frames: Sequence[Any]) -> list[memoryview]:
    """Return the byte views that carry ``frames`` as one message: a header, then the frames."""
    views = [memoryview(f).cast("B") for f in frames]
    header = struct.pack(f"<I{len(views)}Q", len(views), *[v.nbytes for v in views])
    return [memoryview(header), *views]


class Sender:
    """The writing end of a pipe or socket, with a queue for what it cannot take now.

    Non-blocking by default, for processes that must go on serving other peers; a worker,
    whose manager always reads, writes with ``blocking=True``.
    """

    def __init__(self, fd: int, *, blocking: bool = False):
        os.set_blocking(fd, blocking)
        self.fd = fd
        self.pending: deque[memoryview] = deque()
        self.watched = False  # whether a poller waits for room to write (see watch_room)

    def send(self, frames: Sequence[Any]) -> bool:
        """Write a message, queueing what does not fit; return True if some is queued.

        Raises:
            OSError: the reader is gone (``BrokenPipeError``), or another write error.
        """
        buffers = encode(frames)
        if self.pending:
            self.pending.extend(buffers)
            return True
        self.pending.extend(buffers)
        return self.flush()

    def flush(self) -> bool:
        """Write what is queued; return True if some is still queued."""
        pending = self.pending
        while pending:
            batch = [pending[i] for i in range(min(len(pending), _MAX_BUFFERS))]
            try:
                written = os.writev(self.fd, batch)
            except BlockingIOError:
                return True
            for buffer in batch:
                if written >= buffer.nbytes:
                    written -= buffer.nbytes
                    pending.popleft()
                else:
                    pending[0] = buffer[written:]
                    return True
        return False


class Receiver:
    """The reading end of a pipe: turns the bytes read into whole messages.

    Each message comes back as a list of memoryviews over one buffer of its own, so frames
    can be sliced and forwarded without copying.  A message larger than one read is read
    straight into a buffer of its size, over as many calls as it takes.
    """

    def __init__(self, fd: int, *, max_message: int = UNLIMITED, max_frames: int = UNLIMITED):
        """Read from ``fd``, made non-blocking.

        ``max_message`` caps one message's size (header included) and ``max_frames`` its
        frame count; a header that exceeds either ends the link (see :meth:`fail`).  Both
        may be changed between reads, e.g. raised once a peer has proved who it is.
        """
        os.set_blocking(fd, False)
        self.fd = fd
        self.max_message = max_message
        self.max_frames = max_frames
        self.buffer = bytearray()
        self.large: memoryview | None = None  # a large message being read, and how much is in
        self.large_have = 0
        self.received = 0  # bytes read so far
        self.closed = False
        self.error: str | None = None  # why reading stopped, if the peer broke the framing

    def read(self) -> list[list[memoryview]]:
        """Read what the pipe holds now, without waiting; return the whole messages.

        Sets ``closed`` once the writer has gone; a message cut short by that is dropped.
        Sets ``closed`` and ``error`` too when a header breaks the limits; the messages
        before it are still returned.
        """
        if self.closed:
            return []
        large = self.large
        try:
            if large is not None:
                got = os.readv(self.fd, [large[self.large_have :]])
            else:
                data = os.read(self.fd, _CHUNK)
                got = len(data)
        except BlockingIOError:
            return []
        except ConnectionResetError:  # a socket whose peer died with our data unread
            got = 0
        if not got:
            self.closed = True
            return []
        self.received += got
        if large is not None:
            self.large_have += got
            if self.large_have < large.nbytes:
                return []
            self.large = None
            return [_frames(large)]
        self.buffer += data
        return self._messages()

    def drain(self) -> list[list[memoryview]]:
        """Read until the pipe is empty or closed; return the whole messages."""
        messages: list[list[memoryview]] = []
        while not self.closed:
            before = self.received
            messages += self.read()
            if self.received == before:
                break
        return messages

    def fail(self, reason: str) -> None:
        """Stop reading for good: the peer broke the framing, so nothing after it can be trusted."""
        self.closed = True
        self.error = reason
        self.buffer = bytearray()
        self.large = None

    def _messages(self) -> list[list[memoryview]]:
        messages: list[list[memoryview]] = []
        buffer = self.buffer
        limit = self.max_message
        start = 0
        while True:
            available = len(buffer) - start
            if available < 4:
                break
            (count,) = _COUNT.unpack_from(buffer, start)
            size = 4 + 8 * count
            if count > self.max_frames or size > limit:
                self.fail(f"a message of {count} frames, more than its limits allow")
                return messages
            sized = available >= size
            if sized:
                size += sum(struct.unpack_from(f"<{count}Q", buffer, start + 4))
                if size > limit:
                    self.fail(f"a message of {size} bytes (the limit is {limit})")
                    return messages
            if available < size:
                if sized and size > _CHUNK:  # read the rest of it in place
                    large = memoryview(bytearray(size))
                    large[:available] = buffer[start:]
                    self.large, self.large_have = large, available
                    start = len(buffer)
                break
            messages.append(_frames(memoryview(bytes(buffer[start : start + size]))))
            start += size
        if start:
            del buffer[:start]
        return messages


def _frames(message: memoryview) -> list[memoryview]:
    """Cut one whole message (header included) into its frames."""
    (count,) = _COUNT.unpack_from(message, 0)
    offset = 4 + 8 * count
    frames = []
    for length in struct.unpack_from(f"<{count}Q", message, 4):
        frames.append(message[offset : offset + length])
        offset += length
    return frames


def watch_room(poller: Any, target: Any, sender: Sender, *, pollout: int, base: int = 0) -> None:
    """Make ``poller`` wait for room to write ``target`` only while ``sender`` has a backlog.

    ``poller`` is a ``select.poll`` or a ``zmq.Poller`` (pass its POLLOUT constant), ``target``
    what it polls for the sender's fd, and ``base`` the events it always waits for there.
    ``sender.watched`` says afterwards whether it waits for room.
    """
    wanted = bool(sender.pending)
    if wanted != sender.watched:
        mask = base | (pollout if wanted else 0)
        if mask:
            poller.register(target, mask)  # for both pollers, registering again changes the mask
        else:
            poller.unregister(target)
        sender.watched = wanted
