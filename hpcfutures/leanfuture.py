"""LeanFuture: a ``concurrent.futures.Future`` that allocates its lock only when it needs one.

A stdlib Future makes a Condition (with its lock, wait deque and attribute dict) and two
lists when it is created.  An executor that keeps tens of thousands of futures in flight
pays for those objects twice: once to build them, and again each time the cyclic garbage
collector walks them.  Most futures never have anyone blocked on them before they finish,
so this subclass creates the Condition and lists on first use, and reads a finished
future's outcome without locking.

State changes and callback registrations happen one at a time: they take one module-wide
lock (a few hundred nanoseconds, uncontended in practice) instead of the future's own
Condition.  A waiter
checks the state under the future's Condition; a state change sets the state first and
then, if a Condition exists, takes it to wake waiters.  A waiter that created the Condition
too late to be seen therefore also sees the new state, so no wake-up is lost.  Everything
``concurrent.futures.wait`` and ``as_completed`` rely on (``_condition``, ``_waiters``,
``_state``) behaves as in the stdlib.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

logger = logging.getLogger("concurrent.futures")

_TRANSITIONS = threading.Lock()  # held while any LeanFuture changes state
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})


class LeanFuture(Future[Any]):
    """A Future with lazily created synchronisation; see the module docstring."""

    def __init__(self) -> None:  # no super().__init__(): that builds what we make lazily
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        # Only reached when the attribute does not exist yet.  dict.setdefault is atomic,
        # so two threads racing here end up sharing one object.
        if name == "_condition":
            return self.__dict__.setdefault("_condition", threading.Condition())
        if name == "_waiters" or name == "_done_callbacks":
            return self.__dict__.setdefault(name, [])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- reading: a settled future no longer changes -----------------------------------------

    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        return self._state == RUNNING

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # break a reference cycle, as the stdlib does
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    # -- changing state ----------------------------------------------------------------------

    def _settle(self) -> None:
        """After a state change: wake waiters (if anyone could be waiting), run callbacks."""
        condition = self.__dict__.get("_condition")
        if condition is not None:
            with condition:
                waiters = self.__dict__.get("_waiters")
                if waiters:
                    for waiter in waiters:
                        if self._exception is not None:
                            waiter.add_exception(self)
                        else:
                            waiter.add_result(self)
                condition.notify_all()
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks = self.__dict__.get("_done_callbacks")
        if callbacks:
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    logger.exception("exception calling callback for %r", self)

    def set_result(self, result: Any) -> None:
        with _TRANSITIONS:
            if self._state in _DONE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = FINISHED
        self._settle()

    def set_exception(self, exception: BaseException | None) -> None:
        with _TRANSITIONS:
            if self._state in _DONE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = FINISHED
        self._settle()

    def cancel(self) -> bool:
        with _TRANSITIONS:
            state = self._state
            if state in (RUNNING, FINISHED):
                return False
            if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED
        condition = self.__dict__.get("_condition")
        if condition is not None:
            with condition:
                condition.notify_all()
        self._run_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        with _TRANSITIONS:
            state = self._state
            if state == PENDING:
                self._state = RUNNING
                return True
            if state != CANCELLED:
                raise RuntimeError(f"Future in unexpected state: {state}")
            self._state = CANCELLED_AND_NOTIFIED
        condition = self.__dict__.get("_condition")
        if condition is not None:
            with condition:
                for waiter in self.__dict__.get("_waiters") or ():
                    waiter.add_cancelled(self)
                condition.notify_all()
        return False

    def add_done_callback(self, fn: Any) -> None:
        # Under the transition lock rather than the future's Condition, so that a callback
        # does not make the future build one: a state change after this sees the callback.
        if self._state not in _DONE:
            with _TRANSITIONS:
                if self._state not in _DONE:
                    callbacks = self.__dict__.get("_done_callbacks")
                    if callbacks is None:
                        self.__dict__["_done_callbacks"] = [fn]
                    else:
                        callbacks.append(fn)
                    return
        try:
            fn(self)
        except Exception:
            logger.exception("exception calling callback for %r", self)
