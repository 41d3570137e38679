"""``hpcfutures monitor``: read run records from the command line, without a browser.

``ls``, ``status``, ``tasks``, ``task``, ``explain``, ``blocks``, ``failures``, ``export``,
and ``serve`` (the dashboard, in :mod:`.server`).  Every answer comes from :mod:`.query`;
this module only prints it, as aligned tables or, with ``--json``, as JSON.  An error is
one line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import query
from .export import FORMATS
from .schema import FINAL_STATES, TASK_STATES, RecordError, connect_for_reading

_PROG = "hpcfutures monitor"
_DEFAULT_FIELDS = ("task_id", "func", "state", "tries", "started", "duration", "host", "exception")
_FIELDS = tuple(f.name for f in dataclasses.fields(query.TaskRow))


class _Usage(ValueError):
    """A command-line value the query functions would not know to reject."""


# -- formatting ---------------------------------------------------------------------------


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Align ``rows`` under ``header``; the columns in ``right`` (numbers) to the right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def _first_line(text: str | None, width: int = 70) -> str:
    if not text:
        return "-"
    line = text.strip().splitlines()[0] if text.strip() else "-"
    return line if len(line) <= width else line[: width - 1] + "…"


def _json_out(value: Any) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [
            dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
            for v in value
        ]
    print(json.dumps(value, indent=2, default=str))


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


# -- where the records are ----------------------------------------------------------------


def _paths(args: argparse.Namespace) -> list[str] | None:
    given = [*(getattr(args, "dir", None) or []), *(getattr(args, "record", None) or [])]
    return given or None


@contextmanager
def _open_run(args: argparse.Namespace, spec: str | None) -> Iterator[tuple[sqlite3.Connection, int]]:
    path, run_id = query.resolve_run(spec, _paths(args))
    conn = connect_for_reading(path)
    try:
        yield conn, run_id
    finally:
        conn.close()


# -- the commands -------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    runs: list[query.Run] = []
    paths = _paths(args)
    records = query.find_records(paths)
    for path in records:
        try:
            conn = connect_for_reading(path)
        except RecordError as exc:
            print(f"{_PROG} ls: skipped {exc}", file=sys.stderr)
            continue
        try:
            runs.extend(query.list_runs(conn))
        finally:
            conn.close()
    runs.sort(key=lambda r: r.started)
    if args.json:
        _json_out(runs)
        return 0
    if not runs:
        where = ", ".join(paths) if paths else str(query.record_dir())
        print(f"no runs recorded in {where}")
        return 0
    rows = [
        [
            f"{r.family}:{r.run_id}", r.kind, r.label or "-", r.status, _when(r.started),
            _duration((r.ended or r.heartbeat or r.started) - r.started), _cell(r.submitted), _cell(r.done),
            _cell(r.failed), _cell(r.cached), _cell(r.running),
        ]
        for r in runs
    ]  # fmt: skip
    header = [
        "RUN",
        "KIND",
        "LABEL",
        "STATUS",
        "STARTED",
        "TIME",
        "TASKS",
        "DONE",
        "FAILED",
        "CACHED",
        "RUNNING",
    ]
    print(_table(header, rows, right=range(5, 11)))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _open_run(args, args.run) as (conn, run_id):
        st = query.status(conn, run_id)
    if args.json:
        _json_out(st)
        return 0
    run = st.run
    label = f", {run.label}" if run.label and run.label != run.kind else ""
    print(f"run       {run.family}:{run.run_id} ({run.kind}{label})  {run.status}  {run.record}")
    print(f"started   {_when(run.started)}  on {run.host or '?'} pid {run.pid or '?'}  elapsed {_duration(st.elapsed)}"
          + (f"  ended {_when(run.ended)}" if run.ended else ""))  # fmt: skip
    shown = ", ".join(f"{n:,} {state}" for state, n in st.states.items() if n)
    print(f"tasks     {st.total:,}" + (f": {shown}" if shown else ""))
    eta = f"  ETA {_duration(st.eta)}" if st.eta is not None and st.total > st.finished else ""
    print(f"rate      {_rate(st.rate_recent)} over the last minute, {_rate(st.rate_overall)} overall{eta}")
    print(f"retries   {st.retries:,} retried, {st.requeues:,} requeued; {st.dropped:,} node samples dropped")
    if st.behind is not None:
        print(
            f"record    the counts are current; the task rows are {_duration(st.behind)} behind them "
            "(the executor is busy: they are written when it calms down)"
        )
    workers = f"{st.workers:,} worker{'' if st.workers == 1 else 's'}"
    if run.live and st.pools:
        print(f"pools     {st.pools:,} connected, {workers}")
    elif st.pools:
        print(f"pools     {st.pools:,} still registered at the end, {workers}")
    if run.error:
        print(f"error     {run.error}")
    if st.by_func:
        states = [s for s in TASK_STATES if any(f.states.get(s) for f in st.by_func)]
        rows = [[f.func, _cell(f.total), *(_cell(f.states.get(s, 0)) for s in states)] for f in st.by_func]
        print()
        print(
            _table(["FUNCTION", "TOTAL", *(s.upper() for s in states)], rows, right=range(1, 2 + len(states)))
        )
    return 0


def _fields(text: str | None) -> list[str]:
    if not text:
        return list(_DEFAULT_FIELDS)
    names = ["task_id" if name.strip() == "id" else name.strip() for name in text.split(",") if name.strip()]
    unknown = [n for n in names if n not in _FIELDS]
    if unknown:
        raise _Usage(f"unknown field {unknown[0]!r} in --fields; the fields are {', '.join(_FIELDS)}")
    return names


def _field(row: query.TaskRow, name: str) -> str:
    value = getattr(row, name)
    if name in ("submitted", "started", "ended"):
        return _when(value)
    if name == "duration":
        return _duration(value)
    if name == "exception":
        return _first_line(value)
    return _cell(value)


def _tasks(args: argparse.Namespace) -> int:
    fields = _fields(args.fields)
    states = [s.strip() for s in args.state.split(",") if s.strip()] if args.state else None
    with _open_run(args, args.run) as (conn, run_id):
        rows, total = query.tasks(
            conn, run_id, state=states, func=args.func, offset=args.offset, limit=args.limit, order=args.order
        )
    if args.json:
        print(json.dumps(
            {"total": total, "offset": args.offset, "tasks": [{f: getattr(r, f) for f in fields} for r in rows]},
            indent=2,
        ))  # fmt: skip
        return 0
    if not rows:
        print(f"no tasks match (of {total:,})" if total else "no tasks match")
        return 0
    numeric = {"task_id", "tries", "worker", "duration"}
    header = ["ID" if f == "task_id" else f.upper() for f in fields]
    print(_table(header, [[_field(r, f) for f in fields] for r in rows],
                 right=[i for i, f in enumerate(fields) if f in numeric]))  # fmt: skip
    last = args.offset + len(rows)
    more = f"; --offset {last} for more" if last < total else ""
    print(f"\n{args.offset + 1:,}-{last:,} of {total:,}{more}")
    return 0


def _task(args: argparse.Namespace) -> int:
    with _open_run(args, args.run) as (conn, run_id):
        detail = query.task_detail(conn, run_id, args.id)
    if args.json:
        _json_out(detail)
        return 0
    t = detail.task
    print(f"task {t.task_id}  {t.func or '?'}" + (f" ({t.name})" if t.name and t.name != t.func else "")
          + f"  {t.state}  tries {t.tries}" + (f"  executor {t.executor}" if t.executor else ""))  # fmt: skip
    print(f"submitted {_when(t.submitted)}  started {_when(t.started)}  ended {_when(t.ended)}"
          f"  duration {_duration(t.duration)}")  # fmt: skip
    if t.exception:
        print(f"exception {t.exception}")
    print(f"cache     {detail.cache_explained}")
    for reason in detail.why_not_running:
        print(f"why       {reason}")
    if detail.resources:
        print(f"resources {json.dumps(detail.resources, sort_keys=True)}")
    for word, relatives, total in (("parents", detail.parents, detail.parents_total),
                                   ("children", detail.children, detail.children_total)):  # fmt: skip
        if total:
            shown = ", ".join(
                f"{r.task_id} ({r.func or '?'}, {r.state or 'not recorded'})" for r in relatives[:20]
            )
            more = f", and {total - 20:,} more" if total > 20 else ""
            print(f"{word:<9} {shown}{more}")
    for y in detail.tries:
        where = "  ".join(f"{k} {v}" for k, v in (("host", y.host), ("pool", y.pool), ("worker", y.worker),
                                                  ("pid", y.pid)) if v is not None)  # fmt: skip
        charged = "" if y.charged else "  (requeued: not charged to the retries)"
        print(f"\ntry {y.try_no}  {y.outcome or '?'}{charged}  {where}".rstrip())
        took = y.ended - y.started if y.ended is not None and y.started is not None else None
        print(
            f"  queued {_when(y.queued)}  started {_when(y.started)}  ended {_when(y.ended)}  ({_duration(took)})"
        )
        extra = [f"rss {y.rss_kb / 1024:,.1f} MiB" if y.rss_kb is not None else "",
                 f"cpu {_duration(y.cpu)}" if y.cpu is not None else "",
                 f"exit code {y.exit_code}" if y.exit_code is not None else ""]  # fmt: skip
        if any(extra):
            print("  " + "  ".join(e for e in extra if e))
        if y.exception:
            print(f"  exception: {y.exception}")
        for title, text in (
            ("traceback", y.traceback),
            ("stdout tail", y.stdout_tail),
            ("stderr tail", y.stderr_tail),
        ):
            if text:
                print(f"  {title}:\n{_indent(text)}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    with _open_run(args, args.run) as (conn, run_id):
        detail = query.task_detail(conn, run_id, args.id)
    t = detail.task
    verb = "ended" if t.state in FINAL_STATES else "is"
    print(f"task {t.task_id} ({t.func or '?'}) {verb} {t.state}:")
    for reason in detail.why_not_running:
        print(f"  - {reason}")
    print(f"cache: {detail.cache_explained}")
    return 0


def _blocks(args: argparse.Namespace) -> int:
    with _open_run(args, args.run) as (conn, run_id):
        found, pools = query.blocks(conn, run_id), query.pools(conn, run_id)
    if args.json:
        print(json.dumps({"blocks": [dataclasses.asdict(b) for b in found],
                          "pools": [dataclasses.asdict(p) for p in pools]}, indent=2))  # fmt: skip
        return 0
    if not found:
        print("no blocks recorded (a local executor runs no batch jobs)")
    else:
        rows = [[b.executor, b.block_id, b.job_id or "-", b.state or "-", b.raw_state or "-", _when(b.updated),
                 ", ".join(b.pools) or "-", b.reason or ""] for b in found]  # fmt: skip
        print(_table(["EXECUTOR", "BLOCK", "JOB", "STATE", "SCHEDULER", "SINCE", "POOLS", "REASON"], rows))
        for b in found:
            if len(b.history) > 1:
                steps = " -> ".join(f"{c.state}" + (f" ({c.raw_state})" if c.raw_state else "")
                                    + f" {time.strftime('%H:%M:%S', time.localtime(c.at))}" for c in b.history)  # fmt: skip
                print(f"  block {b.block_id}: {steps}")
    if pools:
        rows = [[p.executor, p.pool_id, p.block_id or "-", p.host or "-", _cell(p.workers), _when(p.registered),
                 _when(p.lost) if p.lost else "-",
                 f"{p.sample.busy}/{p.sample.workers} busy, load {p.sample.load1}" if p.sample else "-",
                 p.reason or ""] for p in pools]  # fmt: skip
        print()
        print(_table(["EXECUTOR", "POOL", "BLOCK", "HOST", "WORKERS", "REGISTERED", "LOST", "LAST SAMPLE", "REASON"],
                     rows, right=[4]))  # fmt: skip
    return 0


def _failures(args: argparse.Namespace) -> int:
    with _open_run(args, args.run) as (conn, run_id):
        groups = query.failures(conn, run_id)
    if args.json:
        _json_out(groups)
        return 0
    if not groups:
        print("no failed tasks")
        return 0
    for i, g in enumerate(groups):
        ids = ", ".join(map(str, g.task_ids)) + (", …" if g.count > len(g.task_ids) else "")
        print(("\n" if i else "") + f"{g.count:,} x {g.signature}")
        print(f"  functions: {', '.join(g.funcs)}; tasks {ids}")
        if g.traceback:
            print(f"  traceback of task {g.task_ids[0]}:\n{_indent(g.traceback)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export

    path, run_id = query.resolve_run(args.run, _paths(args))
    if args.output in (None, "-"):
        export(path, run_id, args.format, sys.stdout)
        return 0
    out = Path(args.output)
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as stream:
            export(path, run_id, args.format, stream)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out} ({args.format}, run {run_id} of {path})", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve_main
    except ImportError as exc:
        raise _Usage(f"the dashboard is not available in this installation ({exc})") from None
    result: int = serve_main(args)
    return result


# -- the parser ---------------------------------------------------------------------------


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", action="append", metavar="DIR",
                       help="read the records (*.db) in DIR instead of the record directory")  # fmt: skip
    where.add_argument("--record", action="append", metavar="FILE", help="read this record file")
    parser = argparse.ArgumentParser(
        prog=_PROG,
        parents=[where],
        description="Read the run records of executors made with record= (or HPCFUTURES_RECORD=1). "
        f"Records live in $HPCFUTURES_RECORD_DIR, else {query.record_dir()}.",
        epilog="RUN is a family name ('sweep'), 'family:ID', a record's path, 'path:ID', or a run ID in the "
        "most recently written record; without RUN, that record's latest run.",
    )
    # the subcommands take --dir/--record too, without resetting what was given before them
    sub_where = argparse.ArgumentParser(add_help=False)
    sub_where.add_argument(
        "--dir", action="append", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub_where.add_argument(
        "--record", action="append", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help[:1].upper() + help[1:] + ".", parents=[sub_where]
        )
        sub.set_defaults(handler=run)
        return sub

    def run_arg(sub: argparse.ArgumentParser, *, option: bool = False) -> None:
        if option:
            sub.add_argument("--run", metavar="RUN", help="the run (default: the latest)")
        else:
            sub.add_argument("run", nargs="?", metavar="RUN", help="the run (default: the latest)")

    def json_arg(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    json_arg(command("ls", "list the recorded runs", _ls))
    sub = command("status", "counts, throughput and ETA of a run", _status)
    run_arg(sub)
    json_arg(sub)
    sub = command("tasks", "list a run's tasks, a page at a time", _tasks)
    run_arg(sub)
    sub.add_argument(
        "--state", help=f"only tasks in these states (comma-separated: {', '.join(TASK_STATES)})"
    )
    sub.add_argument("--func", help="only tasks of this function")
    sub.add_argument("--limit", type=_nonnegative, default=50, help="tasks per page (default: 50)")
    sub.add_argument("--offset", type=_nonnegative, default=0, help="tasks to skip (default: 0)")
    sub.add_argument("--order", choices=list(query.ORDERS), default="id", help="order (default: id)")
    sub.add_argument("--fields", help=f"columns, comma-separated (default: {','.join(_DEFAULT_FIELDS)}; "
                     f"all: {','.join(_FIELDS)})")  # fmt: skip
    json_arg(sub)
    for name, help, handler in (("task", "everything recorded about one task: tries, traceback, output", _task),
                                ("explain", "why a task is not running, and what the cache decided", _explain)):  # fmt: skip
        sub = command(name, help, handler)
        sub.add_argument("id", type=int, metavar="ID", help="the task's id")
        run_arg(sub, option=True)
        if name == "task":
            json_arg(sub)
    sub = command("blocks", "a run's batch jobs with their scheduler history, and its worker pools", _blocks)
    run_arg(sub)
    json_arg(sub)
    sub = command("failures", "a run's failed tasks grouped by exception", _failures)
    run_arg(sub)
    json_arg(sub)
    sub = command("export", "write a run as an HTML page, CSV of its tasks, or a Chrome trace", _export)
    run_arg(sub)
    sub.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    sub.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: standard output)")
    sub = command("serve", "serve the dashboard of the records (prints its URL)", _serve)
    run_arg(sub)
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sub.add_argument("--port", type=_nonnegative, default=0, help="port (default: 0, any free port)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hpcfutures monitor`` with ``argv`` (the words after ``monitor``); return its exit code.

    Errors (no such record, run or task; a file that is not a record) print one line to
    standard error and return 2, as argument errors do.
    """
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, or an argument error already reported
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (RecordError, ValueError, sqlite3.Error) as exc:
        print(f"{_PROG} {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader (head, less) went away: stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
