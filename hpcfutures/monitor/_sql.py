"""Helpers that every query module shares: plain-tuple cursors, one value, index hints, JSON,
and the pieces that read the views ``task`` and ``try`` table by table.

Private to :mod:`hpcfutures.monitor`; the queries themselves are re-exported by :mod:`.query`.

Why table by table: ``task`` and ``try`` are ``UNION ALL`` views over ``task_full`` /
``try_full`` and ``task_plain`` (schema version 2).  A lookup by task id or a short range of
``ended`` reads well through them, but an ORDER BY with LIMIT, or an aggregate, over a view
makes SQLite build and sort the whole union; a compound select with the ORDER BY on the
compound merges two index-ordered arms instead, and aggregates add up per table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    # plain tuples: sqlite3.Row costs more than the query on large results
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(sql, params)


#: Ids bound in one ``IN (...)`` at most: SQLite caps a statement's variables (999 in old builds).
IN_CHUNK = 500


def _rows_in(conn: sqlite3.Connection, sql: str, run_id: int, ids: Sequence[int]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` (which has ``run_id = ?`` then ``IN ({marks})``) for ``ids``, a chunk
    of :data:`IN_CHUNK` ids at a time; each id's rows come from one chunk."""
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        yield from _rows(conn, sql.format(marks=", ".join("?" * len(chunk))), (run_id, *chunk))


def _one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    row = _rows(conn, sql, params).fetchone()
    return None if row is None else row[0]


def _json(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def _with(row: Sequence[Any], index: int, value: Any) -> tuple[Any, ...]:
    """``row`` with the item at ``index`` replaced."""
    return (*row[:index], value, *row[index + 1 :])


def _hint(conn: sqlite3.Connection, index: str) -> str:
    # Records carry no ANALYZE statistics, and without them SQLite often scans the whole
    # table rather than read a selective index: name the index when it exists.  It must
    # follow the name of the table that has it (task_full, not the view task).
    found = _one(conn, "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (index,))
    return f" INDEXED BY {index}" if found else ""


#: What ``task_plain`` holds for each column of the views ``task`` and ``try``: a plain task
#: is done, after ``try_no`` tries, the last of which ended ok and was charged; it has no
#: exception, output, resources or cache decision.
_PLAIN_AS = {"state": "'done'", "tries": "try_no", "outcome": "'ok'", "charged": "1"}
_PLAIN_COLUMNS = frozenset(
    "run_id task_id func name executor submitted queued dispatched started ended try_no pool host worker pid "
    "rss_kb cpu".split()
)


def _plain(columns: str) -> str:
    """``columns`` (names of ``task`` or ``try`` columns, comma-separated) as ``task_plain`` gives them,
    for its arm of a compound select."""
    names = [name.strip() for name in columns.split(",")]
    return ", ".join(_PLAIN_AS.get(n, n if n in _PLAIN_COLUMNS else "NULL") for n in names)


def _count(conn: sqlite3.Connection, table: str, run_id: int) -> int:
    """How many rows of ``table`` belong to the run.

    When the run is the table's only one (most records), the whole table is counted, which
    SQLite does from its pages' headers, several times faster than walking an index's
    entries; the check and the count are one statement, so one snapshot.
    """
    return int(
        _one(
            conn,
            f"SELECT CASE WHEN (SELECT min(run_id) FROM {table}) = ?1 AND (SELECT max(run_id) FROM {table}) = ?1 "
            f"THEN (SELECT count(*) FROM {table}) ELSE (SELECT count(*) FROM {table} WHERE run_id = ?1) END",
            (run_id,),
        )
    )


def _last_ended(conn: sqlite3.Connection, run_id: int, *tables: str) -> Any:
    """The latest ``ended`` among the run's rows of ``tables``, each found at the end of its
    ended index; None if there is none."""
    arms = " UNION ALL ".join(f"SELECT max(ended) AS ended FROM {t} WHERE run_id = ?1" for t in tables)
    return _one(conn, f"SELECT max(ended) FROM ({arms})", (run_id,))
