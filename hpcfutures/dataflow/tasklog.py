"""TaskLog: the common events of a recorded run's tasks, packed into bytes until shipped.

Most tasks of a large run are submitted with no dependencies, queued at once, run once and
succeed.  Telling the :class:`~hpcfutures.monitor.Recorder` of each such event as a tuple
costs the driver an allocation, a share of a marshal and a deallocation per object; this log
packs the two events of such a task (submitted, and done after its successful try) into 20
and 28 bytes instead; a success on an HTEX backend packs the result's RESULT_META as it came
off the wire with it (83 bytes), so that the record learns where and how it ran without
the driver building an ``Execution``.  Each kind of record has a list of its own, so that
the writer can count them by their lengths (:func:`tally`).  The Recorder ships the bytes
at each shipment (:meth:`~hpcfutures.monitor.Recorder.add_source`), ahead of the events
told to it directly, and the writer process turns them back into events with
:func:`decode`.

The hot path is :class:`~.task.Task`'s: for a task of the engine's default label it packs
a record itself and appends it to ``submits``, ``dones`` or ``htex_dones`` (a method call
per event was a good part of what recording cost a no-op task), and asks
:meth:`default_kind` only when the task's function or name differ from the one before
(``last``).  Appending a ``bytes`` to a list costs less than extending a bytearray, which
copies what it holds each time it grows; the records are joined once, at the shipment.

Everything else about a task (dependencies, resources, failed tries, cache decisions,
cancels) is told to the Recorder directly.  Events that go the two ways reach the writer in
the order they were told, except that an event told directly may arrive after a compact one
told later; so a task whose submit was told directly has its end told directly too (see
:class:`~.task.Task`), and the other events told directly (a retry queued again, a failed
try, a cache decision) do not mind coming after the task's end.

Threads: any thread appends to ``submits``, ``dones`` or ``htex_dones`` (one ``append`` of
bytes made beforehand, atomic under the GIL); the shipping thread joins what is there and
deletes that many from the front, never replacing a list, so that an ``append`` by a thread
that read the list a moment before is never lost.  ``last`` is replaced whole, never changed in
place.  ``_lock`` guards adding a kind of task to ``_kinds``.
"""

from __future__ import annotations

import functools
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

#: A submit record: task id, submitted at, and the index of its kind (function, name and
#: executor label) in the log's kinds.
SUBMIT_RECORD = struct.Struct("<qdI")
#: A done record: task id, try number, queued at, ended at.
DONE_RECORD = struct.Struct("<qIdd")
# A try's pool, host, worker, pid, rss_kb and cpu.
_NO_WHERE = (None,) * 6
pack_submit = SUBMIT_RECORD.pack
pack_done = DONE_RECORD.pack


@functools.cache
def htex_done_record() -> struct.Struct:
    """The record of an HTEX success: task id, try number, queued at, then the result's
    RESULT_META as it came (made on first use: a run that records no HTEX task never
    imports the HTEX protocol)."""
    from ..executors.htex import protocol as P

    return struct.Struct("<qId" + P.RESULT_META.format.lstrip("<"))


