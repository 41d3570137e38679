"""The dashboard's answers: :mod:`.query`'s results shaped for the page, plus the few
aggregates only the page needs (throughput over time, sample series, failed tries, nodes),
and the Prometheus text of ``/metrics``.

Every function takes an open record (:func:`~.schema.connect_for_reading`) and a run id and
returns plain dicts and lists that :mod:`json` can write.  Each answer is bounded whatever
the run's size: counts and histograms are aggregated in SQL over the schema's indexes,
lists are paged or capped, and a run with more tries than :data:`STREAM_LIMIT` gets a
heatmap instead of one bar per try, so a 1,000,000-task run never reaches the browser
row by row.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from . import query
from ._sql import _count, _hint, _last_ended
from .schema import FINAL_STATES

#: Tries drawn one bar each in the task stream; past this the stream is a heatmap.
STREAM_LIMIT = 5000
#: Rows in one page of the tasks table at most.
PAGE_LIMIT = 500
#: Time columns of the throughput chart, the sample series and the heatmap.
BUCKETS = 60
HEATMAP_BUCKETS = 120
#: Lanes of the heatmap at most: past it, lanes are pools, then hosts.
HEATMAP_LANES = 200
#: Functions in the per-function bars; the rest are summed into one bar.
FUNC_LIMIT = 30
#: Parents or children listed in a task's detail; the total is given as well.
RELATIVES_LIMIT = 100
#: Groups in the failures view, nodes in the pools view, functions in the tasks filter.
GROUP_LIMIT = 50
NODE_LIMIT = 500
FILTER_FUNCS = 1000

NotFound = query.NotFoundError


def _plain(value: Any) -> Any:
    return (
        dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else value
    )


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _run_json(run: query.Run) -> dict[str, Any]:
    # argv and config can be long and say nothing the page shows; the CLI has them
    out = _plain(run)
    out.pop("argv", None)
    out.pop("config", None)
    out["live"] = run.live
    return out


def settled(run: query.Run) -> bool:
    """Whether what the record says of ``run`` can no longer change: it ended.  A run the
    query calls ``lost`` (no heartbeat lately) is not settled: its writer may be slow only."""
    return run.status not in ("running", "lost")


def runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every run of the record, newest first, with the counts its writer keeps."""
    return [_run_json(r) for r in reversed(query.list_runs(conn))]


