"""The dealing functions alone: how the interchange spreads tasks, and a pool's credit."""

from __future__ import annotations

import heapq

from hpcfutures.executors.htex.dealing import MAX_DEPTH, deal, pool_credit, worker_depth


def _queue(*walltimes: float, priorities: tuple[int, ...] = ()) -> list:
    queue: list = []
    for seq, walltime in enumerate(walltimes):
        priority = priorities[seq] if priorities else 0
        fields = (seq, priority, walltime, 0, 1, 0, 0, 0, 1, 0, 0, 0)  # as TASK_META lays them out
        heapq.heappush(queue, (-priority, seq, (fields, b"", [])))
    return queue


def _ids(entries: list) -> list[int]:
    return [entry[2][0][0] for entry in entries]


def test_a_burst_is_spread_evenly_in_queue_order():
    queue = _queue(*[0.0] * 10)
    dealt = deal(queue, [100, 100, 100], [None, None, None], now=0.0)
    assert [len(d) for d in dealt] == [4, 4, 2]
    assert _ids(dealt[0]) == [0, 1, 2, 3] and not queue


def test_room_limits_each_taker_and_the_rest_stays_queued():
    queue = _queue(*[0.0] * 10)
    dealt = deal(queue, [1, 3, 0], [None, None, None], now=0.0)
    assert [len(d) for d in dealt] == [1, 3, 0]
    assert len(queue) == 6


def test_what_one_taker_cannot_take_goes_to_the_others_in_later_rounds():
    queue = _queue(*[0.0] * 9)
    dealt = deal(queue, [1, 100], [None, None], now=0.0)
    assert [len(d) for d in dealt] == [1, 8] and not queue


def test_priority_goes_first():
    queue = _queue(0.0, 0.0, 0.0, priorities=(0, 5, 1))
    (dealt,) = deal(queue, [3], [None], now=0.0)
    assert _ids(dealt) == [1, 2, 0]


def test_a_walltime_task_goes_only_where_it_can_finish():
    queue = _queue(50.0, 0.0)
    dealt = deal(queue, [10, 10], [100.0 + 20.0, None], now=100.0)
    assert _ids(dealt[1]) == [0], "the walltime task goes to the taker without an end"
    assert _ids(dealt[0]) == [1], "the other still takes what it can finish, in a later round"


def test_a_walltime_task_no_taker_can_finish_waits_at_the_head():
    queue = _queue(50.0, 0.0)
    dealt = deal(queue, [10], [110.0], now=100.0)
    assert dealt == [[]] and len(queue) == 2


def test_credit_is_cumulative_and_never_falls():
    assert pool_credit(sent_before=0, received=0, held=0, workers=2, depth=1, prefetch=0) == 2
    assert pool_credit(sent_before=2, received=2, held=2, workers=2, depth=1, prefetch=0) == 2
    assert pool_credit(sent_before=2, received=2, held=0, workers=2, depth=4, prefetch=1) == 11
    assert pool_credit(sent_before=50, received=10, held=0, workers=1, depth=1, prefetch=0) == 50


def test_depth_follows_task_length_within_bounds():
    assert worker_depth(1.0) == 1
    assert worker_depth(0.001) == 5
    assert worker_depth(0.0) == MAX_DEPTH
