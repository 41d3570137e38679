"""Benchmark: what recording a run costs DataflowExecutor, off against on, in one run.

Run as ``python bench/bench_record_dataflow.py [--rounds N] [--tasks N] [--modes off,on]
[--json FILE]`` (see bench/README.md).  Each round measures every mode once, in an order
that alternates from round to round, on a new ``DataflowExecutor(ThreadExecutor(2))``
warmed up as bench_dataflow.py warms it (and, recording, with the warm-up written: the
writer process has started); the figure is bench_dataflow.py's throughput (``--tasks``
no-op tasks submitted, then every result collected).  "on" records to a fresh
file in a temporary directory; "off" passes no ``record=`` at all (with
``HPCFUTURES_RECORD`` unset), so the same script measures a tree from before recording
existed (``--modes off``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the benchmarks' shared modules
from _shared import provenance  # noqa: E402
from bench_dataflow import THREADS, noop, run_throughput, warm_up  # noqa: E402


def cpu_seconds(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(mode: str, tasks: int, directory: str, round_no: int, cpu: dict[str, list[float]]) -> float:
    """One throughput figure of a new DataflowExecutor with recording ``mode``; the CPU time
    per task of this process and of the record writer go to ``cpu``."""
    import psutil

    from hpcfutures import DataflowExecutor, ThreadExecutor

    extra: dict[str, Any] = {}
    path = os.path.join(directory, f"round{round_no}.db")
    if mode == "on":
        extra["record"] = path
    dfx = DataflowExecutor(ThreadExecutor(max_workers=THREADS), shutdown_executors=True, **extra)
    try:
        call = functools.partial(dfx.submit, noop)
        warm_up(call)
        recorder = getattr(dfx, "recorder", None)  # the tree before recording has none
        if recorder is not None and not recorder.flush():  # the writer has started and written
            raise AssertionError("the record writer did not answer a flush")
        me = psutil.Process()
        writer = psutil.Process(recorder._writer.pid) if recorder is not None else None
        driver_before, writer_before = cpu_seconds(me), cpu_seconds(writer) if writer else 0.0
        rate = run_throughput(call, tasks)
        if recorder is not None:
            recorder.flush()  # what the writer spends on the timed tasks
        cpu.setdefault(f"{mode} driver", []).append((cpu_seconds(me) - driver_before) / tasks)
        if writer is not None:
            cpu.setdefault(f"{mode} writer", []).append((cpu_seconds(writer) - writer_before) / tasks)
    finally:
        dfx.shutdown()
    if mode == "on":  # the record holds every task: the figure is of a run really recorded
        with sqlite3.connect(path) as conn:
            done = conn.execute("SELECT done FROM run ORDER BY run_id DESC LIMIT 1").fetchone()[0]
        if done < tasks:
            raise AssertionError(f"the record holds {done} tasks done, fewer than the {tasks} timed")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--modes", default="off,on", help="comma-separated: off, on")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    modes = args.modes.split(",")
    os.environ.pop("HPCFUTURES_RECORD", None)
    figures: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {}
    started = time.time()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-record-") as directory:
        for round_no in range(args.rounds):
            order = modes if round_no % 2 == 0 else modes[::-1]
            for mode in order:
                rate = measure(mode, args.tasks, directory, round_no, cpu)
                figures[mode].append(rate)
                print(f"round {round_no + 1}  {mode:>3}  {rate:10,.0f} tasks/s", flush=True)
    print(f"\nDataflowExecutor(ThreadExecutor({THREADS})), {args.tasks:,} no-op tasks, {args.rounds} rounds")
    print(f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    medians = {mode: statistics.median(values) for mode, values in figures.items()}
    for mode, values in figures.items():
        print(f"  {mode:>3}: median {medians[mode]:10,.0f} tasks/s   (min {min(values):,.0f}, max {max(values):,.0f})")
    for what, values in cpu.items():
        print(f"  CPU time per task, {what}: median {statistics.median(values) * 1e6:.1f} µs")
    if "off" in medians and "on" in medians:
        ratios = [on / off for on, off in zip(figures["on"], figures["off"])]
        print(f"  on / off: {medians['on'] / medians['off']:.3f} of the medians; "
              f"{statistics.median(ratios):.3f} the median of each round's ratio")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"provenance": provenance(), "tasks": args.tasks, "figures": figures, "medians": medians,
                 "cpu_per_task": cpu, "seconds": time.time() - started},
                f, indent=1,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
