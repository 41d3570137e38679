"""Per-task settings (:class:`Resources`, :class:`TaskOptions`) and the ``options()`` view.

Settings travel out of band: ``ex.options(walltime=60)`` returns an :class:`ExecutorView`, a
real ``concurrent.futures.Executor`` whose submits carry those settings, so it can be handed
to any library that accepts an Executor.  Nothing is smuggled through ``submit``'s kwargs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

from ._validate import check_count, check_number, check_seconds
from .errors import ConfigurationError, UnsupportedOptionError

T = TypeVar("T")
F = TypeVar("F", bound="Future[Any]")


@dataclass(frozen=True)
class Resources:
    """What one task needs: cores, memory, GPUs, nodes and MPI ranks.

    Tasks *declare* needs with this type; a backend that cannot honour a field rejects it
    when the options view is made, naming the field.  ``num_ranks``, if given, must equal
    ``num_nodes * ranks_per_node``; given alone (with ``num_nodes``), it sets
    ``ranks_per_node`` to ``num_ranks / num_nodes``, which must be whole.
    """

    cores: int = 1
    memory_gb: float | None = None
    gpus: int = 0
    num_nodes: int = 1
    ranks_per_node: int = 1
    num_ranks: int | None = None

    def __post_init__(self) -> None:
        check_count("Resources.cores", self.cores, 1)
        check_count("Resources.gpus", self.gpus, 0)
        check_count("Resources.num_nodes", self.num_nodes, 1)
        check_count("Resources.ranks_per_node", self.ranks_per_node, 1)
        check_number("Resources.memory_gb", self.memory_gb, finite=True, unit="GiB", optional=True)
        ranks = check_count("Resources.num_ranks", self.num_ranks, 1, optional=True)
        if ranks is None:
            object.__setattr__(self, "num_ranks", self.num_nodes * self.ranks_per_node)
        elif self.ranks_per_node == 1 and ranks != self.num_nodes:
            if ranks % self.num_nodes:
                raise ConfigurationError(
                    f"Resources(num_ranks={ranks}, num_nodes={self.num_nodes}): the ranks must split "
                    "evenly over the nodes; give ranks_per_node, or a num_ranks that num_nodes divides"
                )
            object.__setattr__(self, "ranks_per_node", ranks // self.num_nodes)
        elif ranks != self.num_nodes * self.ranks_per_node:
            raise ConfigurationError(
                f"Resources(num_ranks={ranks}, num_nodes={self.num_nodes}, ranks_per_node="
                f"{self.ranks_per_node}): num_ranks must be num_nodes * ranks_per_node "
                f"({self.num_nodes * self.ranks_per_node})"
            )

    def non_default_fields(self) -> dict[str, Any]:
        """Return the fields whose value differs from the default, by name."""
        defaults = Resources()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name) and f.name != "num_ranks"
        }


@dataclass(frozen=True)
class TaskOptions:
    """The settings a submit carries: resources, walltime in seconds and queue priority.

    A higher ``priority`` runs earlier; tasks of equal priority run in submission order.
    """

    resources: Resources = field(default_factory=Resources)
    walltime: float | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.resources, Resources):
            raise ConfigurationError(
                f"resources must be a hpcfutures.Resources, got {type(self.resources).__name__}; "
                "write resources=Resources(cores=..., memory_gb=...)"
            )
        check_seconds("walltime", self.walltime, finite=True, optional=True)
        check_count("priority", self.priority, None)
        if not -(2**31) <= self.priority < 2**31:
            raise ConfigurationError(f"priority must fit in 32 bits, got {self.priority}")

    def merged(
        self, resources: Resources | None, walltime: float | None, priority: int | None
    ) -> TaskOptions:
        """Return these options with the given (not-None) settings replacing the current ones."""
        changes: dict[str, Any] = {}
        if resources is not None:
            changes["resources"] = resources
        if walltime is not None:
            changes["walltime"] = walltime
        if priority is not None:
            changes["priority"] = priority
        return replace(self, **changes) if changes else self


DEFAULT_OPTIONS = TaskOptions()


@runtime_checkable
class SupportsOptions(Protocol):
    """An Executor that takes per-task settings through ``options()``.

    ``options(...)`` returns an Executor whose submits carry the settings (for hpcfutures'
    backends an :class:`ExecutorView`).  This is what layers above a backend, such as
    ``DataflowExecutor``, rely on; any Executor with such a method qualifies.
    """

    def options(
        self, *, resources: Resources | None = None, walltime: float | None = None, priority: int | None = None
    ) -> Executor: ...


@runtime_checkable
class NonBlockingSubmit(Protocol):
    """An Executor whose ``submit`` only queues the call and returns.

    It never waits for the executor's own threads (no bounded queue, no lock they hold
    while running a callback), so it may be called from a done-callback of one of its own
    futures.  ``DataflowExecutor`` then launches a small dependent right there instead of
    handing it to its dispatcher thread.  Declare it with a class attribute
    ``submit_never_blocks = True``; hpcfutures' ``ThreadExecutor`` and
    ``HighThroughputExecutor`` do.
    """

    submit_never_blocks: bool


def submit_never_blocks(executor: object) -> bool:
    """Whether ``executor`` declares :class:`NonBlockingSubmit` (and says True)."""
    return isinstance(executor, NonBlockingSubmit) and executor.submit_never_blocks is True


class OptionsBackend(Protocol):
    """What an :class:`ExecutorView` needs from the backend it is a view of.

    A backend that honours per-task settings implements these two methods and returns
    ``ExecutorView(self, options)`` from its ``options()``.  ``check_options`` raises
    :class:`UnsupportedOptionError` (naming the setting) for what it cannot honour, so that
    the view fails when it is made, not when a task runs.
    """

    def submit_with_options(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]: ...

    def check_options(self, options: TaskOptions) -> None: ...


@runtime_checkable
class MapsWithOptions(Protocol):
    """A backend with its own ``map`` (chunking, in-order results) for views to use.

    ``hook`` is called with every future the map creates, so that the view can track them.
    Backends without it get ``Executor.map`` over the view's ``submit``.
    """

    def map_with_options(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        hook: Callable[[Future[Any]], None] | None,
    ) -> Iterator[Any]: ...


def reject_unsupported(
    backend: str,
    options: TaskOptions,
    *,
    resources: bool = False,
    walltime: bool = False,
    priority: bool = False,
    hint: str = "",
) -> None:
    """Raise :class:`UnsupportedOptionError` for each setting ``backend`` cannot honour.

    The keyword flags say which settings the backend supports; ``resources=False`` means it
    honours only the default :class:`Resources`.
    """
    suffix = f" {hint}" if hint else ""
    if not resources:
        extra = options.resources.non_default_fields()
        if extra:
            shown = ", ".join(f"{k}={v!r}" for k, v in extra.items())
            raise UnsupportedOptionError(
                f"{backend} cannot honour Resources({shown}): it runs each task on one core "
                f"of one worker.{suffix}"
            )
    if not walltime and options.walltime is not None:
        raise UnsupportedOptionError(
            f"{backend} cannot enforce walltime={options.walltime!r}: it has no way to stop a "
            f"running task.{suffix}"
        )
    if not priority and options.priority != 0:
        raise UnsupportedOptionError(
            f"{backend} cannot order tasks by priority={options.priority!r}.{suffix}"
        )


class ClosableView(Executor):
    """The bookkeeping an options view shares with its kind: it tracks its own tasks.

    A view does not own its backend.  ``shutdown`` closes the view only: it refuses new
    submits, waits (if asked) for the tasks submitted through it, and leaves the backend
    running.  Subclasses call :meth:`_submit_tracked` with a zero-argument callable that
    submits one task to the backend.
    """

    _closed_message = "cannot schedule new futures after this options() view was shut down"

    def __init__(self) -> None:
        # Held across the backend's submit so that shutdown() cannot slip between the check of
        # _closed and the registration of the new future.  Must be held while setting _closed.
        self._submit_lock = threading.Lock()
        # Guards _futures.  Never held while calling the backend: done callbacks take it, and a
        # backend may run them while holding its own lock (the stdlib pools do when they cancel).
        self._lock = threading.Lock()
        self._closed = False
        self._futures: set[Future[Any]] = set()

    def _submit_tracked(self, submit: Callable[[], F]) -> F:
        with self._submit_lock:
            if self._closed:
                raise RuntimeError(self._closed_message)
            fut = submit()
            with self._lock:
                self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _refuse_if_closed(self) -> None:
        with self._submit_lock:
            if self._closed:
                raise RuntimeError(self._closed_message)

    def _track(self, fut: Future[Any]) -> None:
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)

    def _forget(self, fut: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close the view; with ``wait`` block until its own tasks are done."""
        with self._submit_lock:
            self._closed = True
            with self._lock:
                pending = list(self._futures)
        if cancel_futures:
            for fut in pending:
                fut.cancel()
        if wait:
            from concurrent.futures import wait as wait_all

            # Skip cancelled futures: wait() counts one as done only once the backend has
            # called set_running_or_notify_cancel() on it, which may be never.
            wait_all([fut for fut in pending if not fut.cancelled()])


