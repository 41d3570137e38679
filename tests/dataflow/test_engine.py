"""The dataflow task engine: its shape, its dispatcher thread, and the defects issue 12 names."""

from __future__ import annotations

import ast
import itertools
import os
import random
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import hpcfutures.dataflow as dataflow_package
from hpcfutures import (
    AUTO_LOGNAME,
    ConfigurationError,
    DataflowExecutor,
    DependencyError,
    HighThroughputExecutor,
    ThreadExecutor,
    WorkflowStoppedError,
    bash_app,
    join_app,
    python_app,
)
from hpcfutures.dataflow.dispatch import Dispatcher
from hpcfutures.dataflow.futures import DataflowFuture
from hpcfutures.dataflow.settings import DEFAULT_SETTINGS, TaskSettings
from hpcfutures.dataflow.task import QUICK_TEXT, Task
from hpcfutures.resources import submit_never_blocks
from hpcfutures.testing import Gate
from hpcfutures.testing.tasks import add, identity

TIMEOUT = 60


# -- shape -------------------------------------------------------------------------------------


def _module_level_imports(path: Path) -> set[str]:
    """The sibling modules ``path`` imports at module level (not inside functions)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
            found.update(alias.name for alias in node.names)
    return found


def test_the_dataflow_import_graph_has_no_circle():
    root = Path(dataflow_package.__file__).parent
    modules = {p.stem: p for p in root.glob("*.py") if p.stem != "__init__"}
    modules.update({p.name: p / "__init__.py" for p in root.iterdir() if (p / "__init__.py").exists()})
    graph = {name: _module_level_imports(path) & set(modules) for name, path in modules.items()}

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail(f"import circle in hpcfutures/dataflow: {' -> '.join([*path, name])}")
        for imported in graph[name]:
            visit(imported, [*path, name])

    for name in graph:
        visit(name, [])
    assert "apps" not in graph["executor"] and "apps" not in graph["task"], "apps must sit above the engine"


def test_settings_layer_and_validate():
    settings = DEFAULT_SETTINGS.layered(retries=2, executors="gpu", ignore_for_cache="seed")
    assert (settings.retries, settings.executors, settings.ignore_for_cache) == (2, ("gpu",), ("seed",))
    again = settings.layered(walltime=5, retries=None)
    assert again.retries == 2 and again.walltime == 5 and again.backend_options() == {"walltime": 5}
    assert settings.layered() is settings
    for bad, name in [({"retries": -1}, "retries"), ({"walltime": 0}, "walltime"), ({"cache": "yes"}, "cache"),
                      ({"priority": 1.5}, "priority"), ({"executors": []}, "executors")]:
        with pytest.raises(ConfigurationError, match=name):
            DEFAULT_SETTINGS.layered(**bad)
    with pytest.raises(TypeError, match="unknown task setting 'colour'"):
        DEFAULT_SETTINGS.layered(colour="red")


class StandInHost:
    """The smallest TaskHost: one backend, no cache, no staging; records what it is asked."""

    def __init__(self, backend: Executor):
        self.backend = backend
        self.dispatcher = Dispatcher("stand-in-dispatcher")
        self.retries = 1
        self.retry_handler = None
        self.recorder = None
        self.task_log = None
        self.failed: list[BaseException] = []
        self.forgotten: list[int] = []

    def choose_label(self, settings: TaskSettings) -> str:
        return "only"

    def backend_for(self, label: str, settings: TaskSettings) -> Executor:
        return self.backend

    def memo_for(self, settings: TaskSettings) -> None:
        return None

    def stage(self, task: Task, fn: Any, args: Any, kwargs: Any) -> Any:
        return fn, args, kwargs

    def run_join(self, task: Task) -> None:
        raise AssertionError("no join apps here")

    def stop_error(self) -> None:
        return None

    def discarding(self) -> bool:
        return False

    def task_failed(self, task: Task, error: BaseException) -> None:
        self.failed.append(error)

    def launches_here(self, task: Task) -> bool:
        return False

    def submitted(self, fn: Any) -> None:
        pass

    def forget(self, task: Task) -> None:
        self.forgotten.append(task.future.task_id)


def _task(host: StandInHost, task_id: int, fn: Any, *args: Any) -> DataflowFuture:
    future = DataflowFuture(task_id, getattr(fn, "__name__", "fn"))
    task = Task(host, future, fn, args, {}, DEFAULT_SETTINGS, None)
    future._task = task
    task.start()
    return future


def test_a_task_runs_against_a_stand_in_host_without_the_executor():
    flaky_calls = itertools.count()

    def flaky(x: int) -> int:
        if next(flaky_calls) == 0:
            raise OSError("first try fails")
        return x

    with ThreadPoolExecutor(2) as pool:
        host = StandInHost(pool)
        a = _task(host, 1, add, 1, 2)
        b = _task(host, 2, add, a, 10)
        c = _task(host, 3, flaky, b)  # fails once, then the retry budget of 1 runs it again
        d = _task(host, 4, pow, "x", 2)  # a TypeError, and its dependent does not run
        e = _task(host, 5, identity, d)
        assert c.result(TIMEOUT) == 13
        assert isinstance(e.exception(TIMEOUT), DependencyError)
        assert isinstance(d.exception(TIMEOUT), TypeError)
    host.dispatcher.stop()
    assert sorted(host.forgotten) == [1, 2, 3, 4, 5]
    assert [type(err) for err in host.failed].count(TypeError) == 1


# -- the dispatcher thread ------------------------------------------------------------------------


class OneThreadBackend(Executor):
    """Runs each call at once and completes its future on a thread named "backend-io"."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backend-io")

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_completion_work_runs_on_the_dispatcher_not_the_backend_thread():
    threads: list[str] = []

    def handler(error: BaseException, record: Any) -> float:
        threads.append(threading.current_thread().name)
        return 1.0

    with DataflowExecutor(OneThreadBackend(), retries=1, retry_handler=handler, shutdown_executors=True) as dfx:
        failing = dfx.submit(pow, "x", 2)
        assert isinstance(failing.exception(TIMEOUT), TypeError)
        seen: list[str] = []
        done = threading.Event()
        last = dfx.submit(add, dfx.submit(add, 1, 1), 1)
        last.add_done_callback(lambda _f: (seen.append(threading.current_thread().name), done.set()))
        assert last.result(TIMEOUT) == 3
        assert done.wait(TIMEOUT)
    assert threads and all(name == "hpcfutures-dataflow" for name in threads), threads
    assert seen == ["hpcfutures-dataflow"]


