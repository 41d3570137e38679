"""DataflowExecutor: dependencies, retries, caching and apps over any ``concurrent.futures.Executor``.

A task waits until every future in its arguments is done, then goes to a backend executor
with those futures replaced by their results; a task whose dependency failed never runs
(see :mod:`.task`).  This module is the public face: it checks arguments and builds the
:class:`~.engine.Engine` that runs the tasks, on a dispatcher thread of its own.
"""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from .._validate import check_bool, check_count
from ..errors import ConfigurationError
from ..executors.progress import ExecutorProgress
from ..progressbar import ProgressBar, ProgressSink
from ..resources import ClosableView, Resources
from .caching import DEFAULT_MEMO_SIZE, Memoizer
from .context import current_executor
from .deps import substitute
from .engine import Engine, remove_if_empty
from .futures import ENGINE_CALLBACKS, DataflowFuture
from .retry import RetryHandler
from .settings import DEFAULT_SETTINGS, TaskSettings
from .task import Wrap

if TYPE_CHECKING:
    from ..monitor.recorder import Recorder

__all__ = ["DEFAULT_SETTINGS", "DataflowExecutor", "DataflowView", "TaskSettings", "current_executor"]

#: The environment variable ``record=None`` follows (``hpcfutures.monitor.location.ENV_RECORD``,
#: named here so that an executor that records nothing never imports the monitor).
_ENV_RECORD = "HPCFUTURES_RECORD"

T = TypeVar("T")


