"""Find run records and the runs in them: list, look up and resolve ``family:RUN`` specs.

Every other query starts here: :func:`run_info` checks the run exists, and
:class:`NotFoundError` is the error each raises for a missing record, run or task.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._sql import _json, _one, _rows
from .location import SUFFIX, record_dir
from .schema import RecordError, connect_for_reading

#: A run still marked ``running`` whose writer has not written for this long is ``lost``.
LOST_AFTER = 10.0


class NotFoundError(RecordError, LookupError):
    """No record, run or task answers to what was asked; the message says what and where."""


@dataclass(frozen=True)
class Run:
    """One run in a record, with the task counts its writer keeps."""

    record: str
    family: str
    run_id: int
    kind: str
    label: str | None
    status: str  # running, done, failed, interrupted, or lost (no heartbeat for LOST_AFTER s)
    started: float
    ended: float | None
    heartbeat: float | None
    host: str | None
    pid: int | None
    version: str | None
    argv: list[str]
    config: dict[str, Any]
    submitted: int
    running: int
    done: int
    failed: int
    cached: int
    cancelled: int
    dropped: int
    error: str | None
    behind_since: float | None = None  # the task rows lag the counts since then (a busy executor)

    @property
    def live(self) -> bool:
        """Whether the run's writer is still at work."""
        return self.status == "running"


_RUN_COLUMNS = (
    "run_id, family, kind, label, status, started, ended, heartbeat, host, pid, version, argv, config, "
    "submitted, running, done, failed, cached, cancelled, dropped, error, behind_since"
)


def record_path(conn: sqlite3.Connection) -> str:
    """The file a connection reads."""
    for row in _rows(conn, "PRAGMA database_list"):
        if row[1] == "main":
            return str(row[2])
    return ""


def _run(row: tuple[Any, ...], record: str, now: float) -> Run:
    status = row[4]
    if status == "running" and (row[7] or row[5]) < now - LOST_AFTER:
        status = "lost"
    return Run(
        record, row[1], row[0], row[2], row[3], status, row[5], row[6], row[7], row[8], row[9], row[10],
        _json(row[11], []), _json(row[12], {}), *row[13:],
    )  # fmt: skip


def list_runs(conn: sqlite3.Connection, *, now: float | None = None) -> list[Run]:
    """Return the runs in a record, oldest first; ``now`` (default: the clock) judges ``lost``."""
    now = time.time() if now is None else now
    record = record_path(conn)
    return [_run(row, record, now) for row in _rows(conn, f"SELECT {_RUN_COLUMNS} FROM run ORDER BY run_id")]


def run_info(conn: sqlite3.Connection, run_id: int, *, now: float | None = None) -> Run:
    """Return one run.  Raises NotFoundError when the record has no such run."""
    now = time.time() if now is None else now
    row = _rows(conn, f"SELECT {_RUN_COLUMNS} FROM run WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        runs = [r[0] for r in _rows(conn, "SELECT run_id FROM run ORDER BY run_id")]
        held = f"its runs are {_id_list(runs)}" if runs else "it holds no runs"
        raise NotFoundError(f"no run {run_id} in run record {record_path(conn)} ({held})")
    return _run(row, record_path(conn), now)


def _id_list(ids: Sequence[int]) -> str:
    if len(ids) > 3 and list(ids) == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ", ".join(map(str, ids[:20])) + (", …" if len(ids) > 20 else "")


def find_records(paths: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Return the run records (``*.db``) in the record directory, or in the given files and
    directories, sorted by path.

    Raises:
        NotFoundError: a given path does not exist.
    """
    if paths is None:
        where = record_dir()
        return sorted(where.glob(f"*{SUFFIX}")) if where.is_dir() else []
    found: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found.extend(sorted(path.glob(f"*{SUFFIX}")))
        elif path.is_file():
            found.append(path)
        else:
            raise NotFoundError(f"no such run record or directory: {path}")
    return sorted(set(found))


def _where(paths: Iterable[str | os.PathLike[str]] | None) -> str:
    if paths is None:
        return str(record_dir())
    return ", ".join(str(Path(p).expanduser()) for p in paths) or "(nothing)"


def _modified(path: Path) -> float:
    # the writer appends to the -wal file; the .db itself changes only at checkpoints
    times = [path.stat().st_mtime]
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        times.append(wal.stat().st_mtime)
    return max(times)


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text or os.sep in text or text.endswith((".db", ".sqlite", ".sqlite3")) or Path(text).is_file()
    )


def resolve_run(spec: str | None, paths: Sequence[str | os.PathLike[str]] | None = None) -> tuple[Path, int]:
    """Find the run ``spec`` names: ``None`` (the latest run of the most recently written
    record), ``"RUN"`` (a run id in that record), ``"family"``, ``"family:RUN"``, a path to a
    record, or ``"path:RUN"``.  ``paths`` (files or directories) replace the record directory.

    Raises:
        NotFoundError: no such record or run; the message names what was looked for and where.
        RecordError: a file that is not a run record.
    """
    text = (spec or "").strip()
    base, run_text = text, ""
    head, colon, tail = text.rpartition(":")
    if colon and tail.isdigit():
        base, run_text = head, tail
    elif text.isdigit() and not _looks_like_path(text):
        base, run_text = "", text
    path = _record_for(base, paths)
    conn = connect_for_reading(path)
    try:
        if run_text:
            run_id = run_info(conn, int(run_text)).run_id
        else:
            latest = _one(conn, "SELECT max(run_id) FROM run")
            if latest is None:
                raise NotFoundError(f"run record {path} holds no runs")
            run_id = int(latest)
    finally:
        conn.close()
    return path, run_id


def _record_for(base: str, paths: Sequence[str | os.PathLike[str]] | None) -> Path:
    if base and _looks_like_path(base):
        path = Path(base).expanduser()
        if not path.is_file():
            raise NotFoundError(f"no such run record: {path}")
        return path
    records = find_records(paths)
    if not base:
        if not records:
            raise NotFoundError(f"no run records in {_where(paths)}")
        return max(records, key=_modified)
    matching = [p for p in records if p.stem == base]
    if not matching:
        families = ", ".join(sorted({p.stem for p in records})) or "none"
        raise NotFoundError(
            f"no run record of family {base!r} in {_where(paths)} (families there: {families})"
        )
    return max(matching, key=_modified)
