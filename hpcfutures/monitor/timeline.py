"""Tries over time: the task stream (one bar per try, one lane per worker) and, for runs too
large to draw try by try, the heatmap of tries ended per lane and time bucket."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ._sql import _one, _rows
from .runs import run_info


@dataclass(frozen=True)
class StreamTry:
    """One try on a lane of the task stream."""

    lane: int  # index into Stream.lanes
    task_id: int
    try_no: int
    func: str | None
    start: float | None
    end: float | None
    outcome: str | None


@dataclass(frozen=True)
class Stream:
    """Tries as bars on lanes, one lane per (host, pool, worker)."""

    lanes: list[str]  # "host/pool/worker"
    tries: list[StreamTry]  # by end time
    total: int  # tries in the whole run: past about 5000, draw the heatmap instead
    until: float | None  # the latest end among these tries: the next call's ``since``
    truncated: bool  # more tries matched than ``limit``


def _lane(host: Any, pool: Any, worker: Any) -> str:
    return f"{host or '?'}/{pool or '?'}/{'?' if worker is None else worker}"


def stream(conn: sqlite3.Connection, run_id: int, *, since: float | None = None, limit: int = 5000) -> Stream:
    """Return tries that ended at or after ``since`` (oldest first, at most ``limit``), or
    the latest ``limit`` tries when ``since`` is None, with the lanes they ran on.

    A try may be written after a later-ending one (a remote pool's batch arrives late), so a
    poller should pass a ``since`` a few seconds before the last ``until`` and drop the tries
    it has by ``(task_id, try_no)``.  Tries still running are not in the record yet.
    """
    columns = "y.task_id, y.try_no, t.func, y.started, y.ended, y.outcome, y.host, y.pool, y.worker"
    join = "FROM try AS y LEFT JOIN task AS t ON t.run_id = y.run_id AND t.task_id = y.task_id"
    if since is None:
        rows = _rows(
            conn,
            f"SELECT {columns} {join} WHERE y.run_id = ? AND y.ended IS NOT NULL ORDER BY y.ended DESC LIMIT ?",
            (run_id, limit + 1),
        ).fetchall()
        truncated = len(rows) > limit
        rows = rows[:limit]
        rows.reverse()
    else:
        rows = _rows(
            conn,
            f"SELECT {columns} {join} WHERE y.run_id = ? AND y.ended >= ? ORDER BY y.ended LIMIT ?",
            (run_id, since, limit + 1),
        ).fetchall()
        truncated = len(rows) > limit
        rows = rows[:limit]
    lanes: dict[str, int] = {}
    tries = []
    for task_id, try_no, func, start, end, outcome, host, pool, worker in rows:
        lane = lanes.setdefault(_lane(host, pool, worker), len(lanes))
        tries.append(StreamTry(lane, task_id, try_no, func, start, end, outcome))
    total = int(_one(conn, "SELECT count(*) FROM try WHERE run_id = ?", (run_id,)))
    return Stream(list(lanes), tries, total, rows[-1][4] if rows else since, truncated)


@dataclass(frozen=True)
class HeatLane:
    """The tries that ended on one lane, per time bucket."""

    lane: str
    ended: list[int]
    failed: list[int]  # of which did not end ok


@dataclass(frozen=True)
class Heatmap:
    """Tries ended per lane per time bucket, for runs too large to draw try by try."""

    start: float
    width: float  # seconds per bucket
    buckets: int
    by: str  # what a lane is: "worker" (host/pool/worker), "pool" (host/pool) or "host"
    lanes: list[HeatLane]
    sampled: int  # 1: exact counts; k: one try in about k counted, and the counts scaled by k


#: Tries a heatmap counts one by one; past this it counts a fixed sample of them.
HEATMAP_EXACT = 200_000


def heatmap(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    buckets: int = 100,
    max_lanes: int = 500,
    exact: int = HEATMAP_EXACT,
    now: float | None = None,
) -> Heatmap:
    """Count the tries that ended per lane and time bucket, from the run's start to its last
    try (or now, for a live run); lanes are workers, or pools or hosts past ``max_lanes``.

    Grouping sorts every try it counts, and so a run of more than ``exact`` tries is counted
    on a sample: the tries whose hashed (task, try) falls in one of ``k`` classes, scaled by
    ``k`` (``Heatmap.sampled``).  The sample is the same at every call, so a live page does
    not flicker.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    run = run_info(conn, run_id, now=now)
    last = _one(conn, "SELECT max(ended) FROM try WHERE run_id = ?", (run_id,))
    total = int(_one(conn, "SELECT count(*) FROM try WHERE run_id = ?", (run_id,)))
    start = run.started
    end = max(last or start, start)
    if run.live:
        end = max(time.time() if now is None else now, end)
    width = max((end - start) / buckets, 1e-6)
    k = max(1, -(-total // max(exact, 1)))
    # a multiplicative hash modulo a prime: task ids dealt round-robin to workers still
    # spread evenly over the classes, which ``task_id % k`` would not
    sample = "" if k == 1 else " AND ((task_id * 2654435761 + try_no * 40503) % 4294967291) % ?5 = 0"
    cells: dict[tuple[Any, Any, Any], tuple[list[int], list[int]]] = {}
    for host, pool, worker, bucket, count, failed in _rows(
        conn,
        "SELECT host, pool, worker, min(max(CAST((ended - ?1) / ?2 AS INTEGER), 0), ?3 - 1) AS b, count(*), "
        f"sum(outcome IS NOT 'ok') FROM try WHERE run_id = ?4 AND ended IS NOT NULL{sample} "
        "GROUP BY host, pool, worker, b",
        (start, width, buckets, run_id, *((k,) if k > 1 else ())),
    ):
        cell = cells.setdefault((host, pool, worker), ([0] * buckets, [0] * buckets))
        cell[0][bucket] += count * k
        cell[1][bucket] += failed * k
    keys: dict[str, Any] = {
        "worker": lambda lane: _lane(*lane),
        "pool": lambda lane: f"{lane[0] or '?'}/{lane[1] or '?'}",
        "host": lambda lane: lane[0] or "?",
    }
    by = "worker"
    for by, key in keys.items():  # noqa: B007 - the last one tried is the answer
        merged: dict[str, tuple[list[int], list[int]]] = {}
        for lane, (ended, failed) in cells.items():
            into = merged.setdefault(key(lane), ([0] * buckets, [0] * buckets))
            into[0][:] = map(sum, zip(into[0], ended))
            into[1][:] = map(sum, zip(into[1], failed))
        if len(merged) <= max_lanes:
            break
    lanes = [HeatLane(name, ended, failed) for name, (ended, failed) in sorted(merged.items())]
    return Heatmap(start, width, buckets, by, lanes, k)
