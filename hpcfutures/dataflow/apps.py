"""Apps: the ``python_app``, ``bash_app`` and ``join_app`` decorators over a DataflowExecutor.

An app is a function whose calls become DataflowExecutor tasks and return DataflowFutures.
It binds to the executor given when decorating (``@dfx.python_app`` or
``@python_app(executor=dfx)``), else, at each call, to the innermost DataflowExecutor
entered with ``with``.

Parsl's special keywords keep their meaning: ``inputs`` (a list whose futures are
dependencies), ``outputs`` (files the app creates, returned as DataFutures in the future's
``.outputs``), ``stdout`` and ``stderr`` (where a bash app's streams go) and ``walltime``
(seconds).  Each comes from the call, or else from the function's own default; the
function receives ``inputs``, ``outputs``, ``stdout`` and ``stderr`` only if its signature
takes them (by name or through ``**kwargs``).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypedDict, overload

from typing_extensions import Unpack

from .._validate import check_bool, check_count, check_seconds
from ..errors import ConfigurationError, NoExecutorBoundError
from .bash import BashSpec, Target, bind
from .context import current_executor
from .executor import DataflowExecutor
from .files import AUTO_LOGNAME, File, _AutoLogname
from .futures import DataflowFuture, DataFuture
from .settings import DEFAULT_SETTINGS, TaskSettings

__all__ = ["AUTO_LOGNAME", "App", "BashApp", "JoinApp", "PythonApp", "bash_app", "join_app", "python_app"]


_STREAMS = ("stdout", "stderr")
_PASSED_ON = ("inputs", "outputs", "stdout", "stderr")
_SPECIAL = frozenset((*_PASSED_ON, "walltime", "label"))


@dataclass(frozen=True)
class AppOptions:
    """The decorator options of an app, checked when the app is made.

    Args:
        cache: whether results may be reused for identical calls (stored for memoisation).
        executors: the label(s) of the DataflowExecutor's backends the app runs on; one is
            picked at random per call when there are several.  ``"all"`` means every label.
            None: the DataflowExecutor's default backend.
        retries: the app's retry budget; None: the DataflowExecutor's ``retries``.
        ignore_for_cache: argument names left out of the memoisation key.
        walltime: seconds a call may run before it is killed; a call's ``walltime=`` wins.
    """

    cache: bool = False
    executors: tuple[str, ...] | None = None
    retries: int | None = None
    ignore_for_cache: tuple[str, ...] = ()
    walltime: float | None = None

    def __post_init__(self) -> None:
        check_bool("app option cache", self.cache)
        executors: Any = self.executors
        if executors is not None:
            labels = (executors,) if isinstance(executors, str) else _as_tuple(executors, "executors")
            if not labels or not all(isinstance(label, str) and label for label in labels):
                raise ConfigurationError(
                    "app option executors must be a label or a list of labels (non-empty strings) "
                    f"of the DataflowExecutor's backends, got {executors!r}"
                )
            object.__setattr__(self, "executors", labels)
        check_count("app option retries", self.retries, 0, optional=True)
        ignored: Any = self.ignore_for_cache
        names = () if ignored is None else _as_tuple(ignored, "ignore_for_cache")
        if not all(isinstance(name, str) and name for name in names):
            raise ConfigurationError(
                f"app option ignore_for_cache must be a list of argument names, got {ignored!r}"
            )
        object.__setattr__(self, "ignore_for_cache", names)
        object.__setattr__(self, "walltime", _check_walltime(self.walltime, "app option walltime"))


def _as_tuple(value: Any, option: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(f"app option {option} must be a list of strings, got {value!r}")
    return tuple(value)


def _check_walltime(walltime: Any, what: str) -> float | None:
    return check_seconds(what, walltime, optional=True)


def _check_label(label: Any, app: App) -> str | None:
    """A call's ``label=``: a name for its AUTO_LOGNAME files (no path separator)."""
    if label is None:
        return None
    if not isinstance(label, str) or not label or "/" in label or "\0" in label:
        raise ValueError(f"{app.where}: label must be a non-empty string without '/', got {label!r}")
    return label


