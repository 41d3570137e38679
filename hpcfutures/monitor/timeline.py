"""Tries over time: the task stream (one bar per try, one lane per worker) and, for runs too
large to draw try by try, the heatmap of tries ended per lane and time bucket."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ._sql import _count, _last_ended, _plain, _rows
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
    # try_full's tries (with their task's func) and task_plain's, merged in ended order, each
    # read from its ended index; ties go by (task_id, try_no), that index's order
    columns = "task_id, try_no, func, started, ended, outcome, host, pool, worker"
    full = (
        "SELECT y.task_id, y.try_no, t.func, y.started, y.ended, y.outcome, y.host, y.pool, y.worker "
        "FROM try_full AS y LEFT JOIN task_full AS t ON t.run_id = y.run_id AND t.task_id = y.task_id "
        "WHERE y.run_id = ?1 AND y.ended {bound}"
    )
    plain = f"SELECT {_plain(columns)} FROM task_plain WHERE run_id = ?1 AND ended {{bound}}"
    params: tuple[Any, ...] = (run_id, limit + 1)
    if since is None:
        bound, order = "IS NOT NULL", "ended DESC, task_id DESC, try_no DESC"
    else:
        bound, order, params = ">= ?3", "ended, task_id, try_no", (*params, since)
    sql = f"{full} UNION ALL {plain} ORDER BY {order} LIMIT ?2".format(bound=bound)
    rows = _rows(conn, sql, params).fetchall()
    truncated = len(rows) > limit
    rows = rows[:limit]
    if since is None:
        rows.reverse()
    lanes: dict[str, int] = {}
    tries = []
    for task_id, try_no, func, start, end, outcome, host, pool, worker in rows:
        lane = lanes.setdefault(_lane(host, pool, worker), len(lanes))
        tries.append(StreamTry(lane, task_id, try_no, func, start, end, outcome))
    total = _count(conn, "try_full", run_id) + _count(conn, "task_plain", run_id)
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
    last = _last_ended(conn, run_id, "try_full", "task_plain")
    total = _count(conn, "try_full", run_id) + _count(conn, "task_plain", run_id)
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
    # counted in try_full and task_plain (whose tries all ended ok) apart, and added up here
    counts = (
        "SELECT host, pool, worker, min(max(CAST((ended - ?1) / ?2 AS INTEGER), 0), ?3 - 1) AS b, count(*), "
        f"{{failed}} FROM {{table}} WHERE run_id = ?4 AND ended IS NOT NULL{sample} GROUP BY host, pool, worker, b"
    )
    for host, pool, worker, bucket, count, failed in _rows(
        conn,
        counts.format(failed="sum(outcome IS NOT 'ok')", table="try_full")
        + " UNION ALL "
        + counts.format(failed="0", table="task_plain"),
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
