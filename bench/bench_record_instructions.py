"""Benchmark: the instructions a recorded DataflowExecutor task costs, counted by callgrind.

Run as ``python bench/bench_record_instructions.py [--tasks N]`` (needs valgrind).

Throughput on a shared 2-vCPU machine drifts by tens of percent within seconds, which hides a
change of a few hundred nanoseconds a task; an instruction count does not drift.  This runs
a no-op task ``--tasks`` times through ``DataflowExecutor`` over an in-line backend (one
thread: the count does not depend on how threads interleave), record off and on, each under
``valgrind --tool=callgrind``, once with no tasks and once with ``--tasks``, and prints the
difference divided by the tasks: the instructions one task costs, with the record's shipment
(joining the packed records, the marshal and the pipe write) counted in.  The record's
writer, a process of its own, is not counted.  Futures are kept until the end, as a burst
keeps them, so that the garbage collector walks them as it would there.

The counts are those of this interpreter build; compare them within one run, off against on.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Executor, Future
from typing import Any, Callable


class InlineExecutor(Executor):
    """Runs each task in ``submit`` itself: the backend that costs nothing but a Future."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def noop() -> None:
    return None


def child(record: bool, tasks: int) -> None:
    """Submit ``tasks`` no-ops (after a warm-up), ship the record once, and leave at once."""
    from hpcfutures.dataflow import DataflowExecutor

    where = os.path.join(tempfile.mkdtemp(prefix="bench-instructions-"), "record.db") if record else False
    executor = DataflowExecutor(InlineExecutor(), record=where)
    recorder = executor.recorder
    if recorder is not None:
        recorder.flush_interval = 1e6  # shipped once, below, inside what is counted
    for _ in range(500):
        executor.submit(noop).result()
    futures = [executor.submit(noop) for _ in range(tasks)]
    if recorder is not None:
        recorder._ship()
    del futures
    os._exit(0)  # no shutdown: what it costs is not per task


def counted(record: bool, tasks: int) -> int:
    """The instructions callgrind counts for a child run of ``tasks`` tasks."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, os.path.abspath(__file__),
        "--child", "on" if record else "off", "--tasks", str(tasks),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind gave no count (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4000, help="tasks counted (default 4000)")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child == "on", args.tasks)
        return 0
    if args.tasks < 1:
        parser.error("--tasks: give a positive number of tasks")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    per_task = {}
    for record in (False, True):
        per_task[record] = (counted(record, args.tasks) - counted(record, 0)) / args.tasks
    off, on = per_task[False], per_task[True]
    print(f"instructions a no-op task over an in-line backend: record off {off:,.0f}, on {on:,.0f}, "
          f"recording {on - off:+,.0f} ({(on - off) / off:+.1%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