def _target(value: Any, name: str, app: App) -> Target | _AutoLogname | None:
    """Turn a ``stdout=``/``stderr=`` value into ``(path, mode)``, AUTO_LOGNAME or None."""
    if value is None or value is AUTO_LOGNAME:
        return value
    if isinstance(value, tuple):
        if len(value) == 2 and isinstance(value[0], (str, os.PathLike)) and isinstance(value[1], str):
            path, mode = os.fspath(value[0]), value[1]
            if mode.replace("b", "").rstrip("+") not in ("w", "a"):
                raise ValueError(f"{app.where}: {name}=({path!r}, {mode!r}) needs a write mode, 'w' or 'a'")
            return path, mode
    elif isinstance(value, (str, os.PathLike)):
        return os.fspath(value), "w"
    raise TypeError(
        f"{app.where}: {name} must be a path, a (path, mode) pair, a File or AUTO_LOGNAME, got {value!r}"
    )


def _output_files(value: Any, app: App) -> list[File]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{app.where}: outputs must be a list of Files or paths, got {type(value).__name__}")
    files = []
    for item in value:
        if isinstance(item, File):
            files.append(item)
        elif isinstance(item, (str, os.PathLike)):
            files.append(File(item))
        else:
            raise TypeError(f"{app.where}: each of outputs must be a File or a path, got {item!r}")
    return files


def _call_without(fn: Callable[..., Any], names: tuple[str, ...], /, *args: Any, **kwargs: Any) -> Any:
    for name in names:
        kwargs.pop(name, None)
    return fn(*args, **kwargs)


