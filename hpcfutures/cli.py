"""The ``hpcfutures`` command: ``demo``, ``pool`` (the worker-pool entry point), ``monitor`` and ``version``.

The library never prints; this module is where printing happens.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

from . import __version__
from .errors import HpcFuturesError

_PROG = "hpcfutures"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="concurrent.futures Executors from a laptop to a supercomputer."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="estimate pi by Monte Carlo on a local HighThroughputExecutor",
        description="Estimate pi by Monte Carlo sampling, split into tasks that run on a local "
        "HighThroughputExecutor, and report the error and the wall time.",
    )
    demo.add_argument(
        "--samples", type=_positive_int, default=2_000_000, help="points drawn in all (default: 2000000)"
    )
    demo.add_argument(
        "--tasks", type=_positive_int, default=20, help="tasks to split them into (default: 20)"
    )
    demo.add_argument(
        "--max-workers",
        "--workers",
        dest="max_workers",
        type=_positive_int,
        default=None,
        help="worker processes, as HighThroughputExecutor(max_workers=) (default: the usable CPUs)",
    )

    commands.add_parser(
        "pool",
        help="run a worker pool (started by an executor's provider, not by hand)",
        add_help=False,
    )
    commands.add_parser(
        "monitor",
        help="read run records: ls, status, tasks, task, explain, blocks, failures, export, serve",
        add_help=False,
    )
    commands.add_parser("version", help="print the hpcfutures version")
    return parser


def _demo(args: argparse.Namespace) -> int:
    if args.samples < args.tasks:
        print(
            f"{_PROG} demo: --samples ({args.samples}) must be at least --tasks ({args.tasks})",
            file=sys.stderr,
        )
        return 2
    from . import HighThroughputExecutor
    from ._demo import count_inside

    workers = args.max_workers if args.max_workers is not None else _usable_cpus()
    share, extra = divmod(args.samples, args.tasks)
    sizes = [share + (1 if i < extra else 0) for i in range(args.tasks)]
    base_seed = int.from_bytes(os.urandom(4), "little")
    seeds = [base_seed + i for i in range(args.tasks)]

    start = time.perf_counter()
    try:
        with HighThroughputExecutor(max_workers=workers) as executor:
            inside = sum(executor.map(count_inside, sizes, seeds))
    except HpcFuturesError as exc:
        print(f"{_PROG} demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start

    estimate = 4.0 * inside / args.samples
    print(f"pi estimate: {estimate:.6f}")
    print(f"error:       {estimate - math.pi:+.6f}")
    print(f"samples:     {args.samples}")
    print(f"tasks:       {args.tasks}")
    print(f"workers:     {workers}")
    print(f"wall time:   {elapsed:.2f} s (including pool start-up and shutdown)")
    return 0


def _pool(argv: list[str]) -> int:
    # Imported by name: the pool module is heavy and only a pool process needs it.
    pool = importlib.import_module("hpcfutures.executors.htex.pool")
    pool_main: Callable[[list[str]], int] = pool.main
    return pool_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hpcfutures`` command with *argv* (default ``sys.argv[1:]``); return its exit code.

    Argument errors print usage to stderr and return 2, as argparse does.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The pool parses its own arguments: hand them over untouched, options and all.
    if args_list[:1] == ["pool"]:
        return _pool(args_list[1:])
    if args_list[:1] == ["monitor"]:  # it, too, parses its own arguments
        from .monitor.cli import main as monitor_main

        return monitor_main(args_list[1:])
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exc:  # --help, or an argument error already reported
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    if args.command == "demo":
        return _demo(args)
    if args.command == "version":
        print(f"{_PROG} {__version__}")
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse only admits the above
