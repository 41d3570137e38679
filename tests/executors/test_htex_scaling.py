"""Elastic blocks on real local blocks: scale-out, idle scale-in by draining (never killing a
running task), block end times, and failure evidence when every block fails; and the block
thread's rounds on their own (start failures, losses, a scheduler that is down) with a fake
provider and clock.

The same logic drives batch-scheduler blocks; tests/providers/test_htex_slurm.py runs it on a
real Slurm cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psutil
import pytest

from hpcfutures import BrokenExecutorError, HighThroughputExecutor, PoolStartError
from hpcfutures.executors.htex.blocks import (
    POLL_BACKOFF_FACTOR,
    BlockManager,
    RoundFailureLog,
    StatusPolls,
    _Block,
)
from hpcfutures.providers import LocalProvider
from hpcfutures.providers.base import ExecutionProvider, JobState, JobStatus
from hpcfutures.testing import Gate, faults

FAST = dict(block_poll_period=0.1, heartbeat_period=0.2, heartbeat_threshold=10.0)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def states(ex: HighThroughputExecutor) -> list[str]:
    return [b.state for b in ex.blocks()]


def test_scales_out_to_the_work_then_drains_idle_blocks():
    provider = LocalProvider(init_blocks=0, min_blocks=0, max_blocks=3)
    with HighThroughputExecutor(max_workers=1, provider=provider, max_idletime=0.5, **FAST) as ex:
        with Gate() as gate:
            futures = [ex.submit(faults.identity_after, gate.wait) for _ in range(3)]
            gate.wait_entered(3, timeout=60)  # three one-worker blocks run at once
            assert len(ex.blocks()) == 3
            gate.open()
            blocks = {f.result(timeout=30)["env"]["HPCFUTURES_BLOCK_ID"] for f in futures}
        assert len(blocks) == 3
        pids = {int(info["pid"]) for info in ex.pools.values()}
        wait_until(lambda: states(ex) == ["ended"] * 3, 30, "idle blocks to be scaled in")
        assert ex.pools == {}
        wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 15, "pool processes to exit")
        # new work scales out again
        assert ex.submit(pow, 3, 2).result(timeout=60) == 9
        assert states(ex).count("connected") == 1


def test_scale_in_never_touches_a_block_running_a_task():
    provider = LocalProvider(init_blocks=2, min_blocks=0, max_blocks=2)
    with HighThroughputExecutor(max_workers=1, provider=provider, max_idletime=0.3, **FAST) as ex:
        with Gate() as gate:
            busy = ex.submit(faults.identity_after, gate.wait)
            gate.wait_entered(1, timeout=60)
            # the other block is idle: it goes, the busy one stays while its task runs
            wait_until(lambda: sorted(states(ex)) == ["connected", "ended"], 30, "the idle block to go")
            assert not busy.done()
            gate.open()
            assert busy.result(timeout=30)["env"]["HPCFUTURES_BLOCK_ID"] in {"0", "1"}
        wait_until(lambda: states(ex) == ["ended", "ended"], 30, "the second block to go once idle")


def test_min_blocks_stay_when_idle():
    provider = LocalProvider(init_blocks=2, min_blocks=1, max_blocks=2)
    with HighThroughputExecutor(max_workers=1, provider=provider, max_idletime=0.2, **FAST) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32
        wait_until(lambda: sorted(states(ex)) == ["connected", "ended"], 30, "scale-in to min_blocks")
        time.sleep(1.0)  # several scaling rounds pass: the last block stays
        assert sorted(states(ex)) == ["connected", "ended"]


# The first block's job script announces an end 100 s away; the second has no end.
# (mkdir is atomic: exactly one of the blocks, which start at the same time, creates it.)
_END_FIRST_BLOCK = 'if mkdir "$COUNTER" 2>/dev/null; then export HPCFUTURES_BLOCK_END=$(( $(date +%s) + 100 )); fi'



def test_tasks_go_only_to_blocks_with_time_to_finish_them(tmp_path, monkeypatch):
    monkeypatch.setenv("COUNTER", str(tmp_path / "counter"))
    provider = LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2, worker_init=_END_FIRST_BLOCK)
    ex = HighThroughputExecutor(max_workers=1, provider=provider, **FAST)
    try:  # terminate, not shutdown, at the end: a failure here may leave tasks no pool takes
        assert ex.submit(pow, 2, 2).result(timeout=60) == 4  # nothing starts before a submit
        wait_until(lambda: len(ex.pools) == 2, 60, "both pools to connect")
        long = ex.options(walltime=500)
        futures = [long.submit(faults.worker_identity) for _ in range(8)]
        seen = {f.result(timeout=60)["env"]["HPCFUTURES_BLOCK_ID"] for f in futures}
        assert len(seen) == 1  # every long task avoided the block ending in 100 s
        futures = [ex.options(walltime=5).submit(faults.worker_identity) for _ in range(16)]
        assert {f.result(timeout=60)["env"]["HPCFUTURES_BLOCK_ID"] for f in futures} == {"0", "1"}
    finally:
        ex.terminate()


def test_when_every_block_fails_pending_tasks_fail_with_the_evidence():
    provider = LocalProvider(worker_init="echo 'no such module: cuda/12' >&2; exit 3")
    with HighThroughputExecutor(max_workers=1, provider=provider, **FAST) as ex:
        fut = ex.submit(pow, 2, 2)
        with pytest.raises(PoolStartError) as info:
            fut.result(timeout=60)
        assert "no such module: cuda/12" in str(info.value)
        assert info.value.exit_code == 3
        assert ex.block_failures and ex.block_failures[0].exit_code == 3


# The first block's job script announces an end 6 s away; later ones have no end.
_END_SOON = 'if mkdir "$COUNTER" 2>/dev/null; then export HPCFUTURES_BLOCK_END=$(( $(date +%s) + 6 )); fi'



def test_a_task_lost_when_its_block_ends_is_requeued_without_charge(tmp_path, monkeypatch):
    import os
    import signal

    monkeypatch.setenv("COUNTER", str(tmp_path / "counter"))
    # lost_task_retries=0: a loss that counted would fail the task with PoolLostError.
    provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=2, worker_init=_END_SOON)
    with HighThroughputExecutor(max_workers=1, provider=provider, lost_task_retries=0, **FAST) as ex:
        with Gate() as gate:
            first = ex.submit(faults.identity_after, gate.wait)
            gate.wait_entered(1, timeout=60)  # running on block 0, which ends soon
            (pool,) = ex.pools.values()
            assert str(pool["block"]) == "0"
            time.sleep(6.5)  # wall-clock time must pass the block's end: nothing to wait on
            second = ex.submit(faults.identity_after, gate.wait)  # needs a second block
            os.kill(int(pool["pid"]), signal.SIGKILL)  # the end of the block's walltime
            gate.wait_entered(3, timeout=60)  # the lost task started again on another block
            gate.open()
            assert first.result(timeout=60)["env"]["HPCFUTURES_BLOCK_ID"] != "0"
            assert second.result(timeout=60)["env"]["HPCFUTURES_BLOCK_ID"] != "0"


def test_parallelism_zero_still_starts_a_block_for_waiting_work():
    # min_blocks=0 and parallelism=0 once left a waiting task without any block, forever.
    provider = LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1, parallelism=0)
    ex = HighThroughputExecutor(max_workers=1, provider=provider, **FAST)
    try:  # terminate, not shutdown: shutdown would wait forever for a task no block runs
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8
        assert len(ex.blocks()) == 1
    finally:
        ex.terminate()


# -- the block thread's rounds, without an executor ---------------------------------------------


class FakeProvider(ExecutionProvider):
    """Says each job is running unless told otherwise; raises ``down`` while it is set.

    Counts its status calls, and records its submits and cancels.
    """

    def __init__(self) -> None:
        super().__init__(label="fake", init_blocks=0, min_blocks=0, max_blocks=1)
        self.states: dict[str, JobStatus] = {}
        self.down: Exception | None = None
        self.status_calls = 0
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    def submit(self, command: str, max_workers: int, job_name: str = "hpcfutures.block") -> str:
        job_id = f"submitted-{len(self.submitted)}"
        self.submitted.append(job_id)
        return job_id

    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        self.status_calls += 1
        if self.down is not None:
            raise self.down
        return [self.states.get(job_id, JobStatus(JobState.RUNNING)) for job_id in job_ids]

    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        self.cancelled += job_ids
        return [True for _ in job_ids]


class FakeExecutor:
    """The executor's side of the block rounds: tasks waiting, whether it broke, and with what."""

    def __init__(self) -> None:
        self.pending: dict[int, Any] = {}
        self.broken: BaseException | None = None

    def _outstanding(self) -> int:
        return len(self.pending)

    def _accepting(self) -> bool:
        return self.broken is None

    def _shutting_down(self) -> bool:
        return False

    def _break(self, error: BaseException) -> None:
        self.broken = error

    def _drain(self, block_id: str) -> None:
        pass

    def _pool_command(self, block_id: str) -> str:
        raise AssertionError("these tests need no new block")


