"""The event codes a :class:`~.recorder.Recorder` sends its writer, and how frames are cut.

Each event is a tuple whose first item is one of these codes; a frame is a 4-byte
little-endian length followed by a :mod:`marshal`-ed list of events.
"""

from __future__ import annotations

import struct

SUBMIT, STATE, TRY, END, CACHE, BLOCK, POOL, POOL_LOST, SAMPLE, RAW, FLUSH, CLOSE = range(12)
#: A dependency told after its child was submitted (a join app's inner tasks).
EDGE = 12
#: A task's only try ended well, with nothing more to tell: (PLAIN, task id, try number,
#: queued, dispatched, started, ended, pool, host, worker, pid, rss_kb, cpu).  The writer
#: keeps such a task in one short row (``task_plain``) if nothing else was said of it.
PLAIN = 13

#: The length prefix of a frame.
FRAME = struct.Struct("<I")


def counted_as(state: str) -> str:
    """Which of the run's counts a task that ended in ``state`` adds to (``run.done``, …)."""
    if state == "done" or state == "cancelled":
        return state
    return "cached" if state == "memo_done" else "failed"