def test_slow_completion_work_does_not_stall_the_htex_io_thread():
    """A retry handler blocked on a slow disk must not hold up other results of the backend."""
    slow_disk = threading.Event()
    entered = threading.Event()

    def slow_handler(error: BaseException, record: Any) -> float:
        entered.set()
        slow_disk.wait(TIMEOUT)
        return 100.0

    htex = HighThroughputExecutor(max_workers=1)
    with DataflowExecutor(htex, retries=1, retry_handler=slow_handler, shutdown_executors=True) as dfx:
        failing = dfx.submit(pow, "x", 2)
        assert entered.wait(TIMEOUT)
        # With the handler on HTEX's I/O thread, no further result could arrive now.
        direct = htex.submit(add, 2, 3)
        try:
            assert direct.result(TIMEOUT) == 5
        finally:
            slow_disk.set()
        assert isinstance(failing.exception(TIMEOUT), TypeError)


def test_shutdown_wait_in_a_done_callback_does_not_deadlock():
    dfx = DataflowExecutor()
    called = threading.Event()

    def stop(_f: Future[Any]) -> None:
        dfx.shutdown(wait=True)  # on the dispatcher thread: acts as wait=False
        called.set()

    fut = dfx.submit(add, 1, 2)
    dependent = dfx.submit(add, fut, 1)
    dependent.add_done_callback(stop)
    assert dependent.result(TIMEOUT) == 4
    assert called.wait(TIMEOUT)


class RecordingThreads(ThreadExecutor):
    """A ThreadExecutor that records which thread submits each call, by the call's first argument."""

    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="backend-worker")
        self.submitted_from: dict[Any, str] = {}

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted_from[args[0] if args else None] = threading.current_thread().name
        return super().submit(fn, *args, **kwargs)


class BlockingRecordingThreads(RecordingThreads):
    """The same, but it does not declare that its submit never blocks."""

    submit_never_blocks = False


def tagged(tag: str, value: Any) -> Any:
    return value


