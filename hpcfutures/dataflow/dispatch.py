"""Dispatcher: the one thread that does a DataflowExecutor's completion work.

Backends complete their futures on threads of their own (HTEX on its I/O thread, a thread
pool on its workers).  The dataflow layer's done-callbacks on those futures post the outcome
here, except for the two bounded steps :mod:`.task` describes; everything that can take long
(reading checkpoints, hashing input files, retrying, staging, launching dependents with
large arguments) runs on this thread, so a slow disk or a large file never stalls a
backend's I/O.  Work runs one item at a time in the order posted, which also keeps a long
chain of failures from nesting one call per task.
"""

from __future__ import annotations

import logging
import threading
from queue import SimpleQueue
from typing import Any, Callable

logger = logging.getLogger(__name__)

_STOP = object()


class Dispatcher:
    """A queue of ``(function, argument)`` calls and the thread that makes them.

    The thread starts with the first post and ends after :meth:`stop`.  Posting and
    stopping happen under ``_lock``, so nothing is queued behind the stop marker.
    """

    def __init__(self, name: str):
        self._name = name
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def post(self, fn: Callable[[Any], Any], arg: Any) -> None:
        """Have the dispatcher thread call ``fn(arg)`` after what is already posted.

        After :meth:`stop` the call runs at once on the caller's thread, so nothing is lost.
        """
        with self._lock:
            if not self._stopped:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                self._queue.put((fn, arg))
                return
        fn(arg)

    def on_thread(self) -> bool:
        """Whether the caller runs on the dispatcher thread (in a done-callback, say)."""
        return self._thread is threading.current_thread()

    def stop(self) -> None:
        """Let the thread finish what is posted, then end; wait for it unless called on it."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
            if thread is None:
                return
            self._queue.put((_STOP, None))
        if thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            fn, arg = get()
            if fn is _STOP:
                break
            try:
                fn(arg)
            except Exception:  # noqa: BLE001 - one failed item must not stop the others
                logger.exception("dataflow completion work %r failed", fn)
            # Let go of the item now, not when the next one comes: it may hold a task's
            # arguments, a failed attempt's traceback and so the frames of its call.
            fn = arg = None
