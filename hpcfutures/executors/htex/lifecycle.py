"""An executor's life as one named phase, with the error that broke it, changed in one place.

A HighThroughputExecutor is new (nothing started), running, shutting down or stopped; at
any point it may also break, keeping the first error that broke it.  The phase and the error
change only through :class:`Lifecycle`'s methods, under the executor's lock, which the
executor also holds while it queues a task: so no task is queued after the executor was
shut down or broke, and every thread sees one consistent state.
"""

from __future__ import annotations

import enum
import threading

from ...errors import BrokenExecutorError, InterchangeLostError


class Phase(enum.Enum):
    """Where an executor is in its life."""

    NEW = "new"  # nothing started: the first submit starts it
    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"  # no new tasks; those submitted finish (or are cancelled)
    STOPPED = "stopped"  # every process of the executor is gone


class Lifecycle:
    """The phase and the breaking error of one executor.  See the module docstring.

    ``lock`` must be held while calling the methods that change state (those whose
    docstrings say so); reading ``phase``, ``error`` and the properties needs no lock.
    """

    def __init__(self, lock: threading.Lock):
        self.lock = lock
        self.phase = Phase.NEW
        #: The first error that broke the executor, or None while it is whole.
        self.error: BaseException | None = None
        self._stopped = threading.Event()

    @property
    def closed(self) -> bool:
        """Whether the executor refuses new tasks because it was shut down."""
        return self.phase in (Phase.SHUTTING_DOWN, Phase.STOPPED)

    @property
    def interchange_lost(self) -> bool:
        """Whether the executor broke because its interchange died (its I/O thread then stops)."""
        return isinstance(self.error, InterchangeLostError)

    @property
    def started(self) -> bool:
        """Whether the executor has started (and so has something to stop)."""
        return self.phase is not Phase.NEW

    def check_submit(self) -> None:
        """Raise why a task cannot be queued now, if it cannot; call with the lock held.

        Raises:
            RuntimeError: the executor was shut down.
            BrokenExecutorError: it broke; the cause is the error that broke it.
        """
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if self.error is not None:
            raise BrokenExecutorError(f"this HighThroughputExecutor is broken: {self.error}") from self.error

    def run(self) -> None:
        """The executor has started (lock held)."""
        if self.phase is Phase.NEW:
            self.phase = Phase.RUNNING

    def undo_start(self) -> None:
        """A start failed half way and was rolled back: the executor is new again (lock held).

        An error from that start (a block the scheduler refused) is forgotten, so the next
        submit tries afresh.
        """
        if self.phase is Phase.RUNNING:
            self.phase = Phase.NEW
        self.error = None

    def close(self) -> Phase:
        """Refuse new tasks from now on (lock held); return the phase before.

        An executor that never started has nothing to stop: it is stopped at once.
        """
        before = self.phase
        if before is Phase.NEW:
            self.phase = Phase.STOPPED
            self._stopped.set()
        elif before is Phase.RUNNING:
            self.phase = Phase.SHUTTING_DOWN
        return before

    def break_with(self, error: BaseException) -> bool:
        """Record that ``error`` broke the executor (lock held); False if it was broken already."""
        if self.error is not None:
            return False
        self.error = error
        return True

    def stopped(self) -> None:
        """Every process of the executor is gone."""
        with self.lock:
            self.phase = Phase.STOPPED
        self._stopped.set()

    @property
    def is_stopped(self) -> bool:
        """Whether every process of the executor is gone."""
        return self._stopped.is_set()
