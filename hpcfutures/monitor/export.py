"""Write a recorded run out: its tasks as CSV, its tries as a Chrome trace, or one HTML page.

- ``csv``: one line per task with its last try (where it ran, how it ended), times as
  seconds since the epoch, for a spreadsheet or pandas.
- ``chrome-trace``: the Trace Event Format that chrome://tracing and https://ui.perfetto.dev
  load: one complete ("X") event per try, a process per host/pool and a thread per worker.
- ``html``: the dashboard's page with the run's data inlined (``server.render_snapshot``),
  or, where the dashboard is not installed, a plain self-contained report.

CSV and traces stream row by row, so a run of a million tasks is written in constant memory.
"""

from __future__ import annotations

import csv
import html
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from . import query
from ._sql import _plain, _rows
from .schema import connect_for_reading

FORMATS = ("html", "csv", "chrome-trace")
#: Tasks listed in the plain HTML report at most.
HTML_TASKS = 2000

_TASK_COLUMNS = (
    "task_id", "func", "name", "executor", "state", "submitted", "started", "ended", "tries", "exception",
    "cache", "cache_reason",
)  # fmt: skip
_TRY_COLUMNS = (
    "try_no", "outcome", "charged", "host", "pool", "worker", "pid", "rss_kb", "cpu", "exit_code",
)  # fmt: skip
CSV_HEADER = (*_TASK_COLUMNS[:8], "duration", *_TASK_COLUMNS[8:], *_TRY_COLUMNS)


def export(path: str | os.PathLike[str], run_id: int, fmt: str, out: TextIO) -> None:
    """Write run ``run_id`` of the record at ``path`` to ``out`` in format ``fmt`` (one of
    :data:`FORMATS`).

    Raises:
        ValueError: an unknown format.
        RecordError: the record cannot be read or has no such run.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "html":
        out.write(html_page(path, run_id))
        return
    conn = connect_for_reading(path)
    try:
        query.run_info(conn, run_id)
        if fmt == "csv":
            write_csv(conn, run_id, out)
        else:
            write_chrome_trace(conn, run_id, out)
    finally:
        conn.close()


def _tasks_with_tries(
    conn: sqlite3.Connection, run_id: int
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Each task row with its try rows: two scans in primary-key order, merged (a join
    would look each task's tries up in the index, a million times).  Each scan merges
    task_full's or try_full's rows with task_plain's, both in key order."""
    task_columns, try_columns = ", ".join(_TASK_COLUMNS), ", ".join(("task_id", *_TRY_COLUMNS))
    tasks = _rows(
        conn,
        f"SELECT {task_columns} FROM task_full WHERE run_id = ?1 UNION ALL "
        f"SELECT {_plain(task_columns)} FROM task_plain WHERE run_id = ?1 ORDER BY task_id",
        (run_id,),
    )
    tries = _rows(
        conn,
        f"SELECT {try_columns} FROM try_full WHERE run_id = ?1 UNION ALL "
        f"SELECT {_plain(try_columns)} FROM task_plain WHERE run_id = ?1 ORDER BY task_id, try_no",
        (run_id,),
    )
    pending = tries.fetchone()
    for task in tasks:
        task_id = task[0]
        mine = []
        while pending is not None and pending[0] <= task_id:
            if pending[0] == task_id:
                mine.append(pending[1:])
            pending = tries.fetchone()
        yield task, mine


