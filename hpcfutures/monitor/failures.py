"""A run's failed tasks grouped by exception signature (type and first line, numbers as N)."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from ._sql import _hint, _one, _rows
from .runs import run_info


@dataclass(frozen=True)
class FailureGroup:
    """Failed tasks whose exceptions share a signature (type and first line, numbers as N)."""

    signature: str
    exception_type: str
    count: int
    funcs: list[str]
    task_ids: list[int]  # the first few
    example: str  # the first task's exception, as recorded
    traceback: str | None  # the first task's last traceback


_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")
_TYPE = re.compile(r"^\s*([A-Za-z_][\w.]*)(?::|$)")


def signature(exception: str | None) -> tuple[str, str]:
    """Return ``(signature, exception type)`` of an exception's text: its first line with
    every number replaced by ``N``, so that ``no file 12`` and ``no file 7`` group together."""
    first = (
        (exception or "").strip().splitlines()[0].strip()
        if (exception or "").strip()
        else "(no exception recorded)"
    )
    match = _TYPE.match(first)
    return _NUMBER.sub("N", first), match.group(1) if match else "?"


def failures(conn: sqlite3.Connection, run_id: int, *, examples: int = 5) -> list[FailureGroup]:
    """Group a run's failed tasks by exception signature, the largest group first."""
    run_info(conn, run_id)
    groups: dict[str, list[Any]] = {}
    missing: list[int] = []
    # failed tasks, their tries and tracebacks are all in task_full and try_full: a plain task
    # is done after one try that ended ok
    rows = _rows(
        conn,
        f"SELECT task_id, func, exception FROM task_full{_hint(conn, 'task_by_state')} "
        "WHERE run_id = ? AND state = 'failed' ORDER BY task_id",
        (run_id,),
    ).fetchall()
    last = {}
    for row in rows:
        if row[2] is None:
            missing.append(row[0])
    if missing:
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            for task_id, exception, outcome in _rows(
                conn,
                "SELECT task_id, exception, outcome FROM try_full WHERE run_id = ? "
                f"AND task_id IN ({', '.join('?' * len(chunk))}) "
                "ORDER BY task_id, try_no",
                (run_id, *chunk),
            ):
                last[task_id] = exception or (f"(try {outcome})" if outcome else None)
    for task_id, func, exception in rows:
        text = exception if exception is not None else last.get(task_id)
        sig, kind = signature(text)
        group = groups.get(sig)
        if group is None:
            group = groups[sig] = [kind, 0, set(), [], text or sig]
        group[1] += 1
        group[2].add(func or "?")
        if len(group[3]) < examples:
            group[3].append(task_id)
    result = []
    for sig, (kind, count, funcs, ids, example) in sorted(
        groups.items(), key=lambda item: (-item[1][1], item[0])
    ):
        traceback = _one(
            conn,
            "SELECT traceback FROM try_full WHERE run_id = ? AND task_id = ? AND traceback IS NOT NULL "
            "ORDER BY try_no DESC LIMIT 1",
            (run_id, ids[0]),
        )
        result.append(FailureGroup(sig, kind, count, sorted(funcs), ids, example, traceback))
    return result
