"""When a failed task runs again: the user's budget, the user's handler, and lost workers."""

from __future__ import annotations

import logging
from concurrent.futures import BrokenExecutor, CancelledError
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DependencyError, PoolLostError, WorkerLostError

logger = logging.getLogger(__name__)

#: Failures of the machinery, not of the task: retried without spending the task's budget.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (WorkerLostError, PoolLostError)
#: How often an infrastructure failure is retried for free before it counts like any other.
INFRASTRUCTURE_RETRIES = 3


@dataclass
class TaskRecord:
    """What a ``retry_handler`` is told about the task that failed.

    ``attempts`` counts the runs so far (1 after the first failure); ``fail_cost`` is the
    budget spent so far; ``exceptions`` holds every failure, oldest first.
    """

    id: int
    name: str
    executor: str
    retries: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int = 0
    fail_cost: float = 0.0
    infrastructure_failures: int = 0
    exceptions: list[BaseException] = field(default_factory=list)


RetryHandler = Callable[[BaseException, TaskRecord], float]


def should_retry(error: BaseException, record: TaskRecord, handler: RetryHandler | None) -> bool:
    """Charge ``error`` to ``record`` and say whether the task runs again.

    A DependencyError, a cancellation or a broken executor is never retried.  A lost worker
    or pool is retried for free up to INFRASTRUCTURE_RETRIES times.  Anything else costs 1,
    or what ``handler(error, record)`` returns; the task runs again while the total cost
    stays within its ``retries`` budget.  A handler that raises stops the retries.
    """
    record.exceptions.append(error)
    if isinstance(error, (DependencyError, CancelledError, BrokenExecutor)):
        return False
    if isinstance(error, INFRASTRUCTURE_ERRORS) and record.infrastructure_failures < INFRASTRUCTURE_RETRIES:
        record.infrastructure_failures += 1
        return True
    if handler is None:
        cost: float = 1.0
    else:
        try:
            cost = float(handler(error, record))
        except Exception:  # noqa: BLE001 - the handler's own failure ends the retries
            logger.exception("retry_handler failed for task %s; not retrying", record.id)
            return False
    record.fail_cost += cost
    return record.fail_cost <= record.retries
