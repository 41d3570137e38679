"""One task explained: its tries, parents and children, the cache's decision, and why it is
not running (dependencies, worker slots, or blocks queued at the scheduler)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._sql import _hint, _json, _one, _rows, _rows_in, _with
from .runs import NotFoundError, Run, record_path, run_info
from .schema import FINAL_STATES
from .tasks import TaskRow, _task_rows

#: Scheduler states of a block that has not started yet.
WAITING_BLOCK_STATES = frozenset({"pending", "held"})
_RELATIVES_SHOWN = 1000


@dataclass(frozen=True)
class Try:
    """One attempt at a task."""

    try_no: int
    queued: float | None
    dispatched: float | None
    started: float | None
    ended: float | None
    outcome: str | None
    charged: bool
    exception: str | None
    traceback: str | None
    pool: str | None
    host: str | None
    worker: int | None
    pid: int | None
    rss_kb: int | None
    cpu: float | None
    exit_code: int | None
    stdout_tail: str | None
    stderr_tail: str | None


@dataclass(frozen=True)
class Relative:
    """A parent or child of a task, and its state."""

    task_id: int
    func: str | None
    state: str | None  # None: the record has no row for it (not flushed yet, or not recorded)


@dataclass(frozen=True)
class TaskDetail:
    """Everything the record holds about one task."""

    task: TaskRow
    resources: dict[str, Any]
    cache_key: str | None
    cache_reason: str | None
    tries: list[Try]
    parents: list[Relative]
    children: list[Relative]
    parents_total: int
    children_total: int
    cache_explained: str
    why_not_running: list[str] = field(default_factory=list)


def _task(conn: sqlite3.Connection, run_id: int, task_id: int) -> TaskRow:
    rows = _task_rows(conn, run_id, [task_id])
    if not rows:
        run_info(conn, run_id)  # names the run when that is what is missing
        raise NotFoundError(f"no task {task_id} in run {run_id} of run record {record_path(conn)}")
    return rows[0]


def _relatives(
    conn: sqlite3.Connection, run_id: int, task_id: int, column: str, other: str
) -> tuple[list[Relative], int]:
    ids = [
        row[0]
        for row in _rows(
            conn, f"SELECT {other} FROM edge WHERE run_id = ? AND {column} = ? ORDER BY {other} LIMIT ?",
            (run_id, task_id, _RELATIVES_SHOWN),
        )
    ]  # fmt: skip
    total = len(ids)
    if total == _RELATIVES_SHOWN:
        total = int(
            _one(conn, f"SELECT count(*) FROM edge WHERE run_id = ? AND {column} = ?", (run_id, task_id))
        )
    return _relatives_of(conn, run_id, ids), total


def _relatives_of(conn: sqlite3.Connection, run_id: int, ids: Sequence[int]) -> list[Relative]:
    known: dict[int, tuple[Any, Any]] = {}
    for task_id, func, state in _rows_in(
        conn, "SELECT task_id, func, state FROM task WHERE run_id = ? AND task_id IN ({marks})", run_id, ids
    ):
        known[task_id] = (func, state)
    return [Relative(i, *known.get(i, (None, None))) for i in ids]


def task_detail(
    conn: sqlite3.Connection, run_id: int, task_id: int, *, now: float | None = None
) -> TaskDetail:
    """Return a task with every try, its parents and children, the cache's decision in words
    and why it is not running.  Raises NotFoundError for an unknown run or task."""
    task = _task(conn, run_id, task_id)
    resources, key, reason = _rows(
        conn,
        "SELECT resources, cache_key, cache_reason FROM task WHERE run_id = ? AND task_id = ?",
        (run_id, task_id),
    ).fetchone()
    tries = [
        Try(*_with(row, 6, bool(row[6])))
        for row in _rows(
            conn,
            "SELECT try_no, queued, dispatched, started, ended, outcome, charged, exception, traceback, pool, host, "
            "worker, pid, rss_kb, cpu, exit_code, stdout_tail, stderr_tail FROM try "
            "WHERE run_id = ? AND task_id = ? ORDER BY try_no",
            (run_id, task_id),
        )
    ]
    parents, parents_total = _relatives(conn, run_id, task_id, "child", "parent")
    children, children_total = _relatives(conn, run_id, task_id, "parent", "child")
    return TaskDetail(
        task, _json(resources, {}), key, reason, tries, parents, children, parents_total, children_total,
        _explain(task.cache, key, reason), why_not_running(conn, run_id, task_id, now=now),
    )  # fmt: skip


def explain_cache(conn: sqlite3.Connection, run_id: int, task_id: int) -> str:
    """Say in words how the cache answered a task, and why it missed."""
    task = _task(conn, run_id, task_id)
    key, reason = _rows(
        conn, "SELECT cache_key, cache_reason FROM task WHERE run_id = ? AND task_id = ?", (run_id, task_id)
    ).fetchone()
    return _explain(task.cache, key, reason)


def _explain(decision: str | None, key: str | None, reason: str | None) -> str:
    short = f" (key {key[:12]})" if key else ""
    because = f": {reason}" if reason else ""
    if decision is None:
        return "no cache decision recorded: the task was not looked up in a cache"
    if decision == "hit":
        return f"hit: the result was taken from the cache{short}; the task did not run"
    if decision == "miss":
        return f"miss{short}{because or ': no stored result for this call'}; the task ran"
    if decision == "dedup":
        return f"dedup: an identical task{short} was already running; this one took its result"
    if decision == "checkpoint":
        return f"checkpoint: the result was read from a checkpoint{short}{because}; the task did not run"
    if decision == "off":
        return "off: caching was not asked for this task"
    return f"{decision}{short}{because}"


# -- why is it not running? ---------------------------------------------------------------


def _when(at: float | None) -> str:
    return "?" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def why_not_running(
    conn: sqlite3.Connection, run_id: int, task_id: int, *, now: float | None = None
) -> list[str]:
    """Say why a task is not running, in a few sentences: the dependencies it waits on, no
    free worker slot, or its blocks still queued at the scheduler; or that it runs or ended.

    Raises NotFoundError for an unknown run or task.
    """
    task = _task(conn, run_id, task_id)
    run = run_info(conn, run_id, now=now)
    state = task.state
    if state in FINAL_STATES:
        return [_ended(conn, run_id, task)]
    if state == "running":
        return [
            f"it is running: started {_when(task.started)}"
            + (f", try {task.tries + 1}" if task.tries else "")
        ]
    reasons = []
    if run.status == "lost":
        reasons.append(f"its run is lost: nothing heard from it since {_when(run.heartbeat)}")
    elif not run.live:
        reasons.append(f"its run ended ({run.status}) before this task ran")
    parents, total = _relatives(conn, run_id, task_id, "child", "parent")
    waiting = [p for p in parents if p.state not in ("done", "memo_done")]
    if waiting:
        shown = ", ".join(f"{p.task_id} ({p.func or '?'}, {p.state or 'not recorded'})" for p in waiting[:5])
        more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        reasons.append(
            f"waits on {_plural(len(waiting), 'dependency', 'dependencies')} of {total}: {shown}{more}"
        )
        return reasons
    reasons.extend(_capacity(conn, run, task))
    return reasons


def _ended(conn: sqlite3.Connection, run_id: int, task: TaskRow) -> str:
    state = task.state
    after = f" after {_plural(task.tries, 'try', 'tries')}" if task.tries else ""
    if state == "done":
        return f"it ended: done {_when(task.ended)}{after}"
    if state == "memo_done":
        return f"it ended: answered from the cache or a checkpoint {_when(task.ended)}, without running"
    if state == "failed":
        return f"it ended: failed {_when(task.ended)}{after}: {task.exception or 'no exception recorded'}"
    if state == "dep_fail":
        parents, _ = _relatives(conn, run_id, task.task_id, "child", "parent")
        failed = [str(p.task_id) for p in parents if p.state in ("failed", "dep_fail", "cancelled")]
        which = f" ({', '.join(failed[:10])})" if failed else ""
        return f"it ended: a dependency failed{which}, so it never ran"
    return f"it ended: {state} {_when(task.ended)}"


def _capacity(conn: sqlite3.Connection, run: Run, task: TaskRow) -> list[str]:
    run_id = run.run_id
    executor = task.executor
    by_executor = executor is not None and bool(
        _one(conn, "SELECT 1 FROM pool WHERE run_id = ? AND executor = ? UNION ALL "
             "SELECT 1 FROM block WHERE run_id = ? AND executor = ? LIMIT 1", (run_id, executor, run_id, executor))
    )  # fmt: skip
    scope, scope_params = (" AND executor = ?", (executor,)) if by_executor else ("", ())
    pools, workers = _rows(
        conn,
        f"SELECT count(*), coalesce(sum(workers), 0) FROM pool WHERE run_id = ? AND lost IS NULL{scope}",
        (run_id, *scope_params),
    ).fetchone()
    # running tasks are no more than the worker slots: reading their rows is cheap (and
    # they are all in task_full: a plain task is done)
    busy = int(
        _one(
            conn,
            f"SELECT count(*) FROM task_full{_hint(conn, 'task_by_state')} WHERE run_id = ? AND state = 'running'"
            f"{scope}",
            (run_id, *scope_params),
        )
    )
    blocks = _rows(
        conn,
        f"SELECT block_id, job_id, state, raw_state, reason, updated FROM block WHERE run_id = ?{scope} "
        "ORDER BY updated",
        (run_id, *scope_params),
    ).fetchall()
    waiting = [b for b in blocks if (b[2] or "").lower() in WAITING_BLOCK_STATES]
    queued_words = "; ".join(
        f"block {b[0]}" + (f" (job {b[1]})" if b[1] else "") + f" {b[3] or b[2]} since {_when(b[5])}"
        + (f": {b[4]}" if b[4] else "")
        for b in waiting[:5]
    ) + (f"; and {len(waiting) - 5} more" if len(waiting) > 5 else "")  # fmt: skip
    slots = f"{_plural(pools, 'pool')}, {_plural(workers, 'worker')}, {busy} busy"
    if pools == 0 and waiting:
        return [f"its blocks are still queued at the scheduler: {queued_words}"]
    if pools and busy >= workers:
        reasons = [f"queued: no free worker slot ({slots})"]
        if waiting:
            reasons.append(f"more blocks are still queued at the scheduler: {queued_words}")
        return reasons
    if pools:
        return [f"queued: waiting to be dispatched ({slots}; the record may be a moment behind)"]
    if blocks:
        states = ", ".join(
            f"block {b[0]} {b[3] or b[2]}" + (f" ({b[4]})" if b[4] else "") for b in blocks[-5:]
        )
        return [f"no worker pool is connected; its blocks: {states}"]
    limit = run.config.get("max_workers")
    if isinstance(limit, int) and busy < limit:
        return [f"queued: waiting to be dispatched ({_plural(limit, 'worker')}, {busy} busy)"]
    if isinstance(limit, int):
        return [f"queued: no free worker slot ({_plural(limit, 'worker')}, {busy} busy)"]
    # an executor that records no pools and no size (a thread or process pool): say where
    # the task stands in its queue, not a guess about its slots
    ahead = int(
        _one(
            conn,
            f"SELECT count(*) FROM task_full{_hint(conn, 'task_by_state')} WHERE run_id = ? AND state = 'queued' "
            "AND task_id < ?",
            (run_id, task.task_id),
        )
    )
    return [
        f"queued in its executor, behind {_plural(ahead, 'earlier queued task')} ({busy} known to be running; "
        "the executor reports no worker count)"
    ]