class TaskLog:
    """The compact log of one recorded run's task events (see the module docstring)."""

    def __init__(self, recorder: Recorder):
        from ..monitor.events import RAW

        self.recorder = recorder
        self._raw = RAW
        #: Packed submit records (:data:`SUBMIT_RECORD`), appended by any thread.
        self.submits: list[bytes] = []
        #: Packed ends of successful tries with nothing more known (:data:`DONE_RECORD`).
        self.dones: list[bytes] = []
        #: Packed successes on an HTEX backend, with where and how they ran (:func:`htex_done_record`).
        self.htex_dones: list[bytes] = []
        self._ids: dict[tuple[str, str, str], int] = {}
        self._kinds: list[tuple[str, str, str]] = []  # (function, name, executor label) by index
        #: The function and name of the last task :meth:`default_kind` was asked for, and
        #: its kind: most often the next task's too.
        self.last: tuple[Callable[..., Any] | None, str | None, int] = (None, None, 0)
        self._last_any: tuple[Callable[..., Any] | None, str | None, str | None, int] = (None, None, None, 0)
        self._lock = threading.Lock()  # must be held while adding to _ids and _kinds
        recorder.add_source(self._drain)

    def submitted(self, task_id: int, at: float, fn: Callable[..., Any], name: str, executor: str) -> None:
        """Task ``task_id`` of function ``fn``, named ``name``, was submitted at ``at`` and
        queued at once on the backend labelled ``executor`` (no dependencies, no resources)."""
        last = self._last_any  # the kind of the task before, most often this one's too
        if fn is last[0] and name is last[1] and executor is last[2]:
            kind = last[3]
        else:
            kind = self.kind(fn, name, executor)
            self._last_any = (fn, name, executor, kind)
        self.submits.append(pack_submit(task_id, at, kind))

    def done(self, task_id: int, try_no: int, queued: float | None, ended: float) -> None:
        """Task ``task_id``'s try ``try_no``, queued at ``queued``, succeeded at ``ended``,
        where nothing more is known of it; the task is done.  (:class:`~.task.Task` does the
        same inline on its hot path.)"""
        self.dones.append(pack_done(task_id, try_no, queued or ended, ended))

    def ran(self, task_id: int, try_no: int, queued: float | None, meta: tuple[Any, ...]) -> bool:
        """Task ``task_id``'s try ``try_no``, queued at ``queued``, succeeded on an HTEX
        worker, whose result's RESULT_META fields are ``meta``; the task is done.  Return
        False, telling nothing, if the executor lost it before (those tries are told in full).
        (:class:`~.task.Task` does the same inline on its hot path.)"""
        from ..executors.htex import protocol as P

        if meta[P.R_LOST] or meta[P.R_STATUS] != P.OK:
            return False
        self.htex_dones.append(htex_done_record().pack(task_id, try_no, queued or 0.0, *meta))
        return True

    def kind(self, fn: Callable[..., Any], name: str, executor: str) -> int:
        """The index of the kind of task (function, name, executor label), a new one if unseen."""
        key = (function_name(fn, name), name, executor)
        with self._lock:
            kind = self._ids.get(key)
            if kind is None:
                kind = self._ids[key] = len(self._kinds)
                self._kinds.append(key)
        return kind

    def default_kind(self, fn: Callable[..., Any], name: str, executor: str) -> int:
        """:meth:`kind` for a task on the engine's default label ``executor``, remembered as
        ``last`` for the next one (whose label is the same, so ``last`` leaves it out)."""
        kind = self.kind(fn, name, executor)
        self.last = (fn, name, kind)
        return kind

    def _drain(self) -> tuple[tuple[Any, ...], ...]:
        # The ends first: every task whose end is taken had its submit appended before it,
        # so that submit is in what is taken next.
        taken = []
        for records in (self.dones, self.htex_dones, self.submits):  # emptied from the front, never swapped
            count = len(records)
            taken.append(b"".join(records[:count]))
            del records[:count]
        dones, ran, submits = taken
        if not (dones or ran or submits):
            return ()
        return ((self._raw, DECODER, (submits, dones, ran, self._kinds)),)


def decode(payload: tuple[bytes, bytes, bytes, list[tuple[str, str, str]]]) -> list[tuple[Any, ...]]:
    """The events a shipped log stands for: its submits, then its ends (run by the writer)."""
    from ..monitor.events import PLAIN, SUBMIT

    submits, dones, ran, kinds = payload
    events: list[tuple[Any, ...]] = []
    for task_id, at, kind in SUBMIT_RECORD.iter_unpack(submits):
        func, name, executor = kinds[kind]
        events.append((SUBMIT, task_id, func, name, executor, "queued", at, (), None))
    for task_id, try_no, queued, ended in DONE_RECORD.iter_unpack(dones):
        events.append((PLAIN, task_id, try_no, queued, None, None, ended, *_NO_WHERE))
    if ran:
        from ..executors.htex import protocol as P

        no_worker, lost = P.NO_WORKER, P.R_LOST
    for fields in htex_done_record().iter_unpack(ran) if ran else ():
        task_id, try_no, queued = fields[:3]
        _, _, elapsed, dispatched, started, cpu, tag, pid, rss_kb, worker = fields[3 : 3 + lost]
        events.append((
            PLAIN, task_id, try_no, queued or None, dispatched or None, started or None,
            started + elapsed if started else None, tag or None, None, None if worker == no_worker else worker,
            pid or None, rss_kb or None, cpu if cpu >= 0 else None,
        ))  # fmt: skip
    return events


def tally(payload: tuple[bytes, bytes, bytes, list[tuple[str, str, str]]]) -> dict[str, int]:
    """What :func:`decode` adds to the run's counts, without decoding (see the writer's tally)."""
    submits, dones, ran, _ = payload
    return {
        "submitted": len(submits) // SUBMIT_RECORD.size,
        "done": len(dones) // DONE_RECORD.size + (len(ran) // htex_done_record().size if ran else 0),
    }


decode.tally = tally  # type: ignore[attr-defined]