class Blocks(BlockManager):
    """A BlockManager whose executor is a stand-in, and no executor around it."""

    def __init__(self) -> None:
        self.fake = FakeProvider()
        self.executor = FakeExecutor()
        super().__init__(
            self.executor, self.fake, label="unit", max_workers=1, max_idletime=1e9, block_poll_period=1.0
        )
        self.trouble = RoundFailureLog(self.label, self.block_poll_period)

    @property
    def _broken(self) -> BaseException | None:
        return self.executor.broken

    @property
    def _pending(self) -> dict[int, Any]:
        return self.executor.pending

    @_pending.setter
    def _pending(self, pending: dict[int, Any]) -> None:
        self.executor.pending = pending

    def add(self, *, registered: bool = False) -> _Block:
        block_id = str(next(self._block_counter))
        block = self._blocks[block_id] = _Block(block_id, f"job-{block_id}")
        block.registered = registered
        return block

    def end(self, block: _Block, state: JobState = JobState.FAILED) -> None:
        self.fake.states[block.job_id] = JobStatus(state, exit_code=1)

    def round(self, now: float) -> None:
        self._block_round(self.trouble, now)


def test_a_connected_pool_ends_the_start_failure_streak_on_the_block_thread():
    blocks = Blocks()
    first, second, third, fourth, fifth, keeper = (blocks.add() for _ in range(6))
    blocks.end(first)
    blocks.end(second)
    blocks.round(0.0)
    assert blocks._start_failures == 2 and blocks._broken is None
    third.registered = True  # all the I/O thread does when a pool of the block connects
    blocks.end(fourth)
    blocks.round(1.0)
    assert blocks._start_failures == 1 and blocks._broken is None
    blocks.end(fifth)
    blocks.end(keeper)
    blocks.round(2.0)  # three failures in a row since the connection: give up
    assert isinstance(blocks._broken, PoolStartError)
    assert len(blocks.block_failures) == 5


