"""Benchmark: what recording a run costs, HTEX and DataflowExecutor, record off against on.

Run as ``python bench/bench_record.py [--cycles N] [--pairs N] [--tasks N] [--only htex,dataflow]``.

The default, ``--mode paired``, builds three executors of a kind (record off, record on,
and a second one with record off, the control) and keeps them alive side by side, then
times ``--pairs`` rounds of one burst of ``--tasks`` no-op tasks each, submitted in a loop
and collected (the throughput measure of bench_executors.py), rotating which goes first;
it does so ``--cycles`` times with executors built anew, since where an executor's
processes land on the CPUs changes its speed for its whole life.  This machine's speed
also drifts by tens of percent within seconds (a shared virtual machine), so only bursts
close in time are compared: it gives the median of the rounds' ratios on/off, with a 95%
confidence interval from resampling them, and the same for control/off, which says how
far two identical executors differ in this run, and for on against the mean of both
executors with recording off (each executor's own speed, set by where its processes land,
weighs half as much on that baseline); besides the median throughput of each
side and the CPU
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

#: What each kind measures: HTEX alone; DataflowExecutor over two threads (the backend that
#: costs least, so where recording weighs most); DataflowExecutor over HTEX.
KINDS = ("htex", "dataflow", "dataflow-htex")


def make(kind: str, record: Path | bool) -> Executor:
    if kind == "htex":
        if record is False:
            return make_htex()
        _let_workers_import_tasks()
        return HighThroughputExecutor(max_workers=2, record=record)
    if kind == "dataflow-htex":
        _let_workers_import_tasks()
        return DataflowExecutor(HighThroughputExecutor(max_workers=2), shutdown_executors=True, record=record)
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
        warm_up(executor, None) if kind != "dataflow" else [executor.submit(noop).result() for _ in range(200)]
        before = cpu_seconds()
        rates = [run_throughput(executor, tasks) for _ in range(repeats)]
        after = cpu_seconds()
    finally:
        start = time.perf_counter()
        executor.shutdown()
        stopped = time.perf_counter() - start
    cost = {k: (after[k] - before[k]) / (tasks * repeats) * 1e6 for k in after}
    return rates, stopped, cost


#: The sides of a paired cycle: recording off, recording on, and a second executor with
#: recording off, the control: its ratio to the first says how far two identical executors
#: differ in this run.
SIDES = ("off", "on", "control")


def paired_cycle(
    kind: str, cycle: int, pairs: int, tasks: int, workdir: Path, rates: dict[str, list[float]],
    costs: dict[tuple[str, str], list[float]], stops: dict[str, list[float]], ratios: dict[str, list[float]],
) -> None:
    """Build the three executors of ``kind``; time ``pairs`` rounds of one burst each, in
    an order that rotates; add each round's ratios on/off and control/off to ``ratios``."""
    # Built in an order that turns with the cycle: the executor built first tended to be the
    # fastest of the three for its whole life (control/off 0.93-0.97 in some runs).
    order = SIDES[cycle % len(SIDES) :] + SIDES[: cycle % len(SIDES)]
    executors = {side: make(kind, workdir / f"{kind}.db" if side == "on" else False) for side in order}
    try:
        for executor in executors.values():
            warm_up(executor, None) if kind != "dataflow" else [executor.submit(noop).result() for _ in range(200)]
        for pair in range(pairs):
            got = {}
            shift = pair % len(SIDES)
            for side in SIDES[shift:] + SIDES[:shift]:
                before = cpu_seconds()
                got[side] = run_throughput(executors[side], tasks)
                after = cpu_seconds()
                rates[side].append(got[side])
                for part in after:
                    costs.setdefault((side, part), []).append((after[part] - before[part]) / tasks * 1e6)
            for side in ("on", "control"):
                ratios[side].append(got[side] / got["off"])
            ratios["on/both offs"].append(got["on"] / ((got["off"] + got["control"]) / 2))
    finally:
        for side, executor in executors.items():
            start = time.perf_counter()
            executor.shutdown()
            stops[side].append(time.perf_counter() - start)


def interval(values: list[float]) -> tuple[float, float]:
    """A 95% confidence interval of the median of ``values``, from resampling them."""
    resampled = sorted(statistics.median(random.choices(values, k=len(values))) for _ in range(2000))
    return resampled[50], resampled[1949]


def paired(kind: str, cycles: int, pairs: int, tasks: int, workdir: Path) -> None:
    """``cycles`` times, the executors of ``kind`` built anew (each process lands on the
    CPUs its own way) for ``pairs`` rounds; the medians of all rounds' ratios."""
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    costs: dict[tuple[str, str], list[float]] = {}
    stops: dict[str, list[float]] = {side: [] for side in SIDES}
    ratios: dict[str, list[float]] = {"on": [], "control": [], "on/both offs": []}
    for cycle in range(cycles):
        paired_cycle(kind, cycle, pairs, tasks, workdir, rates, costs, stops, ratios)
    print(
        f"{kind:10} tasks/s off {statistics.median(rates['off']):,.0f}, on {statistics.median(rates['on']):,.0f}, "
        f"control {statistics.median(rates['control']):,.0f}; shutdown off {statistics.median(stops['off']):.2f} s, "
        f"on {statistics.median(stops['on']):.2f} s",
        flush=True,
    )
    for side in ("on", "control", "on/both offs"):
        low, high = interval(ratios[side])
        label = side if "/" in side else f"{side}/off"
        print(
            f"{'':10} {label} per round: median {statistics.median(ratios[side]):.3f} (95% CI {low:.3f}-{high:.3f}), "
            f"mean {statistics.mean(ratios[side]):.3f}",
            flush=True,
        )
    print(
        f"{'':10} CPU µs a task off/on (means: psutil reads CPU time in 10 ms ticks): "
        + ", ".join(
            f"{part} {statistics.mean(costs[('off', part)]):.1f}/{statistics.mean(costs[('on', part)]):.1f}"
            for part in ("driver", "others", "writer")
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("paired", "fresh"), default="paired")
    parser.add_argument("--cycles", type=int, default=4, help="executors built anew (paired)")
    parser.add_argument("--pairs", type=int, default=20, help="rounds of bursts a cycle (paired)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (fresh)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks a burst (default 10,000 paired, 20,000 fresh)")
    parser.add_argument("--repeats", type=int, default=2, help="timed bursts per executor built (fresh)")
    parser.add_argument("--only", default=",".join(KINDS), help=f"kinds, of {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--only: unknown kind(s) {unknown}; the kinds are {', '.join(KINDS)}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-record-"))
    if args.mode == "paired":
        print(f"load average at start: {os.getloadavg()}", flush=True)
        for kind in kinds:
            paired(kind, args.cycles, args.pairs, args.tasks or 10_000, workdir)
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
