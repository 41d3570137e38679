"""Claims on express tasks: which one a worker has begun, and which the driver cancelled.

A worker's express connection may hold a task queued behind the one it runs (see
:data:`.express.DEPTH`), so being sent no longer means being begun.  Each worker of the
lane therefore keeps a small file next to the driver's express socket, in the run's private
directory: the id of the last express task it began, and two slots for tasks the driver
cancelled before that.  The worker *claims* a task before it begins it; the driver
*cancels* a task only if it is not claimed.  Each decides under an ``fcntl`` lock on the
file, so for any task exactly one of the two succeeds: a task whose ``cancel()`` returned
True never runs, and ``running()`` is true once, and only once, its worker has begun it.

Express tasks reach a connection in increasing id order and a worker comes to them in that
order, so "claimed" is one number: the last task the worker passed, begun or skipped.  The
driver counts a cancelled task against its connection's :data:`~.express.DEPTH` until the
worker has passed it, so no more than two tasks ahead of the claim can be cancelled at once,
and two cancel slots suffice (a slot is free again once the claim has passed its task).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

#: The last task claimed, then the two cancel slots.
_LAYOUT = struct.Struct("<qqq")


def claims_path(express_path: str, pid: int) -> str:
    """Where the worker with ``pid`` keeps its claims, beside the express socket."""
    return f"{express_path}.{pid}.claims"


class ClaimFile:
    """One worker's claims, as the worker (``create``) or the driver opens them."""

    def __init__(self, path: str, *, create: bool = False):
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        if create:
            flags |= os.O_CREAT | os.O_EXCL
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:  # left by an earlier worker of this run with the same pid (dead now)
                os.unlink(path)
                fd = os.open(path, flags, 0o600)
        else:
            fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _LAYOUT.size)
            elif os.fstat(fd).st_size != _LAYOUT.size:
                raise OSError(f"{path} is not a claims file")
            self.map = mmap.mmap(fd, _LAYOUT.size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.path = path

    def claim(self, task_id: int) -> bool:
        """The worker comes to ``task_id``: claim it and return True, unless the driver
        cancelled it; either way the worker has passed it (its slot may be used again)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            _claimed, first, second = _LAYOUT.unpack_from(self.map)
            struct.pack_into("<q", self.map, 0, task_id)
            return task_id not in (first, second)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def cancel(self, task_id: int) -> bool:
        """The driver would cancel ``task_id``: mark it, unless its worker has claimed it."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            claimed, first, second = _LAYOUT.unpack_from(self.map)
            if claimed >= task_id:
                return False
            if first <= claimed:
                struct.pack_into("<q", self.map, 8, task_id)
            elif second <= claimed:
                struct.pack_into("<q", self.map, 16, task_id)
            else:  # two cancels pending already: never so with two tasks at most on a connection
                return False
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def claimed(self) -> int:
        """The last task the worker passed: began, or skipped as cancelled (0: none yet)."""
        fcntl.lockf(self.fd, fcntl.LOCK_SH)
        try:
            return int(_LAYOUT.unpack_from(self.map)[0])
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self.map.close()
        finally:
            os.close(self.fd)