def test_blocks_lost_now_and_then_never_break_the_executor():
    blocks = Blocks()  # max_blocks=1: 3 replacements within the window
    for hour in range(48):  # a block lost every hour for two days
        blocks.end(blocks.add(registered=True))
        blocks.round(3600.0 * hour)
    assert blocks._broken is None


def test_blocks_lost_in_quick_succession_break_the_executor_with_the_evidence():
    blocks = Blocks()
    for second in range(3):
        blocks.end(blocks.add(registered=True))
        blocks.round(float(second))
    assert blocks._broken is None
    last = blocks.add(registered=True)
    blocks.fake.states[last.job_id] = JobStatus(JobState.FAILED, exit_code=137, stderr_tail="oom-kill event")
    blocks.round(3.0)
    assert isinstance(blocks._broken, BrokenExecutorError)
    assert "3 other blocks" in str(blocks._broken) and "oom-kill event" in str(blocks._broken)


def test_a_scheduler_that_is_down_is_logged_once_then_briefly_then_its_recovery(caplog):
    caplog.set_level(logging.INFO, logger="hpcfutures.executors.htex.executor")
    blocks = Blocks()
    blocks.add(registered=True)
    down = OSError("squeue: error: Unable to contact slurm controller\nmore detail")
    blocks.fake.down = down

    def records() -> list[logging.LogRecord]:
        found = list(caplog.records)
        caplog.clear()
        return found

    for second in range(60):  # a round a second for a minute: one error, with the traceback
        blocks.round(100.0 + second)
    (first,) = records()
    assert first.levelno == logging.ERROR and first.exc_info is not None and first.exc_info[1] is down
    blocks.round(160.0)  # a minute on: one line, without the traceback
    (again,) = records()
    assert again.levelno == logging.WARNING and again.exc_info is None
    message = again.getMessage()
    assert "still failing after 60 s (61 rounds)" in message
    assert "Unable to contact slurm controller" in message
    assert "\n" not in message
    for second in range(161, 220):
        blocks.round(float(second))
    assert records() == []
    blocks.fake.down = None
    blocks.round(220.0)
    (recovered,) = records()
    assert recovered.levelno == logging.WARNING
    assert "works again after 120 s and 120 failed rounds" in recovered.getMessage()
    blocks.round(221.0)
    assert records() == []


