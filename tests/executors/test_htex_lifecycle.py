"""HighThroughputExecutor's life: the end of the program, shutdown from callbacks, cancels
racing a shutdown, a start that fails half way, and what map() and futures keep alive.

Tests of what happens when the program ends run a small script in a fresh interpreter and
look at what its tasks left behind.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from hpcfutures import (
    ConfigurationError,
    ExecutorShutdownError,
    HighThroughputExecutor,
    PoolStartError,
)
from hpcfutures.executors.htex import link as link_module
from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex.blocks import BlockManager
from hpcfutures.providers import LocalProvider
from hpcfutures.testing import Gate, tasks
from hpcfutures.testing.tasks import ConformanceError

from .htex_helpers import assert_all_gone, descendants, fake_pool, pool_key

SCRIPT_TIMEOUT = 120.0  # a script that runs longer hangs



@pytest.fixture
def htex1(leak_check: Callable[[], None]) -> Iterator[HighThroughputExecutor]:
    """One worker, so tasks run and their results arrive in submission order."""
    ex = HighThroughputExecutor(max_workers=1)
    yield ex
    leak_check()
    ex.terminate()


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off: only reference counts free objects."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def raise_after(wait: Callable[[], Any], message: str) -> None:
    wait()
    raise ConformanceError(message)


def start_script(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    """Wait for the script to end; check it ended well; return its output."""
    try:
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the script did not end within {SCRIPT_TIMEOUT} s; stdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"the script failed; stdout:\n{out}\nstderr:\n{err}"
    return out


@contextlib.contextmanager
def running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill the script if the test fails while it runs."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- the end of the program ---------------------------------------------------------------------

WRITERS = """
    import sys
    from pathlib import Path
    from hpcfutures import HighThroughputExecutor
    from hpcfutures.testing.gate import GateWait

    out = Path(sys.argv[1])
    wait = GateWait(("127.0.0.1", int(sys.argv[2])), 120.0)

    def write_after_gate(name):
        wait()
        (out / name).write_text("done")

    ex = HighThroughputExecutor(max_workers=2)
    for name in ("a", "b", "c"):  # two at the gate, one queued behind them
        ex.submit(write_after_gate, name)
    if sys.argv[3] == "shutdown(wait=False)":
        ex.shutdown(wait=False)
    print("the script's code is done", flush=True)
"""


@pytest.mark.parametrize("ending", ["the script ends", "shutdown(wait=False)"])
def test_submitted_tasks_finish_before_the_program_ends(tmp_path: Path, ending: str) -> None:
    with Gate() as gate, running(start_script(WRITERS, str(tmp_path), str(gate.address[1]), ending)) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "the script's code is done"
        gate.wait_entered(2, timeout=60)  # the script's code has ended; its tasks are still running
        gate.open()
        finish(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_at_exit_terminate_stops_unfinished_tasks_at_once(tmp_path: Path) -> None:
    script = """
        import os, sys, time
        from pathlib import Path
        from hpcfutures import HighThroughputExecutor
        from hpcfutures.testing import Recorder

        out = Path(sys.argv[1])

        def long_task(record):
            record(os.getpid())
            time.sleep(600)  # the task's own work, far longer than the test waits
            (out / "finished").write_text("")

        ex = HighThroughputExecutor(max_workers=1, at_exit="terminate")
        with Recorder() as recorder:
            ex.submit(long_task, recorder.record)
            (pid,) = recorder.wait_for(1, timeout=60)
        print(pid, flush=True)
    """
    with running(start_script(script, str(tmp_path))) as proc:
        worker = int(finish(proc))
    assert not (tmp_path / "finished").exists()
    assert_all_gone({worker})


@pytest.mark.parametrize("trouble", ["the interchange was killed", "the initializer failed"])
def test_the_end_of_the_program_does_not_hang_on_a_broken_executor(trouble: str) -> None:
    script = """
        import os, signal, sys, time
        from hpcfutures import HighThroughputExecutor
        from hpcfutures.testing import Recorder, faults

        def long_task(record):
            record(os.getpid())
            time.sleep(600)

        if sys.argv[1] == "the interchange was killed":
            ex = HighThroughputExecutor(max_workers=1)
            with Recorder() as recorder:
                ex.submit(long_task, recorder.record)
                (pid,) = recorder.wait_for(1, timeout=60)
            os.kill(ex._space.interchange.pid, signal.SIGKILL)
            print(pid, flush=True)
        else:
            ex = HighThroughputExecutor(max_workers=1, initializer=faults.failing_initializer)
            ex.submit(pow, 2, 2)
    """
    with running(start_script(script, trouble)) as proc:
        out = finish(proc)
    if out.strip():
        assert_all_gone({int(out)})


def test_at_exit_takes_wait_or_terminate_only() -> None:
    with pytest.raises(ConfigurationError, match="at_exit must be 'wait' .* or 'terminate'"):
        HighThroughputExecutor(at_exit="kill")  # type: ignore[arg-type]


# -- shutdown and cancels from the executor's own threads ------------------------------------


def test_shutdown_wait_in_a_done_callback_does_not_wait_for_its_own_thread() -> None:
    script = """
        import threading
        from hpcfutures import HighThroughputExecutor
        from hpcfutures.testing import Gate

        def after_gate(wait, value):
            wait()
            return value

        ex = HighThroughputExecutor(max_workers=1)
        stopped = threading.Event()

        def stop(_future):
            ex.shutdown(wait=True)  # runs on the I/O thread, which must still deliver `later`
            stopped.set()

        with Gate() as gate:
            first = ex.submit(after_gate, gate.wait, "first")
            later = ex.submit(pow, 3, 2)
            first.add_done_callback(stop)
            gate.open()
            assert stopped.wait(60), "shutdown(wait=True) in a done-callback did not return"
        print(first.result(timeout=60), later.result(timeout=60), flush=True)
    """
    with running(start_script(script)) as proc:
        assert finish(proc).split() == ["first", "9"]


def queue_behind_a_busy_worker(ex: HighThroughputExecutor, gate: Gate, count: int) -> list[Any]:
    """Occupy the executor's only worker at ``gate`` and queue ``count`` tasks behind it."""
    ex.submit(gate.wait)
    gate.wait_entered(1, timeout=30)
    return [ex.submit(pow, 2, i) for i in range(count)]