class DataflowExecutor(ExecutorProgress, Executor):
    """Turns any ``concurrent.futures.Executor`` into a dataflow engine, and is one itself.

    Futures anywhere in a task's arguments (from this or any executor) are dependencies.
    Tasks go to ``executor``, or to one of ``executors`` by label; with neither, to a new
    ThreadExecutor.  ``shutdown`` shuts down the executors this object created, and the
    given ones only with ``shutdown_executors=True``.

    The work that follows a task's end (launching its dependents, retries, checkpoint
    writes, hashing input files, staging) runs on one dispatcher thread of this executor,
    never on a backend's thread; so do the done-callbacks of this executor's futures.

    Args:
        executor: the backend for every task.
        executors: several backends by label; plain submits go to the first one, apps to
            the labels they name (a random one of them if they name several).
        retries: how much failure cost each task may spend on retries (see ``retry_handler``).
        retry_handler: ``handler(exception, task_record) -> cost`` charges a failure; a large
            cost stops the retries.  Without it every failure costs 1.
        run_dir: where apps' automatic log files go.  None: a temporary directory, removed
            at shutdown unless apps wrote logs into it.
        shutdown_executors: also shut down the executors that were given.
        cache: memoise every task unless its settings say otherwise (apps: ``cache=``;
            plain submits: ``options(cache=True)``).
        app_cache: False turns every cache off, for apps declared with ``cache=True`` too
            (Parsl's ``app_cache=False``): each call runs, and nothing is checkpointed.
        checkpoint: a path or a ``Checkpoint``: results of cached tasks are kept in that
            SQLite file, and a later run pointed at it takes them from there.  Failures of
            cached tasks are recorded too: never reused, but ``explain_cache`` shows them.
        checkpoint_files: earlier runs' checkpoint files to take results from as well (Parsl's
            ``checkpoint_files``), searched in order after ``checkpoint``;
            ``hpcfutures.dataflow.checkpoint.find_checkpoints(run_dir)`` lists every one under
            a directory, newest first.  Needs ``checkpoint``, where this run's results go.
        memo_size: how many cached results stay in memory, the most recently used (default
            10,000).  With a checkpoint the others are read back from it; without one, an
            identical call whose result was evicted runs again.
        cache_file_digest: how a ``File`` argument enters a cache key: ``"content"`` (a
            hash of its bytes) or ``"stat"`` (its size and modification time).
        staging: the staging providers that fetch remote ``File`` inputs and send remote
            outputs, for every backend or by label; ``staging.DEFAULT_PROVIDERS`` when None.
        lazy_errors: True (the default): a failed task fails only itself and the tasks that
            depend on it.  False: the first failure stops the workflow; every unfinished task
            and every later submit fails with :class:`~hpcfutures.WorkflowStoppedError`,
            whose cause is that failure (tasks already running in a backend finish first).
        record: write this run to a run record, which ``hpcfutures monitor`` reads: True (in
            the family named after the script), a family name (``"sweep"``), or a path to a
            ``.db`` file; False: never.  None (the default) follows ``HPCFUTURES_RECORD``,
            which takes the same words.  Every task, try and cache decision is recorded, and
            the blocks and pools of backends that record them (see docs/monitoring.md).

    Raises:
        ConfigurationError: an argument is invalid; the message names it.
        RecordError: the run record cannot be opened.
    """

    # Plain submits, map, views and apps all go through one of these (see ExecutorProgress).
    _progress_entries = ("submit", "_submit")

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
        app_cache: bool = True,
        checkpoint: str | os.PathLike[str] | Any | None = None,
        checkpoint_files: Iterable[str | os.PathLike[str]] | None = None,
        memo_size: int = DEFAULT_MEMO_SIZE,
        cache_file_digest: str = "content",
        staging: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
        lazy_errors: bool = True,
        record: bool | str | os.PathLike[str] | None = None,
    ):
        where = self._record_where(record)
        backends, owned = self._backends(executor, executors)
        check_count("retries", retries, 0)
        if retry_handler is not None and not callable(retry_handler):
            raise ConfigurationError(
                f"retry_handler must be callable(exception, task) -> cost, got {retry_handler!r}"
            )
        if cache_file_digest not in ("content", "stat"):
            raise ConfigurationError(
                f"cache_file_digest must be 'content' (hash files) or 'stat' (size and mtime), got {cache_file_digest!r}"
            )
        self.executors: dict[str, Executor] = backends
        self.default_label = next(iter(backends))
        self.retries = retries
        self.retry_handler = retry_handler
        self.cache = check_bool("cache", cache)
        self.app_cache = check_bool("app_cache", app_cache)
        self.lazy_errors = check_bool("lazy_errors", lazy_errors)
        self.cache_file_digest = cache_file_digest
        self._owned = set(backends) if check_bool("shutdown_executors", shutdown_executors) else owned
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._temporary_run_dir = False
        self._run_dir_lock = threading.Lock()
        self._tokens: list[Any] = []
        self._checkpoint = self._open_checkpoint(checkpoint, checkpoint_files)
        Memoizer(None, cache_file_digest, memo_size=memo_size)  # checks memo_size now
        providers = self._staging_providers(staging)
        recorder = None
        if where is not None:
            config = {
                "executors": {label: type(ex).__name__ for label, ex in backends.items()},
                "retries": retries,
                "cache": self.cache,
                "app_cache": self.app_cache,
                "lazy_errors": self.lazy_errors,
                "checkpoint": getattr(self._checkpoint, "path", None),
                "memo_size": memo_size,
            }
            recorder = self._open_record(where, config, checkpoint)
        self._engine = Engine(
            self,
            backends,
            retries=retries,
            retry_handler=retry_handler,
            cache=self.cache,
            app_cache=self.app_cache,
            lazy_errors=self.lazy_errors,
            make_memo=lambda: Memoizer(self._checkpoint, cache_file_digest, memo_size=memo_size),
            staging=providers,
            run_dir=lambda: self.run_dir,
            recorder=recorder,
        )
        if self._checkpoint is not None:
            self._engine.memoizer()
        if recorder is not None:
            from ..monitor.execution import Recordable

            for label, ex in backends.items():
                if isinstance(ex, Recordable):
                    ex.attach_recorder(recorder, label)

    @staticmethod
    def _record_where(record: Any) -> tuple[Path, str] | None:
        """The run record's file and family that ``record=`` (or the environment) asks for, or None."""
        if record is False or (record is None and not os.environ.get(_ENV_RECORD)):
            return None
        from ..monitor.location import resolve_record

        try:
            return resolve_record(record)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None

    def _open_record(self, where: tuple[Path, str], config: dict[str, Any], checkpoint: Any) -> Recorder:
        """Open this run's record; close a checkpoint opened here if that fails."""
        from ..monitor.recorder import Recorder

        try:
            return Recorder(where[0], family=where[1], kind="dataflow", config=config)
        except BaseException:
            if self._checkpoint is not None and self._checkpoint is not checkpoint:
                self._checkpoint.close()
            raise

    @staticmethod
    def _backends(
        executor: Executor | None, executors: Mapping[str, Executor] | None
    ) -> tuple[dict[str, Executor], set[str]]:
        """The backends by label, and the labels of those made here (so owned)."""
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
        return dict(executors), owned

    # -- the Executor interface --------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> DataflowFuture:
        """Schedule ``fn(*args, **kwargs)`` once every future in the arguments is done."""
        return self._engine.submit(fn, args, kwargs, DEFAULT_SETTINGS, None, None, None)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool | str | ProgressSink | None = False,
    ) -> Iterator[T]:
        """Like ``Executor.map``; items may be futures, which become dependencies.

        ``progress=True`` (or a backend name, or a ProgressSink) draws a bar that counts
        the tasks as they finish, in any order, while the results keep map's order (see
        :func:`hpcfutures.progress`).

        Raises:
            ConfigurationError: ``progress`` is none of True, False, a backend name or a ProgressSink.
        """
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize, progress=progress)

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
        """Return an Executor view whose submits carry these settings.

        Raises:
            ConfigurationError: a setting is invalid or names an unknown executor label.
            UnsupportedOptionError: a backend the task may run on cannot honour a setting.
        """
        return DataflowView(
            self,
            self._layered(
                DEFAULT_SETTINGS,
                executors=executors,
                retries=retries,
                walltime=walltime,
                priority=priority,
                resources=resources,
                cache=cache,
                ignore_for_cache=ignore_for_cache,
            ),
        )

    def wait_for_current_tasks(self) -> None:
        """Wait until every task submitted so far has finished, without shutting down.

        Tasks submitted while this waits (by join bodies, say) are waited for too.  Unlike
        ``shutdown``, the executor takes new tasks afterwards.
        """
        if self._engine.on_dispatcher():
            raise RuntimeError(
                "wait_for_current_tasks() in a done-callback of this executor's futures would wait "
                "for itself; call it from the thread that submits"
            )
        self._engine.wait_all()

    def checkpoint(self) -> int:
        """Write the results buffered for the checkpoint file now; return how many were written."""
        memo = self._engine.memo
        return memo.flush() if memo is not None else 0

    def explain_cache(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Say whether ``fn(*args, **kwargs)`` would be answered from the cache, and why not.

        ``fn`` may be a function or an app (its ``ignore_for_cache`` applies).  Arguments
        must be plain values (or finished futures), as the task would see them.
        """
        func = getattr(fn, "func", fn)
        ignore = tuple(getattr(getattr(fn, "options", None), "ignore_for_cache", ()) or ())
        args, kwargs = substitute(args, kwargs)
        return self._engine.memoizer().explain(func, args, kwargs, ignore)

    @property
    def unsaved_results(self) -> list[tuple[str, str]]:
        """``(task name, reason)`` for each result that could not be written to the checkpoint."""
        memo = self._engine.memo
        return list(memo.unsaved) if memo is not None else []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; shut down the backends this executor owns.

        ``cancel_futures`` cancels tasks still waiting for dependencies or queued in their
        backend; ``wait`` waits for the rest.  In a done-callback of this executor's futures
        (which runs on its dispatcher thread) ``wait=True`` acts as ``wait=False``.
        """
        engine = self._engine
        engine.close(cancel_futures)
        if wait and not engine.on_dispatcher():
            self._release(True, cancel_futures)
        elif engine.live or engine.on_dispatcher():
            # As in the stdlib, pending tasks still run after shutdown(wait=False); those
            # still waiting for dependencies need the backends, so release them afterwards.
            threading.Thread(
                target=self._release,
                args=(False, cancel_futures),
                name="hpcfutures-dataflow-shutdown",
                daemon=True,
            ).start()
        else:
            self._release(False, cancel_futures)

    def _release(self, wait: bool, cancel_futures: bool) -> None:
        self._engine.release(self._owned, wait, cancel_futures)
        if self._temporary_run_dir and self._run_dir is not None:
            remove_if_empty(self._run_dir)  # kept when apps wrote logs into it

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
        with self._run_dir_lock:
            if self._run_dir is None:
                self._run_dir = Path(tempfile.mkdtemp(prefix="hpcfutures-dataflow-"))
                self._temporary_run_dir = True
            self._run_dir.mkdir(parents=True, exist_ok=True)
            return self._run_dir

    @property
    def recorder(self) -> Recorder | None:
        """The run record this executor writes (``record=``), or None when it records nothing.

        ``recorder.path`` is its file and ``recorder.run_id`` this run's row;
        ``recorder.flush()`` has what happened so far written, for reading it during the run.
        """
        return self._engine.recorder

    @property
    def pending(self) -> int:
        """How many tasks have not finished yet."""
        return len(self._engine.live)

    # -- what views and apps share ----------------------------------------------------------------

    def _layered(self, base: TaskSettings, **changes: Any) -> TaskSettings:
        """``base`` with ``changes``, checked, and checked against this executor's backends."""
        settings = base.layered(**changes)
        labels = settings.executors
        unknown = [label for label in labels or () if label not in self.executors]
        if unknown:
            raise ConfigurationError(
                f"unknown executor label(s) {unknown!r}; this DataflowExecutor has {sorted(self.executors)}"
            )
        if settings.backend_options():
            for label in labels or (self.default_label,):
                self._engine.backend_for(label, settings)  # fail now, not when the task is ready
        return settings

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
        return self._engine.submit(fn, args, kwargs, settings, name, wrap, setup)

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

    @staticmethod
    def _open_checkpoint(checkpoint: Any, checkpoint_files: Any) -> Any:
        if checkpoint_files is not None and checkpoint is None:
            raise ConfigurationError(
                "checkpoint_files=... needs checkpoint=<path>, the file this run's results go to "
                "(it may be a new file)"
            )
        if checkpoint is None:
            return None
        from .checkpoint import Checkpoint

        if isinstance(checkpoint, Checkpoint):
            if checkpoint_files is not None:
                raise ConfigurationError(
                    "give checkpoint_files as Checkpoint(path, read_from=...) when checkpoint is a Checkpoint"
                )
            return checkpoint
        if isinstance(checkpoint, (str, os.PathLike)):
            return Checkpoint(checkpoint, read_from=() if checkpoint_files is None else checkpoint_files)
        raise ConfigurationError(
            f"checkpoint must be a path or a hpcfutures.dataflow.checkpoint.Checkpoint, got {type(checkpoint).__name__}"
        )


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
        """Return a view with these settings layered over this view's own (as ``DataflowExecutor.options``)."""
        changes = {
            "executors": executors,
            "retries": retries,
            "walltime": walltime,
            "priority": priority,
            "resources": resources,
            "cache": cache,
            "ignore_for_cache": ignore_for_cache,
        }
        return DataflowView(self._dfx, self._dfx._layered(self._settings, **changes))


ENGINE_CALLBACKS.add(ClosableView._forget)
ENGINE_CALLBACKS.add(ProgressBar._finished)  # it only counts
