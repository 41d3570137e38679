"""What an executor can tell about where and how a task ran, for the run record.

:func:`execution_of` reads it from a finished future of an executor that keeps it
(HighThroughputExecutor does: the worker stamps it on the result), so that a layer above
(DataflowExecutor) can record each try with its times, host, pool and resource use without
a message of its own.  :class:`Recordable` is what an executor offers so that a layer above
that records can have it record its infrastructure (blocks, pools, node samples) in the
same run.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .recorder import Recorder


@dataclass(frozen=True, slots=True)
class Execution:
    """Where and how one run of a task went, as its worker saw it.

    Times are seconds since the epoch; ``dispatched`` is when the worker received the task.
    ``lost`` counts the times the task's worker pool was lost before and the task was
    requeued (tries not charged to the task).  ``rss_kb`` and ``cpu`` are measured only while
    the run is recorded, and ``cpu`` (CPU seconds) only for a task that ran a millisecond or
    more: reading the CPU clock costs a no-op task a tenth of its run.
    """

    dispatched: float | None
    started: float | None
    ended: float | None
    pool: str | None
    host: str | None
    worker: int | None
    pid: int | None
    rss_kb: int | None
    cpu: float | None
    lost: int = 0


def execution_of(future: Future[Any]) -> Execution | None:
    """The :class:`Execution` a finished future's executor kept, or None if it keeps none."""
    execution = getattr(future, "execution", None)
    return execution if isinstance(execution, Execution) else None


@runtime_checkable
class Recordable(Protocol):
    """An executor that can record its infrastructure into another's run."""

    def attach_recorder(self, recorder: Recorder, label: str) -> None:
        """Record blocks, pools and node samples into ``recorder``'s run, under ``label``;
        tasks are left to the caller, which records them itself."""
