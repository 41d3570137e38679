"""A worker's board: the memory a worker and its pool manager share to agree on what happened.

A worker runs the tasks its manager sends it in order, numbering them 0, 1, 2, ... (their
*ordinals*).  Before it begins one, it *claims* it on the board: it records how many tasks it
has claimed and checks whether the manager has cancelled that one.  The manager can then
answer, without asking the worker (which may be busy for hours in one task):

- which tasks have begun (for ``running()``, reported upwards with results);
- whether a task can still be cancelled: it cancels only ordinals not yet claimed, under the
  same lock as the claim, so a task is either cancelled or begun, never both;
- which task a worker that died was running: the last ordinal it claimed, if no result
  came for it, or the *express* task the driver sent it directly (see :mod:`.express`).

The board also holds the worker's *journal*: the results it finished and has not sent yet.
A worker sends results in batches (one pipe write and one wake-up of the manager for many
short tasks); until a batch is sent its results wait here rather than in the worker's own
memory, so a worker that dies loses none of them: the manager reads them off the board.

The board is an anonymous shared mapping and a process-shared lock, made by the manager
before it forks the worker, so both see the same memory.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
from collections.abc import Iterable

from .dealing import MAX_DEPTH
from .protocol import RESULT_META

_COUNT = struct.Struct("<Q")
_LENGTHS = struct.Struct("<QQ")
#: Cancelled ordinals the board holds at once.  A worker holds at most MAX_DEPTH tasks, so
#: this never fills; a cancel that would not fit is refused.
SLOTS = 2 * MAX_DEPTH
#: Results, and bytes of their pickles, the journal holds; a result that does not fit is sent
#: at once, with those before it, instead of waiting for company.
JOURNAL_RESULTS = 256
JOURNAL_BYTES = 1 << 20
_CLAIMED = 0  # offset of: how many tasks the worker has claimed
_CANCELS = 8  # offset of: how many cancelled ordinals follow
_FIRST = 16  # offset of the first cancelled ordinal
_JOURNAL = _FIRST + 8 * SLOTS  # offset of: bytes of result metas, bytes of result pickles
_METAS = _JOURNAL + _LENGTHS.size
_PICKLES = _METAS + JOURNAL_RESULTS * RESULT_META.size
_EXPRESS = _PICKLES + JOURNAL_BYTES  # offset of: the express task the worker runs, or 0
_WANTED = _EXPRESS + 8  # offset of: 1 if the manager wants word when that task ends
_SIZE = _WANTED + 8
#: The manager waits at most this long for the lock.  A worker holds it for well under a
#: microsecond, so a longer wait means it died holding it (or is stopped): the manager then
#: treats the worker's tasks as begun, which is always safe.
LOCK_TIMEOUT = 0.5


class WorkerBoard:
    """Shared between one worker and its manager; see the module docstring."""

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, _SIZE)  # anonymous and shared: seen after fork
        self.view = memoryview(self.memory)
        self.metas = 0  # the worker's: bytes of metas in the journal
        self.pickles = 0  # the worker's: bytes of pickles in the journal
        self.lock = multiprocessing.get_context("fork").Lock()

    # -- the worker's side ----------------------------------------------------------------------

    def claim(self, ordinal: int) -> bool:
        """Claim task ``ordinal`` before beginning it; return False if it was cancelled."""
        memory = self.memory
        with self.lock:
            _COUNT.pack_into(memory, _CLAIMED, ordinal + 1)
            (cancels,) = _COUNT.unpack_from(memory, _CANCELS)
            if not cancels:
                return True
            return ordinal not in struct.unpack_from(f"<{cancels}Q", memory, _FIRST)

    def journal(self, meta: bytes, pickle: memoryview | bytes) -> bool:
        """Keep a finished task's result until the batch is sent; False if it does not fit.

        The lengths are written after the bytes, so a worker that dies half way leaves the
        journal as it was before this result.
        """
        metas, pickles = self.metas + len(meta), self.pickles + len(pickle)
        if metas > JOURNAL_RESULTS * RESULT_META.size or pickles > JOURNAL_BYTES:
            return False
        view = self.view
        view[_METAS + self.metas : _METAS + metas] = meta
        view[_PICKLES + self.pickles : _PICKLES + pickles] = pickle
        _LENGTHS.pack_into(self.memory, _JOURNAL, metas, pickles)
        self.metas, self.pickles = metas, pickles
        return True

    def journaled(self) -> tuple[memoryview, memoryview]:
        """The journal's metas and pickles, to send as one RESULTS message (then :meth:`clear`)."""
        view = self.view
        return view[_METAS : _METAS + self.metas], view[_PICKLES : _PICKLES + self.pickles]

    def clear(self) -> None:
        """Empty the journal once what it held was sent."""
        _LENGTHS.pack_into(self.memory, _JOURNAL, 0, 0)
        self.metas = self.pickles = 0

    def running_express(self, task_id: int) -> None:
        """Say the worker runs express task ``task_id`` (sent by the driver, not the manager)."""
        _COUNT.pack_into(self.memory, _EXPRESS, task_id)

    def express_ended(self) -> bool:
        """Say the express task's result was sent; return whether the manager asked for word
        of it (see :meth:`want_express_end`; the ask is then taken)."""
        memory = self.memory
        with self.lock:  # against want_express_end: one of the two sees the other's write
            _COUNT.pack_into(memory, _EXPRESS, 0)
            wanted = _COUNT.unpack_from(memory, _WANTED)[0]
            if wanted:
                _COUNT.pack_into(memory, _WANTED, 0)
        return bool(wanted)

    # -- the manager's side ---------------------------------------------------------------------

    def express_task(self) -> int:
        """The express task the worker runs now, or 0: its core is busy, though this manager
        did not send it that task.  (After the worker died: the one it died under.)"""
        return int(_COUNT.unpack_from(self.memory, _EXPRESS)[0])

    def want_express_end(self) -> bool:
        """Ask the worker to say (an EXPRESS_DONE on its result pipe) when its express task ends,
        because this manager holds a task that waits for that worker or its core; return False
        if no express task runs any more (then no word comes: the core is free now)."""
        memory = self.memory
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            return True  # it died holding the lock: its sentinel wakes the manager
        try:
            if not _COUNT.unpack_from(memory, _EXPRESS)[0]:
                return False
            _COUNT.pack_into(memory, _WANTED, 1)
            return True
        finally:
            self.lock.release()

    def unsent(self) -> tuple[bytes, bytes]:
        """After the worker died: the metas and pickles of the results it had not sent."""
        metas, pickles = _LENGTHS.unpack_from(self.memory, _JOURNAL)
        if metas % RESULT_META.size or metas > JOURNAL_RESULTS * RESULT_META.size or pickles > JOURNAL_BYTES:
            return b"", b""  # it died writing the lengths: trust nothing
        return self.memory[_METAS : _METAS + metas], self.memory[_PICKLES : _PICKLES + pickles]

    def claimed(self) -> int | None:
        """How many tasks the worker has claimed (begun, or skipped as cancelled).

        None if the lock could not be had (see LOCK_TIMEOUT).
        """
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            return None
        try:
            return int(_COUNT.unpack_from(self.memory, _CLAIMED)[0])
        finally:
            self.lock.release()

    def claimed_before_death(self) -> int:
        """:meth:`claimed`, once the worker is dead: read without the lock, which it may
        have died holding (nothing changes the board any more)."""
        return int(_COUNT.unpack_from(self.memory, _CLAIMED)[0])

    def cancel(self, ordinals: Iterable[int]) -> set[int]:
        """Cancel those of ``ordinals`` the worker has not claimed yet; return them."""
        memory = self.memory
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            return set()
        try:
            (claimed,) = _COUNT.unpack_from(memory, _CLAIMED)
            (cancels,) = _COUNT.unpack_from(memory, _CANCELS)
            kept = [o for o in struct.unpack_from(f"<{cancels}Q", memory, _FIRST) if o >= claimed]
            won = set()
            for ordinal in ordinals:
                if ordinal >= claimed and len(kept) < SLOTS:
                    kept.append(ordinal)
                    won.add(ordinal)
            struct.pack_into(f"<{len(kept)}Q", memory, _FIRST, *kept)
            _COUNT.pack_into(memory, _CANCELS, len(kept))
        finally:
            self.lock.release()
        return won

