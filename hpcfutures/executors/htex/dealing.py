"""How tasks are dealt out, as pure functions: the interchange's deal to pools, a pool's credit.

The interchange and the pool managers call these from their loops; kept apart from any
socket or process, they are tested alone (as :mod:`hpcfutures.scaling` is for blocks).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from .protocol import Item

#: An entry of a priority queue: (-priority, sequence number, task).
QueueEntry = tuple[int, int, Item]

#: A worker is sent enough short tasks to keep it busy about this long.
TARGET_BUFFER_SECONDS = 0.005
#: At most this many tasks wait at one worker.
MAX_DEPTH = 64


def deal(
    queue: list[QueueEntry], rooms: Sequence[int], ends: Sequence[float | None], now: float
) -> list[list[QueueEntry]]:
    """Deal the head of ``queue`` (a heap) out to takers; return each one's entries, in order.

    Taker ``i`` may take ``rooms[i]`` more tasks.  A burst is spread evenly: in each round
    every taker with room gets at most its share, ``ceil(queued / takers with room)``, and
    rounds go on while tasks and room remain.  A task with a walltime goes to no taker whose
    end (``ends[i]``, None for none) comes before the walltime would: that taker takes
    nothing more this round, and the task waits at the head for one that can finish it.
    The entries dealt are popped from ``queue``.
    """
    left = list(rooms)
    dealt: list[list[QueueEntry]] = [[] for _ in left]
    while queue:
        ready = [i for i, room in enumerate(left) if room > 0]
        if not ready:
            break
        share = -(-len(queue) // len(ready))  # ceiling division
        moved = 0
        for i in ready:
            end = ends[i]
            take = min(left[i], share)
            while take and queue:
                walltime = queue[0][2][0][2]
                if walltime and end is not None and now + walltime > end:
                    break  # it could not finish there
                dealt[i].append(heapq.heappop(queue))
                take -= 1
                left[i] -= 1
                moved += 1
        if not moved:
            break
    return dealt


def pool_credit(*, sent_before: int, received: int, held: int, workers: int, depth: int, prefetch: int) -> int:
    """A pool's cumulative credit: how many tasks in all it is willing to have received.

    It wants ``workers × depth + prefetch`` tasks on hand; it holds ``held``.  Credit is
    cumulative, so the interchange needs no acknowledgements, and it never falls below
    what was granted before (``sent_before``).
    """
    wanted = workers * depth + prefetch
    return max(sent_before, received + max(0, wanted - held))


def worker_depth(runtime: float) -> int:
    """How many tasks a worker should hold, for tasks that take ``runtime`` seconds on average.

    About TARGET_BUFFER_SECONDS of work, so that short tasks never wait for a round trip
    while long ones stay queued upstream, where priority and cancellation still apply.
    """
    return max(1, min(MAX_DEPTH, int(TARGET_BUFFER_SECONDS / max(runtime, 1e-7))))
