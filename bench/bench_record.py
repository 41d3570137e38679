"""Benchmark: what recording a run costs, HTEX and DataflowExecutor, record off against on.

Run as ``python bench/bench_record.py [--rounds N] [--tasks N] [--only htex,dataflow]``.
Each round builds every configuration in turn (HTEX off, HTEX on, Dataflow off, Dataflow on,
the order alternating between rounds, so that a slow spell of the machine hits both sides),
warms it up, and times ``--tasks`` no-op tasks submitted in a loop and collected (the
throughput measure of bench_executors.py).  The table gives the median of the rounds, the
on/off ratio, the time ``shutdown()`` took (with recording on it includes waiting for the
writer to write what was left), and the record's size per task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_executors import _let_workers_import_tasks, make_htex, noop, run_throughput, warm_up  # noqa: E402

from hpcfutures import ThreadExecutor  # noqa: E402
from hpcfutures.dataflow import DataflowExecutor  # noqa: E402
from hpcfutures.executors.htex.executor import HighThroughputExecutor  # noqa: E402


def make(kind: str, record: Path | bool) -> Executor:
    if kind == "htex":
        if record is False:
            return make_htex()
        _let_workers_import_tasks()
        return HighThroughputExecutor(max_workers=2, record=record)
    return DataflowExecutor(ThreadExecutor(2), record=record)


def one(kind: str, record: Path | bool, tasks: int, repeats: int) -> tuple[list[float], float]:
    executor = make(kind, record)
    try:
        warm_up(executor, None) if kind == "htex" else [executor.submit(noop).result() for _ in range(200)]
        rates = [run_throughput(executor, tasks) for _ in range(repeats)]
    finally:
        start = time.perf_counter()
        executor.shutdown()
        stopped = time.perf_counter() - start
    return rates, stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2, help="timed bursts per executor built")
    parser.add_argument("--only", default="htex,dataflow")
    args = parser.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    workdir = Path(tempfile.mkdtemp(prefix="bench-record-"))
    rates: dict[tuple[str, bool], list[float]] = {}
    stops: dict[tuple[str, bool], list[float]] = {}
    tasks_recorded: dict[str, int] = {}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for round_no in range(args.rounds):
        for kind in kinds:
            sides = (False, True) if round_no % 2 == 0 else (True, False)
            for on in sides:
                record: Path | bool = workdir / f"{kind}.db" if on else False
                got, stopped = one(kind, record, args.tasks, args.repeats)
                rates.setdefault((kind, on), []).extend(got)
                stops.setdefault((kind, on), []).append(stopped)
                print(
                    f"round {round_no + 1} {kind:8} record {'on ' if on else 'off'}: "
                    + ", ".join(f"{r:,.0f}" for r in got)
                    + f" tasks/s; shutdown {stopped:.2f} s",
                    flush=True,
                )
                if on:
                    tasks_recorded[kind] = tasks_recorded.get(kind, 0) + args.tasks * args.repeats + 200
    print(f"load average at end: {os.getloadavg()}\n")
    print(f"{'executor':10} {'off tasks/s':>12} {'on tasks/s':>12} {'on/off':>7} {'shutdown off':>13} {'shutdown on':>12} {'bytes/task':>11}")
    for kind in kinds:
        off = statistics.median(rates[(kind, False)])
        on = statistics.median(rates[(kind, True)])
        size = sum(p.stat().st_size for p in workdir.glob(f"{kind}.db*"))
        print(
            f"{kind:10} {off:12,.0f} {on:12,.0f} {on / off:7.3f} {statistics.median(stops[(kind, False)]):12.2f}s "
            f"{statistics.median(stops[(kind, True)]):11.2f}s {size / max(1, tasks_recorded.get(kind, 1)):11.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
