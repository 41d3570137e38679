"""Task: one dataflow task's state machine, written against what it needs from its host.

A task waits until every future in its arguments is done (done-callbacks, no polling, no
thread per task), then goes to a backend executor with those futures replaced by their
results.  A task whose dependency failed never runs: it fails with DependencyError naming
the chain back to the first failure.  States: WAITING (for dependencies) -> QUEUED (looked
up in the cache, handed to the backend or a join body) -> DONE.

Threads: a task is started on the submitting thread; every later step (a dependency done,
the backend's outcome, a cache leader's outcome, a join body's outcome) is posted to the
host's :class:`~.dispatch.Dispatcher` and runs on its one thread, with two exceptions that
are sure to be quick and run where the news arrives instead (a hand-off to another thread
costs two thread wake-ups, which a chain of tasks would pay at every step):

- a task whose backend call succeeded, that leads no cache entry and whose future has no
  callback but the engine's own, is marked done at once (:meth:`Task._inner_done`);
- a dependent whose last dependency just succeeded is launched at once when launching it
  cannot take long: every argument is a small plain value or a future holding one, it is
  not cached, staged or a join, its backend promises that ``submit`` never blocks
  (:class:`~hpcfutures.resources.NonBlockingSubmit`) and its function was submitted before,
  so a backend that serializes functions has done so already (:meth:`Task._launch_here`).

Everything else (cache lookups and writes, checkpoints, retries and their handler, staging,
failures, join bodies, user callbacks, large arguments) runs on the dispatcher, so a slow
disk or a large value never stalls a backend's thread.  ``state`` and ``inner`` are guarded
by the task's ``lock``, because ``cancel`` may come from any thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from concurrent.futures import CancelledError, Executor, Future
from time import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from .deps import ATOMIC_TYPES, find_futures, substitute
from .dispatch import Dispatcher
from .failures import dependency_error, failures
from .futures import ENGINE_CALLBACKS, DataflowFuture
from .recording import (
    dedup_reason,
    exception_text,
    final_state,
    miss_reason,
    parents_of,
    record_done,
    record_try,
    resources_of,
)
from .retry import RetryHandler, TaskRecord, should_retry
from .settings import DEFAULT_SETTINGS, TaskSettings
from .tasklog import function_name, htex_done_record, pack_done, pack_submit

if TYPE_CHECKING:
    from types import ModuleType

    from ..monitor.recorder import Recorder
    from .caching import Memoizer
    from .memo import CacheKey
    from .tasklog import TaskLog

logger = logging.getLogger(__name__)

WAITING, QUEUED, DONE = 0, 1, 2

#: The largest str or bytes argument a dependent may have and still be launched off the
#: dispatcher: serializing it is then sure to be quick.
QUICK_TEXT = 64 * 1024
#: The largest int, in bits, for the same purpose.
QUICK_INT_BITS = 4096
_QUICK_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None)})

#: A call's last change before it goes to the backend: ``wrap(fn, args, kwargs)`` returns
#: the function and arguments to submit (apps use it for streams and bash commands).
Wrap = Callable[
    [Callable[..., Any], tuple[Any, ...], dict[str, Any]],
    tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
]


class TaskHost(Protocol):
    """What a task needs from the executor that runs it."""

    dispatcher: Dispatcher
    retries: int
    retry_handler: RetryHandler | None
    recorder: Recorder | None  # the run record every task tells its events, if it is recorded
    task_log: TaskLog | None  # the recorder's compact log of common events, if it is recorded

    def choose_label(self, settings: TaskSettings) -> str:
        """The backend label this task runs on."""

    def backend_for(self, label: str, settings: TaskSettings) -> Executor:
        """The executor to submit to: the backend, or its ``options()`` view for these settings."""

    def memo_for(self, settings: TaskSettings) -> Memoizer | None:
        """The cache this task uses, or None if it is not cached."""

    def stage(
        self, task: Task, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The call, wrapped so that its remote files are staged where it runs."""

    def run_join(self, task: Task) -> None:
        """Run a join app's body; its outcome comes back through ``task.finish``."""

    def stop_error(self) -> BaseException | None:
        """Why the workflow stopped (lazy_errors=False), or None: a failure is not retried then."""

    def discarding(self) -> bool:
        """Whether the host is shutting down with cancel_futures: failures are not retried."""

    def task_failed(self, task: Task, error: BaseException) -> None:
        """A task failed with its own error (not a dependency's, not a cancel)."""

    def launches_here(self, task: Task) -> bool:
        """Whether ``task`` may be launched off the dispatcher: not cached, and its backend's
        ``submit`` never blocks and has seen its function before."""

    def submitted(self, fn: Callable[..., Any]) -> None:
        """``fn`` (a task's own function, unwrapped) was handed to a backend."""

    def forget(self, task: Task) -> None:
        """The task ended: drop it from the host's live tasks."""