def test_workers_per_block_come_from_the_providers_declared_shape():
    blocks = Blocks()
    blocks.fake.nodes_per_block = 2
    assert blocks._workers_per_block([]) == 2  # max_workers=1 on each of 2 nodes
    blocks.max_workers = None
    assert blocks._workers_per_block([]) == 2  # cores_per_node unknown: one worker a node
    blocks.fake.cores_per_node = 4
    assert blocks._workers_per_block([]) == 8
    reported = blocks.add(registered=True)
    reported.workers = 3
    assert blocks._workers_per_block([reported]) == 3  # what the pools said wins


class FakeTunnel:
    """Records the forwards asked of it; the first one picks port 4000."""

    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.log = log

    def forward_remote(self, remote_port: int, local_host: str, local_port: int) -> int:
        self.log.append(("forward", remote_port))
        return remote_port or 4000

    def cancel_forward(self, remote_port: int) -> None:
        self.log.append(("cancel", remote_port))


def test_the_tunnel_opens_and_closes_on_the_providers_tunnel_channels(monkeypatch):
    blocks = Blocks()
    log: list[tuple[str, int]] = []
    monkeypatch.setattr(blocks.fake, "tunnel_channels", lambda: [FakeTunnel(log), FakeTunnel(log)])
    blocks.open_tunnel(5555)
    assert blocks._tunnel_port == 4000
    assert log == [("forward", 0), ("forward", 4000)]  # the same port on every host
    blocks.close_tunnel()
    assert log[2:] == [("cancel", 4000), ("cancel", 4000)] and blocks._tunnel_port is None


# -- how often the block thread asks the provider about its jobs --------------------------------


