"""Reading a run record back in tests: the rows a query returns, as tuples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcfutures.monitor import connect_for_reading


def rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows ``sql`` returns from the record at ``path``, read as a reader would (read-only)."""
    conn = connect_for_reading(path)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
