"""Pages of a run's tasks, filtered by state and function, found through the task indexes."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._sql import _count, _hint, _one, _rows, _rows_in
from .schema import TASK_STATES

#: How a page of tasks may be ordered: the name, and the index order it reads.
ORDERS = {
    "id": "task_id",
    "-id": "task_id DESC",
    "ended": "ended, task_id",
    "-ended": "ended DESC, task_id DESC",
}


@dataclass(frozen=True)
class TaskRow:
    """One task, with where its last try ran."""

    task_id: int
    func: str | None
    name: str | None
    executor: str | None
    state: str
    submitted: float | None
    started: float | None
    ended: float | None
    duration: float | None
    tries: int
    exception: str | None
    cache: str | None
    host: str | None
    pool: str | None
    worker: int | None
    outcome: str | None


_TASK_COLUMNS = "task_id, func, name, executor, state, submitted, started, ended, tries, exception, cache"


def _states_arg(state: str | Sequence[str] | None) -> list[str]:
    if state is None:
        return []
    wanted = [state] if isinstance(state, str) else list(state)
    unknown = [s for s in wanted if s not in TASK_STATES]
    if unknown:
        raise ValueError(f"unknown task state {unknown[0]!r}; the states are {', '.join(TASK_STATES)}")
    return wanted


def _last_tries(conn: sqlite3.Connection, run_id: int, task_ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
    last: dict[int, tuple[Any, ...]] = {}
    if not task_ids:
        return last
    for row in _rows_in(
        conn,
        "SELECT task_id, host, pool, worker, outcome FROM try WHERE run_id = ? AND task_id IN ({marks}) "
        "ORDER BY task_id, try_no",
        run_id,
        task_ids,
    ):
        last[row[0]] = row[1:]
    return last


def _task_rows(conn: sqlite3.Connection, run_id: int, task_ids: Sequence[int]) -> list[TaskRow]:
    if not task_ids:
        return []
    found = {
        row[0]: row
        for row in _rows_in(
            conn, f"SELECT {_TASK_COLUMNS} FROM task WHERE run_id = ? AND task_id IN ({{marks}})", run_id, task_ids
        )
    }
    last = _last_tries(conn, run_id, task_ids)
    rows = []
    for task_id in task_ids:
        row = found.get(task_id)
        if row is None:
            continue
        started, ended = row[6], row[7]
        duration = ended - started if started is not None and ended is not None else None
        values: tuple[Any, ...] = (*row[:8], duration, *row[8:], *last.get(task_id, (None, None, None, None)))
        rows.append(TaskRow(*values))
    return rows


def tasks(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    state: str | Sequence[str] | None = None,
    func: str | None = None,
    offset: int = 0,
    limit: int = 50,
    order: str = "id",
) -> tuple[list[TaskRow], int]:
    """Return one page of a run's tasks (filtered by state(s) and function) and how many match.

    ``order`` is one of :data:`ORDERS`.  The page is found in the indexes and only its rows
    are read: task_full's ids and task_plain's, each in the order asked, are merged, so a page
    far down a million tasks costs about what walking to it in the indexes does (ordered by
    ``ended`` with a filter, the rows of the narrower of the two are read, and sorted).

    Raises:
        ValueError: an unknown state or order, or a negative offset or limit.
    """
    states = _states_arg(state)
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must not be negative (got offset={offset}, limit={limit})")
    by_id = order in ("id", "-id")
    full, full_total = _full_arm(conn, run_id, states, func, offset + limit, by_id)
    plain, plain_total = _plain_arm(conn, run_id, states, func, offset + limit, by_id)
    # the arms that have rows, as one compound select: SQLite merges their ordered rows
    arms = [arm for arm, n in ((full, full_total), (plain, plain_total)) if n]
    ids: list[int] = []
    if arms:
        key = "task_id" if by_id else "task_id, ended"
        sql = " UNION ALL ".join(select.format(key=key) for select, _ in arms)
        params = [*(value for _, values in arms for value in values), limit, offset]
        ids = [row[0] for row in _rows(conn, f"{sql} ORDER BY {ORDERS[order]} LIMIT ? OFFSET ?", params)]
    return _task_rows(conn, run_id, ids), full_total + plain_total


#: One arm of a page's compound select (its columns left as ``{key}``), and its parameters.
_Arm = tuple[str, list[Any]]


def _full_arm(
    conn: sqlite3.Connection, run_id: int, states: list[str], func: str | None, end: int, by_id: bool
) -> tuple[_Arm, int]:
    """The select of the page's task_full rows, and how many match; ``end`` is offset + limit.

    With no ANALYZE statistics, SQLite cannot tell which index reads fewer rows; the counts
    tell, and the select names that index.
    """
    by_state = f"run_id = ? AND state IN ({', '.join('?' * len(states))})"
    # How many rows each index would have us read, and so which one to name.
    found: dict[str, int] = {}
    if not (states or func is not None) or not by_id:
        found["task_by_ended"] = _count(conn, "task_full", run_id)
    if states:
        found["task_by_state"] = int(
            _one(conn, f"SELECT count(*) FROM task_full WHERE {by_state}", (run_id, *states))
        )
    if func is not None:
        found["task_by_func"] = int(
            _one(conn, "SELECT count(*) FROM task_full WHERE run_id = ? AND func = ?", (run_id, func))
        )
    where = "run_id = ?"
    params: list[Any] = [run_id]
    if states:
        where, params = by_state, [run_id, *states]
    if func is not None:
        where, params = where + " AND func = ?", [*params, func]
    narrowest = min(found, key=lambda name: found[name])
    if states and func is not None:
        hint = _hint(conn, narrowest)
        total = int(_one(conn, f"SELECT count(*) FROM task_full{hint} WHERE {where}", params))
    else:
        total = found[narrowest]
    if by_id:
        # an index on (run_id, x) is ordered by task_id within one x: no sort
        index = (
            narrowest
            if narrowest != "task_by_ended" and (len(states) <= 1 or narrowest == "task_by_func")
            else None
        )
    else:
        # walk the ended index, reading rows until the page is found, or read the filter's
        # rows and sort them: whichever reads fewer rows
        walk = end * found["task_by_ended"] / max(total, 1)
        index = "task_by_ended" if walk < found[narrowest] or narrowest == "task_by_ended" else narrowest
    hint = _hint(conn, index) if index else ""
    return (f"SELECT {{key}} FROM task_full{hint} WHERE {where}", params), total


def _plain_arm(
    conn: sqlite3.Connection, run_id: int, states: list[str], func: str | None, end: int, by_id: bool
) -> tuple[_Arm, int]:
    """The select of the page's task_plain rows (all done), and how many match."""
    if states and "done" not in states:
        return ("", []), 0
    if func is None:
        # in task_id order (its key) or in ended order (plain_by_ended), with no sort
        return ("SELECT {key} FROM task_plain WHERE run_id = ?", [run_id]), _count(conn, "task_plain", run_id)
    total = int(_one(conn, "SELECT count(*) FROM task_plain WHERE run_id = ? AND func = ?", (run_id, func)))
    select = "SELECT {key} FROM task_plain WHERE run_id = ? AND func = ?"
    # The ended index has no func: walking it reads a row for each entry, kept or not.  When
    # that is more rows than match, read those in task_id order and sort them instead
    # ("+ended" keeps SQLite off the ended index).
    if not by_id and end * _count(conn, "task_plain", run_id) / max(total, 1) >= total:
        select = select.replace("{key}", "task_id, +ended AS ended")
    return (select, [run_id, func]), total
