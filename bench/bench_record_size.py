"""The size of a run record of a million tasks, and how long each monitor query takes on it.

Run as ``python bench/bench_record_size.py [--tasks N] [--keep FILE] [--repeat N]``.  It
writes a synthetic record straight into the schema's tables (``executemany``, not through
the Recorder: this measures the reader, and builds a million tasks in seconds), then times
every query of :mod:`hpcfutures.monitor.query` on it.

The record: one run of ``--tasks`` tasks of five functions on 10 pools of 32 workers (320
worker slots), about 1 s a task; one try per task; 2% failed with a traceback of ~1 kB and a
stderr tail; 1% answered from the cache; every tenth task has two parents; the last 2,000
tasks are still running or queued when the run's writer stopped (so it shows as ``lost``);
12 blocks (two still pending at the scheduler) with their state history, and a node sample
per pool every 10 s.  As the writer lays tasks out (schema version 2), a task whose one try
ended ok and which has no parents, cache decision or resources is a ``task_plain`` row (about
87% of them); the others are ``task_full`` rows with their tries in ``try_full``.

Each query is timed on a fresh connection (SQLite's page cache empty, the OS's warm: the
file was just written) and then ``--repeat`` more times; the table gives the first time and
the best.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpcfutures.monitor import query
from hpcfutures.monitor.schema import connect, connect_for_reading

FUNCS = ("load", "simulate", "analyse", "reduce", "plot")
POOLS = 10
WORKERS = 32
OPEN = 2000  # tasks not finished when the writer stopped
TRACEBACK = """Traceback (most recent call last):
  File "/home/user/.venv/lib/python3.11/site-packages/hpcfutures/executors/htex/worker.py", line 212, in _run_task
    result = fn(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^^
  File "/home/user/project/pipeline/steps.py", line 88, in {func}
    data = _read(path, columns=COLUMNS)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/user/project/pipeline/io.py", line 41, in _read
    frame = parse(handle.read(), strict=True)
            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/user/project/pipeline/io.py", line 19, in parse
    raise ValueError(f"bad input {{value}} at line {{line}}")
{exception}
"""
EXCEPTIONS = (
    "ValueError: bad input {n} at line {m}",
    "FileNotFoundError: [Errno 2] No such file or directory: '/scratch/user/run/part-{n}.dat'",
    "KeyError: 'sample-{n}'",
    "MemoryError: cannot allocate {m} bytes",
)


def build(path: Path, n: int, seed: int = 1) -> dict[str, Any]:
    """Write a synthetic finished-but-lost run of ``n`` tasks to ``path``; return its shape."""
    rng = random.Random(seed)
    conn = connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    t0 = time.time() - 4 * 3600
    lanes = [(f"node{p + 1:03d}", f"pool-{p}", w) for p in range(POOLS) for w in range(WORKERS)]
    free = [t0 + 5.0] * len(lanes)
    counts = dict.fromkeys(("submitted", "running", "done", "failed", "cached", "cancelled"), 0)
    tasks: list[tuple[Any, ...]] = []
    tries: list[tuple[Any, ...]] = []
    plain: list[tuple[Any, ...]] = []
    edges: list[tuple[int, int, int]] = []
    last_end = t0
    for i in range(n):
        task_id = i + 1
        func = FUNCS[i % len(FUNCS)]
        submitted = t0 + i * 0.0005
        counts["submitted"] += 1
        if task_id % 10 == 0 and task_id > 2:
            edges.append((1, task_id, task_id - 1))
            edges.append((1, task_id, task_id - 2))
        if i >= n - OPEN:
            state = "running" if i < n - OPEN + len(lanes) else rng.choice(("queued", "pending"))
            started = submitted + 1.0 if state == "running" else None
            counts["running"] += state == "running"
            tasks.append(
                (
                    1,
                    task_id,
                    func,
                    None,
                    "htex",
                    state,
                    submitted,
                    started,
                    None,
                    0,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            )
            continue
        if rng.random() < 0.01:
            counts["cached"] += 1
            tasks.append(
                (1, task_id, func, None, "htex", "memo_done", submitted, None, submitted + 0.01, 0, None, None,
                 "hit", f"{rng.getrandbits(128):032x}", None)
            )  # fmt: skip
            continue
        lane = i % len(lanes)
        host, pool, worker = lanes[lane]
        queued = submitted + 0.001
        started = max(free[lane], queued + 0.002)
        ended = started + rng.uniform(0.4, 1.6)
        free[lane] = ended
        last_end = max(last_end, ended)
        failed = rng.random() < 0.02
        exception = traceback = stderr = None
        if failed:
            exception = rng.choice(EXCEPTIONS).format(n=rng.randrange(10_000), m=rng.randrange(1, 500))
            traceback = TRACEBACK.format(func=func, exception=exception)
            stderr = f"reading /scratch/user/run/part-{i}.dat\nwarning: {rng.randrange(100)} malformed rows\n"
            counts["failed"] += 1
        else:
            counts["done"] += 1
        pid, rss_kb = 40_000 + lane * 7 + worker, rng.randrange(50_000, 400_000)
        cpu = round(ended - started - 0.01, 3)
        if not failed and task_id % 10 != 0:  # one try, ended ok; no parents, cache decision or resources
            plain.append(
                (1, task_id, func, None, "htex", submitted, queued, queued + 0.001, started, ended, 1, pool, host,
                 worker, pid, rss_kb, cpu)
            )  # fmt: skip
            continue
        tasks.append(
            (1, task_id, func, None, "htex", "failed" if failed else "done", submitted, started, ended, 1, exception,
             None, None, None, None)
        )  # fmt: skip
        tries.append(
            (1, task_id, 1, queued, queued + 0.001, started, ended, "error" if failed else "ok", 1, exception,
             traceback, pool, host, worker, pid, rss_kb, cpu, None, None, stderr)
        )  # fmt: skip
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO task_full VALUES (" + ", ".join("?" * 15) + ")", tasks)
    conn.executemany("INSERT INTO try_full VALUES (" + ", ".join("?" * 20) + ")", tries)
    conn.executemany("INSERT INTO task_plain VALUES (" + ", ".join("?" * 17) + ")", plain)
    conn.executemany("INSERT INTO edge VALUES (?, ?, ?)", edges)
    blocks, history, pools, samples = _infrastructure(t0, last_end, lanes)
    conn.executemany("INSERT INTO block VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", blocks)
    conn.executemany("INSERT INTO block_state VALUES (?, ?, ?, ?, ?, ?, ?)", history)
    conn.executemany("INSERT INTO pool VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", pools)
    conn.executemany("INSERT INTO sample VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", samples)
    conn.execute(
        "INSERT INTO run (run_id, family, kind, label, status, started, heartbeat, host, pid, argv, version, config, "
        "submitted, running, done, failed, cached, cancelled) VALUES (1, ?, 'htex', 'htex', 'running', ?, ?, "
        "'login1', 4242, ?, 'bench', '{}', ?, ?, ?, ?, ?, ?)",
        (path.stem, t0, last_end, json.dumps(["pipeline.py"]), *counts.values()),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {
        "tasks": len(tasks) + len(plain), "tries": len(tries) + len(plain), "plain": len(plain), "edges": len(edges),
        "samples": len(samples), **counts,
    }  # fmt: skip


def _infrastructure(
    t0: float, end: float, lanes: list[tuple[str, str, int]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    blocks, history, pools, samples = [], [], [], []
    for b in range(POOLS + 2):
        job = str(81_000 + b)
        waiting = b >= POOLS
        blocks.append((1, "htex", str(b), job, "pending" if waiting else "running", "PD" if waiting else "R",
                       "Priority" if waiting else None, t0 + b, end if not waiting else t0 + b))  # fmt: skip
        history.append((1, "htex", str(b), t0 + b, "pending", "PD", "Resources"))
        if not waiting:
            history.append((1, "htex", str(b), t0 + b + 3, "running", "R", None))
            host = lanes[b * WORKERS][0]
            pools.append(
                (
                    1,
                    "htex",
                    f"pool-{b}",
                    str(b),
                    host,
                    9000 + b,
                    WORKERS,
                    '{"cores": 32}',
                    t0 + b + 4,
                    None,
                    None,
                )
            )
            at = t0 + b + 4
            while at < end:
                samples.append((1, at, "htex", host, f"pool-{b}", 97.5, 31.2, 42.0, 2048.0, WORKERS, WORKERS))
                at += 10.0
    return blocks, history, pools, samples


def _timed(make: Callable[[sqlite3.Connection], Any], path: Path, repeat: int) -> tuple[float, float]:
    conn = connect_for_reading(path)
    try:
        times = []
        for _ in range(1 + repeat):
            start = time.perf_counter()
            make(conn)
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    return times[0], min(times[1:] or times)


def queries(path: Path) -> Iterator[tuple[str, Callable[[sqlite3.Connection], Any]]]:
    """The queries to time, by name."""
    conn = connect_for_reading(path)
    failed = query.tasks(conn, 1, state="failed", limit=1)[0][0].task_id
    queued = query.tasks(conn, 1, state="queued", limit=1)[0][0].task_id
    waiting = next(
        t.task_id for t in query.tasks(conn, 1, state="pending", limit=OPEN)[0] if t.task_id % 10 == 0
    )
    conn.close()
    yield "list_runs", query.list_runs
    yield "status", lambda c: query.status(c, 1)
    yield "tasks page, offset 0", lambda c: query.tasks(c, 1, limit=50)
    yield "tasks page, state=done, offset 900,000", lambda c: query.tasks(c, 1, state="done", offset=900_000)
    yield (
        "tasks page, func=analyse, offset 190,000",
        lambda c: query.tasks(c, 1, func="analyse", offset=190_000),
    )
    yield "tasks page, state=failed, func=load", lambda c: query.tasks(c, 1, state="failed", func="load")
    yield (
        "tasks page, state=done, func=analyse, offset 150,000",
        lambda c: query.tasks(c, 1, state="done", func="analyse", offset=150_000),
    )
    yield "tasks page, order=-ended", lambda c: query.tasks(c, 1, order="-ended")
    yield (
        "tasks page, state=failed, order=-ended, offset 19,000",
        lambda c: query.tasks(c, 1, state="failed", order="-ended", offset=19_000),
    )
    yield (
        "tasks page, state=done, order=-ended, offset 900,000",
        lambda c: query.tasks(c, 1, state="done", order="-ended", offset=900_000),
    )
    yield "task_detail (failed task)", lambda c: query.task_detail(c, 1, failed)
    yield "why_not_running (queued task)", lambda c: query.why_not_running(c, 1, queued)
    yield "why_not_running (waits on parents)", lambda c: query.why_not_running(c, 1, waiting)
    yield "failures", lambda c: query.failures(c, 1)
    yield "blocks", lambda c: query.blocks(c, 1)
    yield "pools", lambda c: query.pools(c, 1)
    yield "samples (latest 10,000)", lambda c: query.samples(c, 1)
    yield "stream (latest 5,000 tries)", lambda c: query.stream(c, 1)
    yield "heatmap (100 buckets)", lambda c: query.heatmap(c, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--keep", type=Path, help="write the record here and keep it (default: a temporary file)"
    )
    parser.add_argument("--reuse", action="store_true", help="time the queries on the --keep file as it is")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.db"
        if args.reuse and args.keep and path.exists():
            shape, built = _shape(path), 0.0
        else:
            if path.exists():
                path.unlink()
            start = time.perf_counter()
            shape = build(path, args.tasks)
            built = time.perf_counter() - start
        size = os.path.getsize(path)
        print(f"record: {path}: {shape['tasks']:,} tasks ({shape['plain']:,} plain), {shape['tries']:,} tries, "
              f"{shape['edges']:,} edges, {shape['samples']:,} samples; built in {built:.1f} s")  # fmt: skip
        print(f"size: {size:,} bytes = {size / 2**20:,.1f} MiB, {size / shape['tasks']:.0f} bytes per task")
        _table_sizes(path)
        print(f"\n{'query':<56} {'first':>9} {'best':>9}")
        slowest = 0.0
        for name, make in queries(path):
            first, best = _timed(make, path, args.repeat)
            slowest = max(slowest, first)
            print(f"{name:<56} {first * 1000:>7.1f}ms {best * 1000:>7.1f}ms")
        print(f"\nslowest first call: {slowest * 1000:.0f} ms; python {sys.version.split()[0]}, "
              f"SQLite {sqlite3.sqlite_version}")  # fmt: skip
    return 0


def _shape(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        return {
            key: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for key, table in (
                ("tasks", "task"),
                ("tries", "try"),
                ("plain", "task_plain"),
                ("edges", "edge"),
                ("samples", "sample"),
            )
        }
    finally:
        conn.close()


def _table_sizes(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.Error:
        return  # this SQLite has no dbstat
    finally:
        conn.close()
    print("  " + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in rows if size > 2**20))


if __name__ == "__main__":
    raise SystemExit(main())
