"""TaskLog: the common events of a recorded run's tasks, packed into bytes until shipped.

Most tasks of a large run are submitted with no dependencies, queued at once, run once and
succeed.  Telling the :class:`~hpcfutures.monitor.Recorder` of each such event as a tuple
costs the driver an allocation, a share of a marshal and a deallocation per object; this log
packs the two events of such a task (submitted, and done after its successful try) into 21
and 29 bytes instead.  The Recorder ships the bytes at each shipment
(:meth:`~hpcfutures.monitor.Recorder.add_source`), ahead of the events told to it directly,
and the writer process turns them back into events with :func:`decode`.

Everything else about a task (dependencies, resources, failed tries, cache decisions,
cancels) is told to the Recorder directly.  Events that go the two ways reach the writer in
the order they were told, except that an event told directly may arrive after a compact one
told later; so a task whose submit was told directly has its end told directly too (see
:class:`~.task.Task`), and the other events told directly (a retry queued again, a failed
try, a cache decision) do not mind coming after the task's end.

Threads: any thread packs into ``_buffer`` with one ``extend`` of bytes made beforehand; the
shipping thread takes what is there and deletes it from the front, never replacing the
buffer, so that an ``extend`` by a thread that read ``_buffer`` a moment before is never
lost.  ``_lock`` guards adding a kind of task to ``_kinds``.
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..monitor.recorder import Recorder

def function_name(fn: Callable[..., Any], name: str) -> str:
    """What the run record calls a task's function: its qualified name, else the task's ``name``."""
    return getattr(fn, "__qualname__", None) or name


#: The writer's name for :func:`decode`.
DECODER = f"{__name__}:decode"

_SUBMITTED, _DONE = 0, 1
# code, task id, submitted at, and the index of its function, name and executor label in the kinds
_SUBMIT_RECORD = struct.Struct("<BqdI")
# code, task id, try number, queued at, ended at
_DONE_RECORD = struct.Struct("<BqIdd")
# A try's pool, host, worker, pid, rss_kb and cpu.
_NO_WHERE = (None,) * 6


class TaskLog:
    """The compact log of one recorded run's task events (see the module docstring)."""

    def __init__(self, recorder: Recorder):
        from ..monitor.events import RAW

        self.recorder = recorder
        self._raw = RAW
        self._buffer = bytearray()
        self._ids: dict[tuple[str, str, str], int] = {}
        self._kinds: list[tuple[str, str, str]] = []  # (function, name, executor label) by index
        self._last: tuple[Callable[..., Any] | None, str | None, str | None, int] = (None, None, None, 0)
        self._lock = threading.Lock()  # must be held while adding to _ids and _kinds
        recorder.add_source(self._drain)

    def submitted(self, task_id: int, at: float, fn: Callable[..., Any], name: str, executor: str) -> None:
        """Task ``task_id`` of function ``fn``, named ``name``, was submitted at ``at`` and
        queued at once on the backend labelled ``executor`` (no dependencies, no resources)."""
        last = self._last  # the kind of the task before, most often this one's too
        if fn is last[0] and name is last[1] and executor is last[2]:
            kind = last[3]
        else:
            kind = self._kind(fn, name, executor)
        record = _SUBMIT_RECORD.pack(_SUBMITTED, task_id, at, kind)
        self._buffer.extend(record)

    def done(self, task_id: int, try_no: int, queued: float | None, ended: float) -> None:
        """Task ``task_id``'s try ``try_no``, queued at ``queued``, succeeded at ``ended``,
        where nothing more is known of it; the task is done."""
        record = _DONE_RECORD.pack(_DONE, task_id, try_no, queued or ended, ended)
        self._buffer.extend(record)

    def _kind(self, fn: Callable[..., Any], name: str, executor: str) -> int:
        key = (function_name(fn, name), name, executor)
        with self._lock:
            kind = self._ids.get(key)
            if kind is None:
                kind = self._ids[key] = len(self._kinds)
                self._kinds.append(key)
        self._last = (fn, name, executor, kind)
        return kind

    def _drain(self) -> tuple[tuple[Any, ...], ...]:
        buffer = self._buffer  # emptied from the front, never swapped: see the module docstring
        count = len(buffer)
        if not count:
            return ()
        packed = bytes(buffer[:count])
        del buffer[:count]
        return ((self._raw, DECODER, (packed, self._kinds)),)


def decode(payload: tuple[bytes, list[tuple[str, str, str]]]) -> list[tuple[Any, ...]]:
    """The events a shipped log stands for, in the order they were packed (run by the writer)."""
    from ..monitor.events import PLAIN, SUBMIT

    data, kinds = payload
    events: list[tuple[Any, ...]] = []
    position, size = 0, len(data)
    while position < size:
        if data[position] == _SUBMITTED:
            _, task_id, at, kind = _SUBMIT_RECORD.unpack_from(data, position)
            position += _SUBMIT_RECORD.size
            func, name, executor = kinds[kind]
            events.append((SUBMIT, task_id, func, name, executor, "queued", at, (), None))
        else:
            _, task_id, try_no, queued, ended = _DONE_RECORD.unpack_from(data, position)
            position += _DONE_RECORD.size
            events.append((PLAIN, task_id, try_no, queued, None, None, ended, *_NO_WHERE))
    return events
