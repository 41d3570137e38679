"""The Memoizer: its table in memory stays bounded, evicted results come back from the
checkpoint, and leadership of a key in flight passes to one follower."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from hpcfutures import DataflowExecutor, ThreadExecutor
from hpcfutures.dataflow.caching import DEFAULT_MEMO_SIZE, Memoizer
from hpcfutures.dataflow.checkpoint import Checkpoint
from hpcfutures.dataflow.memo import CacheKey
from hpcfutures.errors import ConfigurationError


def double(x: int) -> list[int]:
    return [x, x]


def add(a: int, b: int) -> int:
    return a + b


def key_of(memo: Memoizer, x: int) -> CacheKey:
    return memo.key(double, (x,), {}, ())


def test_the_table_keeps_the_most_recently_used_results():
    memo = Memoizer(None, "content", memo_size=3)
    keys = [key_of(memo, x) for x in range(5)]
    for x, key in enumerate(keys[:3]):
        memo.succeeded(key, double(x), f"task {x}")
    assert memo.lookup(keys[0]) == (True, [0, 0])  # 0 is now the most recent
    for x, key in enumerate(keys[3:], start=3):
        memo.succeeded(key, double(x), f"task {x}")
    assert len(memo) == 3
    assert memo.lookup(keys[0]) == (True, [0, 0])
    assert memo.lookup(keys[1]) == (False, None)  # evicted, no checkpoint: forgotten
    assert memo.lookup(keys[2]) == (False, None)
    assert memo.lookup(keys[4]) == (True, [4, 4])


def test_the_default_size_is_bounded():
    memo = Memoizer(None, "content")
    assert memo.memo_size == DEFAULT_MEMO_SIZE == 10_000


@pytest.mark.parametrize("size", [-1, 2.5, "10", True, None])
def test_a_bad_memo_size_is_refused_naming_the_parameter(size: Any):
    with pytest.raises(ConfigurationError, match="memo_size must be an integer >= 0"):
        Memoizer(None, "content", memo_size=size)


def test_with_a_checkpoint_an_evicted_result_is_read_back_from_the_file(tmp_path):
    with Checkpoint(tmp_path / "run.db", mode="manual") as checkpoint:
        memo = Memoizer(checkpoint, "content", memo_size=2)
        keys = [key_of(memo, x) for x in range(6)]
        values = [double(x) for x in range(6)]
        for x, key in enumerate(keys):
            memo.succeeded(key, values[x], f"task {x}")
        assert len(memo) == 2
        assert memo.flush() == 6  # nothing stays buffered: what is found now is in the file
        found, value = memo.lookup(keys[0])
        assert found and value == [0, 0]
        assert value is not values[0]  # a copy unpickled from the file, not the object in memory
        assert len(memo) == 2  # read back into memory, evicting the least recent
        assert memo.lookup(keys[5]) == (True, [5, 5])
        assert memo.unsaved == []


def test_with_a_checkpoint_memo_size_zero_keeps_nothing_in_memory(tmp_path):
    with Checkpoint(tmp_path / "run.db") as checkpoint:
        memo = Memoizer(checkpoint, "content", memo_size=0)
        key = key_of(memo, 7)
        memo.succeeded(key, double(7), "task 7")
        assert len(memo) == 0
        assert memo.lookup(key) == (True, [7, 7])
        assert len(memo) == 0


def test_a_run_of_many_cached_tasks_keeps_the_table_at_its_bound():
    runs: list[int] = []
    lock = threading.Lock()

    def square(x: int) -> int:
        with lock:
            runs.append(x)
        return x * x

    with DataflowExecutor(ThreadExecutor(max_workers=4), shutdown_executors=True, cache=True, memo_size=8) as dfx:
        futures = [dfx.submit(square, x) for x in range(200)]
        assert [f.result(timeout=60) for f in futures] == [x * x for x in range(200)]
        memo = dfx._engine.memo
        assert memo is not None
        assert len(memo) == 8
        assert dfx.submit(square, 199).result(timeout=30) == 199 * 199  # recent: a hit
        assert dfx.submit(square, 0).result(timeout=30) == 0  # evicted long ago: runs again
        assert len(memo) == 8
    assert sorted(runs) == sorted([*range(200), 0])


def test_a_run_with_a_checkpoint_finds_evicted_results_in_it(tmp_path):
    runs: list[int] = []

    def square(x: int) -> int:
        runs.append(x)
        return x * x

    with DataflowExecutor(
        ThreadExecutor(max_workers=2), shutdown_executors=True, cache=True, checkpoint=tmp_path / "run.db", memo_size=4
    ) as dfx:
        assert [dfx.submit(square, x).result(timeout=30) for x in range(40)] == [x * x for x in range(40)]
        assert dfx.submit(square, 0).result(timeout=30) == 0  # long evicted from memory
        assert "hit" in dfx.explain_cache(square, 1)
    assert sorted(runs) == list(range(40))


# -- leaders and followers ---------------------------------------------------------------------


def test_one_follower_takes_over_from_a_cancelled_leader_and_the_others_follow_it():
    memo = Memoizer(None, "content")
    key = key_of(memo, 1)
    leader, first, second = Future(), Future(), Future()
    assert memo.lead_or_follow(key, leader) is None
    assert memo.lead_or_follow(key, first) is leader
    assert memo.lead_or_follow(key, second) is leader
    leader.cancel()
    memo.ended(key, leader)
    assert memo.take_over(key, first, leader) is None  # first leads now
    assert memo.take_over(key, second, leader) is first  # second follows first
    assert memo.take_over(key, first, leader) is None  # asking again changes nothing
    assert memo.lead_or_follow(key, Future()) is first


def test_take_over_replaces_a_leader_that_never_said_it_ended():
    memo = Memoizer(None, "content")
    key = key_of(memo, 2)
    leader, follower = Future(), Future()
    memo.lead_or_follow(key, leader)
    assert memo.take_over(key, follower, leader) is None
    memo.ended(key, leader)  # late: must not let go of the new leader's call
    assert memo.lead_or_follow(key, Future()) is follower
    memo.succeeded(key, [2, 2], "task 2", follower)
    assert memo.lookup(key) == (True, [2, 2])
    newcomer = Future()
    assert memo.lead_or_follow(key, newcomer) is None  # nothing in flight any more


def test_ended_and_succeeded_without_a_future_let_go_as_before():
    memo = Memoizer(None, "content")
    key = key_of(memo, 3)
    memo.lead_or_follow(key, Future())
    memo.ended(key)
    fresh = Future()
    assert memo.lead_or_follow(key, fresh) is None
    memo.succeeded(key, [3, 3], "task 3")
    assert memo.lead_or_follow(key, Future()) is None


def test_explain_compares_with_the_last_key_of_the_same_function():
    memo = Memoizer(None, "content")
    memo.key(add, (1, 2), {}, ())
    assert memo.explain(add, (1, 3), {}, ()) == "argument 'b' changed"
    memo.key(functools.partial(add, 1), (2,), {}, ())  # a partial is named by what it wraps
    assert "the function's code changed" in memo.explain(add, (1, 2), {}, ())
