"""Join apps: a body run on the driver whose future resolves with the futures it returns.

The body runs in a small thread pool of the host's, with the host as the current executor
(so bare apps called inside go to it).  It must return a future or a list of futures; the
task's future then resolves with their result (or list of results), or fails with
JoinError naming the inner tasks that failed.  Every outcome is posted to the host's
dispatcher, as a backend's would be.
"""

from __future__ import annotations

import contextvars
import itertools
from concurrent.futures import CancelledError, Executor, Future
from typing import Any

from .context import current_executor
from .failures import failures, join_error
from .recording import parents_of
from .task import Task


def run_join(task: Task, pool: Executor, current: Any) -> None:
    """Run ``task``'s join body in ``pool`` with ``current`` as the current executor."""
    context = contextvars.copy_context()
    context.run(current_executor.set, current)
    recorder = task.host.recorder
    if recorder is not None:
        task.begin_try(recorder)
    body = pool.submit(context.run, task.fn, *task.args, **task.kwargs)
    with task.lock:
        task.inner = body
    dispatcher = task.host.dispatcher
    body.add_done_callback(lambda done: dispatcher.post(_JoinBody(task).body_done, done))


class _JoinBody:
    """What one join body returned, followed until the futures it returned are done."""

    __slots__ = ("task", "inner", "single", "counter")

    def __init__(self, task: Task):
        self.task = task
        self.inner: list[Future[Any]] = []
        self.single = False
        self.counter = itertools.count(1)

    def body_done(self, body: Future[Any]) -> None:
        task = self.task
        recorder = task.host.recorder
        if body.cancelled():
            if recorder is not None:
                task.end_try(recorder, body, CancelledError())
            if task.stopped is not None:
                task.finish(exception=task.stopped)
            else:
                task.finish(cancelled=True)
            return
        error = body.exception()
        if recorder is not None:
            task.end_try(recorder, body, error)
        if error is not None:
            task.finish(exception=error)
            return
        returned = body.result()
        if isinstance(returned, Future):
            self.inner, self.single = [returned], True
        elif isinstance(returned, (list, tuple)) and all(isinstance(f, Future) for f in returned):
            self.inner = list(returned)
        else:
            task.finish(
                exception=TypeError(
                    f"join app {task.future.name} must return a Future or a list of Futures, "
                    f"got {type(returned).__name__}"
                )
            )
            return
        if not self.inner:
            task.finish(result=[])
            return
        if recorder is not None:  # the join's result waits for them: they are its parents
            recorder.edges(task.future.task_id, parents_of(self.inner, recorder))
        for f in self.inner:
            f.add_done_callback(self._inner_done)

    def _inner_done(self, _f: Future[Any]) -> None:
        if next(self.counter) == len(self.inner):
            self.task.host.dispatcher.post(self._all_done, None)

    def _all_done(self, _: None) -> None:
        task, inner = self.task, self.inner
        failed = failures(inner)
        if failed:
            task.finish(exception=join_error(task.future, failed))
        else:
            results = [f.result() for f in inner]
            task.finish(result=results[0] if self.single else results)
