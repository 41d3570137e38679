"""DataflowExecutor: dependencies, retries and apps over any ``concurrent.futures.Executor``.

A task waits until every future in its arguments is done (done-callbacks, no polling, no
thread per task), then goes to a backend executor with those futures replaced by their
results.  A task whose dependency failed never runs: it fails with DependencyError naming
the chain back to the first failure, while tasks that do not depend on the failure go on.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import os
import random
import tempfile
import threading
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from ..errors import ConfigurationError, DependencyError, JoinError, UnsupportedOptionError
from ..resources import ClosableView, Resources
from .caching import Memoizer
from .deps import ATOMIC_TYPES, find_futures, substitute
from .futures import DataflowFuture
from .memo import CacheKey
from .retry import RetryHandler, TaskRecord, should_retry

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The innermost DataflowExecutor entered with ``with``: where bare apps go.
current_executor: contextvars.ContextVar[DataflowExecutor | None] = contextvars.ContextVar(
    "hpcfutures_dataflow_executor", default=None
)

_WAITING, _QUEUED, _DONE = 0, 1, 2
_FINISHED = "FINISHED"  # concurrent.futures' state name for a future with a result or exception


@dataclass(frozen=True)
class TaskSettings:
    """Where and how a task runs: executor labels, retry budget, and backend options."""

    executors: tuple[str, ...] | None = None  # None: the default executor
    retries: int | None = None  # None: the DataflowExecutor's default
    walltime: float | None = None
    priority: int | None = None
    resources: Resources | None = None
    join: bool = False
    cache: bool | None = None  # None: the DataflowExecutor's default
    ignore_for_cache: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        opts = {"walltime": self.walltime, "priority": self.priority, "resources": self.resources}
        object.__setattr__(self, "_backend_options", {k: v for k, v in opts.items() if v is not None})

    def backend_options(self) -> dict[str, Any]:
        """The settings the backend executor's ``options()`` must carry, if any."""
        return self._backend_options  # type: ignore[attr-defined]


DEFAULT_SETTINGS = TaskSettings()

Wrap = Callable[
    [Callable[..., Any], tuple[Any, ...], dict[str, Any]],
    tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
]


def _describe(fut: Future[Any]) -> tuple[int | None, str]:
    if isinstance(fut, DataflowFuture):
        return fut.task_id, fut.name
    return None, "an external future"


def _failure(fut: Future[Any]) -> BaseException | None:
    if fut._state == _FINISHED:  # settled: read it without taking its lock
        return fut._exception
    if fut.cancelled():
        from concurrent.futures import CancelledError

        return CancelledError(f"{_describe(fut)[1]} was cancelled")
    return fut.exception()


