"""Progress bars: hpcfutures.progress() and as_completed(), map(..., progress=...) and
executor.progress() blocks: counts, order, threads, and the bar drawn in a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import hpcfutures
from hpcfutures import ConfigurationError, DataflowExecutor, HighThroughputExecutor, ThreadExecutor
from hpcfutures.progressbar import Counts, ProgressBar, describe, progress

from .executors.htex_helpers import assert_all_gone, descendants


def run_in_terminal(script: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run ``python -c script`` with its standard error on a pseudo-terminal; what it drew."""
    leader, follower = pty.openpty()
    # A terminal has a size (a new pseudo-terminal's is 0x0, which tqdm draws in no columns).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env={**os.environ, **(env or {})},
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            pytest.fail("the script drew nothing for a minute")
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal's other end closed: the script is done
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout) == 0
    return b"".join(chunks).decode()


SCRIPT = """
    import time
    from concurrent.futures import ThreadPoolExecutor
    from hpcfutures.progressbar import progress

    def work(i):
        time.sleep(0.01 * (i % 3))
        if i % 10 == 9:
            raise ValueError(i)
        return i

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(work, i) for i in range(150)]
        seen = sum(1 for _ in progress(futures, desc="squares", backend="text"))
    assert seen == 150
"""


def test_the_text_bar_draws_counts_in_a_terminal_at_most_ten_times_a_second():
    import time

    start = time.monotonic()
    drawn = run_in_terminal(SCRIPT)
    elapsed = time.monotonic() - start
    frames = [f for f in drawn.split("\r") if f.strip()]  # the terminal turns the last \n into \r\n
    assert frames, drawn
    last = frames[-1]
    assert last.startswith("squares: |") and "150/150 done, 15 failed" in last and last.rstrip().endswith("ETA --:--\x1b[K")
    assert len(frames) <= 10 * elapsed + 2, f"{len(frames)} redraws in {elapsed:.2f} s"


def test_no_bar_when_switched_off_or_not_on_a_terminal():
    assert run_in_terminal(SCRIPT, env={"HPCFUTURES_PROGRESS": "0"}) == ""
    stream = io.StringIO()  # not a terminal
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(pow, 2, i) for i in range(20)]
        assert sorted(f.result() for f in progress(futures, stream=stream)) == sorted(2**i for i in range(20))
    assert stream.getvalue() == ""


def test_futures_come_in_the_order_they_finish():
    gates = [threading.Event() for _ in range(3)]
    futures: list[Future[int]] = [Future() for _ in range(3)]
    order: list[int] = []

    def finish_in_reverse() -> None:
        for i in (2, 0, 1):
            futures[i].set_result(i)
            gates[i].wait(10)

    threading.Thread(target=finish_in_reverse, daemon=True).start()
    for fut in progress(futures, backend=None):
        order.append(fut.result())
        gates[fut.result()].set()
    assert order == [2, 0, 1]


def test_the_counts_in_words():
    assert describe(Counts(10, done=4, failed=1, running=2), 5.0) == "5/10 done, 1 failed, 2 running, ETA 00:05"
    assert describe(Counts(3, done=3), 1.0) == "3/3 done, ETA --:--"
    with pytest.raises(ConfigurationError, match="backend must be one of"):
        list(progress([], backend="fancy", stream=_Terminal()))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


TIMEOUT = 60.0


class Sink:
    """A ProgressSink that keeps what it is told; ``when(test)`` sets an Event once a drawn
    Counts passes ``test``."""

    def __init__(self, when: Any = None) -> None:
        self.frames: list[Counts] = []
        self.closed: Counts | None = None
        self.when = when
        self.seen = threading.Event()

    def update(self, counts: Counts, elapsed: float) -> None:
        self.frames.append(counts)
        if self.when is not None and self.when(counts):
            self.seen.set()

    def close(self, counts: Counts, elapsed: float) -> None:
        self.closed = counts


def frames_of(drawn: str) -> list[str]:
    return [f for f in drawn.split("\r") if f.strip()]  # the terminal turns the last \n into \r\n


# -- map(..., progress=...) ---------------------------------------------------------------------


def _map_in_any_order(ex: Any, n: int = 20) -> tuple[list[Any], Sink]:
    """Map over ``ex`` where item 0 finishes only once the bar has drawn every other item done."""
    sink = Sink(when=lambda c: c.finished == n - 1)

    def work(i: int) -> Any:
        if i == 0:
            return sink.seen.wait(TIMEOUT)  # True: the bar counted the others while item 0 ran
        return i * i

    return list(ex.map(work, range(n), progress=sink)), sink


@pytest.mark.parametrize("kind", ["threads", "dataflow"])
def test_map_with_progress_keeps_order_and_counts_results_as_they_arrive(kind: str):
    ex: Any = ThreadExecutor(4) if kind == "threads" else DataflowExecutor(ThreadExecutor(4), shutdown_executors=True)
    with ex:
        results, sink = _map_in_any_order(ex)
    assert results == [True] + [i * i for i in range(1, 20)]
    assert sink.closed == Counts(20, done=20)
    assert all(f.total == 20 for f in sink.frames)


