"""TaskLog: the common events of a recorded run's tasks, kept until shipped, then packed.

Most tasks of a large run are submitted with no dependencies, queued at once, run once and
succeed.  Telling the :class:`~hpcfutures.monitor.Recorder` of each such event as a tuple
costs the driver an allocation, a share of a marshal and a deallocation per object; this log
packs the two events of such a task (submitted, and done after its successful try) into 20
and 28 bytes instead; a success on an HTEX backend packs the result's RESULT_META as it came
off the wire with it (83 bytes), so that the record learns where and how it ran without
the driver building an ``Execution``.  Each kind of record has a buffer of its own, so
that the writer can count them by their lengths (:func:`tally`).  The Recorder ships the
bytes at each shipment (:meth:`~hpcfutures.monitor.Recorder.add_source`), ahead of the
events told to it directly, and the writer process turns them back into events with
:func:`decode`.

None of them is packed where it happens: the thread that submits a task, and the one on
which it succeeds, stamp the time on the task and append the task itself to a list
(``TaskLog.submitted``, ``TaskLog.done``; an HTEX success appends its meta fields,
:meth:`TaskLog.ran`); the shipping thread packs them in one loop.  On a DataflowExecutor over threads the submitting thread is
what limits throughput, and every call and packed record on it and on the backend's threads
showed in the benchmark, while the same work done in a loop at each shipment did not.

Everything else about a task (dependencies, resources, failed tries, cache decisions,
cancels) is told to the Recorder directly.  Events that go the two ways reach the writer in
the order they were told, except that an event told directly may arrive after a compact one
told later; so a task whose submit was told directly has its end told directly too (see
:class:`~.task.Task`), and the other events told directly (a retry queued again, a failed
try, a cache decision) do not mind coming after the task's end.

Threads: any thread appends to ``_submitted``, ``_done`` and ``_ran``; the shipping thread
takes what is there and deletes it from the front, never replacing a list, so that an
append by a thread that read it a moment before is never lost.  ``_lock`` guards adding a kind of task to ``_kinds``.
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from ..monitor.recorder import Recorder

def function_name(fn: Callable[..., Any], name: str) -> str:
    """What the run record calls a task's function: its qualified name, else the task's ``name``."""
    return getattr(fn, "__qualname__", None) or name


#: The writer's name for :func:`decode`.
DECODER = f"{__name__}:decode"

# task id, submitted at, and the index of its function, name and executor label in the kinds
_SUBMIT_RECORD = struct.Struct("<qdI")
# task id, try number, queued at, ended at
_DONE_RECORD = struct.Struct("<qIdd")
# A try's pool, host, worker, pid, rss_kb and cpu.
_NO_WHERE = (None,) * 6
_pack_submit = _SUBMIT_RECORD.pack
_pack_done = _DONE_RECORD.pack


class LoggedTask(Protocol):
    """What the log reads of a task it was given, when it ships (a dataflow ``Task``)."""

    @property
    def task_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def fn(self) -> Callable[..., Any]: ...
    @property
    def label(self) -> str:
        """The label of the backend it was queued on."""
    @property
    def submitted_at(self) -> float | None: ...
    @property
    def tries(self) -> int: ...
    @property
    def queued_at(self) -> float | None:
        """When its last try was queued."""
    @property
    def ended_at(self) -> float | None: ...


@functools.cache
def _ran_record() -> struct.Struct:
    """Task id, try number, queued at, then an HTEX result's RESULT_META as it came (made
    on first use: a run that records no HTEX task never imports the HTEX protocol)."""
    from ..executors.htex import protocol as P

    return struct.Struct("<qId" + P.RESULT_META.format.lstrip("<"))


class TaskLog:
    """The compact log of one recorded run's task events (see the module docstring)."""

    def __init__(self, recorder: Recorder):
        from ..monitor.events import RAW

        self.recorder = recorder
        self._raw = RAW
        self._submitted: list[LoggedTask] = []  # tasks submitted and queued at once, not yet packed
        self._done: list[LoggedTask] = []  # tasks whose plain success is not yet packed
        # ends of tasks run by an HTEX backend, with where and how: (task id, try, queued, meta)
        self._ran: list[tuple[int, int, float | None, tuple[Any, ...]]] = []
        #: ``submitted(task)``: ``task`` was submitted at its ``submitted_at`` and queued at
        #: once on the backend labelled ``label`` (no dependencies, no resources).  Its
        #: ``fn``, ``name``, ``label`` and ``submitted_at`` must not change until the next
        #: shipment has read them.  (The list's own append: no Python call on the hot path.)
        self.submitted: Callable[[LoggedTask], None] = self._submitted.append
        #: ``done(task)``: ``task``'s try number ``tries``, queued at ``queued_at``, succeeded
        #: at ``ended_at``, where nothing more is known of it; the task is done, and its
        #: ``submitted`` came before.
        self.done: Callable[[LoggedTask], None] = self._done.append
        self._lost_field = self._status_field = self._ok = -1  # HTEX's, read on the first ran()
        self._ids: dict[tuple[str, str, str], int] = {}
        self._kinds: list[tuple[str, str, str]] = []  # (function, name, executor label) by index
        self._lock = threading.Lock()  # must be held while adding to _ids and _kinds
        recorder.add_source(self._drain)

    def ran(self, task_id: int, try_no: int, queued: float | None, meta: tuple[Any, ...]) -> bool:
        """Task ``task_id``'s try ``try_no``, queued at ``queued``, succeeded on an HTEX
        worker, whose result's RESULT_META fields are ``meta``; the task is done.  Return
        False, telling nothing, if the executor lost it before (those tries are told in full)."""
        if self._lost_field < 0:
            from ..executors.htex import protocol as P

            self._lost_field, self._status_field, self._ok = P.R_LOST, P.R_STATUS, P.OK
        if meta[self._lost_field] or meta[self._status_field] != self._ok:
            return False
        self._ran.append((task_id, try_no, queued, meta))
        return True

    def _kind(self, fn: Callable[..., Any], name: str, executor: str) -> int:
        key = (function_name(fn, name), name, executor)
        with self._lock:
            kind = self._ids.get(key)
            if kind is None:
                kind = self._ids[key] = len(self._kinds)
                self._kinds.append(key)
        return kind

    def _pack_submits(self, tasks: list[LoggedTask]) -> bytes:
        packed = bytearray()
        last: tuple[Any, Any, Any, int] = (None, None, None, 0)  # the kind of the task before, most often this one's
        for task in tasks:
            fn, name, executor = task.fn, task.name, task.label
            if fn is last[0] and name is last[1] and executor is last[2]:
                kind = last[3]
            else:
                kind = self._kind(fn, name, executor)
                last = (fn, name, executor, kind)
            packed += _pack_submit(task.task_id, task.submitted_at or 0.0, kind)
        return bytes(packed)

    @staticmethod
    def _pack_dones(tasks: list[LoggedTask]) -> bytes:
        packed = bytearray()
        for task in tasks:
            ended = task.ended_at or 0.0
            packed += _pack_done(task.task_id, task.tries, task.queued_at or ended, ended)
        return bytes(packed)

    @staticmethod
    def _pack_ran(ran: list[tuple[int, int, float | None, tuple[Any, ...]]]) -> bytes:
        if not ran:
            return b""
        pack = _ran_record().pack
        return b"".join([pack(task_id, try_no, queued or 0.0, *meta) for task_id, try_no, queued, meta in ran])

    def _drain(self) -> tuple[tuple[Any, ...], ...]:
        # The ends first: every task whose end is taken was appended to _submitted before,
        # so its submit is in what is taken next.
        taken: list[Any] = []
        for queue in (self._done, self._ran, self._submitted):  # emptied from the front, never swapped
            count = len(queue)
            taken.append(queue[:count])
            del queue[:count]
        done, ran, submitted = taken
        if not (done or ran or submitted):
            return ()
        payload = (self._pack_submits(submitted), self._pack_dones(done), self._pack_ran(ran), self._kinds)
        return ((self._raw, DECODER, payload),)


def decode(payload: tuple[bytes, bytes, bytes, list[tuple[str, str, str]]]) -> list[tuple[Any, ...]]:
    """The events a shipped log stands for: its submits, then its ends (run by the writer)."""
    from ..monitor.events import PLAIN, SUBMIT

    submits, dones, ran, kinds = payload
    events: list[tuple[Any, ...]] = []
    for task_id, at, kind in _SUBMIT_RECORD.iter_unpack(submits):
        func, name, executor = kinds[kind]
        events.append((SUBMIT, task_id, func, name, executor, "queued", at, (), None))
    for task_id, try_no, queued, ended in _DONE_RECORD.iter_unpack(dones):
        events.append((PLAIN, task_id, try_no, queued, None, None, ended, *_NO_WHERE))
    if ran:
        from ..executors.htex import protocol as P

        no_worker, lost = P.NO_WORKER, P.R_LOST
    for fields in _ran_record().iter_unpack(ran) if ran else ():
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
        "submitted": len(submits) // _SUBMIT_RECORD.size,
        "done": len(dones) // _DONE_RECORD.size + (len(ran) // _ran_record().size if ran else 0),
    }


decode.tally = tally  # type: ignore[attr-defined]
