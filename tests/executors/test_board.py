"""The worker board alone: claims against cancels across a real fork, and the journal."""

from __future__ import annotations

import os
import random
import signal

import pytest

from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex.board import JOURNAL_BYTES, WorkerBoard


def test_a_claimed_task_cannot_be_cancelled_and_a_cancelled_one_is_not_claimed():
    board = WorkerBoard()
    assert board.claimed() == 0
    assert board.claim(0)
    assert board.cancel([0, 2, 3]) == {2, 3}  # 0 began; 1 was not asked for
    assert board.claim(1)
    assert not board.claim(2)
    assert not board.claim(3)
    assert board.claim(4)
    assert board.claimed() == 5
    assert board.cancel([4]) == set()


@pytest.mark.parametrize("round_", range(5))
def test_claims_racing_cancels_in_another_process_never_both_win(round_):
    # A forked child claims ordinals as fast as it can while this process cancels random
    # ones: every ordinal must be either claimed by the child or cancelled here, never both.
    n = 20_000
    board = WorkerBoard()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a stand-in worker
        os.close(read_fd)
        lost = [o for o in range(n) if not board.claim(o)]
        with os.fdopen(write_fd, "w") as out:
            out.write(" ".join(map(str, lost)))
        os._exit(0)
    os.close(write_fd)
    rng = random.Random(round_)
    won: set[int] = set()
    while (claimed := board.claimed()) is not None and claimed < n:
        won |= board.cancel(rng.sample(range(claimed, min(n, claimed + 200)), k=min(20, n - claimed)))
    with os.fdopen(read_fd) as data:
        skipped = {int(o) for o in data.read().split()}
    os.waitpid(pid, 0)
    assert skipped == won


def test_the_journal_keeps_results_until_cleared_and_the_manager_reads_them():
    board = WorkerBoard()
    first = P.result_meta(7, P.OK, 3, 0, elapsed=0.5)
    second = P.result_meta(8, P.ERROR, 2, 0, elapsed=0.25)
    assert board.journal(first, b"abc") and board.journal(second, b"de")
    metas, pickles = board.journaled()
    assert bytes(metas) == first + second and bytes(pickles) == b"abcde"
    assert board.unsent() == (first + second, b"abcde")
    board.clear()
    assert board.unsent() == (b"", b"")
    assert not board.journal(first, bytes(JOURNAL_BYTES + 1)), "an oversize result must be refused"


def test_results_journaled_by_a_worker_that_died_are_read_after_its_death():
    board = WorkerBoard()
    pid = os.fork()
    if pid == 0:
        for task_id in range(10):
            board.journal(P.result_meta(task_id, P.OK, 1, 0), bytes([task_id]))
        board.claim(10)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    metas, pickles = board.unsent()
    assert [f[0] for f in P.RESULT_META.iter_unpack(metas)] == list(range(10))
    assert pickles == bytes(range(10))
    assert board.claimed_before_death() == 11


def test_a_worker_that_died_holding_the_lock_blocks_nothing():
    board = WorkerBoard()
    pid = os.fork()
    if pid == 0:
        board.lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert board.claimed() is None
    assert board.cancel([5]) == set(), "a cancel must be refused, not wait forever"
    assert board.claimed_before_death() == 0