def test_small_dependents_launch_where_the_news_arrives_and_the_rest_on_the_dispatcher(tmp_path):
    backend = RecordingThreads()
    release = threading.Event()

    def held(tag: str, value: Any) -> Any:
        release.wait(TIMEOUT)
        return value

    with DataflowExecutor(backend, run_dir=str(tmp_path), shutdown_executors=True) as dfx:
        assert dfx.submit(tagged, "warm-up", 0).result(TIMEOUT) == 0
        # Every source is held until all the dependents wait on it.
        small = dfx.submit(tagged, "small", dfx.submit(held, "small-source", 7))  # small value, warm function
        big = dfx.submit(tagged, "big", dfx.submit(held, "big-source", b"x" * (QUICK_TEXT + 1)))
        cached = dfx.options(cache=True).submit(tagged, "cached", dfx.submit(held, "cached-source", 1))
        fresh = dfx.submit(identity, dfx.submit(held, "fresh-source", 2))  # identity never submitted before
        release.set()
        assert [f.result(TIMEOUT) for f in (small, big, cached)] == [7, b"x" * (QUICK_TEXT + 1), 1]
        assert fresh.result(TIMEOUT) == 2
    where = backend.submitted_from
    assert where["warm-up"] == "MainThread"
    assert where["small"].startswith("backend-worker"), where
    assert where["big"] == "hpcfutures-dataflow", "a large argument is serialized off the backend's threads"
    assert where["cached"] == "hpcfutures-dataflow", "a cache lookup runs on the dispatcher"
    assert where[2] == "hpcfutures-dataflow", "a function's first submit may serialize it: dispatcher"


def test_a_backend_that_may_block_in_submit_gets_every_launch_from_the_dispatcher():
    backend = BlockingRecordingThreads()
    with DataflowExecutor(backend, shutdown_executors=True) as dfx:
        first = dfx.submit(tagged, "first", 1)
        second = dfx.submit(tagged, "second", first)
        assert second.result(TIMEOUT) == 1
    assert backend.submitted_from["second"] == "hpcfutures-dataflow"


def test_callbacks_on_a_task_run_on_the_dispatcher_even_for_a_plain_success():
    seen: list[str] = []
    done = threading.Event()
    release = threading.Event()

    def held(x: int) -> int:
        release.wait(TIMEOUT)
        return x

    with DataflowExecutor(RecordingThreads(), shutdown_executors=True) as dfx:
        fut = dfx.submit(held, 5)
        fut.add_done_callback(lambda _f: (seen.append(threading.current_thread().name), done.set()))
        release.set()
        assert fut.result(TIMEOUT) == 5
        assert done.wait(TIMEOUT)
    assert seen == ["hpcfutures-dataflow"]


def test_which_backends_declare_a_submit_that_never_blocks():
    assert submit_never_blocks(ThreadExecutor(1))
    assert HighThroughputExecutor.submit_never_blocks is True
    assert not submit_never_blocks(ThreadPoolExecutor(1))
    assert not submit_never_blocks(BlockingRecordingThreads())


@pytest.mark.parametrize("round_", range(3))
def test_a_large_random_graph_with_both_paths_gives_the_sequential_answer(round_):
    """Thousands of tasks mixing launches on worker threads and on the dispatcher, small and
    large values, callbacks and cancels, checked against the same graph computed in order."""
    rng = random.Random(round_)
    n = 3000
    big = b"y" * (QUICK_TEXT + 1)
    expected: list[Any] = []
    called = itertools.count()
    with DataflowExecutor(ThreadExecutor(4), shutdown_executors=True) as dfx:
        futures: list[Future[Any]] = []
        for i in range(n):
            if i < 10 or rng.random() < 0.05:
                value: Any = big if rng.random() < 0.2 else i
                futures.append(dfx.submit(tagged, "leaf", value))
                expected.append(value)
                continue
            a, b = rng.randrange(i), rng.randrange(i)
            futures.append(dfx.submit(pick, futures[a], futures[b], i))
            expected.append(pick(expected[a], expected[b], i))
            if rng.random() < 0.1:
                futures[-1].add_done_callback(lambda _f: next(called))
        results = [f.result(TIMEOUT) for f in futures]
    assert results == expected
    assert next(called) > 0


def pick(a: Any, b: Any, i: int) -> Any:
    """Small ints mostly, a large bytes value now and then."""
    if isinstance(a, bytes) or isinstance(b, bytes):
        return i if i % 3 else (a if isinstance(a, bytes) else b)
    return (a + b + i) % 1000 if i % 7 else b"z" * (QUICK_TEXT + i % 5)


# -- defects ----------------------------------------------------------------------------------------


def test_join_app_with_cache_runs_its_body_once(tmp_path):
    bodies = tmp_path / "bodies"

    with DataflowExecutor() as dfx:

        @join_app(executor=dfx, cache=True)
        def combine(n: int) -> Any:
            with open(bodies, "a") as f:
                f.write("ran\n")
            return [dfx.submit(add, n, i) for i in range(3)]

        assert combine(10).result(TIMEOUT) == [10, 11, 12]
        assert combine(10).result(TIMEOUT) == [10, 11, 12]
    assert bodies.read_text().splitlines() == ["ran"], "the join body ran again for an identical call"


