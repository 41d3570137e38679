"""The claims file of an express worker (hpcfutures/executors/htex/claims.py): a worker claims
each express task before it begins it, the driver cancels one only if it is not claimed, and
for every task exactly one of the two succeeds, also when they race in two processes."""

from __future__ import annotations

import multiprocessing
import os
import random
from pathlib import Path

import pytest

from hpcfutures.executors.htex.claims import ClaimFile, claims_path


def test_a_claimed_task_cannot_be_cancelled_and_a_cancelled_one_cannot_be_claimed(tmp_path):
    path = claims_path(str(tmp_path / "express"), 1234)
    worker = ClaimFile(path, create=True)
    driver = ClaimFile(path)
    try:
        assert driver.claimed() == 0
        assert worker.claim(1) and driver.claimed() == 1
        assert not driver.cancel(1), "a claimed task was cancelled"
        assert driver.cancel(2) and driver.cancel(3)
        assert not driver.cancel(4), "a third cancel ahead of the claims took a slot in use"
        assert not worker.claim(2) and not worker.claim(3)
        assert worker.claim(4) and driver.claimed() == 4
        assert driver.cancel(5), "a slot whose task the claims passed is free again"
    finally:
        worker.close()
        driver.close()


def test_a_worker_replaces_a_claims_file_an_earlier_worker_left_and_the_driver_refuses_others(tmp_path):
    path = claims_path(str(tmp_path / "express"), 99)
    stale = ClaimFile(path, create=True)
    assert stale.claim(50)
    stale.close()
    fresh = ClaimFile(path, create=True)
    try:
        assert ClaimFile(path).claimed() == 0, "the new worker's claims kept the old worker's"
    finally:
        fresh.close()
    other = tmp_path / "not-claims"
    other.write_bytes(b"x" * 100)
    with pytest.raises(OSError, match="not a claims file"):
        ClaimFile(str(other))
    link = tmp_path / "link.claims"
    link.symlink_to(path)
    with pytest.raises(OSError):
        ClaimFile(str(link))


def _claim_all(path: str, last: int, out: str) -> None:
    claims = ClaimFile(path)
    claimed = [task_id for task_id in range(1, last + 1) if claims.claim(task_id)]
    Path(out).write_text(" ".join(map(str, claimed)))
    os._exit(0)


@pytest.mark.parametrize("seed", range(3))
def test_claims_and_cancels_racing_in_two_processes_never_both_succeed(tmp_path, seed):
    rng = random.Random(seed)
    last = 4000
    path = claims_path(str(tmp_path / "express"), 7)
    driver = ClaimFile(path, create=True)
    out = tmp_path / "claimed"
    child = multiprocessing.get_context("fork").Process(target=_claim_all, args=(path, last, str(out)))
    child.start()
    cancelled: set[int] = set()
    try:
        while child.is_alive() or driver.claimed() < last:
            ahead = driver.claimed() + rng.randint(0, 3)  # at, or just ahead of, the worker
            if ahead <= last and driver.cancel(ahead):
                cancelled.add(ahead)
            if not child.is_alive():
                break
    finally:
        child.join(60)
        driver.close()
    assert child.exitcode == 0
    claimed = {int(t) for t in out.read_text().split()}
    assert not claimed & cancelled, f"both claimed and cancelled: {sorted(claimed & cancelled)[:10]}"
    assert claimed | cancelled == set(range(1, last + 1)), "a task was neither claimed nor cancelled"
    assert cancelled, "the race never let a cancel through: the test tested nothing"
