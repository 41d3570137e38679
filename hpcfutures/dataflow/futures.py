"""The futures a DataflowExecutor returns: ``DataflowFuture`` and ``DataFuture``."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable, Protocol

from ..leanfuture import LeanFuture
from .files import File


class _TaskHandle(Protocol):
    """What a future asks of its task while the task lives (see :class:`~.task.Task`)."""

    inner: Future[Any] | None

    def cancel(self) -> bool: ...


#: The functions of the engine's own done-callbacks (the bound methods' ``__func__``): they
#: only count, queue or forget, so a future with no other callback may be settled on any
#: thread.  The modules that define them add them here.
ENGINE_CALLBACKS: set[Callable[..., Any]] = set()


class DataflowFuture(LeanFuture):
    """The future of one DataflowExecutor task.

    ``task_id`` numbers tasks within their executor; ``name`` is the function's or app's
    name.  Apps also set ``outputs`` (a DataFuture per declared output file), ``stdout`` and
    ``stderr`` (the paths their streams go to).  ``cancel()`` works while the task waits for
    dependencies and while it is queued in the backend executor.
    """

    # Class-level defaults: apps set them per future; plain tasks allocate nothing for them.
    outputs: list[DataFuture] = []  # noqa: RUF012 - replaced, never mutated in place
    stdout: str | None = None
    stderr: str | None = None
    _user_callbacks = False  # set once a callback not in ENGINE_CALLBACKS is added
    _recorder: Any = None  # the Recorder of the run that records this task (see future_type_for)
    _bash = False  # a bash app's task: its tries keep the command's exit code
    _outputs = False  # an app's task whose tries keep an exit code or output tails
    #: True once the result came from the cache (a stored result, or an identical call's) without running.
    cached = False

    def __init__(self, task_id: int, name: str):
        super().__init__()
        self.task_id = task_id
        self.name = name
        self._task: _TaskHandle | None = None  # dropped when the task ends, so records do not pile up

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        """As ``Future.add_done_callback``.  Callbacks present when the task's outcome
        arrives run on the executor's dispatcher thread (a cancel runs them on the thread
        that cancels, as in the standard library); one added after the end runs at once."""
        if getattr(fn, "__func__", None) not in ENGINE_CALLBACKS:
            self._user_callbacks = True
        super().add_done_callback(fn)

    def has_user_callbacks(self) -> bool:
        """Whether a callback other than the engine's own was ever added."""
        return self._user_callbacks

    def cancel(self) -> bool:
        """Cancel the task if it is waiting or queued; return whether it was cancelled."""
        task = self._task
        if task is None:
            return self._cancel_self()
        return task.cancel()

    def _cancel_self(self) -> bool:
        """Cancel this future object (not the task) and tell its waiters at once."""
        if LeanFuture.cancel(self):
            self.set_running_or_notify_cancel()
            return True
        return self.cancelled()

    def running(self) -> bool:
        """Return True if the task is running in its backend executor.

        The backend's own future knows when the task starts; this future stays pending
        until the task ends.
        """
        task = self._task
        inner = task.inner if task is not None else None
        if inner is None:
            return Future.running(self)
        return inner.running() and not self.done()

    def __repr__(self) -> str:
        return f"<DataflowFuture task {self.task_id} ({self.name}) state={self._state.lower()}>"


def future_type_for(recorder: Any) -> type[DataflowFuture]:
    """The class of the futures an executor makes: DataflowFuture, or, when a Recorder
    records its run, a subclass of it whose ``_recorder`` is that Recorder.

    A recorded task's future must say which run it belongs to (a dependency on another
    executor's task is no edge of this run's graph); as a class attribute, that costs
    nothing per task, where a store on each future costs the submit a dict of its own.
    """
    if recorder is None:
        return DataflowFuture
    return type(
        "DataflowFuture",
        (DataflowFuture,),
        {"__slots__": (), "_recorder": recorder, "__module__": __name__, "__doc__": DataflowFuture.__doc__},
    )


class DataFuture(Future[File]):
    """A future for one output file of an app: it resolves to the ``File`` once the app succeeds.

    It fails with the app's exception if the app fails.  Passed to another app (in its
    arguments or ``inputs``), it makes that app wait for the file.
    """

    def __init__(self, parent: Future[Any], file: File):
        super().__init__()
        self.parent = parent
        self.file = file
        parent.add_done_callback(self._parent_done)

    @property
    def filepath(self) -> str:
        """The file's local path (known before the file exists)."""
        return self.file.filepath

    def _parent_done(self, parent: Future[Any]) -> None:
        if parent.cancelled():
            Future.cancel(self)
            self.set_running_or_notify_cancel()
        elif parent.exception() is not None:
            self.set_exception(parent.exception())
        else:
            self.set_result(self.file)

    def __repr__(self) -> str:
        return f"<DataFuture {self.file.url!r} state={self._state.lower()}>"
