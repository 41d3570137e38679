"""Engine: a DataflowExecutor's working state, and the host its tasks run against.

The engine owns the live tasks, the dispatcher thread, the backends and their ``options()``
views, the cache, the join pool, the workflow's stop and the run record; it implements
:class:`~.task.TaskHost`.  :class:`~.executor.DataflowExecutor` is the public face that
checks arguments and builds it.

Locks: ``lock`` guards ``closed``, ``cancelling``, ``views``, the join pool and the memo's
creation; ``live`` is changed under ``lock`` on submit (so that no task slips past a
shutdown) and popped without it when a task ends (a dict pop is atomic).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import shutil
import threading
import weakref
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import DependencyError, UnsupportedOptionError, WorkflowStoppedError
from ..resources import SupportsOptions, submit_never_blocks
from .dispatch import Dispatcher
from .futures import DataflowFuture, future_type_for
from .join import run_join
from .retry import RetryHandler
from .settings import TaskSettings
from .task import Task, Wrap
from .tasklog import TaskLog

if TYPE_CHECKING:
    from ..monitor.recorder import Recorder
    from .caching import Memoizer

logger = logging.getLogger(__name__)


class Engine:
    """What runs a DataflowExecutor's tasks (see the module docstring)."""

    def __init__(
        self,
        owner: Any,
        executors: Mapping[str, Executor],
        *,
        retries: int,
        retry_handler: RetryHandler | None,
        cache: bool,
        app_cache: bool,
        lazy_errors: bool,
        make_memo: Callable[[], Memoizer],
        staging: Mapping[str, Sequence[Any] | None],
        run_dir: Callable[[], Path],
        recorder: Recorder | None = None,
    ):
        self.owner = owner  # the current executor inside join bodies
        self.executors = dict(executors)
        # Backends whose submit never blocks: small dependents may be launched on their threads.
        self.quick_labels = frozenset(label for label, ex in self.executors.items() if submit_never_blocks(ex))
        # Functions submitted at least once (by id, with a weak reference to tell a reused
        # id): a backend that serializes functions has done so for these.
        self.warm: dict[int, weakref.ref[Callable[..., Any]]] = {}
        self.default_label = next(iter(self.executors))
        self.retries = retries
        self.retry_handler = retry_handler
        self.cache = cache
        self.app_cache = app_cache
        self.lazy_errors = lazy_errors
        self.staging = staging
        self.run_dir = run_dir
        self.dispatcher = Dispatcher("hpcfutures-dataflow")
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.live: dict[int, Task] = {}
        self.views: dict[tuple[str, tuple[tuple[str, Any], ...]], Executor] = {}
        self.closed = False
        self.cancelling = False
        self.stopped: WorkflowStoppedError | None = None
        self.join_pool: Executor | None = None
        self._make_memo = make_memo
        self.memo: Memoizer | None = None
        self.staging_dirs = False  # whether any task was given a staging directory
        self.recorder = recorder
        self.task_log = TaskLog(recorder) if recorder is not None else None
        self.future_type = future_type_for(recorder)

    # -- submitting ----------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        settings: TaskSettings,
        name: str | None,
        wrap: Wrap | None,
        setup: Callable[[DataflowFuture], None] | None,
    ) -> DataflowFuture:
        """Make a task for ``fn(*args, **kwargs)`` and start it; return its future."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable first argument, got {type(fn).__name__}")
        task_id = next(self.ids)
        future = self.future_type(task_id, name or getattr(fn, "__name__", None) or type(fn).__name__)
        task = Task(self, future, fn, args, kwargs, settings, wrap)
        future._task = task
        if setup is not None:
            setup(future)
            if future._outputs:  # its tries keep an exit code or output tails: never told compactly
                task.compact = False
        with self.lock:
            if self.stopped is not None:
                raise self.stopped
            if self.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.live[task_id] = task
        try:
            task.start()
        except BaseException:
            task._release()  # e.g. a container walker raised: the future was never handed out
            raise
        return future

    def check_labels(self, labels: tuple[str, ...] | None) -> None:
        unknown = [label for label in labels or () if label not in self.executors]
        if unknown:
            raise UnsupportedOptionError(
                f"unknown executor label(s) {unknown!r}; this DataflowExecutor has {sorted(self.executors)}"
            )

    # -- the TaskHost interface ------------------------------------------------------------------

    def choose_label(self, settings: TaskSettings) -> str:
        labels = settings.executors
        if labels is None:
            return self.default_label
        return labels[0] if len(labels) == 1 else random.choice(labels)

    def backend_for(self, label: str, settings: TaskSettings) -> Executor:
        """The executor for ``label``, through an ``options()`` view when the task needs one."""
        wanted = settings.backend_options()
        executor = self.executors[label]
        if not wanted:
            return executor
        key = (label, tuple(sorted(wanted.items(), key=lambda kv: kv[0])))
        view = self.views.get(key)
        if view is None:
            if not isinstance(executor, SupportsOptions):
                raise UnsupportedOptionError(
                    f"executor {label!r} ({type(executor).__name__}) has no options(): it cannot honour "
                    f"{', '.join(f'{k}={v!r}' for k, v in wanted.items())}"
                )
            view = executor.options(**wanted)
            with self.lock:
                view = self.views.setdefault(key, view)
        return view

    def memo_for(self, settings: TaskSettings) -> Memoizer | None:
        if not self.app_cache:
            return None
        cache = settings.cache
        if not (self.cache if cache is None else cache):
            return None
        return self.memoizer()

    def memoizer(self) -> Memoizer:
        """The cache, made on first use."""
        memo = self.memo
        if memo is None:
            with self.lock:
                if self.memo is None:
                    self.memo = self._make_memo()
                memo = self.memo
        return memo

    def stage(
        self, task: Task, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Wrap a call that has remote Files so that they are staged where the task runs."""
        from .staging.task import private_copies, remote_files, run_staged

        if not remote_files(args, kwargs):
            return fn, args, kwargs
        args, kwargs = private_copies(args, kwargs)
        self.staging_dirs = True
        directory = str(self.run_dir() / "staging" / f"task-{task.future.task_id}")
        return run_staged, (fn, self.staging[task.label], directory, *args), kwargs

    def run_join(self, task: Task) -> None:
        with self.lock:
            if self.join_pool is None:
                from ..executors.threads import ThreadExecutor

                self.join_pool = ThreadExecutor(max_workers=4, thread_name_prefix="hpcfutures-join")
            pool = self.join_pool
        run_join(task, pool, self.owner)

    def stop_error(self) -> BaseException | None:
        return self.stopped

    def discarding(self) -> bool:
        return self.closed and self.cancelling

    def task_failed(self, task: Task, error: BaseException) -> None:
        if self.lazy_errors or self.stopped is not None or isinstance(error, DependencyError):
            return
        fut = task.future
        stop = WorkflowStoppedError(
            f"the workflow stopped at its first failure (lazy_errors=False): task {fut.task_id} "
            f"({fut.name}) failed with {type(error).__name__}: {error}",
            error,
        )
        with self.lock:
            if self.stopped is not None:
                return
            self.stopped = stop
        for other in list(self.live.values()):
            if other is not task:
                other.stop(stop)

    def launches_here(self, task: Task) -> bool:
        fn = task.fn
        known = self.warm.get(id(fn))
        return (
            known is not None
            and known() is fn
            and task.label in self.quick_labels
            and self.memo_for(task.settings) is None
        )

    def submitted(self, fn: Callable[..., Any]) -> None:
        key = id(fn)
        known = self.warm.get(key)
        if known is None or known() is not fn:
            try:
                self.warm[key] = weakref.ref(fn, functools.partial(_drop, self.warm, key))
            except TypeError:  # cannot be weakly referenced (a builtin): never launched off the dispatcher
                pass

    def forget(self, task: Task) -> None:
        self.live.pop(task.future.task_id, None)

    # -- waiting and shutting down -----------------------------------------------------------------

    def wait_all(self) -> None:
        """Wait until no task is live (tasks submitted meanwhile, by join bodies say, too)."""
        from concurrent.futures import wait

        while self.live:
            wait([t.future for t in list(self.live.values())])

    def close(self, cancel: bool) -> None:
        """Refuse new submits; with ``cancel``, cancel every task not begun."""
        with self.lock:
            self.closed = True
            self.cancelling = self.cancelling or cancel
        if cancel:
            for task in list(self.live.values()):
                task.cancel()

    def release(self, owned: set[str], wait: bool, cancel_futures: bool) -> None:
        """Once no task is live: shut the backends in ``owned``, the join pool, the cache, the thread."""
        self.wait_all()
        for label in owned:
            executor = self.executors[label]
            if cancel_futures:
                try:
                    executor.shutdown(wait=wait, cancel_futures=True)
                    continue
                except TypeError:  # an Executor without Python 3.9's cancel_futures (loky's)
                    pass
            executor.shutdown(wait=wait)
        if self.join_pool is not None:
            self.join_pool.shutdown(wait=wait)
        if self.memo is not None:
            self.memo.close()  # writes what the checkpoint still buffers
        self.dispatcher.stop()
        if self.staging_dirs:
            shutil.rmtree(self.run_dir() / "staging", ignore_errors=True)
        if self.recorder is not None:  # last: the backends' last events are in the run too
            stopped = self.stopped
            self.recorder.close("done" if stopped is None else "failed", None if stopped is None else str(stopped))

    def on_dispatcher(self) -> bool:
        return self.dispatcher.on_thread()

    def live_futures(self) -> list[Future[Any]]:
        return [t.future for t in list(self.live.values())]


def _drop(warm: dict[int, Any], key: int, _ref: object) -> None:
    warm.pop(key, None)


def remove_if_empty(directory: Path) -> bool:
    """Remove ``directory`` if it holds no file (empty subdirectories go too); say whether it went."""
    for _root, _dirs, files in os.walk(directory):
        if files:
            return False
    shutil.rmtree(directory, ignore_errors=True)
    return True