def test_when_a_cache_leader_is_cancelled_one_follower_leads():
    runs = threading.Semaphore(0)
    counted = itertools.count()

    def counted_square(x: int) -> int:
        next(counted)
        runs.release()
        return x * x

    with (
        DataflowExecutor(ThreadExecutor(max_workers=1), shutdown_executors=True, cache=True) as dfx,
        Gate() as gate,
    ):
        blocker = dfx.options(cache=False).submit(gate.wait, "blocker")
        gate.wait_entered(1, TIMEOUT)
        leader = dfx.submit(counted_square, 7)  # queued behind the blocker
        followers = [dfx.submit(counted_square, 7) for _ in range(4)]
        assert leader.cancel()
        gate.open()
        assert blocker.result(TIMEOUT) == "blocker"
        assert [f.result(TIMEOUT) for f in followers] == [49] * 4
    assert next(counted) == 1, "the call ran once per follower instead of once"


def _submit_race_round() -> None:
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2))
    accepted: list[Future[Any]] = []
    start = threading.Barrier(3)

    def submitter() -> None:
        start.wait()
        for i in range(300):
            try:
                accepted.append(dfx.submit(add, i, 1))
            except RuntimeError:
                return

    threads = [threading.Thread(target=submitter) for _ in range(2)]
    for t in threads:
        t.start()
    start.wait()
    dfx.shutdown(wait=True)
    for t in threads:
        t.join()
    # Every submit that returned a future was run: shutdown(wait=True) waited for it, and
    # no task reached a backend already shut down.
    assert all(f.done() for f in accepted), "shutdown returned with an accepted task unfinished"
    assert [f.exception() for f in accepted if f.exception() is not None] == []


def test_submit_racing_shutdown_loses_no_task():
    for _round in range(20):
        _submit_race_round()


def test_staging_directories_and_the_temporary_run_dir_are_removed(http_server):
    from hpcfutures import File

    (http_server.root / "greeting.txt").write_text("hi")
    dfx = DataflowExecutor()
    ok = dfx.submit(lambda f: open(f).read(), File(f"{http_server.url}/greeting.txt"))
    bad = dfx.submit(lambda f: 1 / 0, File(f"{http_server.url}/greeting.txt"))
    assert ok.result(TIMEOUT) == "hi"
    assert isinstance(bad.exception(TIMEOUT), ZeroDivisionError)
    run_dir = dfx.run_dir
    assert not any((run_dir / "staging").glob("task-*")), "a finished task's staging directory stayed"
    dfx.shutdown()
    assert not run_dir.exists(), "the temporary run directory stayed"


def test_a_temporary_run_dir_with_task_logs_stays(tmp_path):
    dfx = DataflowExecutor()

    @bash_app(executor=dfx)
    def hello(stdout: Any = AUTO_LOGNAME) -> str:
        return "echo hello"

    fut = hello()
    assert fut.result(TIMEOUT) == 0
    dfx.shutdown()
    assert Path(fut.stdout).read_text() == "hello\n"


# -- Parsl parity -----------------------------------------------------------------------------------


def test_wait_for_current_tasks_waits_without_shutting_down():
    with DataflowExecutor() as dfx, Gate() as gate:
        held = dfx.submit(gate.wait, "held")
        chain = dfx.submit(add, held, "!")
        waiter = threading.Thread(target=dfx.wait_for_current_tasks)
        waiter.start()
        gate.wait_entered(1, TIMEOUT)
        assert waiter.is_alive() and not chain.done()
        gate.open()
        waiter.join(TIMEOUT)
        assert not waiter.is_alive() and chain.result() == "held!"
        assert dfx.pending == 0
        assert dfx.submit(add, 1, 1).result(TIMEOUT) == 2, "the executor still takes tasks"


def test_app_cache_false_turns_off_caching_of_cached_apps(tmp_path):
    runs = tmp_path / "runs"

    def body(x: int) -> int:
        with open(runs, "a") as f:
            f.write("x\n")
        return x

    for app_cache, expected in [(True, 1), (False, 2)]:
        runs.write_text("")
        with DataflowExecutor(app_cache=app_cache) as dfx:
            app = python_app(body, executor=dfx, cache=True)
            assert app(3).result(TIMEOUT) == 3
            assert app(3).result(TIMEOUT) == 3
        assert len(runs.read_text().splitlines()) == expected, f"app_cache={app_cache}"
    with pytest.raises(ConfigurationError, match="app_cache"):
        DataflowExecutor(app_cache="no")