def run(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """One run's row.  Raises NotFound."""
    return _run_json(query.run_info(conn, run_id))


def _span(conn: sqlite3.Connection, info: query.Run, now: float) -> tuple[float, float]:
    """The time the run's charts cover: its start to its last end (or now while it runs)."""
    start = float(info.started)
    if info.live:
        return start, max(now, start + 1.0)
    last = _last_ended(conn, info.run_id, "task_full", "task_plain")
    return start, max(x for x in (info.ended, last, start + 1.0) if x is not None)


def throughput(conn: sqlite3.Connection, run_id: int, start: float, end: float) -> dict[str, Any]:
    """Tasks ended per time bucket from ``start`` to ``end`` (a range scan of each ended index)."""
    width = (end - start) / BUCKETS
    series = [0] * BUCKETS
    counts = (
        "SELECT CAST((ended - ?1) / ?2 AS INTEGER) AS b, count(*) FROM {} "
        "WHERE run_id = ?3 AND ended IS NOT NULL GROUP BY b"
    )
    for bucket, n in conn.execute(
        f"{counts.format('task_full')} UNION ALL {counts.format('task_plain')}", (start, width, run_id)
    ):
        series[min(max(int(bucket), 0), BUCKETS - 1)] += n
    return {"start": start, "end": end, "width": width, "ended": series}


def try_count(conn: sqlite3.Connection, run_id: int) -> int:
    """Tries of the run that ended."""
    return _count(conn, "try_full", run_id) + _count(conn, "task_plain", run_id)


def _func_bars(by_func: list[query.FuncCounts]) -> list[dict[str, Any]]:
    ordered = sorted(by_func, key=lambda f: (-f.total, f.func))
    bars = [{"func": f.func, "total": f.total, "counts": dict(f.states)} for f in ordered[:FUNC_LIMIT]]
    if len(ordered) > FUNC_LIMIT:
        bars = bars[: FUNC_LIMIT - 1]
        rest: dict[str, Any] = {"func": "(others)", "total": 0, "counts": {}}
        for f in ordered[FUNC_LIMIT - 1 :]:
            rest["total"] += f.total
            for state, n in f.states.items():
                rest["counts"][state] = rest["counts"].get(state, 0) + n
        bars.append(rest)
    return bars


def overview(conn: sqlite3.Connection, run_id: int, now: float | None = None) -> dict[str, Any]:
    """The run at a glance: counts by state, tries, throughput over time, ETA, a bar per function."""
    now = time.time() if now is None else now
    st = query.status(conn, run_id, now=now)
    start, end = _span(conn, st.run, now)
    return {
        "run": _run_json(st.run),
        "live": st.run.live,
        "now": now,
        "counts": st.states,
        "total": st.total,
        "finished": st.finished,
        "remaining": st.total - st.finished,
        "elapsed": st.elapsed,
        "tries": try_count(conn, run_id),
        "retries": st.retries,
        "requeued": st.requeues,
        "pools": st.pools,
        "workers": st.workers,
        "rate_recent": st.rate_recent,
        "rate_overall": st.rate_overall,
        "eta": st.eta,
        "behind": st.behind,
        "throughput": throughput(conn, run_id, start, end),
        "funcs": _func_bars(st.by_func),
    }


def funcs(conn: sqlite3.Connection, run_id: int) -> list[str]:
    """The run's function names, for the tasks table's filter: task_full's read from an index,
    task_plain's (which has none on func) from its rows."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT func FROM (SELECT func FROM task_full WHERE run_id = ?1 AND func IS NOT NULL "
            "UNION SELECT func FROM task_plain WHERE run_id = ?1 AND func IS NOT NULL) ORDER BY func LIMIT ?2",
            (run_id, FILTER_FUNCS),
        )
    ]


def tasks(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    state: str | None = None,
    func: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of the run's tasks in id order, filtered by state and function.

    Raises:
        ValueError: an unknown state, or an offset or limit out of range.
        NotFound: no such run.
    """
    if not 1 <= limit <= PAGE_LIMIT:
        raise ValueError(f"limit must be between 1 and {PAGE_LIMIT}, not {limit}")
    query.run_info(conn, run_id)
    rows, total = query.tasks(conn, run_id, state=state, func=func, offset=offset, limit=limit)
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "state": state,
        "func": func,
        "tasks": [_plain(r) for r in rows],
        "funcs": funcs(conn, run_id),
    }


def task(conn: sqlite3.Connection, run_id: int, task_id: int, now: float | None = None) -> dict[str, Any]:
    """Everything about one task: its row, every try, parents and children (the first
    :data:`RELATIVES_LIMIT` of each), the cache's answer and why it is not running.

    Raises:
        NotFound: no such run or task.
    """
    detail = query.task_detail(conn, run_id, task_id, now=now)
    out = _plain(detail)
    out["parents"] = out["parents"][:RELATIVES_LIMIT]
    out["children"] = out["children"][:RELATIVES_LIMIT]
    state = detail.task.state
    out["why"] = {
        "kind": "ended" if state in FINAL_STATES else "running" if state == "running" else "waiting",
        "reasons": detail.why_not_running,
    }
    return out