class Task:
    """One task's bookkeeping, dropped as soon as its future is resolved."""

    __slots__ = (
        "host",
        "future",
        "fn",
        "args",
        "kwargs",
        "settings",
        "label",
        "wrap",
        "deps",
        "done_count",
        "state",
        "inner",
        "record",
        "lock",
        "memo",
        "cache_key",
        "plain",
        "stopped",
        "settled",
        "_key",
        "tries",
        "queued_at",
        "compact",
    )

    def __init__(
        self,
        host: TaskHost,
        future: DataflowFuture,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        settings: TaskSettings,
        wrap: Wrap | None,
    ):
        self.host = host
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.settings = settings
        self.label = host.choose_label(settings)
        self.wrap = wrap
        self.deps: list[Future[Any]] = []
        self.done_count: Iterator[int] | None = None
        self.state = WAITING
        self.inner: Future[Any] | None = None
        self.record: TaskRecord | None = None
        self.memo: Memoizer | None = None  # the cache, while this task leads a cached call
        self.cache_key: CacheKey | None = None  # the key this task leads
        self._key: CacheKey | None = None  # the key this task follows another task's call for
        self.plain = False  # every argument is a plain value (known at submit, so not looked at again)
        self.stopped: BaseException | None = None  # the workflow stopped: fail with this
        self.settled = False  # finish() has run (a cancel and the backend's outcome may race)
        self.tries = 0  # tries recorded or begun (only counted while the run is recorded)
        self.queued_at: float | None = None  # when the try in progress was queued, while recorded
        # Recorded runs only: its submit goes to the run record's TaskLog, and its success may
        # too.  True until the engine (an app's future with output files) or the submit (a
        # task with dependencies or resources) says otherwise, so that the common case stores nothing.
        self.compact = True
        self.lock = threading.Lock()  # guards state and inner

    # -- waiting for dependencies --------------------------------------------------------------

    def start(self) -> None:
        """Launch now if no argument holds a future; else wait for them (on the submitting thread)."""
        if is_plain(self.args, self.kwargs):  # nothing can hold a future (or a File): skip searches
            self.plain = True
            if (log := self.host.task_log) is not None:
                if self.compact and self.settings is DEFAULT_SETTINGS:  # the common case, told compactly
                    # TaskLog.submitted, inline on this hot path: the default label's kind of
                    # task is most often the last one's
                    self.queued_at = at = time()
                    fut, last = self.future, log.last
                    if self.fn is last[0] and fut.name is last[1]:
                        kind = last[2]
                    else:
                        kind = log.default_kind(self.fn, fut.name, self.label)
                    log.submits.append(pack_submit(fut.task_id, at, kind))
                else:
                    self._record_submit(log, ())
            self.launch()
            return
        deps = find_futures(self.args, self.kwargs)
        if (log := self.host.task_log) is not None:
            self._record_submit(log, deps)
        if not deps:
            self.launch()
            return
        self.deps = deps
        self.done_count = itertools.count(1)
        for dep in deps:
            dep.add_done_callback(self._dep_done)

    def _record_submit(self, log: TaskLog, deps: list[Future[Any]] | tuple[()]) -> None:
        """Tell the run record this task was submitted: pending while it waits for its
        dependencies, else queued (a cached call that follows a running twin goes back to
        pending)."""
        fut = self.future
        recorder = log.recorder
        at = time()
        settings = self.settings
        resources = None if settings is DEFAULT_SETTINGS else resources_of(settings)
        if not deps:
            self.queued_at = at
            if resources is None:  # told compactly; so is its success, unless it has output files to read
                log.submitted(fut.task_id, at, self.fn, fut.name, self.label)
                return
        self.compact = False
        recorder.submitted(
            fut.task_id, function_name(self.fn, fut.name), at, name=fut.name, executor=self.label,
            parents=parents_of(deps, recorder) if deps else (), resources=resources,
            state="pending" if deps else "queued",
        )  # fmt: skip

    def _dep_done(self, _dep: Future[Any]) -> None:
        # itertools.count advances atomically: exactly one callback sees the last number.
        if next(self.done_count) == len(self.deps):  # type: ignore[arg-type]
            if self.state != WAITING:  # cancelled while it waited: its arguments are gone
                return
            dispatcher = self.host.dispatcher
            # On the dispatcher itself, queue it: a chain of failures then runs one task at
            # a time instead of nesting a call per task.
            if dispatcher.on_thread() or not self._launch_here():
                dispatcher.post(Task.launch, self)

    def _launch_here(self) -> bool:
        """Launch now, on this thread, if that is sure to be quick; return whether it was."""
        if self.settings.join or self.wrap is not None or self.stopped is not None:
            return False
        for value in itertools.chain(self.args, self.kwargs.values()):
            if isinstance(value, Future):
                try:
                    if value.exception() is not None:
                        return False
                except CancelledError:
                    return False
                value = value.result()
            kind = type(value)
            if kind not in _QUICK_TYPES:
                return False
            if kind is int and value.bit_length() > QUICK_INT_BITS:
                return False
            if (kind is str or kind is bytes) and len(value) > QUICK_TEXT:
                return False
        if not self.host.launches_here(self):
            return False
        self.launch()
        return True

    def launch(self) -> None:
        """Every dependency is done: fail, answer from the cache, or run."""
        with self.lock:
            if self.state != WAITING:
                return
            self.state = QUEUED
        deps, self.deps = self.deps, []
        if self.stopped is not None:
            self.finish(exception=self.stopped)
            return
        failed = failures(deps) if deps else []
        if failed:
            self.finish(exception=dependency_error(self.future, failed))
            return
        try:
            args, kwargs = substitute(self.args, self.kwargs) if deps else (self.args, self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - a container that cannot be rebuilt
            self.finish(exception=exc)
            return
        self.args, self.kwargs = args, kwargs
        memo = self.host.memo_for(self.settings)
        if memo is not None and self._answered_from_cache(memo):
            return
        if self.settings.join:
            self.host.run_join(self)
        else:
            self.submit()

    def run(self) -> None:
        """Hand the call to its backend (or, for a join app, run its body)."""
        if self.settings.join:
            self.host.run_join(self)
        else:
            self.submit()

    # -- memoisation -----------------------------------------------------------------------------

    def _answered_from_cache(self, memo: Memoizer) -> bool:
        """Look the call up in the cache; return True if that settled the task (or will)."""
        try:
            key, previous = memo.key_after(self.fn, self.args, self.kwargs, self.settings.ignore_for_cache)
            found, value = memo.find(key)
        except Exception as exc:  # noqa: BLE001 - an argument with no cache key, an unreadable checkpoint
            self.finish(exception=exc)
            return True
        recorder = self.host.recorder
        if found is not None:
            if recorder is not None:
                recorder.cache(self.future.task_id, found, key.key)
            self.future.cached = True
            self.finish(result=value)
            return True
        leader = memo.lead_or_follow(key, self.future)
        if leader is not None:  # the same call is running: share its outcome
            if recorder is not None:
                recorder.cache(self.future.task_id, "dedup", key.key, dedup_reason(leader))
                recorder.state(self.future.task_id, "pending", time())
                self.queued_at = None
            self._key = key
            leader.add_done_callback(self._leader_done)
            return True
        if recorder is not None:
            recorder.cache(self.future.task_id, "miss", key.key, miss_reason(previous, key))
        self.memo, self.cache_key = memo, key
        return False

    def _leader_done(self, leader: Future[Any]) -> None:
        self.host.dispatcher.post(self._follow, leader)

    def _follow(self, leader: Future[Any]) -> None:
        if leader.cancelled():
            # The call this task waited for will not run: the first follower here leads the
            # key in its place, and the others follow that one.
            memo, key = self.host.memo_for(self.settings), self._key
            new_leader = memo.take_over(key, self.future, leader) if memo is not None and key is not None else None
            if new_leader is None:
                self.memo, self.cache_key = memo, key
                recorder = self.host.recorder
                if recorder is not None and key is not None:
                    recorder.cache(self.future.task_id, "miss", key.key, "the task it followed was cancelled")
                self.run()
            else:
                new_leader.add_done_callback(self._leader_done)
        elif (error := leader.exception()) is not None:
            self.finish(exception=error)
        else:
            self.future.cached = True
            self.finish(result=leader.result())

    # -- running in the backend ------------------------------------------------------------------

    def submit(self) -> None:
        """Submit the call (again, on a retry) to the backend executor."""
        fn, args, kwargs = self.fn, self.args, self.kwargs
        if self.wrap is not None:
            fn, args, kwargs = self.wrap(fn, args, kwargs)
        if not (self.plain and self.wrap is None) and not is_plain(args, kwargs):
            fn, args, kwargs = self.host.stage(self, fn, args, kwargs)
        recorder = self.host.recorder
        if recorder is not None:  # begin_try, inline on this hot path
            self.tries += 1
            if self.queued_at is None:
                self.queued_again(recorder)
        try:
            inner = self.host.backend_for(self.label, self.settings).submit(fn, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - e.g. an argument that cannot be pickled
            if recorder is not None:
                self.end_try(recorder, None, exc)
            self.finish(exception=exc)
            return
        with self.lock:
            self.inner = inner
        if self.wrap is None:
            self.host.submitted(self.fn)
        inner.add_done_callback(self._inner_done)

    def _inner_done(self, inner: Future[Any]) -> None:
        # A plain success is settled here (see the module docstring); anything else is
        # the dispatcher's.
        if self.cache_key is None and self.stopped is None and not self.future.has_user_callbacks():
            try:
                succeeded = inner.exception() is None
            except CancelledError:
                succeeded = False
            if succeeded:
                log = self.host.task_log
                if log is None:
                    self.finish(result=inner.result())
                    return
                if self.compact:  # the common case, told compactly (TaskLog.done and .ran, inline)
                    kept = _KEEPS[type(inner)]
                    if kept is _NOTHING:
                        ended = time()
                        log.dones.append(pack_done(self.future.task_id, self.tries, self.queued_at or ended, ended))
                        self.finish(result=inner.result(), told=True)
                        return
                    if kept is _RESULT_META:  # an HTEX future: where and how it ran, as it came
                        meta = inner.result_meta  # type: ignore[attr-defined]
                        if meta is not None and not meta[_htex.R_LOST] and meta[_htex.R_STATUS] == _htex.OK:
                            log.htex_dones.append(_pack_htex_done(self.future.task_id, self.tries, self.queued_at or 0.0, *meta))
                            self.finish(result=inner.result(), told=True)
                            return
                fut = self.future
                if not fut._outputs:  # nothing to read here
                    record_done(log.recorder, fut.task_id, self.tries, self.queued_at, inner)
                    self.finish(result=inner.result(), told=True)
                    return
        self.host.dispatcher.post(self.settle, inner)

    def settle(self, inner: Future[Any]) -> None:
        """The backend's (or a join body's) future ``inner`` is done: finish, or retry."""
        recorder = self.host.recorder
        try:
            error = inner.exception()
        except CancelledError as cancel:
            if recorder is not None:
                self.end_try(recorder, inner, cancel)
            if self.stopped is not None:
                self.finish(exception=self.stopped)
            else:
                self.finish(cancelled=True)
            return
        if error is None:
            if recorder is not None:
                self.end_try(recorder, inner, None)
            self.finish(result=inner.result())
            return
        host = self.host
        if self.stopped is not None or host.discarding() or host.stop_error() is not None:
            if recorder is not None:
                self.end_try(recorder, inner, error)
            self.finish(exception=error)
            return
        record = self.record
        if record is None:
            retries = self.settings.retries if self.settings.retries is not None else host.retries
            record = self.record = TaskRecord(
                self.future.task_id, self.future.name, self.label, retries, self.args, self.kwargs
            )
        record.attempts += 1
        lost, spent = record.infrastructure_failures, record.fail_cost
        retry = should_retry(error, record, host.retry_handler)
        if recorder is not None:  # not charged: a lost worker retried for free, or a cost of 0
            free = record.infrastructure_failures > lost or (retry and record.fail_cost <= spent)
            self.end_try(recorder, inner, error, charged=not free)
        if retry:
            logger.debug("task %s failed (%r); running it again", self.future.task_id, error)
            self.submit()
        else:
            self.finish(exception=error)

    def begin_try(self, recorder: Recorder) -> None:
        """Count a try handed to the backend (or a join body to its pool), and tell the run
        record the task is queued unless it said so at submit."""
        self.tries += 1
        if self.queued_at is None:
            self.queued_again(recorder)

    def queued_again(self, recorder: Recorder) -> None:
        """Tell the run record the task is queued now (a try after the first, or the first
        of a task that waited for dependencies)."""
        self.queued_at = at = time()
        recorder.state(self.future.task_id, "queued", at)

    def end_try(
        self, recorder: Recorder, inner: Future[Any] | None, error: BaseException | None, *, charged: bool = True
    ) -> None:
        """Record the end of the try in progress, whose backend future ``inner`` ended with
        ``error`` (None: it succeeded); once, when a cancel and the outcome race."""
        with self.lock:
            queued, self.queued_at = self.queued_at, None
        if queued is not None:
            self.tries = record_try(
                recorder, self.future.task_id, self.tries, queued, inner, error, charged=charged, future=self.future
            )

    # -- ending --------------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the task while it waits or is queued in its backend; return whether it was."""
        with self.lock:
            if self.state == WAITING:
                self.state = DONE
                self.settled = True
                inner = None
            elif self.state == QUEUED:
                inner = self.inner
                if inner is None:
                    return False
            else:
                return self.future.cancelled()
        recorder = self.host.recorder
        if inner is None:
            if recorder is not None:
                recorder.ended(self.future.task_id, "cancelled", time(), tries=self.tries)
            self._release()
            return self.future._cancel_self()
        if not inner.cancel():
            return False
        if recorder is not None:
            self.end_try(recorder, inner, CancelledError())
        self.finish(cancelled=True)  # now, as the stdlib's cancel() does; settle() then finds it done
        return True

    def stop(self, error: BaseException) -> None:
        """The workflow stopped (lazy_errors=False): fail with ``error`` unless already running."""
        self.stopped = error
        with self.lock:
            if self.state == WAITING:
                self.state = QUEUED  # launch() now fails it
                waiting = True
            else:
                waiting = False
                inner = self.inner
        if waiting:
            self.host.dispatcher.post(Task.launch_stopped, self)
        elif inner is not None:
            inner.cancel()  # settle() then fails it with ``error``

    def launch_stopped(self) -> None:
        self.finish(exception=self.stopped)

    def finish(
        self, *, result: Any = None, exception: BaseException | None = None, cancelled: bool = False, told: bool = False
    ) -> None:
        """Settle the task's future and let go of everything the task holds.

        ``told``: the run record knows the task's end already.
        """
        with self.lock:
            if self.settled:
                return
            self.settled = True
            self.state = DONE
        recorder = self.host.recorder
        if recorder is not None and not told:
            fut = self.future
            if cancelled:
                recorder.ended(fut.task_id, "cancelled", time(), tries=self.tries)
            elif exception is None:
                recorder.ended(fut.task_id, "memo_done" if fut.cached else "done", time(), tries=self.tries)
            else:
                state = final_state(exception, self.stopped, self.tries)
                recorder.ended(fut.task_id, state, time(), tries=self.tries, exception=exception_text(exception))
        if self.cache_key is not None:
            memo = self.memo
            assert memo is not None
            if cancelled or self.stopped is not None:
                memo.ended(self.cache_key, self.future)
            elif exception is None:
                memo.succeeded(self.cache_key, result, self.future.name, self.future)
            else:
                memo.failed(self.cache_key, exception, self.future.name, self.future)
        if exception is not None and not cancelled and self.stopped is None:
            self.host.task_failed(self, exception)
        self._release()
        fut = self.future
        if cancelled:
            fut._cancel_self()
        elif exception is not None:
            fut.set_exception(exception)
        else:
            fut.set_result(result)

    def _release(self) -> None:
        """Drop what the finished task holds, so that a long run keeps memory flat."""
        self.future._task = None
        self.host.forget(self)
        self.fn = self.args = self.kwargs = self.inner = None  # type: ignore[assignment]
        self.record = None  # it holds the arguments and the failed attempts' tracebacks
        self.memo = self._key = None


# What a backend's futures of one type keep about where a try ran, for the run record: an
# HTEX result's RESULT_META (read from it as it came), an Execution, or nothing.  Learned
# from the class on first sight, instead of probing each future for the attributes.
_NOTHING, _RESULT_META, _EXECUTION = "nothing", "result_meta", "execution"
# The HTEX protocol and the packer of an HTEX success's record, once an HTEX future is seen:
# a run that records no HTEX task never imports them.
_htex: ModuleType
_pack_htex_done: Callable[..., bytes]


class _Keeps(dict[type, str]):
    def __missing__(self, kind: type) -> str:
        global _htex, _pack_htex_done
        if hasattr(kind, "result_meta"):
            from ..executors.htex import protocol

            _htex, _pack_htex_done = protocol, htex_done_record().pack
            kept = _RESULT_META
        elif hasattr(kind, "execution"):
            kept = _EXECUTION
        else:
            kept = _NOTHING
        self[kind] = kept
        return kept


_KEEPS = _Keeps()


def is_plain(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is a plain value (so no future or File can hide in the call)."""
    for a in args:
        if type(a) not in ATOMIC_TYPES:
            return False
    for v in kwargs.values():
        if type(v) not in ATOMIC_TYPES:
            return False
    return True


ENGINE_CALLBACKS.update({Task._dep_done, Task._leader_done})
