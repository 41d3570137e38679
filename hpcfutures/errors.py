"""The exception hierarchy shared by every part of hpcfutures.

Everything the package raises on purpose derives from :class:`HpcFuturesError`, so a caller
can catch the package's failures in one clause.  A task's own exception is never wrapped:
it is re-raised with its original type and the remote traceback attached as its cause.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from typing import Any


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], fields: dict[str, Any]) -> BaseException:
    """Unpickle an error whose constructor takes keyword-only fields besides its message."""
    error = cls(*args, **fields)
    return error


class HpcFuturesError(Exception):
    """Base class of every error hpcfutures raises on purpose."""


class ConfigurationError(HpcFuturesError, ValueError):
    """A parameter has a value that cannot work; the message names it and the fix."""


class SerializationError(HpcFuturesError, TypeError):
    """A function, argument or result cannot be serialized or deserialized."""


class UnsupportedOptionError(ConfigurationError):
    """A backend was asked for a per-task setting (resource, walltime, …) it cannot honour."""


class ResourceUnsatisfiableError(UnsupportedOptionError):
    """A task asks for more cores, memory or accelerators than any worker pool has or can have.

    Raised when the view is made if the provider's node shape says so, or set on the task's
    future once pools have registered and none could ever run it.  The message names the
    field and the largest shape available.
    """


class ExecutorError(HpcFuturesError):
    """The executor's machinery, not the task, failed."""


class ExecutorShutdownError(ExecutorError):
    """The task was stopped because its executor shut down before it finished."""


class BrokenExecutorError(ExecutorError, BrokenExecutor):
    """The executor cannot run tasks any more; the message and cause say why."""


class PoolStartError(BrokenExecutorError):
    """A worker pool exited before it could run tasks; carries its exit code and stderr tail."""

    def __init__(self, message: str, *, exit_code: int | None = None, stderr_tail: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (
            type(self),
            self.args,
            {"exit_code": self.exit_code, "stderr_tail": self.stderr_tail},
        )


class InterchangeLostError(BrokenExecutorError):
    """The interchange process died; every task it held fails with this error."""

    def __init__(self, message: str, *, exit_code: int | None = None, stderr_tail: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (
            type(self),
            self.args,
            {"exit_code": self.exit_code, "stderr_tail": self.stderr_tail},
        )


class VersionMismatchError(ExecutorError):
    """A worker pool speaks another protocol, Python or hpcfutures version than the driver."""


class TaskError(HpcFuturesError):
    """Base class of failures attached to one task rather than raised by its function."""


class WorkerLostError(TaskError):
    """The worker running the task died (signal, OOM kill, ``os._exit``) too many times."""

    def __init__(self, message: str, *, exit_code: int | None = None, signal_name: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.signal_name = signal_name

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (
            type(self),
            self.args,
            {"exit_code": self.exit_code, "signal_name": self.signal_name},
        )


class PoolLostError(TaskError):
    """The worker pool holding the task disappeared too many times."""


class TaskTimeoutError(TaskError, TimeoutError):
    """The task ran longer than its walltime and was killed."""


class RemoteTraceback(Exception):
    """Carries the text of a traceback raised on a worker; attached as ``__cause__``."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(TaskError):
    """Stands in for a task exception whose own type could not be pickled back."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return RemoteError, (self.type_name, self.message)


class DependencyError(TaskError):
    """A task did not run because a task it depends on failed or was cancelled.

    ``failed`` lists ``(task id, task name, exception)`` for each failed dependency (a task id
    is None for a future that did not come from a DataflowExecutor); ``chain`` names the
    tasks from the root failure down to this one.  The first failure is the ``__cause__``.

    With ``upstream``, ``chain`` continues that error's chain: the error links to it rather
    than copy it, so that a failure travelling down a chain of n tasks takes O(n) memory.
    """

    def __init__(
        self,
        message: str,
        failed: list[tuple[int | None, str, BaseException]],
        chain: list[str],
        *,
        upstream: DependencyError | None = None,
    ):
        super().__init__(message)
        self.failed = failed
        self._links = list(chain)
        self._upstream = upstream
        #: How many tasks ``chain`` names.
        self.chain_length: int = len(self._links) + (upstream.chain_length if upstream is not None else 0)
        root = upstream._root if upstream is not None else (self._links[0] if self._links else None)
        self._root: str | None = root

    @property
    def chain(self) -> list[str]:
        """The tasks from the root failure down to this one, as ``"task 3 (name)"``."""
        parts = []
        error: DependencyError | None = self
        while error is not None:
            parts.append(error._links)
            error = error._upstream
        return [name for links in reversed(parts) for name in links]

    def __reduce__(self) -> tuple[Any, ...]:
        return DependencyError, (self.args[0], self.failed, self.chain)


class JoinError(TaskError):
    """A join app's inner tasks failed; ``failed`` lists ``(task id, task name, exception)``."""

    def __init__(self, message: str, failed: list[tuple[int | None, str, BaseException]]):
        super().__init__(message)
        self.failed = failed

    def __reduce__(self) -> tuple[Any, ...]:
        return JoinError, (self.args[0], self.failed)


class WorkflowStoppedError(TaskError):
    """A DataflowExecutor with ``lazy_errors=False`` stopped at its first failed task.

    Tasks that had not finished fail with this error, and so do later submits; ``first``
    is the first failure (also the ``__cause__``).
    """

    def __init__(self, message: str, first: BaseException | None = None):
        super().__init__(message)
        self.first = first
        self.__cause__ = first

    def __reduce__(self) -> tuple[Any, ...]:
        return WorkflowStoppedError, (self.args[0], self.first)


class AppError(TaskError):
    """Base class of failures of bash apps reported by the app machinery."""


class BashExitFailure(AppError):
    """A bash app's command exited with a non-zero code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[Any, ...]:
        return BashExitFailure, (self.args[0], self.exit_code)


class BashAppNoReturn(AppError, TypeError):
    """A bash app's function returned something other than a command string."""


class MissingOutputs(AppError):
    """An app finished without creating outputs it declared; ``outputs`` lists their paths."""

    def __init__(self, message: str, outputs: list[str]):
        super().__init__(message)
        self.outputs = outputs

    def __reduce__(self) -> tuple[Any, ...]:
        return MissingOutputs, (self.args[0], self.outputs)


class NoExecutorBoundError(HpcFuturesError, RuntimeError):
    """An app was called with no DataflowExecutor bound to it or active."""