def test_lazy_errors_false_stops_the_workflow_at_the_first_failure():
    backends = {"a": ThreadExecutor(max_workers=1), "b": ThreadExecutor(max_workers=1)}
    with DataflowExecutor(executors=backends, shutdown_executors=True, lazy_errors=False) as dfx:
        on_a, on_b = dfx.options(executors="a"), dfx.options(executors="b")
        with Gate() as gate:
            held = on_a.submit(gate.wait, "held")
            gate.wait_entered(1, TIMEOUT)
            queued = on_a.submit(add, 1, 2)  # queued in backend a behind the held task
            waiting = dfx.submit(add, held, "!")  # waiting for its dependency
            failing = on_b.submit(pow, "x", 2)
            assert isinstance(failing.exception(TIMEOUT), TypeError)
            for fut in (queued, waiting):
                error = fut.exception(TIMEOUT)
                assert isinstance(error, WorkflowStoppedError), error
                assert isinstance(error.__cause__, TypeError) and "first failure" in str(error)
            with pytest.raises(WorkflowStoppedError):
                dfx.submit(add, 1, 1)
            gate.open()
            assert held.result(TIMEOUT) == "held", "a running task finishes"


def test_lazy_errors_true_keeps_going():
    with DataflowExecutor() as dfx:
        assert isinstance(dfx.submit(pow, "x", 2).exception(TIMEOUT), TypeError)
        assert dfx.submit(add, 1, 1).result(TIMEOUT) == 2


def test_a_label_names_the_auto_logname_files(tmp_path):
    with DataflowExecutor(run_dir=tmp_path) as dfx:

        @bash_app(executor=dfx)
        def greet(stdout: Any = AUTO_LOGNAME, stderr: Any = AUTO_LOGNAME) -> str:
            return "echo hi"

        fut = greet(label="first-try")
        assert fut.result(TIMEOUT) == 0
        assert os.path.basename(fut.stdout).endswith("-first-try.stdout")
        assert os.path.basename(fut.stderr).endswith("-first-try.stderr")
        assert Path(fut.stdout).read_text() == "hi\n"
        with pytest.raises(ValueError, match="label"):
            greet(label="a/b")


def test_checkpoint_files_answer_from_earlier_runs(tmp_path):
    runs = tmp_path / "runs"

    def work(x: int) -> int:
        with open(runs, "a") as f:
            f.write(f"{x}\n")
        return x * 10

    with DataflowExecutor(cache=True, checkpoint=tmp_path / "first.db") as dfx:
        assert dfx.submit(work, 1).result(TIMEOUT) == 10
    with DataflowExecutor(cache=True, checkpoint=tmp_path / "second.db") as dfx:
        assert dfx.submit(work, 2).result(TIMEOUT) == 20
    from hpcfutures.dataflow.checkpoint import find_checkpoints

    earlier = find_checkpoints(tmp_path)
    assert {p.name for p in earlier} == {"first.db", "second.db"}
    with DataflowExecutor(cache=True, checkpoint=tmp_path / "third.db", checkpoint_files=earlier) as dfx:
        assert [dfx.submit(work, x).result(TIMEOUT) for x in (1, 2, 3)] == [10, 20, 30]
    assert runs.read_text().split() == ["1", "2", "3"], "a result in an earlier run's file ran again"
    with pytest.raises(ConfigurationError, match="checkpoint_files"):
        DataflowExecutor(checkpoint_files=earlier)


def test_a_failed_cached_task_is_recorded_but_not_reused(tmp_path):
    attempts = tmp_path / "attempts"

    def fragile(x: int) -> int:
        with open(attempts, "a") as f:
            f.write("try\n")
        raise ValueError(f"bad input {x}")

    for _run in range(2):
        with DataflowExecutor(cache=True, checkpoint=tmp_path / "run.db") as dfx:
            assert isinstance(dfx.submit(fragile, 4).exception(TIMEOUT), ValueError)
            why = dfx.explain_cache(fragile, 4)
    assert len(attempts.read_text().split()) == 2, "a recorded failure was reused"
    assert "failed with ValueError: bad input 4" in why


def test_memo_size_is_checked_at_construction():
    with pytest.raises(ConfigurationError, match="memo_size"):
        DataflowExecutor(memo_size=-1)
