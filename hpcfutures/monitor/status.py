"""Where a run stands: task counts by state and function, throughput, ETA, retries, workers."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from ._sql import _hint, _one, _rows
from .runs import Run, run_info
from .schema import FINAL_STATES, TASK_STATES

#: The window, in seconds, of the recent throughput.
RECENT = 60.0


@dataclass(frozen=True)
class FuncCounts:
    """The tasks of one function, by state."""

    func: str
    total: int
    states: dict[str, int]


@dataclass(frozen=True)
class Status:
    """Where a run stands: counts, rates and an estimate of the time left."""

    run: Run
    states: dict[str, int]  # every state of TASK_STATES, zero or more
    total: int
    finished: int
    elapsed: float  # seconds from the run's start to now (live) or to its last sign of life
    rate_recent: float | None  # tasks ended per second over the last RECENT seconds
    rate_overall: float | None  # tasks ended per second since the start
    eta: float | None  # seconds left at the recent rate, for a live run with a rate
    by_func: list[FuncCounts]
    dropped: int  # node samples the writer dropped
    retries: int  # tries charged to the user's retries and tried again
    requeues: int  # tries lost with their worker and requeued, not charged
    pools: int  # worker pools connected now
    workers: int  # their worker slots


def _clock(run: Run, now: float) -> float:
    if run.status == "running":
        return now
    return run.ended or run.heartbeat or run.started


def _state_counts(conn: sqlite3.Connection, run_id: int) -> dict[str, int]:
    states = dict.fromkeys(TASK_STATES, 0)
    for state, count in _rows(
        conn, "SELECT state, count(*) FROM task WHERE run_id = ? GROUP BY state", (run_id,)
    ):
        states[state] = count
    return states


def _func_counts(conn: sqlite3.Connection, run_id: int) -> list[FuncCounts]:
    # task_by_func covers (func, state): the counts come from the index, not the rows
    counts: dict[str, dict[str, int]] = {}
    for func, state, n in _rows(
        conn,
        f"SELECT func, state, count(*) FROM task{_hint(conn, 'task_by_func')} WHERE run_id = ? "
        "GROUP BY func, state",
        (run_id,),
    ):
        counts.setdefault(func or "?", {})[state] = n
    return [FuncCounts(f, sum(s.values()), s) for f, s in sorted(counts.items())]


def status(conn: sqlite3.Connection, run_id: int, *, now: float | None = None) -> Status:
    """Return a run's counts by state and function, its throughput, ETA, retries and drops.

    Raises NotFoundError when the record has no such run.
    """
    now = time.time() if now is None else now
    run = run_info(conn, run_id, now=now)
    states = _state_counts(conn, run_id)
    total = sum(states.values())
    finished = sum(n for s, n in states.items() if s in FINAL_STATES)
    clock = _clock(run, now)
    elapsed = max(clock - run.started, 0.0)
    recent = _one(
        conn,
        "SELECT count(*) FROM task WHERE run_id = ? AND ended > ? AND ended <= ?",
        (run_id, clock - RECENT, clock),
    )
    window = min(RECENT, elapsed)
    rate_recent = recent / window if window > 0 else None
    rate_overall = finished / elapsed if elapsed > 0 else None
    left = total - finished
    rate = rate_recent or rate_overall
    eta = (left / rate if rate else None) if run.live and left else (0.0 if run.live else None)
    retried: dict[int, int] = dict(
        _rows(
            conn,
            "SELECT before.charged, count(*) FROM try AS after JOIN try AS before "
            "ON before.run_id = after.run_id AND before.task_id = after.task_id AND before.try_no = after.try_no - 1 "
            "WHERE after.run_id = ? AND after.try_no > 1 GROUP BY before.charged",
            (run_id,),
        ).fetchall()
    )
    pools, workers = _rows(
        conn,
        "SELECT count(*), coalesce(sum(workers), 0) FROM pool WHERE run_id = ? AND lost IS NULL",
        (run_id,),
    ).fetchone()
    return Status(
        run, states, total, finished, elapsed, rate_recent, rate_overall, eta,
        _func_counts(conn, run_id), run.dropped, retried.get(1, 0), retried.get(0, 0), pools, workers,
    )  # fmt: skip
