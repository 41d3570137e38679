"""The HighThroughputExecutor's run record: what its driver tells a Recorder, and how the
record's writer decodes it.

The driver records tasks without a message of their own on the wire and with almost no work
per task in its own process: it hands the :class:`~hpcfutures.monitor.Recorder` whole
batches in their wire form, and the writer process (:mod:`hpcfutures.monitor.writer`)
calls the ``decode_*`` functions here to turn them into the recorder's events:

- submits: a range of task ids per batch the I/O thread takes, with the function and
  resources only where they change from the task before (run-length);
- results: a RESULTS message's packed RESULT_META (which says when each worker received
  and began its task, on which pool, worker and pid, with its CPU time and peak RSS) and the
  started-ids frame, plus, for the few tasks that failed, their exception and traceback;
- lost tries: a pool lost with tasks it held (the interchange's ``pool_lost`` event names
  the tasks it requeued) or a worker lost under its task (the pool's ``worker_lost``);
- ends the driver decides itself: cancels and tasks failed by a broken executor.

Pools (from the interchange's events) and node samples go to the recorder as they come
(:func:`record_event`), into the executor's own record (:func:`open_record`) or the one a
layer above attached it to.

A writer serves one run, so the decoders keep what they need between batches (the current
function, the lost tries of each task) in this module, in the writer's process.

:func:`execution_from` builds an :class:`~hpcfutures.monitor.execution.Execution` from a
result's RESULT_META, for ``HtexFuture.execution``.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ...errors import PoolLostError, RemoteTraceback, TaskTimeoutError, WorkerLostError
from ...monitor.events import END, PLAIN, STATE, SUBMIT, TRY, counted_as
from ...monitor.execution import Execution
from ...monitor.recorder import Recorder, clip_tail
from ...resources import TaskOptions
from ..chunks import run_chunk
from . import protocol as P

if TYPE_CHECKING:
    from .executor import HighThroughputExecutor

_HERE = __name__
DECODE_SUBMITS = f"{_HERE}:decode_submits"
DECODE_RESULTS = f"{_HERE}:decode_results"
DECODE_LOST = f"{_HERE}:decode_lost"
DECODE_ENDED = f"{_HERE}:decode_ended"

Event = tuple[Any, ...]
#: A failed task as the decoder gets it: (task id, outcome, exception, traceback, exit code).
Failure = tuple[int, str, str, "str | None", "int | None"]


# -- the driver's side ---------------------------------------------------------------------------


def function_name(fn: Callable[..., Any], args: Sequence[Any]) -> str:
    """What the record calls a task's function: its qualified name (a map chunk's function's)."""
    if fn is run_chunk and args:
        fn = args[0]
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def resources_json(options: TaskOptions) -> str | None:
    """A task's settings that are not the defaults, as the record's JSON (None: all defaults)."""
    fields: dict[str, Any] = dict(options.resources.non_default_fields())
    if options.walltime:
        fields["walltime"] = options.walltime
    if options.priority:
        fields["priority"] = options.priority
    return json.dumps(fields, sort_keys=True) if fields else None


def describe_failure(task_id: int, exc: BaseException) -> Failure:
    """How a failed task's try ended, for the record: outcome, exception, traceback, exit code.

    A worker or pool lost too often is ``lost``, a walltime ``walltime``, anything else
    ``error``; the traceback is the worker's, when the task raised it there.
    """
    if isinstance(exc, (WorkerLostError, PoolLostError)):
        outcome = "lost"
    elif isinstance(exc, TaskTimeoutError):
        outcome = "walltime"
    else:
        outcome = "error"
    cause = exc.__cause__
    traceback = None
    if isinstance(cause, RemoteTraceback):
        traceback = clip_tail(cause.tb.strip().strip('"').strip("\n"))
    code = getattr(exc, "exit_code", None)
    return (
        task_id,
        outcome,
        clip_tail(f"{type(exc).__name__}: {exc}"),
        traceback,
        code if isinstance(code, int) else None,
    )