def write_csv(conn: sqlite3.Connection, run_id: int, out: TextIO) -> None:
    """Write one CSV line per task of the run, with its last try, under :data:`CSV_HEADER`."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    empty = (None,) * len(_TRY_COLUMNS)
    for task, tries in _tasks_with_tries(conn, run_id):
        started, ended = task[6], task[7]
        duration = ended - started if started is not None and ended is not None else None
        writer.writerow((*task[:8], duration, *task[8:], *(tries[-1] if tries else empty)))


def write_chrome_trace(conn: sqlite3.Connection, run_id: int, out: TextIO) -> None:
    """Write the run's tries in the Trace Event Format: an "X" event each (name: the
    function; ``ts`` and ``dur`` in microseconds from the run's start), ``pid`` a number per
    host/pool and ``tid`` the worker slot, named by metadata ("M") events."""
    run = query.run_info(conn, run_id)
    origin = run.started
    processes: dict[str, int] = {}
    threads: set[tuple[int, int]] = set()
    out.write('{"displayTimeUnit": "ms", "otherData": ')
    out.write(json.dumps({"run": f"{run.family}:{run.run_id}", "kind": run.kind, "started": origin}))
    out.write(', "traceEvents": [\n')
    first = True

    def emit(event: dict[str, Any]) -> None:
        nonlocal first
        out.write(("" if first else ",\n") + json.dumps(event, separators=(",", ":")))
        first = False

    columns = "task_id, try_no, func, queued, dispatched, started, ended, outcome, charged, exception, host, pool, worker"
    rows = _rows(
        conn,
        "SELECT y.task_id, y.try_no, t.func, y.queued, y.dispatched, y.started, y.ended, y.outcome, y.charged, "
        "y.exception, y.host, y.pool, y.worker FROM try_full AS y LEFT JOIN task_full AS t "
        "ON t.run_id = y.run_id AND t.task_id = y.task_id WHERE y.run_id = ?1 UNION ALL "
        f"SELECT {_plain(columns)} FROM task_plain WHERE run_id = ?1 ORDER BY task_id, try_no",
        (run_id,),
    )
    for (
        task_id,
        try_no,
        func,
        queued,
        dispatched,
        started,
        ended,
        outcome,
        charged,
        exception,
        host,
        pool,
        worker,
    ) in rows:
        start = next((t for t in (started, dispatched, queued, ended) if t is not None), None)
        if start is None or ended is None:
            continue
        process = f"{host or '?'}/{pool or '?'}"
        pid = processes.get(process)
        if pid is None:
            pid = processes[process] = len(processes) + 1
            emit({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": process}})
        tid = worker if isinstance(worker, int) else 0
        if (pid, tid) not in threads:
            threads.add((pid, tid))
            emit(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"worker {tid}"}}
            )
        args: dict[str, Any] = {"task": task_id, "try": try_no, "outcome": outcome}
        if not charged:
            args["charged"] = False
        if exception:
            args["exception"] = exception
        emit({
            "ph": "X", "name": func or "?", "cat": outcome or "?", "pid": pid, "tid": tid,
            "ts": round((start - origin) * 1e6, 1), "dur": round(max(ended - start, 0.0) * 1e6, 1), "args": args,
        })  # fmt: skip
    out.write("\n]}\n")


def html_page(path: str | os.PathLike[str], run_id: int) -> str:
    """The run as one self-contained HTML page: the dashboard's snapshot when the dashboard
    is installed, else :func:`html_report`."""
    try:
        from .server import render_snapshot
    except ImportError:
        return html_report(path, run_id)
    page: str = render_snapshot(path, run_id)
    return page


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _rows_html(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _time(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def html_report(path: str | os.PathLike[str], run_id: int) -> str:
    """A plain HTML report of a run (status, functions, failures, blocks, pools and the first
    :data:`HTML_TASKS` tasks), with no script and nothing fetched from elsewhere."""
    conn = connect_for_reading(path)
    try:
        st = query.status(conn, run_id)
        groups = query.failures(conn, run_id)
        found = query.blocks(conn, run_id)
        pools = query.pools(conn, run_id)
        rows, total = query.tasks(conn, run_id, limit=HTML_TASKS)
    finally:
        conn.close()
    run = st.run
    title = f"{run.family} run {run.run_id}"
    parts = [
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(run.kind)} &middot; {_e(run.status)} &middot; started {_e(_time(run.started))} on {_e(run.host)}"
        f" &middot; {st.total:,} tasks &middot; record {_e(Path(path).name)}</p>",
        "<h2>Tasks by state</h2>",
        _rows_html(("state", "tasks"), [(s, n) for s, n in st.states.items() if n]),
        "<h2>Functions</h2>",
        _rows_html(("function", "total", "by state"),
                   [(f.func, f.total, ", ".join(f"{s} {n}" for s, n in f.states.items())) for f in st.by_func]),
        f"<h2>Failures ({sum(g.count for g in groups):,})</h2>",
    ]  # fmt: skip
    for g in groups:
        parts.append(
            f"<details><summary>{g.count:,} &times; {_e(g.signature)} (tasks {_e(', '.join(map(str, g.task_ids)))})"
            f"</summary><pre>{_e(g.traceback or g.example)}</pre></details>"
        )
    parts.append("<h2>Blocks</h2>")
    parts.append(_rows_html(
        ("executor", "block", "job", "state", "since", "history", "reason"),
        [(b.executor, b.block_id, b.job_id, b.state, _time(b.updated),
          " → ".join(f"{c.state} {_time(c.at)}" for c in b.history), b.reason) for b in found],
    ))  # fmt: skip
    parts.append("<h2>Pools</h2>")
    parts.append(_rows_html(
        ("executor", "pool", "block", "host", "workers", "registered", "lost", "reason"),
        [(p.executor, p.pool_id, p.block_id, p.host, p.workers, _time(p.registered), _time(p.lost), p.reason)
         for p in pools],
    ))  # fmt: skip
    shown = f" (the first {len(rows):,} of {total:,})" if total > len(rows) else ""
    parts.append(f"<h2>Tasks{shown}</h2>")
    parts.append(_rows_html(
        ("id", "function", "state", "tries", "started", "duration", "host", "exception"),
        [(r.task_id, r.func, r.state, r.tries, _time(r.started),
          None if r.duration is None else f"{r.duration:.3f} s", r.host, r.exception) for r in rows],
    ))  # fmt: skip
    style = (
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
        "pre{background:#f6f6f6;padding:.5em;overflow:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
