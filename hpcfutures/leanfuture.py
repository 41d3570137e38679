"""LeanFuture: a ``concurrent.futures.Future`` that allocates its lock only when it needs one.

A stdlib Future makes a Condition (with its lock, wait deque and attribute dict) and two
lists when it is created.  An executor that keeps tens of thousands of futures in flight
pays for those objects twice: once to build them, and again each time the cyclic garbage
collector walks them.  Most futures never have anyone blocked on them before they finish,
so this subclass creates the Condition and lists on first use, and reads a finished
future's outcome without locking.

The protocol that ``wait`` and ``as_completed`` rely on is the stdlib's: once a future has
a Condition, its state changes, its waiters' notifications and its callback registrations
all happen under that Condition, exactly as in ``concurrent.futures._base``.  Before it has
one, they happen under a module-wide lock, and the Condition is created under that same
lock.  So a change either completes before the Condition exists (and whoever creates it to
wait, as ``as_completed`` does, sees the new state and counts the future as done without
being notified of it), or happens afterwards under the Condition, as in the stdlib.  No
future is ever both counted done and notified, and no wake-up is lost.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, Callable

logger = logging.getLogger("concurrent.futures")

# Held while a LeanFuture without a Condition changes state or takes a callback, and while a
# Condition is created for one.
_UNCONDITIONED = threading.Lock()
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})


class _FinishedReads(Future[Any]):
    """``result()`` and ``exception()`` that read a FINISHED future without its lock.

    Once a future is FINISHED its result and exception never change, so reading them needs
    no lock; a pending future goes through the stdlib's locked path.
    """

    def result(self, timeout: float | None = None) -> Any:
        try:
            if self._state == FINISHED:
                if self._exception is not None:
                    raise self._exception
                return self._result
            return super().result(timeout)
        finally:
            # The exception's traceback holds this frame: break the cycle through ``self``
            # (and so through the exception), as the stdlib does.
            self = None  # type: ignore[assignment]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)


class FinishedReadsFuture(_FinishedReads):
    """A stdlib Future (its Condition made up front) that reads a finished outcome without it.

    Code that reads many finished futures, such as a done-callback that reads the future it
    was called with, then takes no lock at all.  Everything else is the stdlib's, so threads
    that settle these futures do not share a module-wide lock as :class:`LeanFuture`'s do.
    """


class _MadeOnFirstRead:
    """A LeanFuture attribute the stdlib's code reads, made on its first read.

    It is a non-data descriptor: the value it makes goes into the instance's ``__dict__``,
    which later reads find first, so they never come here.  (A ``__getattr__`` would do the
    same, but would also run, and raise, for every attribute a caller merely probes for,
    ``getattr(future, "execution", None)`` say: about a microsecond each.)
    """

    def __init__(self, make: Callable[[], Any], lock: threading.Lock | None = None) -> None:
        self.make = make
        self.lock = lock  # held while the value is made and stored
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, future: Any, owner: type | None = None) -> Any:
        if future is None:
            return self
        if self.lock is None:
            return future.__dict__.setdefault(self.name, self.make())
        with self.lock:
            return future.__dict__.setdefault(self.name, self.make())


class LeanFuture(_FinishedReads):
    """A Future with lazily created synchronisation; see the module docstring."""

    _condition = _MadeOnFirstRead(threading.Condition, _UNCONDITIONED)
    _waiters = _MadeOnFirstRead(list)
    _done_callbacks = _MadeOnFirstRead(list)

    def __init__(self) -> None:  # no super().__init__(): that builds what we make lazily
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    # -- reading: a settled future no longer changes -----------------------------------------

    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        return self._state == RUNNING

    # -- changing state ----------------------------------------------------------------------

    def _run_callbacks(self) -> None:
        callbacks = self.__dict__.get("_done_callbacks")
        if callbacks:
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    logger.exception("exception calling callback for %r", self)

    def _acquire(self) -> tuple[Any, threading.Condition | None]:
        """Take the lock this future changes state under; return it and the Condition, if any.

        The module-wide lock while the future has no Condition, its Condition once it has one
        (see the module docstring).  The caller releases the lock it gets.
        """
        _UNCONDITIONED.acquire()
        condition: threading.Condition | None = self.__dict__.get("_condition")
        if condition is None:
            return _UNCONDITIONED, None
        _UNCONDITIONED.release()
        condition.acquire()
        return condition, condition

    def _finish(self, result: Any, exception: BaseException | None) -> None:
        lock, condition = self._acquire()
        try:
            settled = self._state in _DONE
            if not settled:
                self._result = result
                self._exception = exception
                self._state = FINISHED
                if condition is not None:
                    for waiter in self.__dict__.get("_waiters") or ():
                        if exception is not None:
                            waiter.add_exception(self)
                        else:
                            waiter.add_result(self)
                    condition.notify_all()
        finally:
            lock.release()
        if settled:  # repr() takes the module-wide lock, so the message is made after release
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._run_callbacks()

    def set_result(self, result: Any) -> None:
        self._finish(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(None, exception)

    def cancel(self) -> bool:
        lock, condition = self._acquire()
        try:
            state = self._state
            if state in (RUNNING, FINISHED):
                return False
            if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED
            if condition is not None:
                condition.notify_all()
        finally:
            lock.release()
        self._run_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        lock, condition = self._acquire()
        try:
            state = self._state
            if state == PENDING:
                self._state = RUNNING
                return True
            if state != CANCELLED:
                raise RuntimeError(f"Future in unexpected state: {state}")
            self._state = CANCELLED_AND_NOTIFIED
            if condition is not None:
                for waiter in self.__dict__.get("_waiters") or ():
                    waiter.add_cancelled(self)
                condition.notify_all()
            return False
        finally:
            lock.release()

    def add_done_callback(self, fn: Any) -> None:
        if self._state not in _DONE:
            lock, _condition = self._acquire()
            try:
                if self._state not in _DONE:
                    callbacks = self.__dict__.get("_done_callbacks")
                    if callbacks is None:
                        self.__dict__["_done_callbacks"] = [fn]
                    else:
                        callbacks.append(fn)
                    return
            finally:
                lock.release()
        try:
            fn(self)
        except Exception:
            logger.exception("exception calling callback for %r", self)