class ElasticBlocks(Blocks):
    """Blocks whose rounds may start blocks on the fake provider, with their status polls paced."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = StatusPolls(self.block_poll_period, POLL_BACKOFF_FACTOR * self.block_poll_period)
        self.executor._pool_command = lambda block_id: "pool"  # type: ignore[method-assign]  # blocks may start

    def tick(self, now: float) -> bool:
        """One round of the block thread at ``now``; return whether it asked the provider."""
        before = self.fake.status_calls
        self._block_round(self.trouble, now, self.polls)
        return self.fake.status_calls > before


def polled_at(blocks: ElasticBlocks, seconds: range) -> list[int]:
    """The rounds, one a second, in which the block thread asked the provider."""
    return [second for second in seconds if blocks.tick(float(second))]


def test_status_polls_thin_out_while_nothing_changes_and_come_at_once_after_a_submit():
    blocks = ElasticBlocks()  # block_poll_period=1: a round a second
    blocks.fake.max_blocks = 2
    blocks.add(registered=True)  # a connected block with nothing to do
    # a poll for the new block, then 1, 2, 4, 8 and 16 s (the cap) after the one before
    assert POLL_BACKOFF_FACTOR == 16
    assert polled_at(blocks, range(64)) == [0, 1, 3, 7, 15, 31, 47, 63]
    blocks._pending = {1: None, 2: None}  # two tasks for one-worker blocks: a second block
    assert not blocks.tick(64.0)  # this round scales without asking the provider ...
    assert blocks.fake.submitted == ["submitted-0"]
    assert blocks.tick(65.0)  # ... and the next asks about the new block
    assert polled_at(blocks, range(66, 80)) == [66, 68, 72]  # then backs off again


def test_a_lost_pools_block_is_cancelled_and_asked_about_in_the_same_round():
    blocks = ElasticBlocks()
    block = blocks.add(registered=True)
    assert polled_at(blocks, range(40)) == [0, 1, 3, 7, 15, 31]
    block.lost = True  # all the I/O thread does when the block's pools go silent
    blocks.fake.states[block.job_id] = JobStatus(JobState.CANCELLED)
    assert blocks.tick(40.0)  # not at 47, when the back-off would have asked
    assert blocks.fake.cancelled == [block.job_id] and block.ended


def test_a_block_cancelled_by_scale_in_is_asked_about_in_the_next_round():
    blocks = ElasticBlocks()
    queued = blocks.add()  # waiting in the scheduler's queue, with no work for it
    blocks.fake.states[queued.job_id] = JobStatus(JobState.PENDING)
    assert polled_at(blocks, range(20)) == [0, 1, 3, 7, 15]
    blocks.max_idletime = 0.0  # now it has been idle long enough: it is let go
    assert not blocks.tick(20.0)
    assert blocks.fake.cancelled == [queued.job_id] and not queued.ended
    blocks.fake.states[queued.job_id] = JobStatus(JobState.CANCELLED)
    assert blocks.tick(21.0) and queued.ended  # not at 31, when the back-off would have asked


def test_while_tasks_wait_and_no_pool_is_connected_every_round_asks():
    blocks = ElasticBlocks()
    block = blocks.add()  # queued in the scheduler, no pool yet
    blocks._pending = {1: None}
    assert polled_at(blocks, range(10)) == list(range(10))  # a start failure is seen at once
    block.registered = True  # its pool connects: the polls back off again
    assert polled_at(blocks, range(10, 30)) == [10, 11, 13, 17, 25]


def test_a_change_seen_by_a_poll_brings_the_next_one_back_to_the_period():
    blocks = ElasticBlocks()
    block = blocks.add(registered=True)
    assert polled_at(blocks, range(20)) == [0, 1, 3, 7, 15]
    blocks.fake.states[block.job_id] = JobStatus(JobState.HELD)  # seen by the poll due at 31
    assert polled_at(blocks, range(20, 36)) == [31, 32, 34]


def test_a_failed_poll_is_tried_again_in_the_next_round():
    blocks = ElasticBlocks()
    blocks.add(registered=True)
    assert polled_at(blocks, range(8)) == [0, 1, 3, 7]
    blocks.fake.down = OSError("squeue: error: Socket timed out")
    assert polled_at(blocks, range(15, 18)) == [15, 16, 17]
    assert blocks.trouble.failures == 3
    blocks.fake.down = None
    assert polled_at(blocks, range(18, 20)) == [18]
    assert blocks.trouble.failures == 0


class FakeClock:
    """A monotonic clock that moves only while the block thread waits; the loop ends after ``end``."""

    def __init__(self, end: float) -> None:
        self.now = 0.0
        self.end = end

    def monotonic(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:  # the block thread's stop event
        self.now += timeout
        return self.now > self.end


def test_the_block_loop_backs_its_polls_off_from_block_poll_period(monkeypatch):
    import hpcfutures.executors.htex.blocks as blocks_module

    blocks = ElasticBlocks()
    blocks.add(registered=True)
    clock = FakeClock(end=40.0)
    monkeypatch.setattr(blocks_module, "time", clock)
    blocks._block_stop = clock  # type: ignore[assignment]
    asked: list[float] = []
    status = blocks.fake.status
    monkeypatch.setattr(blocks.fake, "status", lambda job_ids: asked.append(clock.now) or status(job_ids))
    blocks._block_loop()
    assert asked == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