def test_cancels_while_the_executor_stops_return_at_once(
    monkeypatch: pytest.MonkeyPatch, leak_check: Callable[[], None]
) -> None:
    # A cancel that waited for an answer from the interchange would hang the test.
    monkeypatch.setattr(link_module, "CANCEL_TIMEOUT", 600.0)
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate:
        queued = queue_behind_a_busy_worker(ex, gate, 20)
        leak_check()
        stopping, go_on = threading.Event(), threading.Event()
        stop_blocks = ex._block_manager.stop_blocks

        def held_stop_blocks(kill: bool) -> None:  # the I/O thread has left its loop and is tearing down
            stopping.set()
            go_on.wait(60)
            stop_blocks(kill)

        monkeypatch.setattr(ex._block_manager, "stop_blocks", held_stop_blocks)
        terminate = threading.Thread(target=ex.terminate)
        terminate.start()
        try:
            assert stopping.wait(30)
            cancels = [threading.Thread(target=f.cancel, daemon=True) for f in queued]
            for thread in cancels:
                thread.start()
            deadline = time.monotonic() + 60
            for thread in cancels:
                thread.join(max(0.0, deadline - time.monotonic()))
            assert not [t for t in cancels if t.is_alive()], "a cancel waited for an answer that cannot come"
        finally:
            go_on.set()
            terminate.join(60)
    for future in queued:
        assert isinstance(future.exception(timeout=30), ExecutorShutdownError)


def test_many_cancels_racing_terminate_all_return(
    monkeypatch: pytest.MonkeyPatch, leak_check: Callable[[], None]
) -> None:
    monkeypatch.setattr(link_module, "CANCEL_TIMEOUT", 600.0)
    ex = HighThroughputExecutor(max_workers=1)
    with Gate() as gate:
        queued = queue_behind_a_busy_worker(ex, gate, 40)
        leak_check()
        start = threading.Barrier(len(queued) + 1)

        def cancel(future: Any) -> None:
            start.wait(30)
            future.cancel()

        cancels = [threading.Thread(target=cancel, args=(f,), daemon=True) for f in queued]
        for thread in cancels:
            thread.start()
        start.wait(30)
        ex.terminate()
        deadline = time.monotonic() + 60
        for thread in cancels:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not [t for t in cancels if t.is_alive()], "a cancel waited for an answer that cannot come"
    assert all(f.done() for f in queued)


def test_failures_the_block_thread_finds_reach_the_futures_on_the_io_thread(
    leak_check: Callable[[], None],
) -> None:
    # The I/O thread alone settles futures and answers cancels: the block thread, which sees
    # blocks die, hands the failure over instead of racing it.
    ex = HighThroughputExecutor(max_workers=1, provider=LocalProvider(worker_init="exit 3"))
    try:
        future = ex.submit(pow, 2, 2)  # the block thread's first look is a block_poll_period away
        threads: list[str] = []
        future.add_done_callback(lambda f: threads.append(threading.current_thread().name))
        assert isinstance(future.exception(timeout=60), PoolStartError)
        leak_check()
    finally:
        ex.shutdown()
    assert threads == ["hpcfutures-htex-io"]


