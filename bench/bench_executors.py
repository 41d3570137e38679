"""Benchmark: the stdlib ProcessPoolExecutor against hpcfutures' HighThroughputExecutor.

Run as ``python bench/bench_executors.py [--repeat N] [--tasks N] [--only a,b] [--json FILE]``
(see bench/README.md).  Both executors run the same workloads in one run, one executor at a
time, so that neither competes with the other for the two CPUs.

The task functions below are module-level functions of ``__main__``: the stdlib's children
get them by fork, HTEX workers (forked by a separate pool manager process) get them by value
through cloudpickle, once per function thanks to the function caches in
``hpcfutures.serialize``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import cloudpickle
import zmq

from hpcfutures import HighThroughputExecutor
from hpcfutures.providers import LocalProvider

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the benchmarks' shared module
from _shared import (  # noqa: E402
    MIB,
    TIMEOUT,
    WARMUP_BURST,
    WARMUP_SEQUENTIAL,
    Results,
    compile_package,
    fmt_rate,
    fmt_ratio,
    fmt_spread,
    progress,
    provenance,
    table,
)

WORKLOADS = ("throughput", "latency", "bandwidth", "startup", "pools")
LATENCY_ROUND_TRIPS = 500
BANDWIDTH_ROUND_TRIPS = 100
WARMUP_ECHOES = 3
#: No single timed workload may take longer than this; a stuck executor is reported, not waited on.
POOLS_WAIT = 60.0


# -- tasks (module level: workers must be able to load them) -------------------------------------


def noop() -> None:
    return None


def echo(data: bytes) -> bytes:
    return data


def where() -> int:
    return os.getpid()


# -- executors --------------------------------------------------------------------------------------


def make_stdlib(workers: int = 2) -> Executor:
    return ProcessPoolExecutor(max_workers=workers)


def _let_workers_import_tasks() -> None:
    """Put this module's import root on PYTHONPATH when it is not ``__main__``.

    Imported as ``bench_executors`` (or ``bench.bench_executors``), the tasks are pickled by
    reference, and HTEX pool managers, which are new processes, must find the module too.
    """
    if __name__ == "__main__":
        return
    root = os.path.abspath(__file__)
    for _ in range(__name__.count(".") + 1):
        root = os.path.dirname(root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


def make_htex(workers: int = 2, blocks: int = 1) -> Executor:
    _let_workers_import_tasks()
    if blocks == 1:
        return HighThroughputExecutor(max_workers=workers)
    return HighThroughputExecutor(
        max_workers=workers, provider=LocalProvider(init_blocks=blocks, max_blocks=blocks)
    )


def wait_for_pools(executor: Executor, blocks: int, timeout: float = POOLS_WAIT) -> float:
    """Wait until ``blocks`` HTEX pools have registered; return how long that took (s)."""
    start = time.perf_counter()
    deadline = start + timeout
    while len(getattr(executor, "pools", {})) < blocks:
        if time.perf_counter() > deadline:
            raise TimeoutError(
                f"only {len(getattr(executor, 'pools', {}))} of {blocks} pools registered within {timeout} s"
            )
        time.sleep(0.005)
    return time.perf_counter() - start


def warm_up(executor: Executor, payload: bytes | None) -> None:
    """Start every worker and fill every cache; check that tasks run elsewhere and correctly."""
    futures = [executor.submit(noop) for _ in range(WARMUP_BURST)]
    for fut in futures:
        if fut.result(TIMEOUT) is not None:
            raise AssertionError("noop() returned something")
    for _ in range(WARMUP_SEQUENTIAL):
        executor.submit(noop).result(TIMEOUT)
    if executor.submit(where).result(TIMEOUT) == os.getpid():
        raise AssertionError("the task ran in the driver process")
    if payload is not None:
        for _ in range(WARMUP_ECHOES):
            if executor.submit(echo, payload).result(TIMEOUT) != payload:
                raise AssertionError("echo() returned a different payload")


# -- timed workloads --------------------------------------------------------------------------------


def run_throughput(executor: Executor, tasks: int) -> float:
    """Submit ``tasks`` no-ops with submit(), then collect every result; return tasks/s."""
    gc.collect()
    deadline = time.perf_counter() + TIMEOUT
    start = time.perf_counter()
    futures = [executor.submit(noop) for _ in range(tasks)]
    for fut in futures:
        fut.result(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - start
    del futures
    return tasks / elapsed


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def run_latency(executor: Executor, round_trips: int = LATENCY_ROUND_TRIPS) -> dict[str, float]:
    """Time ``round_trips`` sequential submit(noop).result(); return p50 and p99 in seconds."""
    gc.collect()
    samples = []
    for _ in range(round_trips):
        start = time.perf_counter()
        executor.submit(noop).result(TIMEOUT)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"p50": percentile(samples, 50), "p99": percentile(samples, 99)}


def run_bandwidth(executor: Executor, payload: bytes, round_trips: int = BANDWIDTH_ROUND_TRIPS) -> float:
    """Echo ``payload`` back ``round_trips`` times in sequence; return MiB/s, payload counted once."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(round_trips):
        if len(executor.submit(echo, payload).result(TIMEOUT)) != len(payload):
            raise AssertionError("echo() returned a payload of another size")
    elapsed = time.perf_counter() - start
    return round_trips * len(payload) / MIB / elapsed