def failures(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """Failed tasks grouped by exception signature, dependency failures counted, and the
    tries that failed (retried, or lost and requeued) grouped by outcome and exception type."""
    groups = query.failures(conn, run_id)
    # neither is ever plain: a plain task is done, after one try that ended ok
    dep_fail = conn.execute(
        f"SELECT count(*) FROM task_full{_hint(conn, 'task_by_state')} WHERE run_id = ? AND state = 'dep_fail'",
        (run_id,),
    ).fetchone()[0]
    by_outcome: dict[tuple[str, str], dict[str, Any]] = {}
    for outcome, charged, exception, n, example in conn.execute(
        "SELECT coalesce(outcome, '?'), charged, exception, count(*), min(task_id) FROM try_full "
        "WHERE run_id = ? AND outcome IS NOT 'ok' GROUP BY 1, 2, 3",
        (run_id,),
    ):
        kind = query.signature(exception)[1] if exception else "(no exception recorded)"
        entry = by_outcome.setdefault(
            (outcome, kind),
            {
                "outcome": outcome,
                "exception": kind,
                "count": 0,
                "charged": 0,
                "requeued": 0,
                "example": example,
            },
        )
        entry["count"] += n
        entry["charged" if charged else "requeued"] += n
        entry["example"] = min(entry["example"], example)
    tries = sorted(by_outcome.values(), key=lambda e: (-e["count"], e["outcome"], e["exception"]))
    return {
        "failed": sum(g.count for g in groups),
        "dep_fail": dep_fail,
        "groups": [_plain(g) for g in groups[:GROUP_LIMIT]],
        "more_groups": max(len(groups) - GROUP_LIMIT, 0),
        "tries": tries[:GROUP_LIMIT],
    }


def blocks(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """The run's blocks (batch jobs) with their scheduler state history, and a count per state."""
    found = query.blocks(conn, run_id)
    states: dict[str, int] = {}
    for b in found:
        key = (b.state or "unknown").lower()
        states[key] = states.get(key, 0) + 1
    return {"total": len(found), "states": states, "blocks": [_plain(b) for b in found]}


def nodes(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """Each node's (host and pool's) latest sample among those of the last ten minutes."""
    last = conn.execute("SELECT max(at) FROM sample WHERE run_id = ?", (run_id,)).fetchone()[0]
    if last is None:
        return []
    # SQLite takes the other columns from the row holding max(at)
    return _dicts(
        conn.execute(
            "SELECT host, pool_id, executor, max(at) AS at, cpu_percent, load1, mem_percent, rss_mb, busy, workers "
            "FROM sample WHERE run_id = ? AND at >= ? GROUP BY host, pool_id ORDER BY host, pool_id LIMIT ?",
            (run_id, last - 600.0, NODE_LIMIT),
        )
    )


def pools(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """The run's worker pools (each with its latest sample) and its nodes."""
    found = query.pools(conn, run_id)
    active = [p for p in found if p.lost is None]
    return {
        "pools": [_plain(p) for p in found],
        "nodes": nodes(conn, run_id),
        "active": len(active),
        "total": len(found),
        "workers": sum(p.workers or 0 for p in active),
    }


def samples(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """Node samples over the run: per time bucket, CPU and memory averaged over nodes and
    busy workers summed, so the answer has :data:`BUCKETS` points however long the run."""
    query.run_info(conn, run_id)
    row = conn.execute("SELECT min(at), max(at), count(*) FROM sample WHERE run_id = ?", (run_id,)).fetchone()
    if not row[2]:
        return {"count": 0, "series": []}
    start, end = row[0], max(row[1], row[0] + 1.0)
    width = (end - start) / BUCKETS
    series = _dicts(
        conn.execute(
            "SELECT b, min(at) AS at, avg(cpu) AS cpu_percent, avg(mem) AS mem_percent, sum(busy) AS busy, "
            "sum(workers) AS workers FROM (SELECT min(CAST((at - ?1) / ?2 AS INTEGER), ?3 - 1) AS b, min(at) AS at, "
            "avg(cpu_percent) AS cpu, avg(mem_percent) AS mem, avg(busy) AS busy, avg(workers) AS workers "
            "FROM sample WHERE run_id = ?4 GROUP BY b, host, pool_id) GROUP BY b ORDER BY b",
            (start, width, BUCKETS, run_id),
        )
    )
    return {"count": row[2], "start": start, "end": end, "width": width, "series": series}


def stream(
    conn: sqlite3.Connection, run_id: int, since: float | None = None, now: float | None = None
) -> dict[str, Any]:
    """The task stream: one bar per try in its worker's lane, or a heatmap of tries ended per
    lane and time past :data:`STREAM_LIMIT` tries.

    ``since`` (the previous answer's ``until``) returns only tries that ended from a few
    seconds before it on, for a try written late; the page keys tries by (task, try), so
    the overlap is harmless.
    """
    now = time.time() if now is None else now
    info = query.run_info(conn, run_id, now=now)
    start, end = _span(conn, info, now)
    running = conn.execute(
        f"SELECT count(*) FROM task_full{_hint(conn, 'task_by_state')} WHERE run_id = ? AND state = 'running'",
        (run_id,),
    ).fetchone()[0]
    base = {"live": info.live, "running": running, "start": start, "end": end}
    total = try_count(conn, run_id)
    if total > STREAM_LIMIT:
        heat = query.heatmap(conn, run_id, buckets=HEATMAP_BUCKETS, max_lanes=HEATMAP_LANES, now=now)
        return {**base, "mode": "heatmap", "total": total, **_plain(heat)}
    found = query.stream(conn, run_id, since=None if since is None else since - 10.0, limit=STREAM_LIMIT)
    return {
        **base,
        "mode": "tries",
        "total": found.total,
        "until": found.until,
        "lanes": found.lanes,
        "columns": ["lane", "task_id", "try_no", "func", "start", "end", "outcome"],
        "tries": [dataclasses.astuple(t) for t in found.tries],
    }


# -- /metrics: Prometheus text format 0.0.4 ---------------------------------------------------


def _escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


#: The families /metrics reports: name, type, help.
METRICS = (
    ("hpcfutures_run_info", "gauge", "A recorded run (always 1); its labels say what and where."),
    ("hpcfutures_run_live", "gauge", "1 while the run is running, 0 once it ended."),
    ("hpcfutures_tasks", "gauge", "Tasks of the run in each state."),
    ("hpcfutures_tries_total", "counter", "Tries of the run's tasks that ended."),
    (
        "hpcfutures_retries_total",
        "counter",
        "Tries made again after a failed try charged to the task's retries.",
    ),
    (
        "hpcfutures_requeued_total",
        "counter",
        "Tries made again after a try lost with its worker or pool, not charged to the task's retries.",
    ),
    (
        "hpcfutures_throughput_tasks_per_second",
        "gauge",
        f"Tasks that ended per second over the last {int(query.RECENT)} seconds (0 once the run ended).",
    ),
    ("hpcfutures_workers", "gauge", "Worker slots in the run's connected pools."),
    ("hpcfutures_pools", "gauge", "Worker pools of the run, connected or lost."),
    ("hpcfutures_blocks", "gauge", "Blocks (batch jobs) of the run in each scheduler state."),
    (
        "hpcfutures_samples_dropped_total",
        "counter",
        "Node samples the recorder dropped because its writer fell behind.",
    ),
    (
        "hpcfutures_run_heartbeat_timestamp_seconds",
        "gauge",
        "When the run's record was last written, in seconds since the epoch.",
    ),
)


class MetricsText:
    """Prometheus text format 0.0.4, written by hand: every family of :data:`METRICS` with
    its HELP and TYPE lines, then its samples, in the order they were added."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {
            name: (kind, help_text, []) for name, kind, help_text in METRICS
        }

    def add(self, name: str, labels: Mapping[str, object], value: float) -> None:
        """Add a sample to the family ``name`` (one of :data:`METRICS`)."""
        inside = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
        sample = name + (f"{{{inside}}}" if inside else "")
        self._families[name][2].append(f"{sample} {_number(value)}")

    def text(self) -> str:
        """The exposition: HELP, TYPE and samples of each family, a newline at the end."""
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


#: One sample: family name, labels, value.
MetricSample = tuple[str, dict[str, object], float]


def run_metrics(conn: sqlite3.Connection, key: str, run_id: int) -> tuple[list[MetricSample], bool]:
    """One run's samples, labelled ``run=key``, and whether the run has ended (its samples
    never change then: see :func:`settled`)."""
    st = query.status(conn, run_id)
    run = st.run
    labels: dict[str, object] = {"run": key, "family": run.family}
    out: list[MetricSample] = []

    def add(name: str, value: float, **more: object) -> None:
        out.append((name, {**labels, **more}, value))

    add(
        "hpcfutures_run_info",
        1,
        kind=run.kind,
        label=run.label or "",
        status=run.status,
        host=run.host or "",
        version=run.version or "",
    )
    add("hpcfutures_run_live", 1 if run.live else 0)
    for state, n in st.states.items():
        add("hpcfutures_tasks", n, state=state)
    add("hpcfutures_tries_total", try_count(conn, run_id))
    add("hpcfutures_retries_total", st.retries)
    add("hpcfutures_requeued_total", st.requeues)
    add("hpcfutures_throughput_tasks_per_second", (st.rate_recent or 0.0) if run.live else 0.0)
    lost = conn.execute(
        "SELECT count(*) FROM pool WHERE run_id = ? AND lost IS NOT NULL", (run_id,)
    ).fetchone()[0]
    add("hpcfutures_workers", st.workers)
    add("hpcfutures_pools", st.pools, state="connected")
    add("hpcfutures_pools", lost, state="lost")
    for state, n in sorted(blocks(conn, run_id)["states"].items()):
        add("hpcfutures_blocks", n, state=state)
    add("hpcfutures_samples_dropped_total", st.dropped)
    add("hpcfutures_run_heartbeat_timestamp_seconds", run.heartbeat or run.started)
    return out, settled(run)