def test_map_with_progress_on_htex_counts_tasks_and_chunks():
    before = descendants()
    ex = HighThroughputExecutor(max_workers=2)
    try:
        sink = Sink()
        assert list(ex.map(abs, range(-10, 0), progress=sink)) == list(range(10, 0, -1))
        assert sink.closed == Counts(10, done=10)
        sink = Sink()
        assert list(ex.map(abs, range(-10, 0), chunksize=3, progress=sink)) == list(range(10, 0, -1))
        assert sink.closed == Counts(4, done=4)  # a chunk is one task
        with ex.progress(backend=None) as bar:
            futures = [ex.submit(abs, -1), ex.options(priority=1).submit(abs, -2)]
            assert list(ex.map(abs, [-3, -4])) == [3, 4]
            assert [f.result(TIMEOUT) for f in futures] == [1, 2]
        assert ex.submit(abs, -5).result(TIMEOUT) == 5
        assert bar.counts == Counts(4, done=4)
        assert "submit_with_options" not in vars(ex)
    finally:
        started = descendants() - before
        ex.terminate()
        assert_all_gone(started)


def test_map_progress_is_checked_and_names_the_argument():
    with ThreadExecutor(1) as ex, DataflowExecutor(ex) as dfx:
        for bad in ("fancy", 1, object()):
            with pytest.raises(ConfigurationError, match="progress must be True, False, a backend name"):
                ex.map(abs, [1], progress=bad)
            with pytest.raises(ConfigurationError, match="progress must be"):
                dfx.map(abs, [1], progress=bad)
            with pytest.raises(ConfigurationError, match="progress must be"):
                hpcfutures.as_completed([], progress=bad)
        with pytest.raises(ConfigurationError, match="backend must be one of"):
            ex.progress(backend="fancy")
        assert list(ex.map(abs, [-1, -2], progress=False)) == [1, 2]


MAP_SCRIPT = """
    from hpcfutures import DataflowExecutor, ThreadExecutor

    def square(i):
        return i * i

    with ThreadExecutor(4) as ex:
        assert list(ex.map(square, range(50), progress=True)) == [i * i for i in range(50)]
    with DataflowExecutor(cache=True) as dfx:  # 3 distinct calls: the 27 others come from the cache
        assert list(dfx.map(square, [1, 2, 3] * 10, progress="text")) == [1, 4, 9] * 10
"""


def test_map_draws_in_a_terminal_up_to_n_of_n_with_the_cached_count():
    bars = [b for b in run_in_terminal(MAP_SCRIPT).split("\r\n") if b]  # a bar ends with a newline
    first, second = (frames_of(b)[-1] for b in bars)
    assert first.startswith("square: |" + "#" * 30 + "| 50/50 done, ETA --:--"), first
    assert second.startswith("square: |" + "#" * 30 + "| 30/30 done, 27 cached, ETA --:--"), second


def test_no_map_bar_off_a_terminal():
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MAP_SCRIPT)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert run_in_terminal(MAP_SCRIPT, env={"HPCFUTURES_PROGRESS": "off"}) == ""


# -- as_completed ----------------------------------------------------------------------------------


def test_as_completed_with_progress_yields_every_future_once():
    with ThreadExecutor(4) as ex:
        futures = [ex.submit(pow, 2, i) for i in range(200)]
        failing = ex.submit(int, "x")
        sink = Sink()
        seen = list(hpcfutures.as_completed([*futures, failing, *futures[:10]], progress=sink))
        assert len(seen) == 201 and set(seen) == {*futures, failing}
        assert sink.closed == Counts(201, done=200, failed=1)
        plain = list(hpcfutures.as_completed(futures, timeout=TIMEOUT))  # the stdlib's
        assert sorted(f.result() for f in plain) == [2**i for i in range(200)]


def test_as_completed_with_progress_raises_the_stdlib_timeout_and_closes_the_bar():
    never: Future[int] = Future()
    sink = Sink()
    with pytest.raises(TimeoutError):
        list(hpcfutures.as_completed([never], timeout=0.05, progress=sink))
    assert sink.closed == Counts(1)


# -- with executor.progress() -----------------------------------------------------------------------


BLOCK_SCRIPT = """
    from concurrent.futures import wait
    from hpcfutures import ThreadExecutor

    with ThreadExecutor(4) as ex:
        ex.submit(abs, -1).result()  # before the block: not counted
        with ex.progress(desc="work") as bar:
            futures = [ex.submit(pow, 2, i) for i in range(20)]
            futures.append(ex.submit(int, "x"))
            assert list(ex.map(abs, range(-9, 0))) == list(range(9, 0, -1))
            wait(futures)
        ex.submit(abs, -1).result()  # after it: not counted
    assert bar.counts.total == 30, bar.counts
"""


def test_a_block_draws_what_was_submitted_inside_it_in_a_terminal():
    import time

    start = time.monotonic()
    frames = frames_of(run_in_terminal(BLOCK_SCRIPT))
    elapsed = time.monotonic() - start
    assert frames[-1].startswith("work: |" + "#" * 30 + "| 30/30 done, 1 failed, ETA --:--"), frames[-1]
    assert len(frames) <= 10 * elapsed + 2, f"{len(frames)} redraws in {elapsed:.2f} s"
    assert run_in_terminal(BLOCK_SCRIPT, env={"HPCFUTURES_PROGRESS": "0"}) == ""