def run_startup(factory: Callable[[], Executor]) -> dict[str, float]:
    """Time constructing an executor until the first no-op result; also time its shutdown."""
    gc.collect()
    start = time.perf_counter()
    executor = factory()
    try:
        executor.submit(noop).result(TIMEOUT)
        first = time.perf_counter() - start
    finally:
        stop = time.perf_counter()
        executor.shutdown(wait=True)
        shutdown = time.perf_counter() - stop
    return {"first_result": first, "shutdown": shutdown}


# -- running and reporting --------------------------------------------------------------------------


def measure_steady(
    who: str, factory: Callable[[], Executor], only: set[str], args: argparse.Namespace, results: Results
) -> None:
    """Run throughput, latency and bandwidth on one warmed-up executor."""
    steady = [w for w in ("throughput", "latency", "bandwidth") if w in only]
    if not steady:
        return
    payload = bytes(range(256)) * (MIB // 256)
    progress(f"{who}: starting and warming up")
    try:
        executor = factory()
    except Exception as exc:  # noqa: BLE001 - report and go on with the other executor
        results.fail(f"{who} construction", exc)
        return
    try:
        try:
            warm_up(executor, payload if "bandwidth" in steady else None)
        except Exception as exc:  # noqa: BLE001
            results.fail(f"{who} warm-up", exc)
            return
        for workload in steady:
            progress(f"{who}: {workload} x{args.repeat}")
            for _ in range(args.repeat):
                try:
                    if workload == "throughput":
                        results.add("throughput", who, run_throughput(executor, args.tasks))
                    elif workload == "latency":
                        lat = run_latency(executor)
                        results.add("latency_p50", who, lat["p50"])
                        results.add("latency_p99", who, lat["p99"])
                    else:
                        results.add("bandwidth", who, run_bandwidth(executor, payload))
                except Exception as exc:  # noqa: BLE001
                    results.fail(f"{who} {workload}", exc)
                    break
    finally:
        stop = time.perf_counter()
        try:
            # Do not wait on an executor that failed: its tasks may never finish.
            failed = any(k.startswith(who) for k in results.errors)
            executor.shutdown(wait=not failed, cancel_futures=failed)
        except Exception as exc:  # noqa: BLE001
            results.fail(f"{who} shutdown", exc)
        results.notes[f"{who} shutdown after steady workloads (s)"] = round(time.perf_counter() - stop, 3)


def measure_startup(
    who: str, factory: Callable[[], Executor], args: argparse.Namespace, results: Results
) -> None:
    progress(f"{who}: construct -> first result x{args.repeat}")
    for _ in range(args.repeat):
        try:
            times = run_startup(factory)
        except Exception as exc:  # noqa: BLE001
            results.fail(f"{who} startup", exc)
            return
        results.add("first_result", who, times["first_result"])
        results.add("shutdown", who, times["shutdown"])


POOL_CONFIGS = (
    # (name, pools, workers per pool)
    ("1 pool x 2 workers", 1, 2),
    ("8 pools x 1 worker", 8, 1),
    ("1 pool x 8 workers", 1, 8),
)


def measure_pools(args: argparse.Namespace, results: Results) -> None:
    """HTEX throughput with several configurations of pools and workers."""
    for name, blocks, workers in POOL_CONFIGS:
        progress(f"HTEX {name}: throughput x{args.repeat}")
        start = time.perf_counter()
        try:
            executor = make_htex(workers, blocks)
        except Exception as exc:  # noqa: BLE001
            results.fail(f"HTEX {name} construction", exc)
            continue
        failed = False
        try:
            executor.submit(noop).result(TIMEOUT)  # nothing starts before the first submit
            results.notes[f"HTEX {name}: all pools registered after (s)"] = round(
                wait_for_pools(executor, blocks) + time.perf_counter() - start, 3
            )
            warm_up(executor, None)
            for _ in range(args.repeat):
                results.add("pools_throughput", name, run_throughput(executor, args.tasks))
        except Exception as exc:  # noqa: BLE001
            failed = True
            results.fail(f"HTEX {name}", exc)
        finally:
            stop = time.perf_counter()
            try:
                executor.shutdown(wait=not failed, cancel_futures=failed)
            except Exception as exc:  # noqa: BLE001
                results.fail(f"HTEX {name} shutdown", exc)
            results.notes[f"HTEX {name}: shutdown (s)"] = round(time.perf_counter() - stop, 3)


def fmt_time(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:,.0f} µs"
    if value < 1.0:
        return f"{value * 1e3:,.2f} ms"
    return f"{value:,.3f} s"


def report(results: Results, args: argparse.Namespace, env: dict[str, Any]) -> str:
    out = []
    out.append(
        f"hpcfutures {env['hpcfutures']} ({env['git']}) | Python {env['python']} | {env['cpus']} CPUs | "
        f"pyzmq {env['pyzmq']} / libzmq {env['libzmq']} | cloudpickle {env['cloudpickle']}"
    )
    out.append(
        f"stdlib = ProcessPoolExecutor(max_workers=2), start method {env['start_method']!r}; "
        f"HTEX = HighThroughputExecutor(max_workers=2) with its default LocalProvider (one pool)."
    )
    out.append(
        f"Each figure is the median of {args.repeat} repeat(s); ±x% is half the spread "
        "(max - min) of the repeats relative to that median."
    )
    out.append("")

    rows = []
    r = results
    if "throughput" in r.samples:
        rows.append(
            [
                f"throughput ({args.tasks:,} no-op submit(), then all results)",
                "tasks/s",
                fmt_rate(r.median("throughput", "stdlib")),
                fmt_spread(r.spread("throughput", "stdlib")),
                fmt_rate(r.median("throughput", "HTEX")),
                fmt_spread(r.spread("throughput", "HTEX")),
                fmt_ratio(r.median("throughput", "HTEX"), r.median("throughput", "stdlib")),
            ]
        )
    for key, label in (("latency_p50", "p50"), ("latency_p99", "p99")):
        if key in r.samples:
            rows.append(
                [
                    f"latency ({LATENCY_ROUND_TRIPS} sequential submit().result() of a no-op)",
                    label,
                    fmt_time(r.median(key, "stdlib")),
                    fmt_spread(r.spread(key, "stdlib")),
                    fmt_time(r.median(key, "HTEX")),
                    fmt_spread(r.spread(key, "HTEX")),
                    fmt_ratio(r.median(key, "HTEX"), r.median(key, "stdlib")),
                ]
            )
    if "bandwidth" in r.samples:
        rows.append(
            [
                f"bandwidth ({BANDWIDTH_ROUND_TRIPS} sequential echoes of 1 MiB bytes)",
                "MiB/s *",
                fmt_rate(r.median("bandwidth", "stdlib")),
                fmt_spread(r.spread("bandwidth", "stdlib")),
                fmt_rate(r.median("bandwidth", "HTEX")),
                fmt_spread(r.spread("bandwidth", "HTEX")),
                fmt_ratio(r.median("bandwidth", "HTEX"), r.median("bandwidth", "stdlib")),
            ]
        )
    for key, label in (
        ("first_result", "construct -> first result"),
        ("shutdown", "shutdown(wait=True) after it"),
    ):
        if key in r.samples:
            rows.append(
                [
                    label,
                    "wall time",
                    fmt_time(r.median(key, "stdlib")),
                    fmt_spread(r.spread(key, "stdlib")),
                    fmt_time(r.median(key, "HTEX")),
                    fmt_spread(r.spread(key, "HTEX")),
                    fmt_ratio(r.median(key, "HTEX"), r.median(key, "stdlib")),
                ]
            )
    if rows:
        out.append(table(["workload", "unit", "stdlib", "", "HTEX", "", "HTEX/stdlib"], rows))
        out.append("")
        out.append(
            "HTEX/stdlib: above 1 means HTEX is faster for tasks/s and MiB/s, slower for latency and times."
        )
        if "bandwidth" in r.samples:
            out.append(
                "* MiB/s counts the 1 MiB payload once per round trip (it crosses the wire twice: "
                "to the worker and back), i.e. 100 MiB / elapsed."
            )
        out.append("")

    if "pools_throughput" in r.samples:
        base = r.median("pools_throughput", POOL_CONFIGS[0][0])
        many = r.median("pools_throughput", POOL_CONFIGS[1][0])
        rows = []
        for name, _, _ in POOL_CONFIGS:
            value = r.median("pools_throughput", name)
            rows.append(
                [
                    f"HTEX {name}",
                    fmt_rate(value),
                    fmt_spread(r.spread("pools_throughput", name)),
                    fmt_ratio(value, base),
                    fmt_ratio(many, value),
                ]
            )
        out.append(
            table([f"HTEX pools ({args.tasks:,} no-op tasks)", "tasks/s", "", "vs 1x2", "8x1 vs this"], rows)
        )
        out.append("")
        out.append(
            "8 pools cannot share 2 workers, so 8 pools x 1 worker (8 workers) is compared twice: with the"
        )
        out.append(
            "default 1 pool x 2 workers (what a user gets; differs in both pools and workers), and with"
        )
        out.append(
            "1 pool x 8 workers (same 8 workers; differs only in the number of pools, i.e. interchange"
        )
        out.append(
            "fan-out). On 2 CPUs extra workers add no compute for no-op tasks, only processes to schedule."
        )
        out.append("")

    if r.notes:
        out.append("notes:")
        out.extend(f"  {k}: {v}" for k, v in r.notes.items())
    if r.errors:
        out.append("ERRORS (tracebacks on stderr and in --json): " + ", ".join(r.errors))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    return {
        **provenance(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "cloudpickle": cloudpickle.__version__,
        "start_method": multiprocessing.get_start_method(),
        "task_module": noop.__module__,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="repeats of each timed workload (median reported)"
    )
    parser.add_argument(
        "--tasks", type=int, default=10_000, help="tasks in the throughput and pools workloads"
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run, of: {','.join(WORKLOADS)}",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every repeat and the medians to FILE")
    args = parser.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if args.repeat < 1 or args.tasks < 1:
        parser.error("--repeat and --tasks must be at least 1")
    args.only_set = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    compile_package()  # as installed: see its docstring
    env = environment()
    results = Results()
    # Other processes on a 2-CPU machine move every figure here: record how busy it was.
    results.notes["load average (1, 5, 15 min) at start"] = tuple(round(x, 2) for x in os.getloadavg())
    started = time.perf_counter()
    executors: list[tuple[str, Callable[[], Executor]]] = [("stdlib", make_stdlib), ("HTEX", make_htex)]
    for who, factory in executors:
        measure_steady(who, factory, args.only_set, args, results)
    if "startup" in args.only_set:
        for who, factory in executors:
            measure_startup(who, factory, args, results)
    if "pools" in args.only_set:
        measure_pools(args, results)
    results.notes["load average (1, 5, 15 min) at end"] = tuple(round(x, 2) for x in os.getloadavg())
    results.notes["total run (s)"] = round(time.perf_counter() - started, 1)

    print(report(results, args, env), flush=True)
    if args.json:
        medians = {
            key: {who: statistics.median(v) for who, v in by.items()} for key, by in results.samples.items()
        }
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": env,
                    "options": {"repeat": args.repeat, "tasks": args.tasks, "only": sorted(args.only_set)},
                    "units": {
                        "throughput": "tasks/s",
                        "latency_p50": "s",
                        "latency_p99": "s",
                        "bandwidth": "MiB/s (payload counted once per round trip)",
                        "first_result": "s",
                        "shutdown": "s",
                        "pools_throughput": "tasks/s",
                    },
                    "medians": medians,
                    "repeats": results.samples,
                    "notes": results.notes,
                    "errors": results.errors,
                },
                f,
                indent=2,
            )
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
