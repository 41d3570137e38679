"""Helpers that every query module shares: plain-tuple cursors, one value, index hints, JSON.

Private to :mod:`hpcfutures.monitor`; the queries themselves are re-exported by :mod:`.query`.
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
    # table rather than read a selective index: name the index when it exists.
    found = _one(conn, "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (index,))
    return f" INDEXED BY {index}" if found else ""