class App:
    """A decorated function: calling it submits a task and returns its DataflowFuture.

    ``func`` is the function; ``executor`` the DataflowExecutor it is bound to (None: the
    innermost active one at call time); the decorator options are attributes of the same
    names (``cache``, ``executors``, ``retries``, ``ignore_for_cache``, ``walltime``).
    """

    kind = "python"

    def __init__(
        self,
        func: Callable[..., Any],
        executor: DataflowExecutor | None = None,
        options: AppOptions | None = None,
    ):
        if not callable(func):
            raise TypeError(f"{self.kind}_app decorates a function, got {func!r}")
        if executor is not None and not isinstance(executor, DataflowExecutor):
            raise ConfigurationError(
                f"{self.kind}_app(executor=...) must be a DataflowExecutor, got {type(executor).__name__}; "
                "wrap a backend with DataflowExecutor(backend)"
            )
        functools.update_wrapper(self, func)
        self.func = func
        self.executor = executor
        self.options = options if options is not None else AppOptions()
        self.name: str = getattr(func, "__name__", None) or type(func).__name__
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):  # a builtin without a signature: it takes none of them
            params = {}  # type: ignore[assignment]
        any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        #: The special keywords the function takes, and their defaults.
        self._takes = frozenset(n for n in _PASSED_ON if any_keyword or n in params)
        self._takes_walltime = "walltime" in params
        self._takes_label = "label" in params
        self._defaults = {
            n: p.default
            for n, p in params.items()
            if n in _SPECIAL and p.default is not inspect.Parameter.empty
        }
        self._bound_settings: TaskSettings | None = None
        if executor is not None:  # unknown labels and unsupported options fail now
            self._bound_settings = self._settings_for(executor, self.options.walltime)

    @property
    def cache(self) -> bool:
        """Whether results may be reused for identical calls."""
        return self.options.cache

    @property
    def executors(self) -> tuple[str, ...] | None:
        """The backend labels the app runs on (None: the default backend)."""
        return self.options.executors

    @property
    def retries(self) -> int | None:
        """The app's retry budget (None: the DataflowExecutor's)."""
        return self.options.retries

    @property
    def ignore_for_cache(self) -> tuple[str, ...]:
        """Argument names left out of the memoisation key."""
        return self.options.ignore_for_cache

    @property
    def walltime(self) -> float | None:
        """The default walltime of a call, in seconds."""
        return self.options.walltime

    @property
    def where(self) -> str:
        """How error messages name the app."""
        return f"{self.kind} app {self.name}"

    def __repr__(self) -> str:
        bound = "the active DataflowExecutor" if self.executor is None else repr(self.executor)
        return f"<{type(self).__name__} {self.name} on {bound}>"

    def __call__(self, *args: Any, **kwargs: Any) -> DataflowFuture:
        """Submit ``func(*args, **kwargs)`` as a task; return its future.

        Raises:
            NoExecutorBoundError: the app has no executor and none is active.
            ConfigurationError: the call's ``walltime`` is invalid, or the backend cannot honour it.
        """
        dfx = self.executor if self.executor is not None else current_executor.get()
        if dfx is None:
            raise NoExecutorBoundError(
                f"{self.kind} app {self.name} was called with no DataflowExecutor bound to it or active. "
                f"Call it inside `with DataflowExecutor(...) as dfx:`, or bind it when decorating, "
                f"with `@dfx.{self.kind}_app` or `@{self.kind}_app(executor=dfx)`."
            )
        return self._submit(dfx, args, kwargs)

    # -- what the kinds of app share -----------------------------------------------------------------

    def _settings_for(self, dfx: DataflowExecutor, walltime: float | None) -> TaskSettings:
        labels = self.options.executors
        if labels == ("all",) and "all" not in dfx.executors:
            labels = tuple(dfx.executors)
        return dfx._layered(
            DEFAULT_SETTINGS,
            executors=labels,
            retries=self.options.retries,
            walltime=walltime,
            cache=self.options.cache or None,
            ignore_for_cache=self.options.ignore_for_cache or None,
            join=self.kind == "join" or None,
        )

    def _walltime(self, kwargs: dict[str, Any]) -> float | None:
        """Take the call's walltime out of ``kwargs`` (unless the function takes it by name)."""
        if "walltime" in kwargs:
            value = kwargs["walltime"] if self._takes_walltime else kwargs.pop("walltime")
        else:
            value = self._defaults.get("walltime")
        if value is None:
            return self.options.walltime
        return _check_walltime(value, f"{self.where}: walltime")

    def _call(self, dfx: DataflowExecutor, kwargs: dict[str, Any], streams: bool = True) -> _Call:
        """Read the special keywords of a call, leaving in ``kwargs`` what travels with it."""
        takes = self._takes
        outputs = kwargs.get("outputs", self._defaults.get("outputs"))
        files = _output_files(outputs, self) if outputs else []
        if "outputs" not in takes:
            kwargs.pop("outputs", None)
        elif files:
            kwargs["outputs"] = files
        call = _Call(self, dfx, files)
        if "label" in kwargs or "label" in self._defaults:
            value = kwargs.get("label", self._defaults.get("label"))
            if not self._takes_label:  # the special keyword: it names the AUTO_LOGNAME files only
                kwargs.pop("label", None)
                call.label = _check_label(value, self)
            elif value is not None:  # the function's own argument, which also names the files
                call.label = str(value).replace("/", "_")
        if streams:
            call.stdout = _target(kwargs.get("stdout", self._defaults.get("stdout")), "stdout", self)
            call.stderr = _target(kwargs.get("stderr", self._defaults.get("stderr")), "stderr", self)
            call.auto = call.stdout is AUTO_LOGNAME or call.stderr is AUTO_LOGNAME
            for name in _STREAMS:
                if name not in takes:
                    kwargs.pop(name, None)
        # Futures inside inputs are dependencies: they stay in kwargs until they resolve.
        if "inputs" in kwargs and "inputs" not in takes:
            call.drop = ("inputs",)
        return call

    def _submit(self, dfx: DataflowExecutor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DataflowFuture:
        if not self._defaults and (not kwargs or _SPECIAL.isdisjoint(kwargs)):  # nothing special
            settings = self._bound_settings or self._settings_for(dfx, self.options.walltime)
            return dfx._submit(self.func, args, kwargs, settings, name=self.name)
        walltime = self._walltime(kwargs)
        settings = self._settings_for(dfx, walltime)
        call = self._call(dfx, kwargs)
        wrap = call.wrap if call.drop or call.auto else None
        return dfx._submit(self.func, args, kwargs, settings, name=self.name, wrap=wrap, setup=call.setup)


class _Call:
    """One call of an app: its outputs and streams, resolved once the task has its id."""

    __slots__ = ("app", "dfx", "files", "stdout", "stderr", "auto", "drop", "runner", "walltime", "spec", "label")

    def __init__(self, app: App, dfx: DataflowExecutor, files: list[File]):
        self.app = app
        self.dfx = dfx
        self.files = files
        self.stdout: Target | _AutoLogname | None = None
        self.stderr: Target | _AutoLogname | None = None
        self.auto = False  # stdout or stderr is AUTO_LOGNAME
        self.drop: tuple[str, ...] = ()  # keywords the function does not take
        self.runner: Callable[..., Any] | None = None  # a bash app's task function
        self.walltime: float | None = None  # a bash app's walltime
        self.spec: BashSpec | None = None
        self.label: str | None = None  # the call's label=, which AUTO_LOGNAME file names carry

    def setup(self, future: DataflowFuture) -> None:
        """Give the future its output DataFutures and stream paths (AUTO_LOGNAME made concrete)."""
        if self.files:
            future.outputs = [DataFuture(future, f) for f in self.files]
        if self.auto:
            logs = self.dfx.run_dir / "task_logs"
            stem = f"{self.app.name}-{future.task_id}" + (f"-{self.label}" if self.label else "")
            if self.stdout is AUTO_LOGNAME:
                self.stdout = (str(logs / f"{stem}.stdout"), "w")
            if self.stderr is AUTO_LOGNAME:
                self.stderr = (str(logs / f"{stem}.stderr"), "w")
        if isinstance(self.stdout, tuple):
            future.stdout = self.stdout[0]
        if isinstance(self.stderr, tuple):
            future.stderr = self.stderr[0]
        if self.runner is not None:
            future._bash = future._outputs = True
        elif future.stdout is not None or future.stderr is not None:
            future._outputs = True

    def wrap(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Finish the call once its dependencies are resolved (the core calls it per attempt)."""
        if self.drop or self.auto:
            kwargs = dict(kwargs)
            for name in self.drop:
                kwargs.pop(name, None)
            for name, target in (("stdout", self.stdout), ("stderr", self.stderr)):
                if name in self.app._takes and kwargs.get(name, self.app._defaults.get(name)) is AUTO_LOGNAME:
                    kwargs[name] = target[0]  # type: ignore[index]
        if self.runner is None:
            return fn, args, kwargs
        if self.spec is None:
            outputs = tuple(f.filepath for f in self.files if f.scheme == "file")
            self.spec = BashSpec(self.app.name, self.stdout, self.stderr, self.walltime, outputs)  # type: ignore[arg-type]
        return self.runner, (self.spec, *args), kwargs


class PythonApp(App):
    """An app whose future resolves to the function's return value."""


class BashApp(App):
    """An app whose function returns a command; the command runs under ``/bin/bash``.

    Its future resolves to the exit code, 0, or fails with BashExitFailure (non-zero exit),
    TaskTimeoutError (walltime: the command's whole process group is killed),
    MissingOutputs (a declared output was not created) or BashAppNoReturn (the function
    did not return a string).
    """

    kind = "bash"

    def __init__(
        self,
        func: Callable[..., Any],
        executor: DataflowExecutor | None = None,
        options: AppOptions | None = None,
    ):
        super().__init__(func, executor, options)
        self._runner = bind(func)  # one per app, so that a backend serializes it once

    def _settings_for(self, dfx: DataflowExecutor, walltime: float | None) -> TaskSettings:
        # The runner enforces a bash app's walltime itself, so the backend need not.
        return super()._settings_for(dfx, None)

    def _submit(self, dfx: DataflowExecutor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DataflowFuture:
        walltime = self._walltime(kwargs)
        settings = self._settings_for(dfx, None)
        call = self._call(dfx, kwargs)
        call.runner = self._runner
        call.walltime = walltime
        return dfx._submit(
            self.func, args, kwargs, settings, name=self.name, wrap=call.wrap, setup=call.setup
        )


class JoinApp(App):
    """An app whose body runs on the driver and returns a future or a list of futures.

    Its future resolves to their result (or list of results), or fails with JoinError naming
    the inner tasks that failed.  ``stdout``, ``stderr`` and ``walltime`` are ordinary
    arguments for a join app.
    """

    kind = "join"

    def _submit(self, dfx: DataflowExecutor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DataflowFuture:
        call = self._call(dfx, kwargs, streams=False)
        # The core runs a join body as it is (no wrap), so leave out what it does not take here.
        fn = functools.partial(_call_without, self.func, call.drop) if call.drop else self.func
        settings = self._bound_settings or self._settings_for(dfx, None)
        return dfx._submit(fn, args, kwargs, settings, name=self.name, setup=call.setup)


# -- the decorators ----------------------------------------------------------------------------------


def _decorator(
    cls: type[App],
    function: Callable[..., Any] | None,
    executor: DataflowExecutor | None,
    options: AppOptions,
) -> Any:
    if function is None:
        return lambda f: cls(f, executor, options)
    return cls(function, executor, options)


class JoinAppOptions(TypedDict, total=False):
    """The keywords of :func:`join_app` (and of ``@dfx.join_app(...)``)."""

    executor: DataflowExecutor | None
    cache: bool
    ignore_for_cache: Iterable[str] | None


class AppKeywords(JoinAppOptions, total=False):
    """The keywords of :func:`python_app` and :func:`bash_app`; see :func:`python_app`."""

    executors: str | Iterable[str] | None
    retries: int | None
    walltime: float | None


def _options(kind: str, keywords: dict[str, Any]) -> tuple[DataflowExecutor | None, AppOptions]:
    allowed = (JoinAppOptions if kind == "join" else AppKeywords).__annotations__
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise TypeError(f"{kind}_app() got unexpected option(s) {unknown}; its options are {sorted(allowed)}")
    options = AppOptions(
        keywords.get("cache", False),
        _labels(keywords.get("executors")),
        keywords.get("retries"),
        _names(keywords.get("ignore_for_cache")),
        keywords.get("walltime"),
    )
    return keywords.get("executor"), options


@overload
def python_app(function: Callable[..., Any], /, **options: Unpack[AppKeywords]) -> PythonApp: ...


@overload
def python_app(
    function: None = None, /, **options: Unpack[AppKeywords]
) -> Callable[[Callable[..., Any]], PythonApp]: ...


def python_app(function: Callable[..., Any] | None = None, /, **options: Unpack[AppKeywords]) -> Any:
    """Make ``function`` a python app: each call runs it as a task and returns a DataflowFuture.

    Use as ``@python_app``, ``@python_app(...)`` or ``@dfx.python_app``.  Without
    ``executor``, each call goes to the innermost DataflowExecutor active (``with dfx:``).

    Options:
        executor: the DataflowExecutor the app is bound to.
        cache: whether results may be reused for identical calls.
        executors: the backend label(s) the app runs on (``"all"``: any of them).
        retries: the app's retry budget (default: the DataflowExecutor's).
        ignore_for_cache: argument names left out of the memoisation key.
        walltime: seconds a call may run; the backend enforces it (a call's ``walltime=`` wins).

    Raises:
        ConfigurationError: an option is invalid (the message names it), or ``executor`` has no
            backend with one of the ``executors`` labels.
    """
    executor, app_options = _options("python", dict(options))
    return _decorator(PythonApp, function, executor, app_options)


@overload
def bash_app(function: Callable[..., Any], /, **options: Unpack[AppKeywords]) -> BashApp: ...


@overload
def bash_app(
    function: None = None, /, **options: Unpack[AppKeywords]
) -> Callable[[Callable[..., Any]], BashApp]: ...


def bash_app(function: Callable[..., Any] | None = None, /, **options: Unpack[AppKeywords]) -> Any:
    """Make ``function`` a bash app: it returns a command, which each call runs under ``/bin/bash``.

    The call's ``stdout=`` and ``stderr=`` (or the function's defaults for them) name where
    the command's streams go: a path (truncated first), a ``(path, mode)`` pair with mode
    ``"w"`` or ``"a"``, a File, or AUTO_LOGNAME (a call's ``label=`` then enters the file
    names).  The future resolves to 0 or fails with BashExitFailure, TaskTimeoutError,
    MissingOutputs or BashAppNoReturn.  The walltime is enforced by the runner, which kills
    the command's whole process group, so it works on any backend.  Options as for
    :func:`python_app`.
    """
    executor, app_options = _options("bash", dict(options))
    return _decorator(BashApp, function, executor, app_options)


@overload
def join_app(function: Callable[..., Any], /, **options: Unpack[JoinAppOptions]) -> JoinApp: ...


@overload
def join_app(
    function: None = None, /, **options: Unpack[JoinAppOptions]
) -> Callable[[Callable[..., Any]], JoinApp]: ...


def join_app(function: Callable[..., Any] | None = None, /, **options: Unpack[JoinAppOptions]) -> Any:
    """Make ``function`` a join app: its body runs on the driver and returns futures.

    The body (run once its dependencies are done, with its DataflowExecutor active, so bare
    apps called inside go to it) returns a future or a list of futures; the app's future
    resolves to their result(s), or fails with JoinError naming the failed inner tasks.
    Options: ``executor``, ``cache`` (the join's result is reused for an identical call,
    and its body does not run again) and ``ignore_for_cache``, as for :func:`python_app`.
    """
    executor, app_options = _options("join", dict(options))
    return _decorator(JoinApp, function, executor, app_options)


def _labels(executors: Any) -> Any:
    if executors is None or isinstance(executors, str):
        return executors
    return _as_tuple(executors, "executors")


def _names(names: Any) -> Any:
    return () if names is None else _as_tuple(names, "ignore_for_cache")
