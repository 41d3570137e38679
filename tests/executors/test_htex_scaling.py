"""Elastic blocks on real local blocks: scale-out, idle scale-in by draining (never killing a
running task), block end times, and failure evidence when every block fails.

The same logic drives batch-scheduler blocks; tests/providers/test_htex_slurm.py runs it on a
real Slurm cluster.
"""

from __future__ import annotations

import time

import psutil
import pytest

from hpcfutures import HighThroughputExecutor, PoolStartError
from hpcfutures.providers import LocalProvider
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
