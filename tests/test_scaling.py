"""plan_blocks, LossWindow and PollBackoff: the block thread's decisions on their own (the executor's use
of them is tested in tests/executors/test_htex_scaling.py, with real blocks too)."""

from __future__ import annotations

import pytest

from hpcfutures.scaling import BlockView, LossWindow, PollBackoff, ScalingPlan, plan_blocks, wanted_blocks

LIMITS = dict(min_blocks=0, max_blocks=4, parallelism=1.0, max_idletime=10.0)


def test_wanted_blocks_rounds_up_and_respects_the_limits() -> None:
    assert wanted_blocks(0, 2, min_blocks=0, max_blocks=4, parallelism=1.0) == 0
    assert wanted_blocks(1, 2, min_blocks=0, max_blocks=4, parallelism=1.0) == 1
    assert wanted_blocks(5, 2, min_blocks=0, max_blocks=4, parallelism=1.0) == 3
    assert wanted_blocks(100, 2, min_blocks=0, max_blocks=4, parallelism=1.0) == 4
    assert wanted_blocks(0, 2, min_blocks=2, max_blocks=4, parallelism=1.0) == 2
    # half the queued tasks get a worker; any work gets at least one block
    assert wanted_blocks(8, 2, min_blocks=0, max_blocks=4, parallelism=0.5) == 2
    assert wanted_blocks(1, 8, min_blocks=0, max_blocks=4, parallelism=0.1) == 1
    # parallelism 0: as few blocks as possible (min_blocks, or one while work waits)
    assert wanted_blocks(50, 2, min_blocks=1, max_blocks=4, parallelism=0.0) == 1
    assert wanted_blocks(50, 2, min_blocks=3, max_blocks=4, parallelism=0.0) == 3


def test_waiting_work_always_calls_for_a_block_even_with_parallelism_zero() -> None:
    assert wanted_blocks(1, 2, min_blocks=0, max_blocks=1, parallelism=0.0) == 1
    assert wanted_blocks(50, 2, min_blocks=0, max_blocks=4, parallelism=0.0) == 1
    assert wanted_blocks(0, 2, min_blocks=0, max_blocks=4, parallelism=0.0) == 0


PARALLELISM_ZERO = dict(LIMITS, parallelism=0.0)


def test_parallelism_zero_starts_a_block_when_none_can_run_the_work() -> None:
    assert plan_blocks(5, 2, [], **PARALLELISM_ZERO) == ScalingPlan(start=1)
    # a block being scaled in takes no new task: it does not count
    draining = [BlockView("0", True, 50.0, draining=True)]
    assert plan_blocks(5, 2, draining, **PARALLELISM_ZERO) == ScalingPlan(start=1)


def test_parallelism_zero_keeps_one_block_while_work_waits() -> None:
    # a block still queued will run the work: nothing more starts, and it is not cancelled
    assert plan_blocks(5, 2, [BlockView("0", False, 60.0)], **PARALLELISM_ZERO).empty
    # idle blocks beyond the one are let go; the last one stays while work waits
    blocks = [BlockView("a", True, 60.0), BlockView("b", True, 30.0), BlockView("c", True, 20.0)]
    assert plan_blocks(5, 2, blocks, **PARALLELISM_ZERO) == ScalingPlan(drain=["a", "b"])
    # once the work is done, it goes too
    assert plan_blocks(0, 2, [BlockView("c", True, 20.0)], **PARALLELISM_ZERO) == ScalingPlan(drain=["c"])


def test_scales_out_by_what_is_missing() -> None:
    blocks = [BlockView("0", True, 0.0)]
    assert plan_blocks(6, 2, blocks, **LIMITS) == ScalingPlan(start=2)


def test_draining_blocks_do_not_count_as_capacity() -> None:
    blocks = [BlockView("0", True, 50.0, draining=True)]
    assert plan_blocks(2, 2, blocks, **LIMITS) == ScalingPlan(start=1)


