"""Block elasticity: how many blocks an executor should have, and which ones to let go.

The decision is a pure function of what the executor knows (tasks outstanding, workers per
block, each block's state and idle time) and the provider's limits, so it is tested on its
own.  The HighThroughputExecutor calls :func:`plan_blocks` every ``block_poll_period``
seconds on its block-management thread and carries the plan out: it submits new blocks,
cancels blocks still waiting in the scheduler's queue, and *drains* idle running blocks
(no new tasks; the pools stop once their running tasks have finished), so scale-in never
kills a running task.

:class:`LossWindow` is another pure decision of the block thread: whether blocks are being
lost under their tasks so often that the executor should give up.  :class:`PollBackoff` is
the third: how long to wait before asking the scheduler about the jobs again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockView:
    """What the scaling decision needs to know about one live block.

    Attributes:
        block_id: the executor's name for the block.
        connected: whether its pools have registered with the interchange.
        idle_seconds: for a connected block, how long all its pools have had no task; for
            one still starting (queued in the scheduler), how long ago it was submitted.
        draining: it is already being scaled in.
    """

    block_id: str
    connected: bool
    idle_seconds: float
    draining: bool = False


@dataclass(frozen=True)
class ScalingPlan:
    """What to do now: start ``start`` blocks, drain ``drain``, cancel ``cancel`` (by block id)."""

    start: int = 0
    drain: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether the plan changes nothing."""
        return not (self.start or self.drain or self.cancel)


def wanted_blocks(
    outstanding: int, workers_per_block: int, *, min_blocks: int, max_blocks: int, parallelism: float
) -> int:
    """How many blocks ``outstanding`` tasks call for.

    ``parallelism`` times the outstanding tasks should each have a worker, rounded up to whole
    blocks, and the result stays within ``[min_blocks, max_blocks]``.  Any outstanding work
    calls for at least one block, whatever ``parallelism`` is: otherwise, with
    ``min_blocks=0`` and ``parallelism=0``, waiting tasks would have no block to run on and
    wait forever.  So ``parallelism=0`` means "as few blocks as possible, but never none
    while work waits" (``max_blocks`` is at least 1: executors refuse anything else).
    """
    wanted = math.ceil(parallelism * outstanding / max(1, workers_per_block))
    if outstanding > 0:
        wanted = max(wanted, 1)
    return max(min_blocks, min(max_blocks, wanted))


def plan_blocks(
    outstanding: int,
    workers_per_block: int,
    blocks: Sequence[BlockView],
    *,
    min_blocks: int,
    max_blocks: int,
    parallelism: float,
    max_idletime: float,
) -> ScalingPlan:
    """Decide how to scale; see the module docstring.

    Blocks already draining do not count.  Scaling out starts what is missing at once.
    Scaling in lets go only of blocks idle for at least ``max_idletime`` (queued blocks
    count as idle since their submission), longest idle first, never below the wanted
    number: connected ones are drained, queued ones cancelled.
    """
    active = [b for b in blocks if not b.draining]
    wanted = wanted_blocks(
        outstanding, workers_per_block, min_blocks=min_blocks, max_blocks=max_blocks, parallelism=parallelism
    )
    if len(active) < wanted:
        return ScalingPlan(start=wanted - len(active))
    excess = len(active) - wanted
    if excess <= 0:
        return ScalingPlan()
    idle = sorted((b for b in active if b.idle_seconds >= max_idletime), key=lambda b: -b.idle_seconds)
    chosen = idle[:excess]
    return ScalingPlan(
        drain=[b.block_id for b in chosen if b.connected],
        cancel=[b.block_id for b in chosen if not b.connected],
    )


class LossWindow:
    """Counts blocks lost under their tasks within a sliding time window.

    A block lost now and then (a node failure, an administrator's ``scancel``) is replaced
    and forgotten once it is ``window`` seconds old, so a long-running executor is never
    broken by losses spread over its life; blocks lost faster than ``limit`` per ``window``
    mean something keeps killing them, and the executor should stop and say so.  The caller
    passes the (monotonic) time, so the decision is tested without a clock.
    """

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or not window > 0:
            raise ValueError(f"LossWindow needs limit >= 0 and window > 0, got {limit!r} and {window!r}")
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record a loss at ``now``; return whether more than ``limit`` fall within the window."""
        self._times.append(now)
        while self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times) > self.limit

    def __len__(self) -> int:
        """Losses recorded within the window ending at the newest one."""
        return len(self._times)


class PollBackoff:
    """How long to wait before the next status poll: longer while nothing changes.

    A batch scheduler is a shared service, and an executor whose blocks sit quietly (queued
    for hours, or running long tasks) learns nothing from asking every second.  So, like
    submitit's job watcher, the delay doubles after every poll that saw no change, from
    ``base`` up to ``cap`` (``base``, 2 x ``base``, 4 x ``base``, ...), and drops back to
    ``base`` after a change: a job that changed state, or an event the caller knows will
    change one soon (it submitted or cancelled a job).  Pure, so tested without a clock.
    """

    def __init__(self, base: float, cap: float) -> None:
        if not 0 < base <= cap < math.inf:
            raise ValueError(f"PollBackoff needs 0 < base <= cap < inf, got base={base!r} and cap={cap!r}")
        self.base = base
        self.cap = cap
        self.delay = base  # the delay last returned

    def next_delay(self, changed: bool) -> float:
        """Return the delay until the poll after this one, which saw a change or not."""
        self.delay = self.base if changed else min(self.cap, 2 * self.delay)
        return self.delay
