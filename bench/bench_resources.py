"""Benchmark: a mixed workload of tasks with resources on one HighThroughputExecutor pool.

Run as ``python bench/bench_resources.py [--tasks N] [--hold SECONDS] [--repeat N]``.

Many one-core tasks, a few that take every core of the node, and a few that each hold one
of two named (fake) accelerators, all submitted at once in random order.  Each task sleeps
``--hold`` seconds and reports when it ran.  The figures are the slots' utilisation: the
core-seconds and accelerator-seconds the tasks held, over what the pool offered between
the first start and the last end, and the makespan against its lower bound (the work
divided by the cores).  A scheduler that leaves cores idle while work waits, or lets a
large task starve, shows here.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from hpcfutures import HighThroughputExecutor, Resources


def hold(seconds: float) -> tuple[float, float]:
    """Sleep ``seconds``; return when the task started and ended."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def run_once(tasks: int, seconds: float, seed: int) -> dict[str, float]:
    cores = len(os.sched_getaffinity(0))
    gpus = ["fake0", "fake1"]
    rng = random.Random(seed)
    kinds = ["one"] * tasks
    for i in range(tasks // 20):  # 5% take the whole node, 5% an accelerator
        kinds[i] = "node"
        kinds[-1 - i] = "gpu"
    rng.shuffle(kinds)
    need = {"one": Resources(), "node": Resources(cores=cores), "gpu": Resources(gpus=1)}
    with HighThroughputExecutor(max_workers=cores, available_accelerators=gpus) as ex:
        ex.submit(hold, 0).result(60)  # the pool is up
        views = {kind: ex.options(resources=r) for kind, r in need.items()}
        started = time.time()
        futures = [(kind, views[kind].submit(hold, seconds)) for kind in kinds]
        spans = [(kind, f.result(600)) for kind, f in futures]
        wall = time.time() - started
    first = min(s for _k, (s, _e) in spans)
    last = max(e for _k, (_s, e) in spans)
    busy = last - first
    core_seconds = sum((e - s) * need[k].cores for k, (s, e) in spans)
    gpu_seconds = sum((e - s) for k, (s, e) in spans if k == "gpu")
    bound = core_seconds / cores
    return {
        "core utilisation": core_seconds / (busy * cores),
        "accelerator seconds held": gpu_seconds,
        "makespan / lower bound": busy / bound,
        "wall (s)": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--hold", type=float, default=0.02, help="seconds each task sleeps")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [run_once(args.tasks, args.hold, seed) for seed in range(args.repeat)]
    cores = len(os.sched_getaffinity(0))
    print(
        f"mixed workload: {args.tasks} tasks of {args.hold * 1000:g} ms on one pool of {cores} cores "
        f"and 2 fake accelerators; 90% one core, 5% every core, 5% one accelerator; "
        f"median of {args.repeat}"
    )
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"  {name:28s} {statistics.median(values):8.3f}   (runs: {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
