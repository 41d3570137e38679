"""hpcfutures.progress(): completion order, counts, and the bar drawn in a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from hpcfutures import ConfigurationError
from hpcfutures.progressbar import Counts, describe, progress


def run_in_terminal(script: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run ``python -c script`` with its standard error on a pseudo-terminal; what it drew."""
    leader, follower = pty.openpty()
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