class _Task:
    """One task's bookkeeping, dropped as soon as its future is resolved."""

    __slots__ = (
        "dfx",
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
        "cache_key",
        "plain",
    )

    def __init__(
        self,
        dfx: DataflowExecutor,
        future: DataflowFuture,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        settings: TaskSettings,
        wrap: Wrap | None,
    ):
        self.dfx = dfx
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.settings = settings
        self.label = dfx._choose_label(settings)
        self.wrap = wrap
        self.deps: list[Future[Any]] = []
        self.done_count: Iterator[int] | None = None
        self.state = _WAITING
        self.inner: Future[Any] | None = None
        self.record: TaskRecord | None = None
        self.cache_key: CacheKey | None = None  # set while this task leads a cached call
        self.plain = False  # every argument is a plain value (known at submit, so not looked at again)
        self.lock = threading.Lock()  # guards state and inner

    # -- waiting for dependencies --------------------------------------------------------------

    def start(self) -> None:
        if _plain(self.args, self.kwargs):  # nothing can hold a future (or a File): skip searches
            self.plain = True
            self.launch()
            return
        deps = find_futures(self.args, self.kwargs)
        if not deps:
            self.launch()
            return
        self.deps = deps
        self.done_count = itertools.count(1)
        for dep in deps:
            dep.add_done_callback(self._dep_done)

    def _dep_done(self, _dep: Future[Any]) -> None:
        # itertools.count advances atomically: exactly one callback sees the last number.
        if next(self.done_count) == len(self.deps):  # type: ignore[arg-type]
            _launch_in_turn(self)

    def launch(self) -> None:
        with self.lock:
            if self.state != _WAITING:
                return
            self.state = _QUEUED
        deps, self.deps = self.deps, []
        failed = [(dep, err) for dep in deps if (err := _failure(dep)) is not None]
        if failed:
            self.finish(exception=self._dependency_error(failed))
            return
        try:
            args, kwargs = substitute(self.args, self.kwargs) if deps else (self.args, self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - a container that cannot be rebuilt
            self.finish(exception=exc)
            return
        self.args, self.kwargs = args, kwargs
        cache = self.settings.cache
        if (self.dfx.cache if cache is None else cache) and self._answered_from_cache():
            return
        self.run()

    def run(self) -> None:
        if self.settings.join:
            self.dfx._run_join(self)
        else:
            self.submit()

    # -- memoisation -----------------------------------------------------------------------------

    def _answered_from_cache(self) -> bool:
        """Look the call up in the cache; return True if that settled the task."""
        memo = self.dfx._memoizer()
        try:
            key = memo.key(self.fn, self.args, self.kwargs, self.settings.ignore_for_cache)
            found, value = memo.lookup(key)
        except Exception as exc:  # noqa: BLE001 - an argument with no cache key, an unreadable checkpoint
            self.finish(exception=exc)
            return True
        if found:
            self.finish(result=value)
            return True
        leader = memo.lead_or_follow(key, self.future)
        if leader is not None:  # the same call is running: share its outcome
            leader.add_done_callback(self._follow)
            return True
        self.cache_key = key
        return False

    def _follow(self, leader: Future[Any]) -> None:
        if leader.cancelled():  # the call we waited for will not run: run this one
            self.run()
        elif leader.exception() is not None:
            self.finish(exception=leader.exception())
        else:
            self.finish(result=leader.result())

    def _dependency_error(self, failed: list[tuple[Future[Any], BaseException]]) -> DependencyError:
        fut = self.future
        entries = [(*_describe(dep), err) for dep, err in failed]
        me = f"task {fut.task_id} ({fut.name})"
        first_id, first_name, first_error = entries[0]
        # The chain goes through the first failed dependency; it links to that dependency's
        # own DependencyError rather than copy its chain, which would be quadratic.
        upstream = first_error if isinstance(first_error, DependencyError) else None
        if upstream is None:
            links = [f"task {first_id} ({first_name})" if first_id is not None else first_name, me]
            path = " -> ".join(links)
        elif upstream.chain_length < 6:
            links = [me]
            path = " -> ".join([*upstream.chain, me])
        else:  # a long chain: its ends say enough, and writing it all out would be quadratic
            links = [me]
            middle = upstream.chain_length - 2
            path = f"{upstream._root} -> ... ({middle} more) -> {upstream._links[-1]} -> {me}"
        root = failed[0][1]
        while isinstance(root, DependencyError) and root.__cause__ is not None:
            root = root.__cause__
        names = ", ".join(f"task {i} ({n})" if i is not None else n for i, n, _ in entries)
        error = DependencyError(
            f"task {fut.task_id} ({fut.name}) did not run: its dependency {names} failed "
            f"({type(root).__name__}: {root}); failing chain: {path}",
            entries,
            links,
            upstream=upstream,
        )
        error.__cause__ = root
        return error

    # -- running in the backend ------------------------------------------------------------------

    def submit(self) -> None:
        fn, args, kwargs = self.fn, self.args, self.kwargs
        if self.wrap is not None:
            fn, args, kwargs = self.wrap(fn, args, kwargs)
        if not (self.plain and self.wrap is None) and not _plain(args, kwargs):
            fn, args, kwargs = self.dfx._staged(self, fn, args, kwargs)
        try:
            inner = self.dfx._backend(self.label, self.settings).submit(fn, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - e.g. an argument that cannot be pickled
            self.finish(exception=exc)
            return
        with self.lock:
            self.inner = inner
        inner.add_done_callback(self._inner_done)

    def _inner_done(self, inner: Future[Any]) -> None:
        # A done future no longer changes: read its outcome without taking its lock three times.
        if inner._state == _FINISHED:
            error = inner._exception
            if error is None:
                self.finish(result=inner._result)
                return
        elif inner.cancelled():
            self.finish(cancelled=True)
            return
        else:
            error = inner.exception()
            if error is None:
                self.finish(result=inner.result())
                return
        if self.dfx._shutting_down and self.dfx._cancelling:
            self.finish(exception=error)
            return
        record = self.record
        if record is None:
            retries = self.settings.retries if self.settings.retries is not None else self.dfx.retries
            record = self.record = TaskRecord(
                self.future.task_id, self.future.name, self.label, retries, self.args, self.kwargs
            )
        record.attempts += 1
        if should_retry(error, record, self.dfx.retry_handler):
            logger.debug("task %s failed (%r); running it again", self.future.task_id, error)
            self.submit()
        else:
            self.finish(exception=error)

    # -- ending --------------------------------------------------------------------------------

    def cancel(self) -> bool:
        with self.lock:
            if self.state == _WAITING:
                self.state = _DONE
                inner = None
            elif self.state == _QUEUED:
                inner = self.inner
                if inner is None:
                    return False
            else:
                return self.future.cancelled()
        if inner is None:
            self._release()
            return _cancel_future(self.future)
        return inner.cancel()  # its callback cancels our future

    def finish(
        self, *, result: Any = None, exception: BaseException | None = None, cancelled: bool = False
    ) -> None:
        with self.lock:
            self.state = _DONE
        key = self.cache_key
        if key is not None:
            if exception is None and not cancelled:
                self.dfx._memo.succeeded(key, result, self.future.name)  # type: ignore[union-attr]
            else:
                self.dfx._memo.ended(key)  # type: ignore[union-attr]
        self._release()
        fut = self.future
        if cancelled:
            _cancel_future(fut)
        elif exception is not None:
            fut.set_exception(exception)
        else:
            fut.set_result(result)

    def _release(self) -> None:
        """Drop what the finished task holds, so that a long run keeps memory flat."""
        self.future._task = None
        self.dfx._live.pop(self.future.task_id, None)
        self.fn = self.args = self.kwargs = self.inner = None  # type: ignore[assignment]
        self.record = None  # it holds the arguments and the failed attempts' tracebacks


# The tasks this thread still has to launch while it launches one.  A failure or a cancel
# travels down a chain of waiting tasks through done-callbacks; launching each dependent from
# its dependency's callback would nest one call per task and overflow the stack on a long
# chain (the stdlib logs a RecursionError in a callback and leaves the futures pending).
_launching = threading.local()


def _launch_in_turn(task: _Task) -> None:
    """Launch ``task`` now, or after the launch this thread is making, without nesting."""
    queue: collections.deque[_Task] | None = getattr(_launching, "queue", None)
    if queue is not None:
        queue.append(task)
        return
    _launching.queue = queue = collections.deque([task])
    try:
        while queue:
            next_task = queue.popleft()
            try:
                next_task.launch()
            except Exception:  # noqa: BLE001 - keep launching the others, as callbacks would
                logger.exception("launching task %s failed", next_task.future.task_id)
    finally:
        _launching.queue = None


def _plain(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is a plain value (so no File can hide in the call)."""
    for a in args:
        if type(a) not in ATOMIC_TYPES:
            return False
    for v in kwargs.values():
        if type(v) not in ATOMIC_TYPES:
            return False
    return True


def _cancel_future(fut: Future[Any]) -> bool:
    """Cancel a pending future and tell its waiters at once (as an executor does on dequeue)."""
    if isinstance(fut, DataflowFuture):
        return fut._cancel_self()
    if Future.cancel(fut):
        fut.set_running_or_notify_cancel()
        return True
    return fut.cancelled()


class DataflowExecutor(Executor):
    """Turns any ``concurrent.futures.Executor`` into a dataflow engine, and is one itself.

    Futures anywhere in a task's arguments (from this or any executor) are dependencies.
    Tasks go to ``executor``, or to one of ``executors`` by label; with neither, to a new
    ThreadExecutor.  ``shutdown`` shuts down the executors this object created, and the
    given ones only with ``shutdown_executors=True``.

    Args:
        executor: the backend for every task.
        executors: several backends by label; plain submits go to the first one, apps to
            the labels they name (a random one of them if they name several).
        retries: how much failure cost each task may spend on retries (see ``retry_handler``).
        retry_handler: ``handler(exception, task_record) -> cost`` charges a failure; a large
            cost stops the retries.  Without it every failure costs 1.
        run_dir: where apps' automatic log files go; a temporary directory when None.
        shutdown_executors: also shut down the executors that were given.
        cache: memoise every task unless its settings say otherwise (apps: ``cache=``;
            plain submits: ``options(cache=True)``).
        checkpoint: a path or a ``Checkpoint``: results of cached tasks are kept in that
            SQLite file, and a later run pointed at it takes them from there.
        cache_file_digest: how a ``File`` argument enters a cache key: ``"content"`` (a
            hash of its bytes) or ``"stat"`` (its size and modification time).
        staging: the staging providers that fetch remote ``File`` inputs and send remote
            outputs, for every backend or by label; ``staging.DEFAULT_PROVIDERS`` when None.
    """

    def __init__(
        self,
        executor: Executor | None = None,
        *,
        executors: Mapping[str, Executor] | None = None,
        retries: int = 0,
        retry_handler: RetryHandler | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        shutdown_executors: bool = False,
        cache: bool = False,
        checkpoint: str | os.PathLike[str] | Any | None = None,
        cache_file_digest: str = "content",
        staging: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
    ):
        if executor is not None and executors is not None:
            raise ConfigurationError("give either executor= or executors={label: executor, ...}, not both")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise ConfigurationError(
                f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}"
            )
        owned: set[str] = set()
        if executors is None:
            if executor is None:
                from ..executors.threads import ThreadExecutor

                executor = ThreadExecutor()
                owned.add("default")
            executors = {"default": executor}
        if not isinstance(executors, Mapping) or not executors:
            raise ConfigurationError("executors must be a non-empty mapping of label to Executor")
        for label, ex in executors.items():
            if not isinstance(label, str) or not label:
                raise ConfigurationError(f"executor labels must be non-empty strings, got {label!r}")
            if not callable(getattr(ex, "submit", None)):
                raise ConfigurationError(
                    f"executors[{label!r}] must be a concurrent.futures.Executor, got {type(ex).__name__}"
                )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
        if retry_handler is not None and not callable(retry_handler):
            raise ConfigurationError(
                f"retry_handler must be callable(exception, task) -> cost, got {retry_handler!r}"
            )
        self.executors: dict[str, Executor] = dict(executors)
        self.default_label = next(iter(self.executors))
        self.retries = retries
        self.retry_handler = retry_handler
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._owned = set(self.executors) if shutdown_executors else owned
        self._ids = itertools.count(1)
        self._live: dict[int, _Task] = {}
        self._views: dict[tuple[str, tuple[tuple[str, Any], ...]], Executor] = {}
        self._lock = threading.Lock()  # guards _shutting_down, _views, _join_pool
        self._shutting_down = False
        self._cancelling = False
        self._join_pool: Executor | None = None
        self._tokens: list[contextvars.Token[DataflowExecutor | None]] = []
        if not isinstance(cache, bool):
            raise ConfigurationError(f"cache must be True or False, got {cache!r}")
        if cache_file_digest not in ("content", "stat"):
            raise ConfigurationError(
                f"cache_file_digest must be 'content' (hash files) or 'stat' (size and mtime), got {cache_file_digest!r}"
            )
        self.cache = cache
        self.cache_file_digest = cache_file_digest
        self._staging = self._staging_providers(staging)
        self._checkpoint = self._open_checkpoint(checkpoint)
        self._memo: Memoizer | None = None
        if self._checkpoint is not None:
            self._memoizer()

    # -- the Executor interface --------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> DataflowFuture:
        """Schedule ``fn(*args, **kwargs)`` once every future in the arguments is done."""
        return self._submit(fn, args, kwargs, DEFAULT_SETTINGS)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``Executor.map``; items may be futures, which become dependencies."""
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def options(
        self,
        *,
        executors: str | Iterable[str] | None = None,
        retries: int | None = None,
        walltime: float | None = None,
        priority: int | None = None,
        resources: Resources | None = None,
        cache: bool | None = None,
        ignore_for_cache: Iterable[str] | None = None,
    ) -> DataflowView:
        """Return an Executor view whose submits carry these settings."""
        return DataflowView(
            self,
            self._settings(
                DEFAULT_SETTINGS, executors, retries, walltime, priority, resources, cache, ignore_for_cache
            ),
        )

    def checkpoint(self) -> int:
        """Write the results buffered for the checkpoint file now; return how many were written."""
        return self._memo.flush() if self._memo is not None else 0

    def explain_cache(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Say whether ``fn(*args, **kwargs)`` would be answered from the cache, and why not.

        ``fn`` may be a function or an app (its ``ignore_for_cache`` applies).  Arguments
        must be plain values (or finished futures), as the task would see them.
        """
        func = getattr(fn, "func", fn)
        ignore = tuple(getattr(getattr(fn, "options", None), "ignore_for_cache", ()) or ())
        args, kwargs = substitute(args, kwargs)
        return self._memoizer().explain(func, args, kwargs, ignore)

    @property
    def unsaved_results(self) -> list[tuple[str, str]]:
        """``(task name, reason)`` for each result that could not be written to the checkpoint."""
        return list(self._memo.unsaved) if self._memo is not None else []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; shut down the backends this executor owns.

        ``cancel_futures`` cancels tasks still waiting for dependencies or queued in their
        backend; ``wait`` waits for the rest.
        """
        with self._lock:
            self._shutting_down = True
            self._cancelling = self._cancelling or cancel_futures
        if cancel_futures:
            for task in list(self._live.values()):
                task.cancel()
        if wait:
            self._wait_then_shut_backends(True, cancel_futures)
        elif self._live:
            # As in the stdlib, pending tasks still run after shutdown(wait=False); those
            # still waiting for dependencies need the backends, so release them afterwards.
            threading.Thread(
                target=self._wait_then_shut_backends,
                args=(False, cancel_futures),
                name="hpcfutures-dataflow-shutdown",
                daemon=True,
            ).start()
        else:
            self._wait_then_shut_backends(False, cancel_futures)

    def _wait_then_shut_backends(self, wait: bool, cancel_futures: bool) -> None:
        while self._live:
            wait_futures([t.future for t in list(self._live.values())])
        for label in self._owned:
            executor = self.executors[label]
            if cancel_futures:
                try:
                    executor.shutdown(wait=wait, cancel_futures=True)
                    continue
                except TypeError:  # an Executor without Python 3.9's cancel_futures (loky's)
                    pass
            executor.shutdown(wait=wait)
        if self._join_pool is not None:
            self._join_pool.shutdown(wait=wait)
        if self._memo is not None:
            self._memo.close()  # writes what the checkpoint still buffers

    def __enter__(self) -> DataflowExecutor:
        self._tokens.append(current_executor.set(self))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._tokens:
            current_executor.reset(self._tokens.pop())
        self.shutdown(wait=True)

    # -- apps ------------------------------------------------------------------------------------------

    def python_app(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorate a function as a python app bound to this executor (see ``hpcfutures.python_app``)."""
        from .apps import python_app

        return python_app(function, executor=self, **options)

    def bash_app(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorate a function as a bash app bound to this executor (see ``hpcfutures.bash_app``)."""
        from .apps import bash_app

        return bash_app(function, executor=self, **options)

    def join_app(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorate a function as a join app bound to this executor (see ``hpcfutures.join_app``)."""
        from .apps import join_app

        return join_app(function, executor=self, **options)

    @property
    def run_dir(self) -> Path:
        """Where apps' automatic log files go (created on first use)."""
        with self._lock:
            if self._run_dir is None:
                self._run_dir = Path(tempfile.mkdtemp(prefix="hpcfutures-dataflow-"))
            self._run_dir.mkdir(parents=True, exist_ok=True)
            return self._run_dir

    @property
    def pending(self) -> int:
        """How many tasks have not finished yet."""
        return len(self._live)

    # -- internals shared with views and apps -------------------------------------------------------

    def _settings(
        self,
        base: TaskSettings,
        executors: str | Iterable[str] | None,
        retries: int | None,
        walltime: float | None,
        priority: int | None,
        resources: Resources | None,
        cache: bool | None = None,
        ignore_for_cache: Iterable[str] | None = None,
    ) -> TaskSettings:
        changes: dict[str, Any] = {}
        if cache is not None:
            if not isinstance(cache, bool):
                raise ConfigurationError(f"cache must be True or False, got {cache!r}")
            changes["cache"] = cache
        if ignore_for_cache is not None:
            names = (ignore_for_cache,) if isinstance(ignore_for_cache, str) else tuple(ignore_for_cache)
            if not all(isinstance(n, str) for n in names):
                raise ConfigurationError(f"ignore_for_cache must be argument names, got {ignore_for_cache!r}")
            changes["ignore_for_cache"] = names
        if executors is not None:
            labels = (executors,) if isinstance(executors, str) else tuple(executors)
            unknown = [label for label in labels if label not in self.executors]
            if not labels or unknown:
                raise ConfigurationError(
                    f"unknown executor label(s) {unknown or labels!r}; this DataflowExecutor has "
                    f"{sorted(self.executors)}"
                )
            changes["executors"] = labels
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
            changes["retries"] = retries
        if walltime is not None:
            if isinstance(walltime, bool) or not isinstance(walltime, (int, float)) or not walltime > 0:
                raise ConfigurationError(f"walltime must be a positive number of seconds, got {walltime!r}")
            changes["walltime"] = walltime
        if priority is not None:
            changes["priority"] = priority
        if resources is not None:
            changes["resources"] = resources
        settings = replace(base, **changes) if changes else base
        if settings.backend_options():
            for label in settings.executors or (self.default_label,):
                self._backend(label, settings)  # fail now, not when the task is ready
        return settings

    def _staging_providers(self, staging: Any) -> dict[str, tuple[Any, ...] | None]:
        """The staging providers of each backend label (None: the default list)."""
        from .staging.base import StagingProvider

        def checked(providers: Any, where: str) -> tuple[Any, ...]:
            if isinstance(providers, (str, bytes)) or not isinstance(providers, Sequence):
                raise ConfigurationError(f"{where} must be a sequence of StagingProvider, got {providers!r}")
            for p in providers:
                if not isinstance(p, StagingProvider):
                    raise ConfigurationError(f"{where} must hold StagingProvider objects, got {p!r}")
            return tuple(providers)

        if staging is None:
            return {label: None for label in self.executors}
        if isinstance(staging, Mapping):
            unknown = [label for label in staging if label not in self.executors]
            if unknown:
                raise ConfigurationError(f"staging names unknown executor label(s) {unknown}")
            return {
                label: checked(staging[label], f"staging[{label!r}]") if label in staging else None
                for label in self.executors
            }
        providers = checked(staging, "staging")
        return {label: providers for label in self.executors}

    def _staged(
        self, task: _Task, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Wrap a call that has remote Files so that they are staged where the task runs."""
        from .staging.task import private_copies, remote_files, run_staged

        if not remote_files(args, kwargs):
            return fn, args, kwargs
        args, kwargs = private_copies(args, kwargs)
        directory = str(self.run_dir / "staging" / f"task-{task.future.task_id}")
        return run_staged, (fn, self._staging[task.label], directory, *args), kwargs

    @staticmethod
    def _open_checkpoint(checkpoint: Any) -> Any:
        if checkpoint is None:
            return None
        from .checkpoint import Checkpoint

        if isinstance(checkpoint, Checkpoint):
            return checkpoint
        if isinstance(checkpoint, (str, os.PathLike)):
            return Checkpoint(checkpoint)
        raise ConfigurationError(
            f"checkpoint must be a path or a hpcfutures.dataflow.checkpoint.Checkpoint, got {type(checkpoint).__name__}"
        )

    def _memoizer(self) -> Memoizer:
        """The cache, made on first use."""
        memo = self._memo
        if memo is None:
            with self._lock:
                if self._memo is None:
                    self._memo = Memoizer(self._checkpoint, self.cache_file_digest)
                memo = self._memo
        return memo

    def _choose_label(self, settings: TaskSettings) -> str:
        labels = settings.executors
        if labels is None:
            return self.default_label
        return labels[0] if len(labels) == 1 else random.choice(labels)

    def _backend(self, label: str, settings: TaskSettings) -> Executor:
        """The executor for ``label``, through an options() view when the task needs one."""
        wanted = settings.backend_options()
        if not wanted:
            return self.executors[label]
        executor = self.executors[label]
        key = (label, tuple(sorted(wanted.items(), key=lambda kv: kv[0])))
        view = self._views.get(key)
        if view is None:
            make_view = getattr(executor, "options", None)
            if make_view is None:
                raise UnsupportedOptionError(
                    f"executor {label!r} ({type(executor).__name__}) has no options(): it cannot honour "
                    f"{', '.join(f'{k}={v!r}' for k, v in wanted.items())}"
                )
            view = make_view(**wanted)
            with self._lock:
                self._views[key] = view
        return view

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        settings: TaskSettings,
        *,
        name: str | None = None,
        wrap: Wrap | None = None,
        setup: Callable[[DataflowFuture], None] | None = None,
    ) -> DataflowFuture:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable first argument, got {type(fn).__name__}")
        if self._shutting_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        task_id = next(self._ids)
        future = DataflowFuture(task_id, name or getattr(fn, "__name__", None) or type(fn).__name__)
        task = _Task(self, future, fn, args, kwargs, settings, wrap)
        future._task = task
        if setup is not None:
            setup(future)
        self._live[task_id] = task
        try:
            task.start()
        except BaseException:
            task._release()  # e.g. a container walker raised: the future was never handed out
            raise
        return future

    def _run_join(self, task: _Task) -> None:
        """Run a join app's body on the driver side; its future resolves with the inner futures."""
        with self._lock:
            if self._join_pool is None:
                from ..executors.threads import ThreadExecutor

                self._join_pool = ThreadExecutor(max_workers=4, thread_name_prefix="hpcfutures-join")
            pool = self._join_pool
        context = contextvars.copy_context()
        context.run(current_executor.set, self)
        body = pool.submit(context.run, task.fn, *task.args, **task.kwargs)
        with task.lock:
            task.inner = body
        body.add_done_callback(lambda done: self._join_body_done(task, done))

    def _join_body_done(self, task: _Task, body: Future[Any]) -> None:
        if body.cancelled():
            task.finish(cancelled=True)
            return
        error = body.exception()
        if error is not None:
            task.finish(exception=error)
            return
        returned = body.result()
        if isinstance(returned, Future):
            inner: list[Future[Any]] = [returned]
            single = True
        elif isinstance(returned, (list, tuple)) and all(isinstance(f, Future) for f in returned):
            inner = list(returned)
            single = False
        else:
            task.finish(
                exception=TypeError(
                    f"join app {task.future.name} must return a Future or a list of Futures, "
                    f"got {type(returned).__name__}"
                )
            )
            return
        if not inner:
            task.finish(result=[])
            return
        counter = itertools.count(1)

        def inner_done(_f: Future[Any]) -> None:
            if next(counter) != len(inner):
                return
            failed = [(f, err) for f in inner if (err := _failure(f)) is not None]
            if failed:
                entries = [(*_describe(f), err) for f, err in failed]
                names = ", ".join(f"task {i} ({n})" if i is not None else n for i, n, _ in entries)
                error = JoinError(
                    f"join app task {task.future.task_id} ({task.future.name}): inner {names} failed", entries
                )
                error.__cause__ = failed[0][1]
                task.finish(exception=error)
            else:
                results = [f.result() for f in inner]
                task.finish(result=results[0] if single else results)

        for f in inner:
            f.add_done_callback(inner_done)


class DataflowView(ClosableView):
    """A DataflowExecutor with fixed settings (executor labels, retries, walltime, …).

    ``shutdown`` closes the view only: it waits (if asked) for the tasks submitted through
    it and refuses new ones; the DataflowExecutor goes on.
    """

    _closed_message = "cannot schedule new futures after this view was shut down"

    def __init__(self, dfx: DataflowExecutor, settings: TaskSettings):
        super().__init__()
        self._dfx = dfx
        self._settings = settings

    @property
    def settings(self) -> TaskSettings:
        """The settings every submit through this view carries."""
        return self._settings

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> DataflowFuture:
        """Schedule ``fn(*args, **kwargs)`` with the view's settings."""
        return self._submit_tracked(lambda: self._dfx._submit(fn, args, kwargs, self._settings))

    def options(
        self,
        *,
        executors: str | Iterable[str] | None = None,
        retries: int | None = None,
        walltime: float | None = None,
        priority: int | None = None,
        resources: Resources | None = None,
        cache: bool | None = None,
        ignore_for_cache: Iterable[str] | None = None,
    ) -> DataflowView:
        """Return a view with these settings layered over this view's own."""
        return DataflowView(
            self._dfx,
            self._dfx._settings(
                self._settings, executors, retries, walltime, priority, resources, cache, ignore_for_cache
            ),
        )