class TaskRecording:
    """The tasks of one HighThroughputExecutor, told to its Recorder in batches.

    :meth:`note_submit` runs under the link's lock, in the order tasks get their ids; the
    other methods run on the I/O thread.
    """

    def __init__(self, recorder: Recorder, label: str) -> None:
        self.recorder = recorder
        self.label = label
        # Under the link's lock: (first task id, function, resources JSON) where they change,
        # and the function and options of the last task noted (the link calls note_submit
        # only when a task's differ).
        self.changes: list[tuple[int, str, str | None]] = []
        self.fn: Any = None
        self.options: TaskOptions | None = None

    def note_submit(
        self, task_id: int, fn: Callable[..., Any] | None, args: Sequence[Any], options: TaskOptions | None
    ) -> None:
        """Task ``task_id``, queued (under the link's lock) with another function or options
        than the task before: note its function's name and settings if they changed."""
        if fn is None or options is None:
            return
        # A map chunk's function is in its arguments: look at every chunk.
        self.fn, self.options = (None if fn is run_chunk else fn), options
        entry = (task_id, function_name(fn, args), resources_json(options))
        changes = self.changes
        if not changes or changes[-1][1:] != entry[1:]:
            changes.append(entry)

    def take_changes(self) -> list[tuple[int, str, str | None]]:
        """The changes noted so far (under the link's lock, with the tasks they describe)."""
        changes, self.changes = self.changes, []
        return changes

    def submitted(self, first: int, last: int, changes: list[tuple[int, str, str | None]]) -> None:
        """Tasks ``first`` to ``last`` were handed to the interchange (or failed before)."""
        self.recorder.raw(DECODE_SUBMITS, (first, last, time.time(), changes, self.label))

    def results(self, started: bytes, metas: bytes, failures: list[tuple[int, BaseException]] | None) -> None:
        """A RESULTS message arrived: its started ids, its RESULT_META, and its failed tasks."""
        described = [describe_failure(task_id, exc) for task_id, exc in failures] if failures else None
        self.recorder.raw(DECODE_RESULTS, (started, metas, time.time(), described))

    def lost(
        self,
        task_ids: Sequence[int],
        reason: str,
        *,
        tag: int = 0,
        pid: int = 0,
        worker: int | None = None,
        exit_code: int | None = None,
    ) -> None:
        """These tasks' worker or pool was lost under them; they were requeued."""
        self.recorder.raw(DECODE_LOST, (time.time(), list(task_ids), reason, tag, pid, worker, exit_code))

    def ended(self, task_ids: Sequence[int], state: str, exception: str | None = None) -> None:
        """These tasks ended without a result: ``cancelled``, or ``failed`` with ``exception``."""
        self.recorder.raw(DECODE_ENDED, (time.time(), list(task_ids), state, exception))


def open_record(executor: HighThroughputExecutor, where: tuple[Path, str]) -> Recorder:
    """Open ``executor``'s own run record in ``where`` (file, family), with its settings.

    Raises:
        RecordError: the record cannot be opened.
    """
    config = executor.config
    settings = {
        "executor": type(executor).__name__,
        "provider": type(executor.provider).__name__,
        "max_workers": executor.max_workers,
        "label": executor.label,
        "prefetch": config.prefetch,
        "heartbeat_period": config.heartbeat_period,
        "heartbeat_threshold": config.heartbeat_threshold,
        "lost_task_retries": config.lost_task_retries,
        "max_blocks": executor.provider.max_blocks,
        "sample_interval": config.sample_interval,
    }
    path, family = where
    return Recorder(path, family=family, kind="htex", label=executor.label, config=settings)


