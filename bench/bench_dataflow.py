"""Benchmark: DataflowExecutor against Parsl's DataFlowKernel, and DataflowExecutor's memory.

Run as ``python bench/bench_dataflow.py [--repeat N] [--tasks N] [--million N] [--only a,b]
[--json FILE]`` (see bench/README.md).  The hpcfutures workloads run in this interpreter; the
Parsl workloads run in a subprocess under the interpreter of a separate virtual environment
(``bench/.venv-parsl``, made with ``--setup-parsl``), so that Parsl never becomes a dependency
of hpcfutures.  That subprocess is this same script with ``--parsl-side``: it imports nothing
from hpcfutures and prints its figures as one JSON line.

The task function below is a module-level function of ``__main__``: HTEX workers of either
system get it by value (cloudpickle for hpcfutures, dill for Parsl).
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

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

WORKLOADS = ("throughput", "graph", "memory")
PARSL_WORKLOADS = ("throughput", "graph")
LAYERS = 100
WIDTH = 10
WARMUP_LAYERS = 10
WINDOW = 10_000
SAMPLE_EVERY = 100_000
THREADS = 2
HTEX_WORKERS = 2
#: No single timed workload may take longer than this; a stuck executor is reported, not waited on.
#: How long processes may take to exit after a shutdown before they are reported and killed.
LEFTOVER_WAIT = 30.0
#: The Parsl subprocess as a whole (Parsl runs at about 1,000 tasks/s: 60,000+ tasks take a minute).
PARSL_TIMEOUT = 900.0
RESULT_MARK = "BENCH-DATAFLOW-RESULT "
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.path.join(HERE, ".venv-parsl")


# -- the task (module level: workers must be able to load it) ------------------------------------


def noop(*args: Any) -> None:
    return None


# -- workloads, shared by both systems: `call(*args)` submits noop(*args) and returns a Future ----


def warm_up(call: Callable[..., Future[Any]]) -> None:
    """Start every worker and fill every cache, including the dependency path."""
    futures = [call() for _ in range(WARMUP_BURST)]
    for fut in futures:
        if fut.result(TIMEOUT) is not None:
            raise AssertionError("noop() returned something")
    for _ in range(WARMUP_SEQUENTIAL):
        call().result(TIMEOUT)
    for fut in submit_graph(call, WARMUP_LAYERS):
        fut.result(TIMEOUT)


def run_throughput(call: Callable[..., Future[Any]], tasks: int) -> float:
    """Submit ``tasks`` no-ops, then collect every result; return tasks/s."""
    gc.collect()
    deadline = time.perf_counter() + TIMEOUT
    start = time.perf_counter()
    futures = [call() for _ in range(tasks)]
    for fut in futures:
        fut.result(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - start
    del futures
    return tasks / elapsed


def submit_graph(call: Callable[..., Future[Any]], layers: int) -> list[Future[Any]]:
    """Submit ``layers`` x WIDTH no-ops; task j of layer i takes outputs j and j+1 of layer i-1."""
    layer = [call(j, j + 1) for j in range(WIDTH)]  # the first layer takes constants
    futures = list(layer)
    for _ in range(layers - 1):
        layer = [call(layer[j], layer[(j + 1) % WIDTH]) for j in range(WIDTH)]
        futures.extend(layer)
    return futures


def run_graph(call: Callable[..., Future[Any]]) -> float:
    """Submit the LAYERS x WIDTH graph, then collect every result; return tasks/s."""
    gc.collect()
    deadline = time.perf_counter() + TIMEOUT
    start = time.perf_counter()
    futures = submit_graph(call, LAYERS)
    for fut in futures:
        fut.result(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - start
    return len(futures) / elapsed


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_memory(call: Callable[..., Future[Any]], tasks: int) -> dict[str, Any]:
    """Stream ``tasks`` no-ops with at most WINDOW futures alive; sample RSS every SAMPLE_EVERY.

    Each task takes the future submitted just before it as its argument, so the dependency
    bookkeeping is exercised too.  A finished future is dropped as soon as its result is read.
    """
    gc.collect()
    window: collections.deque[Future[Any]] = collections.deque()
    samples = [(0, rss())]
    start = time.perf_counter()
    previous: Future[Any] | None = None
    for i in range(1, tasks + 1):
        if len(window) >= WINDOW:
            window.popleft().result(TIMEOUT)
        previous = call(previous) if previous is not None else call()
        window.append(previous)
        if i % SAMPLE_EVERY == 0 or i == tasks:
            samples.append((i, rss()))
    previous = None
    while window:
        window.popleft().result(TIMEOUT)
    elapsed = time.perf_counter() - start
    samples.append((tasks, rss()))  # every task done, nothing alive
    return {"samples": samples, "elapsed": elapsed}


# -- processes ---------------------------------------------------------------------------------------


def started_processes(since: float, marker: str | None = None) -> dict[int, float]:
    """PIDs (with their start times) of this process's descendants, and of processes started
    after ``since`` whose command line contains ``marker`` (Parsl's pools are not children)."""
    import psutil

    me = psutil.Process()
    found = {}
    for proc in me.children(recursive=True):
        try:
            found[proc.pid] = proc.create_time()
        except psutil.Error:
            pass
    if marker:
        mine = {me.pid, *(p.pid for p in me.parents())}
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            info = proc.info
            if (
                proc.pid not in mine
                and (info["create_time"] or 0) >= since
                and any(marker in part for part in info["cmdline"] or ())
            ):
                found[proc.pid] = info["create_time"]
    return found


def alive(procs: dict[int, float]) -> dict[int, float]:
    """The processes of ``procs`` still running (same PID and start time, not a zombie)."""
    import psutil

    left = {}
    for pid, created in procs.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                left[pid] = created
        except psutil.Error:
            pass
    return left


def reap(procs: dict[int, float], timeout: float = LEFTOVER_WAIT) -> tuple[float, dict[int, str]]:
    """Wait up to ``timeout`` for ``procs`` to exit; kill (by PID) and describe any that did not.

    Return how long the wait took and ``{pid: command line}`` of the processes it had to kill.
    """
    import psutil

    start = time.perf_counter()
    while alive(procs) and time.perf_counter() - start < timeout:
        time.sleep(0.05)
    waited = time.perf_counter() - start
    killed = {}
    for pid in alive(procs):
        try:
            proc = psutil.Process(pid)
            killed[pid] = " ".join(proc.cmdline())[:200]
            proc.kill()
        except psutil.Error:
            pass
    return waited, killed


def describe_leftovers(who: str, procs: dict[int, float], waited: float, killed: dict[int, str]) -> str:
    if not procs:
        return f"{who}: no processes were started"
    if not killed:
        return f"{who}: all {len(procs)} processes it started had exited {waited:.2f} s after shutdown"
    return (
        f"{who}: {len(killed)} of {len(procs)} processes still running {waited:.0f} s after shutdown, "
        f"killed: {killed}"
    )


# -- the Parsl side (runs in the Parsl virtual environment) ------------------------------------------


def parsl_side(args: argparse.Namespace) -> dict[str, Any]:
    """Run the Parsl workloads; return every repeat, notes and errors (printed as JSON)."""
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.providers import LocalProvider

    out: dict[str, Any] = {"version": parsl.__version__, "samples": {}, "notes": {}, "errors": {}, "pids": {}}
    run_dir = tempfile.mkdtemp(prefix="bench-dataflow-parsl-")
    venv_marker = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))

    def fail(where: str, exc: BaseException) -> None:
        out["errors"][where] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"\n!! Parsl {where} failed:\n{out['errors'][where]}", file=sys.stderr, flush=True)

    def configs() -> list[tuple[str, str, Callable[[], Any]]]:
        runs = []
        if "throughput" in args.only_set:
            runs.append(
                (
                    "throughput",
                    "ThreadPoolExecutor",
                    lambda: ThreadPoolExecutor(label="threads", max_threads=THREADS),
                )
            )
        if "graph" in args.only_set:
            runs.append(
                (
                    "graph",
                    "HighThroughputExecutor",
                    lambda: HighThroughputExecutor(
                        label="htex",
                        address="127.0.0.1",
                        max_workers_per_node=HTEX_WORKERS,
                        provider=LocalProvider(init_blocks=1, max_blocks=1),
                    ),
                )
            )
        return runs

    try:
        for workload, kind, make in configs():
            since = time.time() - 1.0
            try:
                start = time.perf_counter()
                dfk = DataFlowKernel(Config(executors=[make()], run_dir=run_dir))
                app = python_app(noop, data_flow_kernel=dfk)
            except Exception as exc:  # noqa: BLE001 - report and go on
                fail(f"{kind} start", exc)
                continue
            procs: dict[int, float] = {}
            try:
                progress(f"Parsl {kind}: starting and warming up")
                app().result(TIMEOUT)
                out["notes"][f"Parsl {kind}: DataFlowKernel construct -> first result (s)"] = round(
                    time.perf_counter() - start, 2
                )
                warm_up(app)
                procs = started_processes(since, venv_marker)
                progress(f"Parsl {kind}: {workload} x{args.repeat}")
                for _ in range(args.repeat):
                    if workload == "throughput":
                        value = run_throughput(app, args.tasks)
                    else:
                        value = run_graph(app)
                    out["samples"].setdefault(workload, []).append(value)
            except Exception as exc:  # noqa: BLE001
                fail(f"{kind} {workload}", exc)
            finally:
                procs.update(started_processes(since, venv_marker))
                stop = time.perf_counter()
                try:
                    dfk.cleanup()
                except Exception as exc:  # noqa: BLE001
                    fail(f"{kind} cleanup", exc)
                out["notes"][f"Parsl {kind}: dfk.cleanup() (s)"] = round(time.perf_counter() - stop, 3)
                waited, killed = reap(procs)
                out["notes"][f"Parsl {kind} processes"] = describe_leftovers(
                    f"DataFlowKernel over {kind}", procs, waited, killed
                )
                out["pids"].update({str(pid): created for pid, created in procs.items()})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


