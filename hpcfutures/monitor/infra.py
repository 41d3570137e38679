"""Where tasks run: a run's blocks (batch jobs) and their state history, its worker pools,
and the node samples (load, memory, busy workers) taken on them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ._sql import _json, _one, _rows, _with
from .runs import run_info


@dataclass(frozen=True)
class BlockChange:
    """One change of a block's state."""

    at: float
    state: str | None
    raw_state: str | None
    reason: str | None


@dataclass(frozen=True)
class Block:
    """A batch job of worker pools, its latest state and every change of it."""

    executor: str
    block_id: str
    job_id: str | None
    state: str | None
    raw_state: str | None
    reason: str | None
    submitted: float | None
    updated: float | None
    history: list[BlockChange]
    pools: list[str]


@dataclass(frozen=True)
class Sample:
    """A node's load at one moment."""

    at: float
    executor: str | None
    host: str | None
    pool_id: str | None
    cpu_percent: float | None
    load1: float | None
    mem_percent: float | None
    rss_mb: float | None
    busy: int | None
    workers: int | None


@dataclass(frozen=True)
class Pool:
    """A worker pool, whether it is lost, and its latest sample."""

    executor: str
    pool_id: str
    block_id: str | None
    host: str | None
    pid: int | None
    workers: int | None
    shape: dict[str, Any]
    registered: float | None
    lost: float | None
    reason: str | None
    sample: Sample | None


def blocks(conn: sqlite3.Connection, run_id: int) -> list[Block]:
    """Return a run's blocks with their state history and pools, oldest first."""
    run_info(conn, run_id)
    history: dict[tuple[str, str], list[BlockChange]] = {}
    for executor, block_id, at, state, raw, reason in _rows(
        conn,
        "SELECT executor, block_id, at, state, raw_state, reason FROM block_state WHERE run_id = ? "
        "ORDER BY executor, block_id, at",
        (run_id,),
    ):
        history.setdefault((executor, block_id), []).append(BlockChange(at, state, raw, reason))
    on_block: dict[tuple[str, str], list[str]] = {}
    for executor, pool_id, block_id in _rows(
        conn,
        "SELECT executor, pool_id, block_id FROM pool WHERE run_id = ? AND block_id IS NOT NULL",
        (run_id,),
    ):
        on_block.setdefault((executor, block_id), []).append(pool_id)
    return [
        Block(*(*row, history.get((row[0], row[1]), []), sorted(on_block.get((row[0], row[1]), []))))
        for row in _rows(
            conn,
            "SELECT executor, block_id, job_id, state, raw_state, reason, submitted, updated FROM block "
            "WHERE run_id = ? ORDER BY submitted, executor, block_id",
            (run_id,),
        )
    ]


_SAMPLE_COLUMNS = "at, executor, host, pool_id, cpu_percent, load1, mem_percent, rss_mb, busy, workers"


def pools(conn: sqlite3.Connection, run_id: int) -> list[Pool]:
    """Return a run's worker pools, first registered first, each with its latest sample
    (from the last two minutes of samples)."""
    run_info(conn, run_id)
    latest: dict[str | None, Sample] = {}
    newest = _one(conn, "SELECT max(at) FROM sample WHERE run_id = ?", (run_id,))
    if newest is not None:
        for row in _rows(
            conn,
            f"SELECT {_SAMPLE_COLUMNS} FROM sample WHERE run_id = ? AND at >= ? ORDER BY at",
            (run_id, newest - 120),
        ):
            latest[row[3]] = Sample(*row)
    return [
        Pool(*(*_with(row, 6, _json(row[6], {})), latest.get(row[1])))
        for row in _rows(
            conn,
            "SELECT executor, pool_id, block_id, host, pid, workers, shape, registered, lost, reason FROM pool "
            "WHERE run_id = ? ORDER BY registered, executor, pool_id",
            (run_id,),
        )
    ]


def samples(
    conn: sqlite3.Connection, run_id: int, *, since: float | None = None, limit: int = 10_000
) -> list[Sample]:
    """Return node samples taken after ``since`` (oldest first, at most ``limit``), or the
    latest ``limit`` samples when ``since`` is None."""
    if since is None:
        rows = _rows(
            conn,
            f"SELECT {_SAMPLE_COLUMNS} FROM sample WHERE run_id = ? ORDER BY at DESC LIMIT ?",
            (run_id, limit),
        ).fetchall()
        rows.reverse()
    else:
        rows = _rows(
            conn,
            f"SELECT {_SAMPLE_COLUMNS} FROM sample WHERE run_id = ? AND at > ? ORDER BY at LIMIT ?",
            (run_id, since, limit),
        ).fetchall()
    return [Sample(*row) for row in rows]