# -- what map() and futures keep alive ----------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_lets_go_of_each_result_once_it_is_yielded(htex1: HighThroughputExecutor, chunksize: int) -> None:
    results = htex1.map(tasks.box, range(4), chunksize=chunksize)
    # One worker: once this is back, every result of the map is too, and the I/O thread has
    # moved on from them.
    assert htex1.submit(pow, 2, 2).result(timeout=30) == 4
    with gc_disabled():
        first = next(results)
        assert first.value == 0
        ref = weakref.ref(first)
        del first
        assert ref() is None, "map's iterator holds on to the result it yielded"
    assert [b.value for b in results] == [1, 2, 3]


@pytest.mark.parametrize("how", ["result() waits for it", "result() of a finished future", "map()"])
def test_a_task_exception_is_freed_without_the_cyclic_collector(
    htex1: HighThroughputExecutor, how: str
) -> None:
    with gc_disabled(), Gate() as gate:
        if how == "map()":
            future: Any = htex1.map(tasks.raise_error, ["deliberate"])
            call = future.__next__
        elif how == "result() of a finished future":
            future = htex1.submit(tasks.raise_error, "deliberate")
            assert future.exception(timeout=30) is not None
            call = future.result
        else:
            future = htex1.submit(raise_after, gate.wait, "deliberate")
            gate.wait_entered(1, timeout=30)
            threading.Thread(target=gate.open).start()  # result() below is waiting by then
            call = future.result
        try:
            call()
        except ConformanceError as exc:
            ref = weakref.ref(exc)
        else:
            pytest.fail("no ConformanceError")
        del future, call
        assert ref() is None, "the task's exception outlived its future"


# -- a start that fails ---------------------------------------------------------------------


def test_a_failed_start_leaves_nothing_behind_and_the_next_submit_starts_afresh(
    monkeypatch: pytest.MonkeyPatch, leak_check: Callable[[], None]
) -> None:
    before = descendants()
    ex = HighThroughputExecutor(max_workers=1)
    built: list[dict[str, Any]] = []

    def refuse() -> None:  # what an SSH host that refuses the forward does
        assert ex._space is not None and ex._space.spill is not None
        built.append(
            {
                "interchange": ex._space.interchange.pid,
                "dirs": [ex._space.directory, Path(ex._space.ipc_dir), Path(ex._space.spill.directory)],
                "fds": [ex._link.wake_r, ex._link.wake_w, ex._link.to_interchange.fd, ex._link.from_interchange.fd],
            }
        )
        raise OSError("ssh: connect to host login1 port 22: Connection refused")

    ex.tunnel = True  # reach the tunnel step without an SSH host
    monkeypatch.setattr(BlockManager, "open_tunnel", lambda _blocks, _port: refuse())
    try:
        for _attempt in range(2):
            with pytest.raises(OSError, match="Connection refused"):
                ex.submit(pow, 2, 2)
            assert descendants() - before == set(), "the interchange of the failed start is still running"
        for start in built:
            assert not psutil.pid_exists(start["interchange"])
            assert not [d for d in start["dirs"] if d.exists()]
            for fd in start["fds"]:
                with pytest.raises(OSError):
                    os.fstat(fd)
        assert ex.endpoints == {} and ex.key_dir is None
        ex.tunnel = False
        assert ex.submit(pow, 2, 2).result(timeout=30) == 4
        leak_check()
    finally:
        ex.terminate()
        for pid in descendants() - before:  # left by a failed start, should the test fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the test helpers speak the current protocol ---------------------------------------------


@pytest.mark.parametrize("where", ["ipc", "tcp"])
def test_a_fake_pool_with_the_keys_is_accepted(where: str, leak_check: Callable[[], None]) -> None:
    # The block never starts a pool (worker_init replaces it with a sleep): the fake one is alone.
    ex = HighThroughputExecutor(max_workers=1, provider=LocalProvider(worker_init="exec sleep 1000"))
    try:
        ex.submit(pow, 2, 2)
        leak_check()
        ctx, sock = fake_pool(ex.endpoints[where], curve=pool_key(ex), send_timeout=30_000)
        try:
            assert sock.poll(30_000), "the interchange did not answer a pool holding the keys"
            assert bytes(sock.recv_multipart()[0]) == P.ACCEPT
        finally:
            ctx.destroy(linger=0)
    finally:
        ex.terminate()