def test_a_block_counts_submits_maps_and_views_inside_it_and_nothing_after():
    stream = io.StringIO()  # not a terminal: nothing drawn, but the counts are kept
    with ThreadExecutor(2) as ex:
        before = ex.submit(abs, -1)
        with ex.progress(stream=stream) as bar:
            assert not bar.draws and "_put" in vars(ex)
            futures = [ex.submit(abs, -i) for i in range(5)]
            futures.append(ex.options(priority=2).submit(abs, -5))
            assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
            for fut in futures:
                fut.result(TIMEOUT)
        after = [ex.submit(abs, -1), *ex.map(abs, [1, 2])]
        assert "_put" not in vars(ex) and ex._put.__func__ is ThreadExecutor._put  # nothing left on the hot path
    assert bar.counts == Counts(9, done=9)
    assert stream.getvalue() == "" and before.done() and after


def test_a_block_on_a_dataflow_executor_counts_apps_views_maps_and_cache_hits():
    with DataflowExecutor(cache=True) as dfx:

        @dfx.python_app
        def add_one(x: int) -> int:
            return x + 1

        assert add_one(1).result(TIMEOUT) == 2  # before the block; now cached
        sink = Sink()
        with dfx.progress(backend=sink) as bar:
            futures = [add_one(1), add_one(2), dfx.options(retries=1).submit(abs, -3)]
            assert list(dfx.map(abs, [-4, -5])) == [4, 5]
            assert [f.result(TIMEOUT) for f in futures] == [2, 3, 3]
        assert futures[0].cached and not futures[1].cached
        add_one(7).result(TIMEOUT)  # after the block
        assert vars(dfx).keys().isdisjoint({"submit", "_submit"})
    assert bar.counts == sink.closed == Counts(5, done=5, cached=1)


def test_cached_counts_come_from_a_checkpoint_too(tmp_path: Any):
    path = tmp_path / "run.db"
    with DataflowExecutor(cache=True, checkpoint=path) as dfx:
        assert dfx.submit(pow, 2, 10).result(TIMEOUT) == 1024
    with DataflowExecutor(cache=True, checkpoint=path) as dfx:  # a later run
        futures = [dfx.submit(pow, 2, 10), dfx.submit(pow, 2, 11)]
        sink = Sink()
        assert sorted(f.result() for f in progress(futures, backend=sink)) == [1024, 2048]
    assert sink.closed == Counts(2, done=2, cached=1)
    assert describe(sink.closed, 1.0) == "2/2 done, 1 cached, ETA --:--"


@pytest.mark.parametrize("round_", range(3))
def test_a_block_shared_by_four_threads_counts_every_submit(round_: int):
    threads_, per_thread = 4, 5_000
    barrier = threading.Barrier(threads_)
    futures: list[list[Future[Any]]] = [[] for _ in range(threads_)]

    def submit_many(mine: list[Future[Any]]) -> None:
        barrier.wait(TIMEOUT)
        mine.extend(ex.submit(abs, i) for i in range(per_thread))

    ex = ThreadExecutor(4)
    with ex.progress(backend=Sink()) as bar:
        submitters = [threading.Thread(target=submit_many, args=(f,)) for f in futures]
        for t in submitters:
            t.start()
        for t in submitters:
            t.join(TIMEOUT)
    assert bar.counts.total == threads_ * per_thread
    ex.shutdown(wait=True)  # every done-callback has run
    assert bar.counts == Counts(threads_ * per_thread, done=threads_ * per_thread)
    assert sum(len(f) for f in futures) == threads_ * per_thread


def test_blocks_opened_and_closed_by_many_threads_each_count_their_own_submits():
    threads_, per_thread = 4, 1_000
    barrier = threading.Barrier(threads_)
    inner: list[ProgressBar] = []

    def own_block() -> None:
        barrier.wait(TIMEOUT)
        with ex.progress(backend=None) as bar:
            for i in range(per_thread):
                ex.submit(abs, i)
        inner.append(bar)

    with ThreadExecutor(2) as ex:
        with ex.progress(backend=None) as outer:
            workers = [threading.Thread(target=own_block) for _ in range(threads_)]
            for t in workers:
                t.start()
            for t in workers:
                t.join(TIMEOUT)
        assert "_put" not in vars(ex) and ex._progress_bars == ()
    assert outer.counts.total == threads_ * per_thread
    assert len(inner) == threads_ and all(per_thread <= b.counts.total <= threads_ * per_thread for b in inner)


def test_a_sink_that_fails_stops_drawing_without_failing_the_run(caplog: Any):
    class Broken(Sink):
        def update(self, counts: Counts, elapsed: float) -> None:
            raise RuntimeError("no screen")

    sink = Broken()
    with ThreadExecutor(2) as ex:
        assert list(ex.map(abs, [-1, -2], progress=sink)) == [1, 2]
    assert sink.closed is None and "draws no more" in caplog.text
