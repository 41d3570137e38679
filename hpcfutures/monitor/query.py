"""Read a run record: the typed queries behind ``hpcfutures monitor`` and the dashboard.

Each query takes a connection from :func:`~.schema.connect_for_reading` and a run id and
returns dataclasses (:func:`dataclasses.asdict` makes them JSON).  Every query reads through
the schema's indexes, so that it answers in well under a second on a record of a million
tasks: counts come from covering index scans, pages of tasks are found in an index before
their rows are read, and nothing sorts the task table.  The views ``task`` and ``try`` are
read only to look tasks up by id; otherwise a query reads ``task_full`` / ``try_full`` and
``task_plain`` apart, merging their index-ordered rows or adding up their counts (see
:mod:`._sql`).  ``task_plain`` has no index on ``func``: counts by function and pages
filtered by function read its rows.  Times are seconds since the epoch.

This module is the read API's one entry point; the queries live in modules of one purpose
each, and are re-exported here:

- :mod:`.runs`: records and the runs in them (:func:`list_runs`, :func:`run_info`,
  :func:`resolve_run`, :func:`find_records`), and :class:`NotFoundError`;
- :mod:`.status`: where a run stands (:func:`status`);
- :mod:`.tasks`: pages of tasks (:func:`tasks`);
- :mod:`.task_view`: one task (:func:`task_detail`, :func:`explain_cache`,
  :func:`why_not_running`);
- :mod:`.failures`: failed tasks grouped by signature (:func:`failures`);
- :mod:`.infra`: blocks, worker pools and node samples;
- :mod:`.timeline`: the task stream and the heatmap.
"""

from __future__ import annotations

from .failures import FailureGroup, failures, signature
from .infra import Block, BlockChange, Pool, Sample, blocks, pools, samples
from .location import record_dir
from .runs import LOST_AFTER, NotFoundError, Run, find_records, list_runs, record_path, resolve_run, run_info
from .schema import FINAL_STATES, TASK_STATES, RecordError, connect_for_reading
from .status import RECENT, FuncCounts, Status, status
from .task_view import (
    WAITING_BLOCK_STATES,
    Relative,
    TaskDetail,
    Try,
    explain_cache,
    task_detail,
    why_not_running,
)
from .tasks import ORDERS, TaskRow, tasks
from .timeline import HEATMAP_EXACT, HeatLane, Heatmap, Stream, StreamTry, heatmap, stream

__all__ = [
    "FINAL_STATES",
    "HEATMAP_EXACT",
    "LOST_AFTER",
    "ORDERS",
    "RECENT",
    "TASK_STATES",
    "WAITING_BLOCK_STATES",
    "Block",
    "BlockChange",
    "FailureGroup",
    "FuncCounts",
    "HeatLane",
    "Heatmap",
    "NotFoundError",
    "Pool",
    "RecordError",
    "Relative",
    "Run",
    "Sample",
    "Status",
    "Stream",
    "StreamTry",
    "TaskDetail",
    "TaskRow",
    "Try",
    "blocks",
    "connect_for_reading",
    "explain_cache",
    "failures",
    "find_records",
    "heatmap",
    "list_runs",
    "pools",
    "record_dir",
    "record_path",
    "resolve_run",
    "run_info",
    "samples",
    "signature",
    "status",
    "stream",
    "task_detail",
    "tasks",
    "why_not_running",
]