def record_event(recorder: Recorder, label: str, tasks: TaskRecording | None, event: dict[str, Any]) -> None:
    """Tell ``recorder`` what an event of the interchange says (pools, lost tries, node samples),
    for the executor ``label``; ``tasks`` records its tasks, if it does (on the I/O thread)."""
    kind = event.get("event")
    now = time.time()
    if kind == "pool_registered":
        pool = str(event.get("pool"))
        recorder.pool_registered(
            label, pool, now, block_id=event.get("block"), host=event.get("host"), pid=event.get("pid"),
            workers=event.get("workers"), shape=event.get("shape"), tag=P.pool_tag(pool),
        )  # fmt: skip
    elif kind == "pool_lost":
        pool = str(event.get("pool"))
        reason = str(event.get("reason"))
        recorder.pool_lost(label, pool, now, reason)
        requeued = event.get("requeued")
        if tasks is not None and requeued:
            tasks.lost(requeued, f"its worker pool {pool} was lost: {reason}", tag=P.pool_tag(pool))
    elif kind == "worker_lost":
        if tasks is not None:
            tasks.lost(
                [event["task"]], str(event.get("reason")), tag=P.pool_tag(str(event.get("pool"))),
                pid=event.get("pid") or 0, worker=event.get("worker"), exit_code=event.get("exit_code"),
            )  # fmt: skip
    elif kind == "block_drained":
        for pool in event.get("pools", ()):
            recorder.pool_lost(label, str(pool), now, "stopped: its block was drained")
    elif kind == "samples":
        for sample in event.get("samples", ()):
            recorder.sample(
                sample.get("at", now), executor=label, host=sample.get("host"), pool_id=sample.get("pool"),
                cpu_percent=sample.get("cpu_percent"), load1=sample.get("load1"),
                mem_percent=sample.get("mem_percent"), rss_mb=sample.get("rss_mb"), busy=sample.get("busy"),
                workers=sample.get("workers"),
            )  # fmt: skip


def execution_from(meta: tuple[Any, ...], pools: dict[int, tuple[str, str]]) -> Execution:
    """The :class:`Execution` a result's RESULT_META fields describe; ``pools`` names pools by tag."""
    elapsed, dispatched, started, cpu, tag, pid, rss_kb, worker, lost = meta[P.R_ELAPSED : P.R_LOST + 1]
    pool, host = pools.get(tag, (None, None))
    return Execution(
        dispatched=dispatched or None,
        started=started or None,
        ended=started + elapsed if started else None,
        pool=pool,
        host=host,
        worker=None if worker == P.NO_WORKER else worker,
        pid=pid or None,
        rss_kb=rss_kb or None,
        cpu=cpu if cpu >= 0 else None,
        lost=lost,
    )


# -- the writer's side ----------------------------------------------------------------------------


class _Decoding:
    """What the writer remembers between batches of its run."""

    def __init__(self) -> None:
        self.func: str | None = None  # the function of the last task submitted
        self.resources: str | None = None
        # Tasks with lost tries: how many were recorded, and when the last was requeued.
        self.lost: dict[int, tuple[int, float]] = {}


_state = _Decoding()


def decode_submits(payload: tuple[Any, ...]) -> Iterator[Event]:
    """SUBMIT events for a range of task ids (see :meth:`TaskRecording.submitted`)."""
    first, last, at, changes, label = payload
    state = _state
    changes = sorted(changes)
    i = 0
    for task_id in range(first, last + 1):
        while i < len(changes) and changes[i][0] <= task_id:
            _, state.func, state.resources = changes[i]
            i += 1
        yield (SUBMIT, task_id, state.func, None, label, "queued", at, (), state.resources)


def tally_submits(payload: tuple[Any, ...]) -> dict[str, int]:
    """What :func:`decode_submits` adds to the run's counts."""
    return {"submitted": payload[1] - payload[0] + 1}


decode_submits.tally = tally_submits  # type: ignore[attr-defined]


def tally_results(payload: tuple[Any, ...]) -> dict[str, int]:
    """What :func:`decode_results` adds to the run's counts, read from the status bytes."""
    _, metas, _, failures = payload
    statuses = metas[_STATUS_OFFSET :: P.RESULT_META.size]
    cancelled = statuses.count(P.CANCELLED)
    ok = statuses.count(P.OK)
    if failures:  # a task can fail on the driver's side after its worker said OK
        failed_ids = {failure[0] for failure in failures}
        ok -= sum(
            1 for fields in P.RESULT_META.iter_unpack(metas) if fields[P.R_STATUS] == P.OK and fields[P.R_ID] in failed_ids
        )
    return {"done": ok, "cancelled": cancelled, "failed": len(statuses) - ok - cancelled}


