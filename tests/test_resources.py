"""Resources, TaskOptions, reject_unsupported and the ExecutorView's contract with a backend."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from hpcfutures import ConfigurationError, ExecutorView, Resources, TaskOptions, UnsupportedOptionError
from hpcfutures.resources import DEFAULT_OPTIONS, reject_unsupported
from hpcfutures.testing import Gate

TIMEOUT = 30.0


# -- Resources ---------------------------------------------------------------------------


def test_resources_defaults() -> None:
    r = Resources()
    assert (r.cores, r.memory_gb, r.gpus, r.num_nodes, r.ranks_per_node) == (1, None, 0, 1, 1)
    assert r.non_default_fields() == {}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cores": 0}, "Resources.cores"),
        ({"cores": 1.5}, "Resources.cores"),
        ({"cores": True}, "Resources.cores"),
        ({"cores": "2"}, "Resources.cores"),
        ({"gpus": -1}, "Resources.gpus"),
        ({"num_nodes": 0}, "Resources.num_nodes"),
        ({"ranks_per_node": 0}, "Resources.ranks_per_node"),
        ({"memory_gb": 0}, "Resources.memory_gb"),
        ({"memory_gb": -2.0}, "Resources.memory_gb"),
        ({"memory_gb": math.nan}, "Resources.memory_gb"),
        ({"memory_gb": math.inf}, "Resources.memory_gb"),
        ({"memory_gb": True}, "Resources.memory_gb"),
        ({"memory_gb": "4"}, "Resources.memory_gb"),
    ],
)
def test_resources_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Resources(**kwargs)
    message = str(info.value)
    assert message.startswith(field)
    assert repr(next(iter(kwargs.values()))) in message  # and shows the bad value


def test_resources_accepts_valid_values_and_reports_non_defaults() -> None:
    r = Resources(cores=4, memory_gb=2, gpus=1, num_nodes=2, ranks_per_node=8)
    assert r.non_default_fields() == {
        "cores": 4,
        "memory_gb": 2,
        "gpus": 1,
        "num_nodes": 2,
        "ranks_per_node": 8,
    }
    assert Resources(memory_gb=0.5).non_default_fields() == {"memory_gb": 0.5}


def test_resources_is_frozen_and_hashable() -> None:
    r = Resources(cores=2)
    with pytest.raises(AttributeError):
        r.cores = 3  # type: ignore[misc]
    assert {r, Resources(cores=2)} == {r}


# -- TaskOptions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"resources": None}, "resources"),
        ({"resources": {"cores": 2}}, "resources"),
        ({"walltime": 0}, "walltime"),
        ({"walltime": -1}, "walltime"),
        ({"walltime": math.inf}, "walltime"),
        ({"walltime": True}, "walltime"),
        ({"walltime": "60"}, "walltime"),
        ({"priority": 1.0}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 2**31}, "priority"),
        ({"priority": -(2**31) - 1}, "priority"),
    ],
)
def test_task_options_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TaskOptions(**kwargs)
    assert str(info.value).startswith(field)


def test_task_options_resources_message_says_how_to_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"resources=Resources\(cores=\.\.\."):
        TaskOptions(resources={"cores": 2})  # type: ignore[arg-type]


def test_task_options_accepts_limits() -> None:
    assert TaskOptions(priority=2**31 - 1).priority == 2**31 - 1
    assert TaskOptions(priority=-(2**31)).priority == -(2**31)
    assert TaskOptions(walltime=0.5).walltime == 0.5


def test_merged_replaces_only_given_settings() -> None:
    base = TaskOptions(resources=Resources(cores=2), walltime=60, priority=3)
    assert base.merged(None, None, None) is base
    assert base.merged(None, None, 0) == TaskOptions(resources=Resources(cores=2), walltime=60, priority=0)
    assert base.merged(Resources(), None, None).resources == Resources()
    assert base.merged(None, 5, None).walltime == 5
    assert base == TaskOptions(resources=Resources(cores=2), walltime=60, priority=3), (
        "merged() changed its input"
    )


def test_merged_validates_the_new_values() -> None:
    with pytest.raises(ConfigurationError, match="walltime"):
        DEFAULT_OPTIONS.merged(None, -5, None)
    with pytest.raises(ConfigurationError, match="priority"):
        DEFAULT_OPTIONS.merged(None, None, 0.5)  # type: ignore[arg-type]


# -- reject_unsupported ------------------------------------------------------------------


def test_reject_unsupported_accepts_defaults() -> None:
    reject_unsupported("Backend", DEFAULT_OPTIONS)


def test_reject_unsupported_names_non_default_resources() -> None:
    options = TaskOptions(resources=Resources(cores=4, gpus=1))
    with pytest.raises(UnsupportedOptionError) as info:
        reject_unsupported("Backend", options, walltime=True, priority=True, hint="Try X.")
    message = str(info.value)
    assert message.startswith("Backend cannot honour Resources(cores=4, gpus=1)")
    assert message.endswith("Try X.")
    reject_unsupported("Backend", options, resources=True)


def test_reject_unsupported_walltime_and_priority() -> None:
    with pytest.raises(UnsupportedOptionError, match="Backend cannot enforce walltime=30"):
        reject_unsupported("Backend", TaskOptions(walltime=30))
    reject_unsupported("Backend", TaskOptions(walltime=30), walltime=True)
    with pytest.raises(UnsupportedOptionError, match="Backend cannot order tasks by priority=2"):
        reject_unsupported("Backend", TaskOptions(priority=2))
    reject_unsupported("Backend", TaskOptions(priority=2), priority=True)


def test_unsupported_option_error_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        reject_unsupported("Backend", TaskOptions(walltime=1))


# -- ExecutorView ------------------------------------------------------------------------


class _Backend:
    """The smallest backend a view needs: a stdlib pool that records the options it gets."""

    def __init__(self, workers: int = 1, *, refuse: Callable[[TaskOptions], None] | None = None):
        self.pool = ThreadPoolExecutor(workers)
        self.seen: list[TaskOptions] = []
        self._refuse = refuse

    def check_options(self, options: TaskOptions) -> None:
        if self._refuse is not None:
            self._refuse(options)

    def submit_with_options(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        self.seen.append(options)
        return self.pool.submit(fn, *args, **kwargs)


@pytest.fixture
def backend() -> Iterator[_Backend]:
    b = _Backend()
    yield b
    b.pool.shutdown(wait=True, cancel_futures=True)


def test_view_is_an_executor_carrying_its_options(backend: _Backend) -> None:
    options = TaskOptions(priority=2)
    view = ExecutorView(backend, options)
    assert isinstance(view, Executor)
    assert view.task_options is options
    assert view.submit(pow, 2, 3).result(TIMEOUT) == 8
    assert list(view.map(pow, [2, 3], [2, 2], timeout=TIMEOUT)) == [4, 9]
    assert backend.seen == [options] * 3


def test_view_options_layers_settings(backend: _Backend) -> None:
    view = ExecutorView(backend, TaskOptions(walltime=10, priority=1)).options(priority=5)
    assert view.task_options == TaskOptions(walltime=10, priority=5)
    view.submit(pow, 1, 1).result(TIMEOUT)
    assert backend.seen[-1] == TaskOptions(walltime=10, priority=5)


def test_view_creation_asks_the_backend_to_check() -> None:
    def refuse(options: TaskOptions) -> None:
        reject_unsupported("Refuser", options)

    b = _Backend(refuse=refuse)
    try:
        ExecutorView(b, DEFAULT_OPTIONS)
        with pytest.raises(UnsupportedOptionError, match="Refuser cannot enforce walltime"):
            ExecutorView(b, TaskOptions(walltime=5))
        with pytest.raises(UnsupportedOptionError):
            ExecutorView(b, DEFAULT_OPTIONS).options(priority=1)
    finally:
        b.pool.shutdown()


def test_view_shutdown_closes_the_view_only(backend: _Backend) -> None:
    view = ExecutorView(backend, DEFAULT_OPTIONS)
    with view:
        fut = view.submit(pow, 2, 2)
    assert fut.done()
    with pytest.raises(RuntimeError, match="options\\(\\) view was shut down"):
        view.submit(pow, 2, 2)
    assert backend.pool.submit(pow, 2, 4).result(TIMEOUT) == 16
    view.shutdown()  # again: harmless


def test_view_forgets_finished_futures(backend: _Backend) -> None:
    view = ExecutorView(backend, DEFAULT_OPTIONS)
    finished = threading.Semaphore(0)
    for i in range(50):
        # Added after the view's own callback, so it runs after the view has forgotten f.
        view.submit(pow, 2, i).add_done_callback(lambda f: finished.release())
    for _ in range(50):
        assert finished.acquire(timeout=TIMEOUT)
    assert view._futures == set()


def test_view_submit_does_not_deadlock_with_a_backend_cancelling_under_its_lock() -> None:
    # The stdlib pools run done callbacks (the view's bookkeeping among them) while holding
    # their shutdown lock; a view must not hold its own lock while waiting for the backend's.
    b = _Backend()
    view = ExecutorView(b, DEFAULT_OPTIONS)
    late_submit: list[BaseException] = []

    def submit_through_view() -> None:
        try:
            view.submit(pow, 2, 2)
        except RuntimeError as exc:
            late_submit.append(exc)

    with Gate() as gate:
        b.pool.submit(gate.wait)
        gate.wait_entered(1, TIMEOUT)
        first = b.pool.submit(pow, 1, 1)  # cancelled first by the pool's shutdown
        view.submit(pow, 1, 1)  # cancelled second: its callback needs the view's bookkeeping
        squeezed_in = threading.Thread(target=submit_through_view, daemon=True)

        def start_view_submit(_: Future[Any]) -> None:
            # Runs inside the pool's shutdown lock; the join gives the view's submit time to
            # reach the pool's lock (it cannot get further), the window the deadlock needs.
            squeezed_in.start()
            squeezed_in.join(0.3)

        first.add_done_callback(start_view_submit)
        shutting_down = threading.Thread(
            target=b.pool.shutdown, kwargs={"wait": False, "cancel_futures": True}, daemon=True
        )
        shutting_down.start()
        shutting_down.join(TIMEOUT)
        assert not shutting_down.is_alive(), "deadlock between the view's lock and the pool's"
    squeezed_in.join(TIMEOUT)
    assert len(late_submit) == 1, "the view's submit, let in after the pool shut down, did not raise"
    b.pool.shutdown(wait=True)


class _MapBackend(_Backend):
    """A backend with its own map, as HighThroughputExecutor has."""

    def map_with_options(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        iterables: tuple[Any, ...],
        timeout: float | None,
        chunksize: int,
        hook: Callable[[Future[Any]], None] | None,
    ) -> Iterator[Any]:
        futures = [self.submit_with_options(options, fn, args, {}) for args in zip(*iterables)]
        for f in futures:
            if hook is not None:
                hook(f)
        return (f.result(timeout) for f in futures)


def test_view_map_uses_the_backends_map_and_tracks_its_futures() -> None:
    b = _MapBackend()
    try:
        view = ExecutorView(b, TaskOptions(priority=4))
        assert list(view.map(pow, [2, 3], [3, 3], timeout=TIMEOUT)) == [8, 27]
        assert b.seen == [TaskOptions(priority=4)] * 2
        view.shutdown()
        with pytest.raises(RuntimeError, match="options\\(\\) view was shut down"):
            view.map(pow, [2], [2])
    finally:
        b.pool.shutdown()
