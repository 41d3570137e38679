"""The executor's lifecycle alone: its phases, the breaking error, and what submit is told."""

from __future__ import annotations

import threading

import pytest

from hpcfutures import BrokenExecutorError
from hpcfutures.executors.htex.lifecycle import Lifecycle, Phase


def make() -> Lifecycle:
    return Lifecycle(threading.Lock())


def test_a_new_executor_closes_straight_to_stopped():
    life = make()
    assert not life.started and not life.closed
    assert life.close() is Phase.NEW
    assert life.phase is Phase.STOPPED and life.is_stopped
    with pytest.raises(RuntimeError, match="after shutdown"):
        life.check_submit()


def test_running_then_shutting_down_then_stopped():
    life = make()
    life.run()
    assert life.started and life.phase is Phase.RUNNING
    life.check_submit()
    assert life.close() is Phase.RUNNING and life.phase is Phase.SHUTTING_DOWN
    assert life.close() is Phase.SHUTTING_DOWN, "a second shutdown changes nothing"
    assert not life.is_stopped
    life.stopped()
    assert life.phase is Phase.STOPPED and life.is_stopped


def test_the_first_error_breaks_it_and_stays():
    life = make()
    life.run()
    first, second = RuntimeError("interchange lost"), RuntimeError("later")
    assert life.break_with(first) and not life.break_with(second)
    with pytest.raises(BrokenExecutorError) as info:
        life.check_submit()
    assert info.value.__cause__ is first
    life.close()
    with pytest.raises(RuntimeError, match="after shutdown"):  # shut down says more than broken
        life.check_submit()


def test_a_rolled_back_start_is_new_again_without_its_error():
    life = make()
    life.run()
    life.break_with(RuntimeError("the scheduler refused the block"))
    life.undo_start()
    assert life.phase is Phase.NEW and life.error is None
    life.check_submit()
