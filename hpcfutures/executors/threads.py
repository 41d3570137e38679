"""Implements ThreadExecutor: the stdlib thread pool plus ``options()`` and task priorities.

While no task with a non-zero priority is queued, a submit is the stdlib's code path: work
goes straight into the C ``SimpleQueue`` and workers take it from there.  Only while a
prioritized task (submitted through ``ex.options(priority=...)``) is queued do submits and
workers go through a heap.  Futures are :class:`~hpcfutures.leanfuture.FinishedReadsFuture`:
the stdlib's, except that reading a finished one takes no lock.  (Not LeanFutures: their
module-wide lock, taken by the submitting thread and every worker, measured slower here.)
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import thread as _thread
from typing import Any

from .._validate import check_count
from ..errors import ConfigurationError
from ..leanfuture import FinishedReadsFuture
from ..resources import DEFAULT_OPTIONS, ExecutorView, Resources, TaskOptions, reject_unsupported
from .progress import ExecutorProgress

__all__ = ["ThreadExecutor"]

# Stands in the FIFO for one heap entry: whoever takes it pops the heap's best entry.
_HEAP_TOKEN = object()


class _WorkQueue:
    """The pool's work queue: a FIFO while every queued item has priority 0, else a heap too.

    While no item of another priority is queued, ``put`` *is* ``SimpleQueue.put`` and the
    pool runs exactly as the stdlib's.  Once one is, ``put`` switches to pushing onto a heap
    of ``(-priority, seq, item)`` until the heap drains.  Every heap entry has one token in
    the FIFO, so the stdlib worker loop's blocking ``get`` wakes for it, and the ``None``
    sentinels (put into the FIFO after every work item, since nothing is submitted after
    shutdown) come out last.  A plain item that was already in the FIFO when the heap filled
    is older than any plain item in the heap: when a worker takes it while the heap holds
    something better, it is parked in the heap ahead of the heap's own priority-0 items.
    """

    put: Callable[[Any], None]

    def __init__(self) -> None:
        fifo: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._fifo = fifo
        self._fifo_get = fifo.get
        self.put = fifo.put
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = itertools.count()
        # Parked items sort before every item pushed directly, in the order they were parked.
        self._parked_seq = itertools.count(-(1 << 62))
        self._lock = threading.Lock()  # Must be held while mutating _heap or rebinding put.

    def put_priority(self, item: Any, priority: int) -> None:
        """Queue ``item`` to run before every queued item of lower priority."""
        with self._lock:
            heapq.heappush(self._heap, (-priority, next(self._seq), item))
            self.put = self._put_behind_heap
        self._fifo.put(_HEAP_TOKEN)

    def _put_behind_heap(self, item: Any) -> None:
        if item is None:
            self._fifo.put(None)
            return
        with self._lock:
            heapq.heappush(self._heap, (0, next(self._seq), item))
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
            heap = self._heap
            if item is _HEAP_TOKEN:
                item = heapq.heappop(heap)[2]
            elif item is not None:
                # Returns the item itself if the heap's best entry has a negative priority.
                item = heapq.heappushpop(heap, (0, next(self._parked_seq), item))[2]
            if not heap:
                self.put = self._fifo.put
            return item

    def qsize(self) -> int:
        """Return the approximate number of queued items (sentinels included)."""
        return self._fifo.qsize()

    def empty(self) -> bool:
        """Return True if nothing is queued (approximately, like ``SimpleQueue.empty``)."""
        return self._fifo.empty()


class ThreadExecutor(ExecutorProgress, _thread.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that also takes per-task settings through :meth:`options`.

    It honours ``priority`` (higher runs first, submission order among equals) and rejects
    ``walltime`` and non-default :class:`~hpcfutures.Resources`, since a thread can neither
    be stopped nor given cores of its own; :class:`~hpcfutures.HighThroughputExecutor`
    enforces walltime.
    """

    #: ``submit`` only queues the call (see :class:`~hpcfutures.resources.NonBlockingSubmit`).
    submit_never_blocks = True

    _work_queue: Any  # a _WorkQueue, which the stdlib machinery uses like its SimpleQueue
    # submit, submit_with_options and the stdlib's map all go through _put (see ExecutorProgress).
    _progress_entries = ("_put",)

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
        check_count("max_workers", max_workers, 1, optional="for the default")
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
        self,
        *,
        resources: Resources | None = None,
        walltime: float | None = None,
        priority: int | None = None,
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

    def check_options(self, options: TaskOptions) -> None:
        """Raise for a setting this executor cannot honour (the :class:`OptionsBackend` contract)."""
        reject_unsupported(
            "ThreadExecutor",
            options,
            walltime=True,
            priority=True,
            hint="Size the task to one core, or run it on a backend that places tasks by their Resources.",
        )
        reject_unsupported(
            "ThreadExecutor",
            options,
            resources=True,
            priority=True,
            hint="Use HighThroughputExecutor, which enforces walltime by killing the task's worker.",
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``, as ``ThreadPoolExecutor.submit`` does."""
        return self._put(fn, args, kwargs, 0)

    def submit_with_options(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Submit one call with these settings (what an ``options()`` view calls)."""
        return self._put(fn, args, kwargs, options.priority)

    def _put(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], priority: int) -> Future[Any]:
        # The stdlib's submit with our future and our put; keep the two in step.
        with self._shutdown_lock, _thread._global_shutdown_lock:
            if self._broken:
                raise getattr(self, "BROKEN", _thread.BrokenThreadPool)(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _thread._shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            f = FinishedReadsFuture()
            resolve = getattr(self, "_resolve_work_item_task", None)
            if resolve is not None:  # Python 3.14 moved the call into a task tuple
                w = _thread._WorkItem(f, resolve(fn, args, kwargs))  # type: ignore[call-arg]
            else:
                w = _thread._WorkItem(f, fn, args, kwargs)
            if priority == 0:
                self._work_queue.put(w)
            else:
                self._work_queue.put_priority(w, priority)
            self._adjust_thread_count()
            return f
