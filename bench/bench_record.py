"""Benchmark: what recording a run costs, HTEX and DataflowExecutor, record off against on.

Run as ``python bench/bench_record.py [--pairs N] [--tasks N] [--only htex,dataflow]``.

The default, ``--mode paired``, builds both executors of a kind (record off and on) and
keeps them alive side by side, then times ``--pairs`` pairs of bursts of ``--tasks`` no-op
tasks submitted in a loop and collected (the throughput measure of bench_executors.py),
alternating which goes first (off-on, on-off, ...).  This machine's speed drifts by tens of
percent within seconds (a shared virtual machine), so only bursts close in time are
compared: the table gives the median of the per-pair ratios on/off, with a 95% confidence
interval from resampling the pairs, besides the median throughput of each side and the CPU
time a task cost in the driver's process, the executor's other processes and the record's
writer.  The writer defers its work while the executor is busy (see
hpcfutures/monitor/writer.py), so most of it is done in ``shutdown()``, whose time is given
for each side.

``--mode fresh`` builds each executor anew for ``--repeats`` bursts, in rounds alternating
which side goes first: slower to converge, but each side's bursts run alone with their
own writer, as a user's run would (``--repeats 16`` keeps the executor busy for longer
than the writer's patience).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path

import psutil

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


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process ("driver"), the record's writer, and the rest of its tree."""
    me = psutil.Process()
    spent = {"driver": sum(me.cpu_times()[:2]), "writer": 0.0, "others": 0.0}
    for child in me.children(recursive=True):
        try:
            kind = "writer" if "hpcfutures.monitor.writer" in child.cmdline() else "others"
            spent[kind] += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass  # it ended
    return spent


def one(kind: str, record: Path | bool, tasks: int, repeats: int) -> tuple[list[float], float, dict[str, float]]:
    """Throughput of each burst, seconds to shut down, and CPU µs a task during the bursts."""
    executor = make(kind, record)
    try:
        warm_up(executor, None) if kind == "htex" else [executor.submit(noop).result() for _ in range(200)]
        before = cpu_seconds()
        rates = [run_throughput(executor, tasks) for _ in range(repeats)]
        after = cpu_seconds()
    finally:
        start = time.perf_counter()
        executor.shutdown()
        stopped = time.perf_counter() - start
    cost = {k: (after[k] - before[k]) / (tasks * repeats) * 1e6 for k in after}
    return rates, stopped, cost


def paired(kind: str, pairs: int, tasks: int, workdir: Path) -> None:
    """Both executors of ``kind`` alive; ``pairs`` pairs of bursts, order alternating."""
    executors = {on: make(kind, workdir / f"{kind}.db" if on else False) for on in (False, True)}
    rates: dict[bool, list[float]] = {False: [], True: []}
    costs: dict[tuple[bool, str], list[float]] = {}
    ratios: list[float] = []
    stopped: dict[bool, float] = {}
    try:
        for executor in executors.values():
            warm_up(executor, None) if kind == "htex" else [executor.submit(noop).result() for _ in range(200)]
        for pair in range(pairs):
            got = {}
            for on in (False, True) if pair % 2 == 0 else (True, False):
                before = cpu_seconds()
                got[on] = run_throughput(executors[on], tasks)
                after = cpu_seconds()
                rates[on].append(got[on])
                for part in after:
                    costs.setdefault((on, part), []).append((after[part] - before[part]) / tasks * 1e6)
            ratios.append(got[True] / got[False])
    finally:
        for on, executor in executors.items():
            start = time.perf_counter()
            executor.shutdown()
            stopped[on] = time.perf_counter() - start
    resampled = sorted(
        statistics.median(random.choices(ratios, k=len(ratios))) for _ in range(2000)
    )
    low, high = resampled[50], resampled[1949]
    off, on_ = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"{kind:10} off {off:9,.0f} on {on_:9,.0f} tasks/s; on/off per pair: median {statistics.median(ratios):.3f} "
        f"(95% CI {low:.3f}-{high:.3f}), mean {statistics.mean(ratios):.3f}; shutdown off {stopped[False]:.2f} s, "
        f"on {stopped[True]:.2f} s",
        flush=True,
    )
    print(
        f"{'':10} CPU µs a task off/on: "
        + ", ".join(
            f"{part} {statistics.median(costs[(False, part)]):.1f}/{statistics.median(costs[(True, part)]):.1f}"
            for part in ("driver", "others", "writer")
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("paired", "fresh"), default="paired")
    parser.add_argument("--pairs", type=int, default=60, help="pairs of bursts (paired)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (fresh)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks a burst (default 10,000 paired, 20,000 fresh)")
    parser.add_argument("--repeats", type=int, default=2, help="timed bursts per executor built (fresh)")
    parser.add_argument("--only", default="htex,dataflow")
    args = parser.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    workdir = Path(tempfile.mkdtemp(prefix="bench-record-"))
    if args.mode == "paired":
        print(f"load average at start: {os.getloadavg()}", flush=True)
        for kind in kinds:
            paired(kind, args.pairs, args.tasks or 10_000, workdir)
        print(f"load average at end: {os.getloadavg()}")
        return 0
    args.tasks = args.tasks or 20_000
    rates: dict[tuple[str, bool], list[float]] = {}
    stops: dict[tuple[str, bool], list[float]] = {}
    costs: dict[tuple[str, bool, str], list[float]] = {}
    tasks_recorded: dict[str, int] = {}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for round_no in range(args.rounds):
        for kind in kinds:
            sides = (False, True) if round_no % 2 == 0 else (True, False)
            for on in sides:
                record: Path | bool = workdir / f"{kind}.db" if on else False
                got, stopped, cost = one(kind, record, args.tasks, args.repeats)
                rates.setdefault((kind, on), []).extend(got)
                for part, micros in cost.items():
                    costs.setdefault((kind, on, part), []).append(micros)
                stops.setdefault((kind, on), []).append(stopped)
                print(
                    f"round {round_no + 1} {kind:8} record {'on ' if on else 'off'}: "
                    + ", ".join(f"{r:,.0f}" for r in got)
                    + f" tasks/s; shutdown {stopped:.2f} s; CPU µs a task "
                    + ", ".join(f"{part} {micros:.1f}" for part, micros in cost.items()),
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
    print(f"\nCPU µs a task during the bursts (medians): {'executor':10} {'driver':>14} {'others':>14} {'writer':>7}")
    for kind in kinds:
        parts = [
            "/".join(f"{statistics.median(costs[(kind, on, part)]):.1f}" for on in (False, True))
            for part in ("driver", "others")
        ]
        writer = statistics.median(costs[(kind, True, "writer")])
        print(f"{'':42} {kind:10} {parts[0]:>14} {parts[1]:>14} {writer:7.1f}   (off/on)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
