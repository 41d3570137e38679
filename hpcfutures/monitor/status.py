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
    behind: float | None = None  # seconds the task rows lag the counts (None: they are current)


def _clock(run: Run, now: float) -> float:
    if run.status == "running":
        return now
    return run.ended or run.heartbeat or run.started


def _counts(conn: sqlite3.Connection, run_id: int) -> tuple[dict[str, int], list[FuncCounts]]:
    """The run's tasks by state, and by function and state.

    task_full's come from its index on (func, state), not its rows; task_plain's, all done,
    are counted by function (see :func:`_plain_by_func`).
    """
    states = dict.fromkeys(TASK_STATES, 0)
    counts: dict[str, dict[str, int]] = {}

    def add(func: str | None, state: str, n: int) -> None:
        states[state] = states.get(state, 0) + n
        mine = counts.setdefault(func or "?", {})
        mine[state] = mine.get(state, 0) + n

    for func, state, n in _rows(
        conn,
        f"SELECT func, state, count(*) FROM task_full{_hint(conn, 'task_by_func')} WHERE run_id = ? "
        "GROUP BY func, state",
        (run_id,),
    ):
        add(func, state, n)
    for func, n in _plain_by_func(conn, run_id).items():
        add(func, "done", n)
    by_func = [FuncCounts(f, sum(s.values()), dict(sorted(s.items()))) for f, s in sorted(counts.items())]
    return states, by_func


#: Task ids whose plain tasks one GROUP BY counts: task_plain has no index on func, so each
#: GROUP BY sorts its rows, and sorting slices of this size costs about a quarter less than
#: sorting a million rows at once (on bench/bench_record_size.py's record).
_SLICE = 5000


def _plain_by_func(conn: sqlite3.Connection, run_id: int) -> dict[str | None, int]:
    """The run's plain tasks by function, counted a slice of task ids at a time."""
    low, high = _rows(
        conn,
        "SELECT (SELECT min(task_id) FROM task_plain WHERE run_id = ?1), "
        "(SELECT max(task_id) FROM task_plain WHERE run_id = ?1)",
        (run_id,),
    ).fetchone()
    found: dict[str | None, int] = {}
    if low is None:
        return found
    step = max(_SLICE, (high - low) // 1000)  # ids far apart: a bounded number of statements
    for start in range(low, high + 1, step):
        for func, n in _rows(
            conn,
            "SELECT func, count(*) FROM task_plain WHERE run_id = ? AND task_id >= ? AND task_id < ? GROUP BY func",
            (run_id, start, start + step),
        ):
            found[func] = found.get(func, 0) + n
    return found


def status(conn: sqlite3.Connection, run_id: int, *, now: float | None = None) -> Status:
    """Return a run's counts by state and function, its throughput, ETA, retries and drops.

    While the writer defers the task rows of a busy executor (``run.behind_since``), the
    counts by state are the run's own, which stay current; the counts by function and the
    recent rate, which come from the rows, lag (``behind`` says by how long), and the ETA
    follows the overall rate.

    Raises NotFoundError when the record has no such run.
    """
    now = time.time() if now is None else now
    run = run_info(conn, run_id, now=now)
    states, by_func = _counts(conn, run_id)
    clock = _clock(run, now)
    elapsed = max(clock - run.started, 0.0)
    behind = None
    if run.behind_since is not None:  # the rows lag: the run's own counts are current
        behind = max(clock - run.behind_since, 0.0)
        states = _run_counts(run)
    total = sum(states.values())
    finished = sum(n for s, n in states.items() if s in FINAL_STATES)
    rate_recent = None
    if behind is None:
        recent = _one(
            conn,
            "SELECT (SELECT count(*) FROM task_full WHERE run_id = ?1 AND ended > ?2 AND ended <= ?3) "
            "+ (SELECT count(*) FROM task_plain WHERE run_id = ?1 AND ended > ?2 AND ended <= ?3)",
            (run_id, clock - RECENT, clock),
        )
        window = min(RECENT, elapsed)
        rate_recent = recent / window if window > 0 else None
    rate_overall = finished / elapsed if elapsed > 0 else None
    left = total - finished
    rate = rate_recent or rate_overall
    eta = (left / rate if rate else None) if run.live and left else (0.0 if run.live else None)
    # a plain task's one try has none before or after it: only try_full has retries
    retried: dict[int, int] = dict(
        _rows(
            conn,
            "SELECT before.charged, count(*) FROM try_full AS after JOIN try_full AS before "
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
        by_func, run.dropped, retried.get(1, 0), retried.get(0, 0), pools, workers, behind,
    )  # fmt: skip


def _run_counts(run: Run) -> dict[str, int]:
    """The states as the run's counts tell them, while its task rows lag (see the writer):
    tasks waiting for dependencies are among the queued, dep_fail among the failed."""
    states = dict.fromkeys(TASK_STATES, 0)
    states.update(done=run.done, memo_done=run.cached, failed=run.failed, cancelled=run.cancelled, running=run.running)
    ended = run.done + run.cached + run.failed + run.cancelled
    states["queued"] = max(run.submitted - ended - run.running, 0)
    return states