def test_scales_in_only_blocks_idle_long_enough_longest_first() -> None:
    blocks = [
        BlockView("busy", True, 0.0),
        BlockView("idle-short", True, 3.0),
        BlockView("idle-long", True, 30.0),
        BlockView("idle-longer", True, 60.0),
    ]
    plan = plan_blocks(0, 2, blocks, **LIMITS)
    assert plan.drain == ["idle-longer", "idle-long"]
    assert plan.cancel == [] and plan.start == 0


def test_never_scales_below_what_the_work_needs() -> None:
    blocks = [BlockView("a", True, 60.0), BlockView("b", True, 60.0)]
    assert plan_blocks(3, 2, blocks, **LIMITS).empty  # 3 tasks need both blocks
    assert plan_blocks(1, 2, blocks, **LIMITS) == ScalingPlan(drain=["a"])


def test_min_blocks_are_kept_even_when_idle() -> None:
    blocks = [BlockView("a", True, 600.0), BlockView("b", True, 600.0)]
    limits = dict(LIMITS, min_blocks=1)
    assert plan_blocks(0, 2, blocks, **limits) == ScalingPlan(drain=["a"])


def test_queued_blocks_are_cancelled_not_drained() -> None:
    blocks = [BlockView("queued", False, 20.0), BlockView("running", True, 20.0)]
    plan = plan_blocks(0, 2, blocks, **LIMITS)
    assert plan.cancel == ["queued"] and plan.drain == ["running"]
    # a block queued only briefly is kept
    assert plan_blocks(0, 2, [BlockView("new", False, 1.0)], **LIMITS).empty


def test_loss_window_breaks_only_past_the_limit_within_the_window() -> None:
    losses = LossWindow(limit=3, window=600.0)
    assert [losses.record(t) for t in (0.0, 1.0, 2.0)] == [False, False, False]
    assert losses.record(3.0)  # the fourth within 600 s
    assert len(losses) == 4


def test_loss_window_forgets_old_losses() -> None:
    losses = LossWindow(limit=3, window=600.0)
    # a loss every five minutes, for a week: never more than two within any 600 s
    assert not any(losses.record(300.0 * i) for i in range(7 * 24 * 12))
    assert len(losses) == 2
    # a loss exactly `window` seconds old is forgotten
    losses = LossWindow(limit=1, window=10.0)
    assert not losses.record(0.0)
    assert not losses.record(10.0)
    assert losses.record(10.5)


def test_loss_window_with_limit_zero_breaks_at_the_first_loss() -> None:
    assert LossWindow(limit=0, window=1.0).record(5.0)


@pytest.mark.parametrize(("limit", "window"), [(-1, 10.0), (3, 0.0)])
def test_loss_window_refuses_nonsense(limit: int, window: float) -> None:
    with pytest.raises(ValueError):
        LossWindow(limit, window)


def test_poll_backoff_doubles_while_nothing_changes_up_to_the_cap() -> None:
    backoff = PollBackoff(1.0, 16.0)
    assert [backoff.next_delay(False) for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 16.0, 16.0]


def test_poll_backoff_returns_to_the_base_after_a_change() -> None:
    backoff = PollBackoff(0.5, 8.0)
    for _ in range(10):
        backoff.next_delay(False)
    assert backoff.next_delay(True) == 0.5
    assert backoff.next_delay(True) == 0.5  # changes in a row keep it there
    assert [backoff.next_delay(False) for _ in range(3)] == [1.0, 2.0, 4.0]


def test_poll_backoff_stops_at_a_cap_that_is_no_power_of_two() -> None:
    backoff = PollBackoff(1.0, 10.0)
    assert [backoff.next_delay(False) for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert [PollBackoff(3.0, 3.0).next_delay(False) for _ in range(2)] == [3.0, 3.0]


@pytest.mark.parametrize(
    "base, cap", [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (1.0, float("inf")), (float("nan"), 1.0)]
)
def test_poll_backoff_refuses_nonsense(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="PollBackoff"):
        PollBackoff(base, cap)