# -- the hpcfutures side -------------------------------------------------------------------------------


def _let_workers_import_tasks() -> None:
    """Put this module's import root on PYTHONPATH when it is not ``__main__``.

    Imported as ``bench_dataflow`` (or ``bench.bench_dataflow``), ``noop`` is pickled by
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


def measure_hpcfutures(workload: str, args: argparse.Namespace, results: Results) -> None:
    """Run one workload on a new, warmed-up DataflowExecutor, then shut it down."""
    from hpcfutures import DataflowExecutor, HighThroughputExecutor, ThreadExecutor

    if workload == "graph":
        _let_workers_import_tasks()
        kind = "HighThroughputExecutor"
        make: Callable[[], Any] = lambda: HighThroughputExecutor(max_workers=HTEX_WORKERS)  # noqa: E731
    else:
        kind = "ThreadExecutor"
        make = lambda: ThreadExecutor(max_workers=THREADS)  # noqa: E731
    progress(f"hpcfutures {kind}: starting and warming up")
    start = time.perf_counter()
    try:
        dfx = DataflowExecutor(make(), shutdown_executors=True)
    except Exception as exc:  # noqa: BLE001 - report and go on with the other workloads
        results.fail(f"hpcfutures {kind} construction", exc)
        return
    call = functools.partial(dfx.submit, noop)
    procs: dict[int, float] = {}
    failed = False
    try:
        call().result(TIMEOUT)
        results.notes[f"hpcfutures {kind}: construct -> first result (s)"] = round(
            time.perf_counter() - start, 2
        )
        warm_up(call)
        procs = started_processes(0.0)
        if workload == "memory":
            progress(f"hpcfutures {kind}: memory, {args.million:,} tasks")
            results.memory = run_memory(call, args.million)
            return
        progress(f"hpcfutures {kind}: {workload} x{args.repeat}")
        for _ in range(args.repeat):
            if workload == "throughput":
                results.add("throughput", "hpcfutures", run_throughput(call, args.tasks))
            else:
                results.add("graph", "hpcfutures", run_graph(call))
    except Exception as exc:  # noqa: BLE001
        failed = True
        results.fail(f"hpcfutures {kind} {workload}", exc)
    finally:
        procs.update(started_processes(0.0))
        stop = time.perf_counter()
        try:
            # Do not wait on an executor that failed: its tasks may never finish.
            dfx.shutdown(wait=not failed, cancel_futures=failed)
        except Exception as exc:  # noqa: BLE001
            results.fail(f"hpcfutures {kind} shutdown", exc)
        results.notes[f"hpcfutures {kind} ({workload}): shutdown (s)"] = round(time.perf_counter() - stop, 3)
        if procs:
            waited, killed = reap(procs)
            results.notes[f"hpcfutures {kind} processes"] = describe_leftovers(
                f"DataflowExecutor over {kind}", procs, waited, killed
            )
            if killed:
                results.fail(f"hpcfutures {kind} cleanup", f"processes left after shutdown: {killed}")


def setup_parsl(venv: str) -> None:
    """Create ``venv`` and install Parsl into it (through pip's configured index)."""
    progress(f"creating {venv} and installing parsl (once)")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "parsl"], check=True)