_STATUS_OFFSET = 8  # a RESULT_META's status byte follows its 8-byte task id


def decode_results(payload: tuple[Any, ...]) -> Iterator[Event]:
    """STATE, TRY and END events for a RESULTS message (see :meth:`TaskRecording.results`)."""
    started_ids, metas, at, failures = payload
    fields_of = list(P.RESULT_META.iter_unpack(metas)) if metas else []
    if started_ids:
        finished = {fields[P.R_ID] for fields in fields_of}
        for task_id in P.unpack_ids(started_ids):
            if task_id not in finished:
                yield (STATE, task_id, "running", at)
    failed = {f[0]: f[1:] for f in failures} if failures else {}
    lost_tries = _state.lost
    for fields in fields_of:
        task_id, status, elapsed, dispatched, started, cpu, tag, pid, rss_kb, worker = fields[: P.R_LOST]
        prior = lost_tries.pop(task_id, None) if lost_tries else None
        tries, queued = prior if prior is not None else (0, None)
        ended = started + elapsed if started else at
        if status == P.CANCELLED:  # its worker skipped it: it never began
            yield (END, task_id, "cancelled", ended, tries, None)
            continue
        failure = failed.get(task_id)
        if failure is None and status == P.OK and prior is None and (started or tag):
            yield (
                PLAIN, task_id, 1, None, dispatched or None, started or None, ended, tag or None, None,
                None if worker == P.NO_WORKER else worker, pid or None, rss_kb or None, cpu if cpu >= 0 else None,
            )  # fmt: skip
            continue
        if failure is not None:
            outcome, exception, traceback, code = failure
        else:
            outcome, exception, traceback, code = "ok" if status == P.OK else "error", None, None, None
        if started or tag:  # it reached a pool (else it failed in the interchange: no try)
            tries += 1
            yield (
                TRY, task_id, tries, queued, dispatched or None, started or None, ended, outcome,
                0 if outcome == "lost" else 1, exception, traceback, tag or None, None,
                None if worker == P.NO_WORKER else worker, pid or None, rss_kb or None,
                cpu if cpu >= 0 else None, code, None, None,
            )  # fmt: skip
        yield (END, task_id, "done" if outcome == "ok" else "failed", ended, tries, exception)


decode_results.tally = tally_results  # type: ignore[attr-defined]


def decode_lost(payload: tuple[Any, ...]) -> Iterator[Event]:
    """A lost, uncharged TRY for each task requeued after its worker or pool was lost."""
    at, task_ids, reason, tag, pid, worker, exit_code = payload
    lost_tries = _state.lost
    for task_id in task_ids:
        tries, queued = lost_tries.get(task_id, (0, None))
        tries += 1
        yield (
            TRY, task_id, tries, queued, None, None, at, "lost", 0, reason, None, tag or None, None,
            worker, pid or None, None, None, exit_code, None, None,
        )  # fmt: skip
        lost_tries[task_id] = (tries, at)
        yield (STATE, task_id, "queued", at)


def tally_lost(_payload: tuple[Any, ...]) -> dict[str, int]:
    """What :func:`decode_lost` adds to the run's counts: nothing (a lost try ends no task)."""
    return {}


decode_lost.tally = tally_lost  # type: ignore[attr-defined]


def decode_ended(payload: tuple[Any, ...]) -> Iterator[Event]:
    """END events for tasks the driver ended itself (see :meth:`TaskRecording.ended`)."""
    at, task_ids, state, exception = payload
    lost_tries = _state.lost
    for task_id in task_ids:
        prior = lost_tries.pop(task_id, None) if lost_tries else None
        yield (END, task_id, state, at, prior[0] if prior else 0, exception)


def tally_ended(payload: tuple[Any, ...]) -> dict[str, int]:
    """What :func:`decode_ended` adds to the run's counts."""
    return {counted_as(payload[2]): len(payload[1])}


decode_ended.tally = tally_ended  # type: ignore[attr-defined]
