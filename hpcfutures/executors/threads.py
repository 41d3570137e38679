"""Implements ThreadExecutor: the stdlib thread pool plus ``options()`` and task priorities.

A plain ``submit`` is the stdlib's own code path, item for item: work goes straight into the
C ``SimpleQueue``.  Only a submit with a non-zero priority (made through
``ex.options(priority=...)``) takes the slower path through a heap, and workers consult the
heap only while it holds something.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import thread as _thread
from typing import Any, Callable

from ..errors import ConfigurationError
from ..resources import DEFAULT_OPTIONS, ExecutorView, Resources, TaskOptions, reject_unsupported

__all__ = ["ThreadExecutor"]

# Stands in the FIFO for one entry of the heap: whoever takes it pops the heap's best entry.
_HEAP_TOKEN = object()


class _WorkQueue:
    """The pool's work queue: a FIFO for priority-0 items and a heap for the others.

    Each heap entry has one token in the FIFO, so the blocking ``get`` of the stdlib worker
    loop wakes for heap entries too, and ``None`` sentinels (always put into the FIFO after
    every work item, since nothing is submitted after shutdown) come out after all work.
    When a worker takes a plain item while the heap holds something that should run first
    (higher priority, or an older plain item parked there earlier), it parks the plain item
    in the heap with priority 0 and runs the heap's best entry instead; the heap keeps its
    size, so entries and tokens stay one to one.
    """

    def __init__(self) -> None:
        fifo: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._fifo = fifo
        # The plain-submit path: the C queue's own method, no Python frame in between.
        self.put = fifo.put
        self._fifo_get = fifo.get
        # Entries are (-priority, sequence number, work item): the smallest runs first.
        self._heap: list[tuple[int, int, Any]] = []
        self._lock = threading.Lock()  # Must be held while mutating _heap or drawing from _seq.
        self._seq = itertools.count()

    def put_priority(self, item: Any, priority: int) -> None:
        """Queue ``item`` to run before every item of lower priority."""
        with self._lock:
            heapq.heappush(self._heap, (-priority, next(self._seq), item))
        self._fifo.put(_HEAP_TOKEN)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Return the next work item (or ``None`` sentinel); raise ``queue.Empty`` if none."""
        item = self._fifo_get(block, timeout)
        if self._heap:
            item = self._reorder(item)
        return item

    def get_nowait(self) -> Any:
        """Return the next work item without blocking; raise ``queue.Empty`` if none."""
        return self.get(False)

    def _reorder(self, item: Any) -> Any:
        with self._lock:
            if item is _HEAP_TOKEN:
                return heapq.heappop(self._heap)[2]
            if item is None:
                return None
            # Returns the plain item itself when the heap's best entry has negative priority.
            return heapq.heappushpop(self._heap, (0, next(self._seq), item))[2]

    def qsize(self) -> int:
        """Return the approximate number of queued items (sentinels included)."""
        return self._fifo.qsize()

    def empty(self) -> bool:
        """Return True if nothing is queued (approximately, like ``SimpleQueue.empty``)."""
        return self._fifo.empty()


class ThreadExecutor(_thread.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that also takes per-task settings through :meth:`options`.

    It honours ``priority`` (higher runs first, submission order among equals) and rejects
    ``walltime`` and non-default :class:`~hpcfutures.Resources`, since a thread can neither
    be stopped nor placed; :class:`~hpcfutures.HighThroughputExecutor` can do both.
    """

    _work_queue: Any  # a _WorkQueue, which the stdlib machinery uses like its SimpleQueue

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        """Create the pool; threads start on demand, up to ``max_workers``.

        Args:
            max_workers: the most threads that run tasks at once; None means the stdlib's
                default, ``min(32, os.cpu_count() + 4)``.
            thread_name_prefix: a prefix for the worker threads' names.
            initializer: called with ``*initargs`` in each worker thread before its first
                task; if it raises, the pool breaks and pending tasks fail.
            initargs: the arguments for ``initializer``.

        Raises:
            ConfigurationError: a parameter has a value that cannot work; the message names it.
        """
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigurationError(
                f"max_workers must be a positive integer or None (for the default), got {max_workers!r}"
            )
        if not isinstance(thread_name_prefix, str):
            raise ConfigurationError(f"thread_name_prefix must be a string, got {thread_name_prefix!r}")
        if initializer is not None and not callable(initializer):
            raise ConfigurationError(f"initializer must be a callable or None, got {initializer!r}")
        if not isinstance(initargs, tuple):
            raise ConfigurationError(
                f"initargs must be a tuple of arguments for initializer, got {type(initargs).__name__}"
            )
        super().__init__(max_workers, thread_name_prefix, initializer, initargs)
        self._work_queue = _WorkQueue()

    def options(
        self, *, resources: Resources | None = None, walltime: float | None = None, priority: int | None = None
    ) -> ExecutorView:
        """Return an Executor view whose submits carry these settings.

        Args:
            resources: only the default ``Resources()`` is accepted.
            walltime: not supported; must be None.
            priority: tasks with a higher priority start before queued tasks with a lower
                one; equal priorities start in submission order.  Default 0.

        Raises:
            ConfigurationError: a setting has an invalid value.
            UnsupportedOptionError: a setting this executor cannot honour was given.
        """
        return ExecutorView(self, DEFAULT_OPTIONS.merged(resources, walltime, priority))

    def _check_options(self, options: TaskOptions) -> None:
        reject_unsupported(
            "ThreadExecutor",
            options,
            walltime=True,
            priority=True,
            hint="Use HighThroughputExecutor, which places each task on a worker with the resources it declares.",
        )
        reject_unsupported(
            "ThreadExecutor",
            options,
            resources=True,
            priority=True,
            hint="Use HighThroughputExecutor, which enforces walltime by stopping the task's worker.",
        )

    def _submit_with_options(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        priority = options.priority
        if priority == 0:
            return self.submit(fn, *args, **kwargs)
        # The stdlib's submit with another put; keep the two in step.
        with self._shutdown_lock, _thread._global_shutdown_lock:
            if self._broken:
                raise getattr(self, "BROKEN", _thread.BrokenThreadPool)(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _thread._shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            f: Future[Any] = Future()
            resolve = getattr(self, "_resolve_work_item_task", None)
            if resolve is not None:  # Python 3.14 moved the call into a task tuple
                w = _thread._WorkItem(f, resolve(fn, args, kwargs))  # type: ignore[call-arg]
            else:
                w = _thread._WorkItem(f, fn, args, kwargs)
            self._work_queue.put_priority(w, priority)
            self._adjust_thread_count()
            return f
