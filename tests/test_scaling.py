"""plan_blocks: the scaling decision on its own (the executor's use of it is tested in
tests/executors/test_htex_scaling.py with real blocks)."""

from __future__ import annotations

from hpcfutures.scaling import BlockView, ScalingPlan, plan_blocks, wanted_blocks

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
    # parallelism 0: only min_blocks
    assert wanted_blocks(50, 2, min_blocks=1, max_blocks=4, parallelism=0.0) == 1


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