def measure_parsl(args: argparse.Namespace, results: Results) -> None:
    """Run the Parsl workloads in a subprocess of the Parsl environment; merge its figures."""
    only = [w for w in PARSL_WORKLOADS if w in args.only_set]
    if not only or args.no_parsl:
        return
    python = os.path.join(args.parsl_venv, "bin", "python")
    if not os.path.exists(python) and args.setup_parsl:
        try:
            setup_parsl(args.parsl_venv)
        except (OSError, subprocess.CalledProcessError) as exc:
            results.fail("Parsl install", exc)
            return
    if not os.path.exists(python):
        results.fail(
            "Parsl",
            f"no Parsl environment at {args.parsl_venv}: create it with --setup-parsl, or with\n"
            f"  python -m venv {args.parsl_venv} && {args.parsl_venv}/bin/pip install parsl",
        )
        return
    env = dict(os.environ)
    # Parsl starts its interchange and pools as console scripts (interchange.py,
    # process_worker_pool.py): the environment's bin/ must come first on PATH.
    env["PATH"] = os.pathsep.join([os.path.join(args.parsl_venv, "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = os.path.abspath(args.parsl_venv)
    env.pop("PYTHONPATH", None)
    cmd = [
        python,
        os.path.abspath(__file__),
        "--parsl-side",
        "--repeat",
        str(args.repeat),
        "--tasks",
        str(args.tasks),
        "--only",
        ",".join(only),
    ]
    since = time.time() - 1.0
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True
    )
    try:
        stdout, _ = proc.communicate(timeout=PARSL_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        results.fail("Parsl", f"the Parsl subprocess did not finish within {PARSL_TIMEOUT:g} s; killed")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    # Whatever happened, no Parsl process may outlive the run.
    leftovers = started_processes(since, os.path.abspath(args.parsl_venv))
    if lines:
        data = json.loads(lines[-1][len(RESULT_MARK) :])
        leftovers.update({int(pid): created for pid, created in data["pids"].items()})
        results.notes["parsl"] = data["version"]
        for workload, values in data["samples"].items():
            for value in values:
                results.add(workload, "Parsl", value)
        results.notes.update(data["notes"])
        for where, text in data["errors"].items():
            results.errors[f"Parsl {where}"] = text  # already printed by the subprocess
    elif proc.returncode is not None:
        results.fail(
            "Parsl",
            f"the Parsl subprocess exited with status {proc.returncode} and no result:\n{stdout[-4000:]}",
        )
    waited, killed = reap(leftovers, timeout=5.0)
    if killed:
        results.fail("Parsl cleanup", f"Parsl processes still running after the Parsl run, killed: {killed}")
    else:
        results.notes["Parsl processes after the subprocess exited"] = "none left"


# -- reporting -----------------------------------------------------------------------------------------


def fmt_mib(value: float) -> str:
    return f"{value / MIB:,.1f}"


THROUGHPUT_TARGET = 20_000.0
GRAPH_TARGET_RATIO = 10.0
#: Any Python object kept per task costs at least 16 bytes: less steady growth than this per
#: task means no per-task object is retained.
FLAT_BYTES_PER_TASK = 8.0


def memory_summary(memory: dict[str, Any]) -> dict[str, Any]:
    """Start and end RSS, the largest growth, and the growth per task once the window is full.

    ``flat`` is None when the run was too short to have tasks after its first sample.
    """
    samples = memory["samples"]
    start = samples[0][1]
    tasks = samples[-1][0]
    # From the first sample on, the window of futures is full: growth after it is a leak.
    first_tasks, first = samples[1]
    steady_tasks = tasks - first_tasks
    steady = samples[-1][1] - first
    per_task = steady / steady_tasks if steady_tasks else None
    return {
        "start": start,
        "end": samples[-1][1],
        "max_growth": max(s[1] for s in samples) - start,
        "steady_growth": steady,
        "steady_tasks": steady_tasks,
        "bytes_per_task": per_task,
        "flat": None if per_task is None else per_task < FLAT_BYTES_PER_TASK,
        "rate": tasks / memory["elapsed"],
    }


def report(results: Results, args: argparse.Namespace, env: dict[str, Any]) -> str:
    r = results
    out = [
        f"hpcfutures {env['hpcfutures']} ({env['git']}) | Parsl {r.notes.get('parsl', '-')} | "
        f"Python {env['python']} | {env['cpus']} CPUs",
        f"throughput: DataflowExecutor(ThreadExecutor(max_workers={THREADS})) vs DataFlowKernel over "
        f"ThreadPoolExecutor(max_threads={THREADS}) with a python_app;",
        f"graph: DataflowExecutor(HighThroughputExecutor(max_workers={HTEX_WORKERS})) vs DataFlowKernel over "
        f"HighThroughputExecutor(max_workers_per_node={HTEX_WORKERS}, address='127.0.0.1', "
        "LocalProvider(init_blocks=1, max_blocks=1)).",
        f"Each figure is the median of {args.repeat} repeat(s); ±x% is half the spread (max - min) of the "
        "repeats relative to that median.",
        "",
    ]
    rows = []
    if "throughput" in r.samples:
        hpc, parsl = r.median("throughput", "hpcfutures"), r.median("throughput", "Parsl")
        met = "-" if hpc is None else ("met" if hpc >= THROUGHPUT_TARGET else "MISSED")
        rows.append(
            [
                f"throughput ({args.tasks:,} no-op submits, then all results; threads)",
                "tasks/s",
                fmt_rate(hpc),
                fmt_spread(r.spread("throughput", "hpcfutures")),
                fmt_rate(parsl),
                fmt_spread(r.spread("throughput", "Parsl")),
                fmt_ratio(hpc, parsl),
                f"hpcfutures >= {THROUGHPUT_TARGET:,.0f}/s: {met}",
            ]
        )
    if "graph" in r.samples:
        hpc, parsl = r.median("graph", "hpcfutures"), r.median("graph", "Parsl")
        met = (
            "-"
            if hpc is None or parsl is None
            else ("met" if hpc >= GRAPH_TARGET_RATIO * parsl else "MISSED")
        )
        rows.append(
            [
                f"graph ({LAYERS} layers x {WIDTH} tasks, 2 dependencies each; HTEX, 2 workers)",
                "tasks/s",
                fmt_rate(hpc),
                fmt_spread(r.spread("graph", "hpcfutures")),
                fmt_rate(parsl),
                fmt_spread(r.spread("graph", "Parsl")),
                fmt_ratio(hpc, parsl),
                f">= {GRAPH_TARGET_RATIO:.0f}x Parsl: {met}",
            ]
        )
    if rows:
        out.append(
            table(["workload", "unit", "hpcfutures", "", "Parsl", "", "hpcfutures/Parsl", "target"], rows)
        )
        out.append("")

    if r.memory is not None:
        m = memory_summary(r.memory)
        samples = r.memory["samples"]
        mem_rows = [
            [
                "start (warmed up, nothing submitted)"
                if i == 0
                else ("all done" if i == len(samples) - 1 else f"{n:,}"),
                fmt_mib(value),
                f"{(value - m['start']) / MIB:+,.1f}",
            ]
            for i, (n, value) in enumerate(samples)
        ]
        out.append(
            table(
                [
                    f"memory: {args.million:,} tasks, <= {WINDOW:,} alive; tasks submitted",
                    "driver RSS MiB",
                    "vs start",
                ],
                mem_rows,
            )
        )
        out.append("")
        if m["flat"] is None:
            steady = (
                f"too few tasks to judge growth after the window filled (needs more than {SAMPLE_EVERY:,})"
            )
        else:
            steady = (
                f"after the window filled: {m['steady_growth'] / MIB:+.1f} MiB over {m['steady_tasks']:,} tasks "
                f"= {m['bytes_per_task']:.2f} bytes/task -> {'flat' if m['flat'] else 'GROWING'} "
                f"(flat: < {FLAT_BYTES_PER_TASK:g} bytes/task)"
            )
        out.append(
            f"RSS start {fmt_mib(m['start'])} MiB, end {fmt_mib(m['end'])} MiB, max growth "
            f"{m['max_growth'] / MIB:+.1f} MiB; {steady}; {m['rate']:,.0f} tasks/s."
        )
        out.append("")

    if r.notes:
        out.append("notes:")
        out.extend(f"  {k}: {v}" for k, v in r.notes.items() if k != "parsl")
    if r.errors:
        out.append("ERRORS (tracebacks on stderr and in --json): " + ", ".join(r.errors))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    return provenance()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="repeats of each timed workload (median reported)"
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in the throughput workload")
    parser.add_argument(
        "--million", type=int, default=1_000_000, metavar="N", help="tasks in the memory workload"
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run, of: {','.join(WORKLOADS)}",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every repeat and the medians to FILE")
    parser.add_argument("--no-parsl", action="store_true", help="measure hpcfutures only")
    parser.add_argument(
        "--parsl-venv",
        default=DEFAULT_VENV,
        help="the virtual environment Parsl runs in (default: %(default)s)",
    )
    parser.add_argument(
        "--setup-parsl",
        action="store_true",
        help="create --parsl-venv and pip install parsl into it if missing",
    )
    parser.add_argument("--parsl-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if args.repeat < 1 or args.tasks < 1 or args.million < 1:
        parser.error("--repeat, --tasks and --million must be at least 1")
    args.only_set = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.parsl_side:
        data = parsl_side(args)
        print(RESULT_MARK + json.dumps(data), flush=True)
        return 0
    compile_package()  # as installed: see its docstring
    env = environment()
    results = Results()
    results.notes["load average (1, 5, 15 min) at start"] = tuple(round(x, 2) for x in os.getloadavg())
    started = time.perf_counter()
    for workload in ("throughput", "graph"):
        if workload in args.only_set:
            measure_hpcfutures(workload, args, results)
    measure_parsl(args, results)
    if "memory" in args.only_set:
        measure_hpcfutures("memory", args, results)
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
                    "options": {
                        "repeat": args.repeat,
                        "tasks": args.tasks,
                        "million": args.million,
                        "only": sorted(args.only_set),
                    },
                    "units": {"throughput": "tasks/s", "graph": "tasks/s", "memory": "bytes RSS"},
                    "medians": medians,
                    "repeats": results.samples,
                    "memory": results.memory
                    and {**results.memory, "summary": memory_summary(results.memory)},
                    "notes": results.notes,
                    "errors": results.errors,
                },
                f,
                indent=2,
            )
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