class ExecutorView(ClosableView):
    """An Executor bound to one backend and one set of :class:`TaskOptions`.

    ``submit`` and ``map`` go to the backend with the view's settings.  ``shutdown`` closes
    the view only: it waits (if asked) for the tasks submitted through it and refuses new
    ones, and leaves the backend running, since the view does not own it.
    """

    def __init__(self, backend: OptionsBackend, options: TaskOptions):
        backend.check_options(options)
        super().__init__()
        self._backend = backend
        self._options = options

    @property
    def task_options(self) -> TaskOptions:
        """The settings every submit through this view carries."""
        return self._options

    def options(
        self,
        *,
        resources: Resources | None = None,
        walltime: float | None = None,
        priority: int | None = None,
    ) -> ExecutorView:
        """Return a view with these settings layered over this view's own."""
        return ExecutorView(self._backend, self._options.merged(resources, walltime, priority))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on the backend with this view's settings."""
        return self._submit_tracked(
            lambda: self._backend.submit_with_options(self._options, fn, args, kwargs)
        )

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``Executor.map``, with the view's settings on every task."""
        if isinstance(self._backend, MapsWithOptions):
            self._refuse_if_closed()
            return self._backend.map_with_options(
                self._options, fn, iterables, timeout, chunksize, self._track
            )
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
