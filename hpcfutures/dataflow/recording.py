"""What a DataflowExecutor tells its run record beyond the common case: outcomes, texts, reasons.

A task that is queued at once and succeeds is told in the compact form of :mod:`.tasklog`,
with no text made.  The functions here serve :class:`~.task.Task` on the other paths, which
call the :class:`~hpcfutures.monitor.Recorder` directly: a try's outcome, where it ran and
what it cost (from the backend's future, through
:func:`~hpcfutures.monitor.execution.execution_of`), a failure's exception and traceback, an
app's exit code and output tails, why a cached call missed, and the parents of a task.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from concurrent.futures import CancelledError, Future
from time import time
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import (
    BashExitFailure,
    DependencyError,
    PoolLostError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerLostError,
)
from ..tails import read_tail
from .futures import DataflowFuture, DataFuture
from .memo import explain

if TYPE_CHECKING:
    from types import ModuleType

    from ..monitor.recorder import Recorder
    from .memo import CacheKey
    from .settings import TaskSettings

#: How much of the end of an app's stdout and stderr files each try keeps, in bytes.
TAIL_BYTES = 4000

#: The exception text of a try the backend lost with its worker or pool and ran again itself.
REQUEUED = "its worker or pool was lost; the executor ran it again"


@functools.cache
def _execution() -> ModuleType:
    # hpcfutures.monitor is loaded with the Recorder; a run that records nothing never needs it.
    from ..monitor import execution

    return execution


def outcome_of(error: BaseException | None) -> str:
    """How a try that ended with ``error`` is recorded: ok, error, lost, walltime or cancelled."""
    if error is None:
        return "ok"
    if isinstance(error, (WorkerLostError, PoolLostError)):
        return "lost"
    if isinstance(error, TaskTimeoutError):
        return "walltime"
    if isinstance(error, CancelledError):
        return "cancelled"
    return "error"


def exception_text(error: BaseException) -> str:
    """``Type: message``, as a task's and a try's ``exception`` column hold it."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def traceback_text(error: BaseException) -> str | None:
    """The traceback where ``error`` was raised: the worker's when it came from another
    process, else the local one; None when it was never raised."""
    cause = error.__cause__
    if isinstance(cause, RemoteTraceback):
        text = cause.tb
        if text.startswith('\n"""\n') and text.endswith('"""'):  # how serialize wraps it
            text = text[5:-3]
        return text
    if error.__traceback__ is None:
        return None
    return "".join(traceback.format_exception(error))


def tail(path: str | None) -> str | None:
    """The end of an app's output file, or None when it has none (or it is empty or unreadable)."""
    if path is None:
        return None
    return read_tail(path, lines=None, max_bytes=TAIL_BYTES) or None


def record_try(
    recorder: Recorder,
    task_id: int,
    try_no: int,
    queued: float | None,
    inner: Future[Any] | None,
    error: BaseException | None,
    *,
    charged: bool = True,
    future: DataflowFuture | None = None,
) -> int:
    """Record the try ``try_no`` of a task, handed to its backend at ``queued``, whose
    backend future ``inner`` ended with ``error`` (None: it succeeded).

    Where it ran and its times come from the backend's future when it keeps them; runs the
    backend lost and ran again on its own are recorded first, as tries not charged.  A
    cancelled try is not charged either.  With ``future`` (an app's), the try also keeps
    the app's exit code and output tails.  Return the number of the last try recorded.
    """
    outcome = outcome_of(error)
    if outcome == "cancelled":
        charged = False
    exception = trace = None
    if error is not None and outcome != "cancelled":
        exception, trace = exception_text(error), traceback_text(error)
    exit_code = stdout = stderr = None
    if future is not None:
        if isinstance(error, BashExitFailure):
            exit_code = error.exit_code
        elif error is None and future._bash:
            exit_code = 0
        stdout, stderr = tail(future.stdout), tail(future.stderr)
    execution = _execution().execution_of(inner) if inner is not None else None
    if execution is None:
        recorder.attempt(
            task_id, try_no, outcome, queued=queued, ended=time(), charged=charged, exception=exception,
            traceback=trace, exit_code=exit_code, stdout_tail=stdout, stderr_tail=stderr,
        )  # fmt: skip
        return try_no
    # A try that failed because its worker was lost counts that loss itself (HTEX's way).
    requeued = execution.lost - 1 if outcome == "lost" and execution.lost else execution.lost
    for _ in range(requeued):
        recorder.attempt(task_id, try_no, "lost", queued=queued, charged=False, exception=REQUEUED)
        try_no += 1
    recorder.attempt(
        task_id, try_no, outcome, queued=queued, dispatched=execution.dispatched, started=execution.started,
        ended=execution.ended or time(), charged=charged, exception=exception, traceback=trace,
        pool=execution.pool, host=execution.host, worker=execution.worker, pid=execution.pid,
        rss_kb=execution.rss_kb, cpu=execution.cpu, exit_code=exit_code, stdout_tail=stdout, stderr_tail=stderr,
    )  # fmt: skip
    return try_no


def record_done(recorder: Recorder, task_id: int, try_no: int, queued: float | None, inner: Future[Any]) -> None:
    """Record a task that is done: its try ``try_no`` succeeded, and it has no output files
    (the common case goes to the :class:`~.tasklog.TaskLog` instead)."""
    if getattr(inner, "execution", None) is None:
        recorder.attempt(task_id, try_no, "ok", queued=queued, ended=time())
        recorder.ended(task_id, "done", time(), tries=try_no)
        return
    last = record_try(recorder, task_id, try_no, queued, inner, None)
    recorder.ended(task_id, "done", time(), tries=last)


def parents_of(deps: Iterable[Future[Any]], recorder: Recorder) -> list[int]:
    """The ids of the tasks recorded by ``recorder`` among ``deps`` (an output file's future
    stands for the app that makes it); futures of other executors have no task in this run."""
    ids: dict[int, None] = {}
    for dep in deps:
        if isinstance(dep, DataFuture):
            dep = dep.parent
        if isinstance(dep, DataflowFuture) and dep._recorder is recorder:
            ids[dep.task_id] = None
    return list(ids)


def resources_of(settings: TaskSettings) -> dict[str, Any] | None:
    """What a task asks of its backend (walltime, priority, Resources' fields), or None."""
    options = settings.backend_options()
    if not options:
        return None
    flat: dict[str, Any] = {}
    for name, value in options.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            flat.update(dataclasses.asdict(value))
        else:
            flat[name] = value
    return flat


def miss_reason(previous: CacheKey | None, key: CacheKey) -> str:
    """Why a call found no stored result, against the key made before it for the same function."""
    if previous is None:
        return "first run of this key"
    if previous.key == key.key:
        return "this call ran before but left no result: it failed or was cancelled, or left the memory table"
    return f"unlike the last call of this function: {explain(previous, key)}"


def dedup_reason(leader: Future[Any]) -> str:
    """Why a call did not run: the same call was running as another task."""
    if isinstance(leader, DataflowFuture):
        return f"followed task {leader.task_id}, the same call already running"
    return "followed the same call already running"


def final_state(error: BaseException, stopped: BaseException | None, tries: int) -> str:
    """The state a task that failed with ``error`` ends in: cancelled when the workflow's stop
    (``stopped``) ended it, dep_fail when a dependency failed so it never ran, else failed."""
    if error is stopped:
        return "cancelled"
    if tries == 0 and isinstance(error, DependencyError):
        return "dep_fail"
    return "failed"
