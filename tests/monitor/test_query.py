"""The read side of run records (hpcfutures.monitor.query), on real files written by a Recorder.

``build_records`` writes three runs in two families: ``sweep:1`` finished, with failures, a
retry, a requeue, a cache hit and miss and a lost pool; ``sweep:2`` still running (its
Recorder is open) with tasks held up for each of the three reasons a task may wait; and
``big:1``, 237 tasks to page through.  test_monitor_cli.py reads the same records.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcfutures.monitor import Recorder, RecordError, connect_for_reading
from hpcfutures.monitor import query as q
from hpcfutures.monitor.task_view import _when

TB3 = (
    "Traceback (most recent call last):\n"
    '  File "/home/u/flow.py", line 12, in square\n'
    "    raise ValueError(f'bad input {x}')\n"
    "ValueError: bad input 3\n"
)
TB4 = TB3.replace("input 3", "input 4")
TBX = "Traceback (most recent call last):\n  File \"/home/u/flow.py\", line 20, in load\nKeyError: 'x'\n"
BIG = 237


@dataclass
class Records:
    """Where the test records are, and what a test needs to know of them."""

    dir: Path
    sweep: Path
    big: Path
    live: Recorder  # sweep:2, open until the module's tests are done
    big_failed: list[int]  # the failed tasks of big:1
    big_ended: dict[int, float]  # when each task of big:1 ended


def _finished_run(path: Path) -> None:
    rec = Recorder(path, family="sweep", kind="dataflow", label="flow", config={"max_workers": 2})
    t = rec.started
    rec.pool_registered("htex", "p0", t, host="h1", workers=2, block_id="0", tag=1)
    rec.pool_registered("htex", "p1", t, host="h2", workers=2, block_id="1")
    rec.block("htex", "0", "pending", t, job_id="100", raw_state="PD", reason="Resources")
    rec.block("htex", "0", "running", t + 0.001, raw_state="R")
    rec.block("htex", "1", "pending", t, job_id="101", raw_state="PD")
    rec.block("htex", "1", "running", t + 0.001, raw_state="R")
    funcs = {5: "load", 6: "total", 7: "total"}
    parents = {6: [1, 2], 7: [3]}
    for task_id in range(1, 11):
        rec.submitted(
            task_id, funcs.get(task_id, "square"), t, executor="htex", parents=parents.get(task_id, ())
        )

    def ok(task_id: int, try_no: int = 1, worker: int = 0) -> None:
        at = t + 0.002 * task_id
        rec.attempt(task_id, try_no, "ok", queued=t, started=at, ended=at + 0.001, pool=1, worker=worker, pid=700 + worker,
                    rss_kb=2048, cpu=0.001)  # fmt: skip
        rec.ended(task_id, "done", at + 0.001, tries=try_no)

    ok(1)
    ok(2, worker=1)
    rec.attempt(3, 1, "error", started=t + 0.003, ended=t + 0.004, pool=1, worker=0,
                exception="ValueError: bad input 3", traceback=TB3)  # fmt: skip
    rec.attempt(3, 2, "error", started=t + 0.005, ended=t + 0.006, pool=1, worker=1, exit_code=None,
                exception="ValueError: bad input 3", traceback=TB3, stderr_tail="reading part 3\n")  # fmt: skip
    rec.ended(3, "failed", t + 0.006, tries=2, exception="ValueError: bad input 3")
    rec.attempt(4, 1, "error", started=t + 0.007, ended=t + 0.008, pool=1, worker=0,
                exception="ValueError: bad input 4", traceback=TB4)  # fmt: skip
    rec.ended(4, "failed", t + 0.008, tries=1, exception="ValueError: bad input 4")
    rec.attempt(5, 1, "error", started=t + 0.009, ended=t + 0.010, pool=1, worker=1, exception="KeyError: 'x'",
                traceback=TBX)  # fmt: skip
    rec.ended(5, "failed", t + 0.010, tries=1, exception="KeyError: 'x'")
    ok(6)
    rec.ended(7, "dep_fail", t + 0.011, exception="DependencyError: task 3 failed")
    rec.cache(8, "hit", "abc123def4567890")
    rec.ended(8, "memo_done", t + 0.012)
    rec.cache(9, "miss", "99887766554433", "argument 'x' changed")
    ok(9)
    rec.attempt(10, 1, "lost", charged=False, started=t + 0.013, ended=t + 0.014, pool="p1", host="h2", worker=0,
                exception="WorkerLostError: the worker was killed by signal 9 (SIGKILL)")  # fmt: skip
    rec.pool_lost("htex", "p1", t + 0.014, "killed by signal 9 (SIGKILL)")
    rec.block("htex", "1", "failed", t + 0.015, raw_state="F", reason="NODE_FAIL")
    ok(10, try_no=2, worker=1)
    rec.sample(t + 0.01, executor="htex", host="h1", pool_id="p0", busy=2, workers=2, load1=1.5)
    assert rec.flush()
    rec.close("done")


def _live_run(path: Path) -> Recorder:
    rec = Recorder(path, family="sweep", kind="htex", label="htex")
    t = rec.started
    rec.pool_registered("htex", "q0", t, host="h3", workers=2, block_id="0")
    rec.block("htex", "0", "running", t, job_id="200", raw_state="R")
    rec.block("slurm", "0", "pending", t, job_id="777", raw_state="PD", reason="Priority")
    for task_id in (1, 2):
        rec.submitted(task_id, "work", t, executor="htex")
        rec.state(task_id, "running", t + 0.001)
    rec.submitted(3, "work", t, executor="htex", state="queued")
    rec.submitted(4, "work", t, executor="htex", parents=[1])
    rec.submitted(5, "slurm_work", t, executor="slurm", state="queued")
    assert rec.flush()
    return rec


def _big_run(path: Path) -> tuple[list[int], dict[int, float]]:
    rec = Recorder(path, family="big", kind="dataflow")
    t = rec.started
    failed, ended = [], {}
    for task_id in range(1, BIG + 1):
        rec.submitted(task_id, ("a", "b", "c")[task_id % 3], t)
        # end times in an order unlike the ids, so that ordering by them is tested
        at = t + ((task_id * 37) % BIG) * 0.0001
        ended[task_id] = at
        if task_id % 7 == 0:
            failed.append(task_id)
            rec.attempt(task_id, 1, "error", started=at, ended=at, host="n1", worker=task_id % 4,
                        exception=f"OSError: [Errno 28] No space left on device: '/tmp/out-{task_id}'")  # fmt: skip
            rec.ended(
                task_id,
                "failed",
                at,
                tries=1,
                exception=f"OSError: [Errno 28] No space left on device: '/tmp/out-{task_id}'",
            )
        else:  # a plain task
            rec.succeeded(task_id, 1, at, started=at, host="n1", worker=task_id % 4)
    assert rec.flush()
    rec.close("done")
    return failed, ended


def build_records(where: Path) -> Records:
    """Write the test records into ``where``; the caller closes ``Records.live``."""
    where.mkdir(parents=True, exist_ok=True)
    sweep, big = where / "sweep.db", where / "big.db"
    _finished_run(sweep)
    live = _live_run(sweep)
    failed, ended = _big_run(big)
    return Records(where, sweep, big, live, failed, ended)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Records]:
    made = build_records(tmp_path_factory.mktemp("records"))
    try:
        yield made
    finally:
        made.live.close()


@pytest.fixture
def sweep(records: Records) -> Iterator[object]:
    conn = connect_for_reading(records.sweep)
    yield conn
    conn.close()


@pytest.fixture
def big(records: Records) -> Iterator[object]:
    conn = connect_for_reading(records.big)
    yield conn
    conn.close()


# -- records and runs ------------------------------------------------------------------------


def test_find_records_lists_the_db_files(
    records: Records, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (records.dir / "notes.txt").write_text("not a record")
    assert q.find_records([records.dir]) == [records.big, records.sweep]
    assert q.find_records([records.sweep]) == [records.sweep]
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(records.dir))
    assert q.find_records() == [records.big, records.sweep]
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(tmp_path / "none"))
    assert q.find_records() == []
    with pytest.raises(q.NotFoundError, match="no such run record or directory: .*missing"):
        q.find_records([tmp_path / "missing"])


def test_list_runs_reports_a_silent_writer_as_lost(records: Records, sweep) -> None:
    runs = q.list_runs(sweep)
    assert [(r.family, r.run_id, r.kind, r.label) for r in runs] == [
        ("sweep", 1, "dataflow", "flow"),
        ("sweep", 2, "htex", "htex"),
    ]
    finished, live = runs
    assert (finished.status, finished.submitted, finished.done, finished.failed, finished.cached) == (
        "done",
        10,
        5,
        4,
        1,
    )
    assert finished.ended is not None and finished.config == {"max_workers": 2}
    assert live.status == "running" and live.live and live.running == 2
    # the live run's writer refreshes its heartbeat; seen from later, it went silent
    later = q.list_runs(sweep, now=live.heartbeat + q.LOST_AFTER + 1)
    assert [r.status for r in later] == ["done", "lost"]


def test_resolve_run_by_every_kind_of_spec(records: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    where = [records.dir]
    os.utime(records.big, (time.time() - 3600,) * 2)  # sweep, being written, is the newest
    assert q.resolve_run(None, where) == (records.sweep, 2)
    assert q.resolve_run("sweep", where) == (records.sweep, 2)
    assert q.resolve_run("sweep:1", where) == (records.sweep, 1)
    assert q.resolve_run("1", where) == (records.sweep, 1)
    assert q.resolve_run("big", where) == (records.big, 1)
    assert q.resolve_run(str(records.big), None) == (records.big, 1)
    assert q.resolve_run(f"{records.sweep}:1", None) == (records.sweep, 1)
    monkeypatch.setenv("HPCFUTURES_RECORD_DIR", str(records.dir))
    assert q.resolve_run("big:1") == (records.big, 1)


def test_resolve_run_says_what_it_looked_for_and_where(records: Records, tmp_path: Path) -> None:
    where = [records.dir]
    with pytest.raises(
        q.NotFoundError,
        match=rf"no run record of family 'nope' in {records.dir} \(families there: big, sweep\)",
    ):
        q.resolve_run("nope", where)
    with pytest.raises(
        q.NotFoundError, match=rf"no run 9 in run record {records.sweep} \(its runs are 1, 2\)"
    ):
        q.resolve_run("sweep:9", where)
    with pytest.raises(q.NotFoundError, match=rf"no run records in {tmp_path}"):
        q.resolve_run(None, [tmp_path])
    with pytest.raises(q.NotFoundError, match="no such run record: .*elsewhere.db"):
        q.resolve_run(str(tmp_path / "elsewhere.db"), where)
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all, but long enough to be read as a header....................")
    with pytest.raises(RecordError, match="junk.db"):
        q.resolve_run(str(junk), where)


# -- status --------------------------------------------------------------------------------


def test_status_counts_states_functions_retries_and_requeues(sweep) -> None:
    st = q.status(sweep, 1)
    assert st.states == {"pending": 0, "queued": 0, "running": 0, "done": 5, "memo_done": 1, "failed": 3,
                         "dep_fail": 1, "cancelled": 0}  # fmt: skip
    assert (st.total, st.finished) == (10, 10)
    by_func = {f.func: (f.total, f.states) for f in st.by_func}
    assert by_func == {
        "square": (7, {"done": 4, "memo_done": 1, "failed": 2}),
        "load": (1, {"failed": 1}),
        "total": (2, {"done": 1, "dep_fail": 1}),
    }
    assert (st.retries, st.requeues) == (1, 1)  # task 3 tried again; task 10 lost with its pool
    assert (st.pools, st.workers) == (1, 2)  # p1 was lost
    assert st.eta is None and not st.run.live
    # every task ended within the run's last minute
    assert st.rate_recent == pytest.approx(10 / st.elapsed)
    assert st.rate_overall == pytest.approx(10 / st.elapsed)


def test_status_of_a_live_run(sweep) -> None:
    run = q.run_info(sweep, 2)
    st = q.status(sweep, 2, now=run.heartbeat)
    assert st.run.live
    assert {s: n for s, n in st.states.items() if n} == {"running": 2, "queued": 2, "pending": 1}
    assert (st.total, st.finished, st.rate_recent) == (5, 0, 0.0)
    assert st.eta is None  # nothing ended yet: no rate to go by
    assert {f.func: f.states for f in st.by_func} == {
        "work": {"running": 2, "queued": 1, "pending": 1},
        "slurm_work": {"queued": 1},
    }


# -- tasks ---------------------------------------------------------------------------------


def test_tasks_pages_in_id_order(big) -> None:
    rows, total = q.tasks(big, 1, limit=50, offset=200)
    assert total == BIG
    assert [r.task_id for r in rows] == list(range(201, BIG + 1))
    rows, _ = q.tasks(big, 1, limit=10, order="-id")
    assert [r.task_id for r in rows] == list(range(BIG, BIG - 10, -1))
    assert q.tasks(big, 1, offset=BIG)[0] == []


def test_tasks_filter_by_state_and_function(records: Records, big) -> None:
    failed = records.big_failed
    rows, total = q.tasks(big, 1, state="failed", limit=5, offset=5)
    assert total == len(failed) and [r.task_id for r in rows] == failed[5:10]
    assert all(r.state == "failed" and r.exception.startswith("OSError") for r in rows)
    in_b = [i for i in failed if i % 3 == 1]
    rows, total = q.tasks(big, 1, state="failed", func="b", limit=100)
    assert total == len(in_b) and [r.task_id for r in rows] == in_b
    rows, total = q.tasks(big, 1, func="a", limit=1000)
    assert total == len([i for i in range(1, BIG + 1) if i % 3 == 0])
    _, total = q.tasks(big, 1, state=["done", "failed"])
    assert total == BIG
    assert q.tasks(big, 1, func="nope") == ([], 0)


def test_tasks_ordered_by_end_time(records: Records, big) -> None:
    by_end = sorted(records.big_ended, key=lambda i: (records.big_ended[i], i))
    rows, _ = q.tasks(big, 1, order="ended", limit=30, offset=100)
    assert [r.task_id for r in rows] == by_end[100:130]
    failed_by_end = [i for i in reversed(by_end) if i in records.big_failed]
    rows, _ = q.tasks(big, 1, state="failed", order="-ended", limit=50, offset=3)
    assert [r.task_id for r in rows] == failed_by_end[3:]


def test_tasks_rows_carry_their_last_try(sweep) -> None:
    (row,), _ = q.tasks(sweep, 1, state="done", func="square", limit=1, offset=3)
    assert (row.task_id, row.tries, row.host, row.pool, row.worker, row.outcome) == (
        10,
        2,
        "h1",
        "p0",
        1,
        "ok",
    )
    # from the start of its first (lost) try to the end of the task
    assert row.duration == pytest.approx(0.021 - 0.013, abs=1e-6)


def test_tasks_rejects_what_it_does_not_know(sweep) -> None:
    with pytest.raises(ValueError, match="unknown task state 'finished'; the states are pending, queued"):
        q.tasks(sweep, 1, state="finished")
    with pytest.raises(ValueError, match="unknown order 'duration'"):
        q.tasks(sweep, 1, order="duration")


# -- one task ------------------------------------------------------------------------------


def test_task_detail_of_a_failed_task(sweep) -> None:
    d = q.task_detail(sweep, 1, 3)
    assert (d.task.state, d.task.tries, d.task.exception) == ("failed", 2, "ValueError: bad input 3")
    assert [(y.try_no, y.outcome, y.charged, y.worker, y.host) for y in d.tries] == [
        (1, "error", True, 0, "h1"),
        (2, "error", True, 1, "h1"),
    ]
    assert d.tries[1].traceback == TB3 and d.tries[1].stderr_tail == "reading part 3\n"
    assert [(c.task_id, c.func, c.state) for c in d.children] == [(7, "total", "dep_fail")]
    assert d.parents == [] and d.children_total == 1
    assert d.why_not_running == [
        "it ended: failed " + _when(d.task.ended) + " after 2 tries: ValueError: bad input 3"
    ]


def test_task_detail_of_a_requeued_task_and_its_parents(sweep) -> None:
    d = q.task_detail(sweep, 1, 10)
    assert [(y.outcome, y.charged, y.pool, y.host) for y in d.tries] == [
        ("lost", False, "p1", "h2"),
        ("ok", True, "p0", "h1"),
    ]
    d = q.task_detail(sweep, 1, 6)
    assert [(p.task_id, p.state) for p in d.parents] == [(1, "done"), (2, "done")]
    d = q.task_detail(sweep, 1, 7)
    assert d.why_not_running == ["it ended: a dependency failed (3), so it never ran"]


def test_unknown_tasks_and_runs_are_named(records: Records, sweep) -> None:
    with pytest.raises(q.NotFoundError, match=rf"no task 99 in run 1 of run record {records.sweep}"):
        q.task_detail(sweep, 1, 99)
    with pytest.raises(q.NotFoundError, match="no run 5 in run record"):
        q.why_not_running(sweep, 5, 1)


def test_explain_cache(sweep) -> None:
    assert (
        q.explain_cache(sweep, 1, 8)
        == "hit: the result was taken from the cache (key abc123def456); the task did not run"
    )
    assert q.explain_cache(sweep, 1, 9) == "miss (key 998877665544): argument 'x' changed; the task ran"
    assert q.explain_cache(sweep, 1, 1).startswith("no cache decision recorded")


# -- why is it not running? ----------------------------------------------------------------


def test_why_waiting_on_a_dependency(sweep) -> None:
    now = q.run_info(sweep, 2).heartbeat
    assert q.why_not_running(sweep, 2, 4, now=now) == ["waits on 1 dependency of 1: 1 (work, running)"]


def test_why_no_free_worker_slot(sweep) -> None:
    now = q.run_info(sweep, 2).heartbeat
    assert q.why_not_running(sweep, 2, 3, now=now) == [
        "queued: no free worker slot (1 pool, 2 workers, 2 busy)"
    ]


def test_why_its_blocks_are_queued_at_the_scheduler(sweep) -> None:
    now = q.run_info(sweep, 2).heartbeat
    (reason,) = q.why_not_running(sweep, 2, 5, now=now)
    assert reason.startswith("its blocks are still queued at the scheduler: block 0 (job 777) PD since ")
    assert reason.endswith(": Priority")


def test_why_a_running_task_and_a_lost_run(sweep) -> None:
    run = q.run_info(sweep, 2)
    assert q.why_not_running(sweep, 2, 1, now=run.heartbeat)[0].startswith("it is running: started ")
    later = run.heartbeat + q.LOST_AFTER + 1
    assert q.why_not_running(sweep, 2, 3, now=later) == [
        f"its run is lost: nothing heard from it since {_when(run.heartbeat)}",
        "queued: no free worker slot (1 pool, 2 workers, 2 busy)",
    ]


def test_why_queued_in_an_executor_that_reports_no_slots(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "threads.db", family="threads", kind="dataflow")
    t = rec.started
    rec.submitted(1, "step", t, executor="default")
    rec.state(1, "running", t)
    for task_id in (2, 3, 4):
        rec.submitted(task_id, "step", t, executor="default", state="queued")
    assert rec.flush()
    conn = connect_for_reading(tmp_path / "threads.db")
    try:
        now = q.run_info(conn, 1).heartbeat
        assert q.why_not_running(conn, 1, 4, now=now) == [
            "queued in its executor, behind 2 earlier queued tasks (1 known to be running; "
            "the executor reports no worker count)"
        ]
    finally:
        conn.close()
        rec.close()


# -- failures, blocks, pools ---------------------------------------------------------------


def test_failures_group_by_signature(records: Records, sweep, big) -> None:
    groups = q.failures(sweep, 1)
    assert [(g.signature, g.exception_type, g.count, g.task_ids, g.funcs) for g in groups] == [
        ("ValueError: bad input N", "ValueError", 2, [3, 4], ["square"]),
        ("KeyError: 'x'", "KeyError", 1, [5], ["load"]),
    ]
    assert groups[0].traceback == TB3 and groups[0].example == "ValueError: bad input 3"
    (group,) = q.failures(big, 1)
    assert group.signature == "OSError: [Errno N] No space left on device: '/tmp/out-N'"
    assert group.count == len(records.big_failed) and group.task_ids == records.big_failed[:5]


def test_blocks_keep_their_history_and_pools(sweep) -> None:
    found = q.blocks(sweep, 1)
    assert [(b.block_id, b.job_id, b.state, b.pools) for b in found] == [
        ("0", "100", "running", ["p0"]),
        ("1", "101", "failed", ["p1"]),
    ]
    assert [(c.state, c.raw_state, c.reason) for c in found[1].history] == [
        ("pending", "PD", None), ("running", "R", None), ("failed", "F", "NODE_FAIL"),
    ]  # fmt: skip
    assert found[0].history[0].reason == "Resources"


def test_pools_with_loss_and_latest_sample(sweep) -> None:
    found = {p.pool_id: p for p in q.pools(sweep, 1)}
    assert found["p1"].lost is not None and found["p1"].reason == "killed by signal 9 (SIGKILL)"
    assert found["p0"].lost is None and found["p0"].sample is not None and found["p0"].sample.busy == 2
    assert [s.pool_id for s in q.samples(sweep, 1)] == ["p0"]
    assert q.samples(sweep, 1, since=found["p0"].sample.at) == []


# -- stream and heatmap --------------------------------------------------------------------


def test_stream_lanes_and_paging(sweep) -> None:
    s = q.stream(sweep, 1)
    assert s.total == 10 and not s.truncated and len(s.tries) == 10
    assert set(s.lanes) == {"h1/p0/0", "h1/p0/1", "h2/p1/0"}
    lost = next(y for y in s.tries if y.outcome == "lost")
    assert (s.lanes[lost.lane], lost.task_id, lost.func) == ("h2/p1/0", 10, "square")
    ends = [y.end for y in s.tries]
    assert ends == sorted(ends) and s.until == ends[-1]
    first = q.stream(sweep, 1, limit=4)
    assert first.truncated and [y.end for y in first.tries] == ends[-4:]
    since = q.stream(sweep, 1, since=ends[5], limit=100)
    assert [y.end for y in since.tries] == ends[5:]


def test_heatmap_counts_every_try_and_samples_big_runs(big) -> None:
    h = q.heatmap(big, 1, buckets=10)
    assert h.by == "worker" and h.sampled == 1 and len(h.lanes) == 4
    assert sum(map(sum, (lane.ended for lane in h.lanes))) == BIG
    assert sum(map(sum, (lane.failed for lane in h.lanes))) == BIG // 7
    assert {lane.lane for lane in h.lanes} == {f"n1/?/{w}" for w in range(4)}
    folded = q.heatmap(big, 1, buckets=10, max_lanes=2)
    assert folded.by == "pool" and [lane.lane for lane in folded.lanes] == ["n1/?"]
    sampled = q.heatmap(big, 1, buckets=10, exact=60)
    assert sampled.sampled == 4
    counted = sum(map(sum, (lane.ended for lane in sampled.lanes)))
    assert counted % 4 == 0 and 0.5 * BIG < counted < 1.5 * BIG


def test_results_are_json(sweep) -> None:
    from dataclasses import asdict

    text = json.dumps(asdict(q.task_detail(sweep, 1, 3)))
    assert "ValueError: bad input 3" in text
    json.dumps(asdict(q.status(sweep, 1)))


def test_a_page_larger_than_sqlites_variable_limit_is_read_in_chunks(tmp_path: Path) -> None:
    from hpcfutures.monitor.schema import connect

    path = tmp_path / "wide.db"
    conn = connect(path)
    conn.execute("INSERT INTO run (family, kind, status, started) VALUES ('wide', 'test', 'done', 0)")
    n = 2_000
    conn.execute("BEGIN")
    conn.executemany(  # every other task a full row, the others plain
        "INSERT INTO task_full (run_id, task_id, func, state, ended) VALUES (1, ?, 'f', 'done', ?)",
        [(i, float(i)) for i in range(2, n + 1, 2)],
    )
    conn.executemany(
        "INSERT INTO try_full (run_id, task_id, try_no, outcome, host) VALUES (1, ?, 1, 'ok', 'h')",
        [(i,) for i in range(2, n + 1, 2)],
    )
    conn.executemany(
        "INSERT INTO task_plain (run_id, task_id, func, ended, try_no, host) VALUES (1, ?, 'f', ?, 1, 'h')",
        [(i, float(i)) for i in range(1, n + 1, 2)],
    )
    conn.execute("COMMIT")
    conn.close()
    reader = connect_for_reading(path)
    import sqlite3

    reader.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # as in older SQLite builds
    try:
        rows, total = q.tasks(reader, 1, limit=n)
    finally:
        reader.close()
    assert total == n
    assert [r.task_id for r in rows] == list(range(1, n + 1))
    assert {r.host for r in rows} == {"h"}


# -- full and plain tasks together (schema version 2) ------------------------------------------


def _values(n: int) -> str:
    return f"VALUES ({', '.join('?' * n)})"


def _mixed_record(path: Path, *, other_run: bool) -> list[q.TaskRow]:
    """Write run 1 straight into the base tables: 600 tasks of three functions in every
    state, most of them plain, the others full rows (some tried twice), with end times
    shared by plain and full tasks alike and in an order unlike the ids'; return every task
    as ``q.tasks`` should give it.  ``other_run`` adds a run 2 of a few tasks to the file."""
    from hpcfutures.monitor.schema import connect

    t0 = 1_700_000_000.0
    full, tries, plain, expected = [], [], [], []
    for i in range(1, 601):
        func, host, pool, worker = ("a", "b", "c")[i % 3], f"n{i % 4}", f"p{i % 2}", i % 8
        submitted = t0 + i * 0.01
        end = t0 + 10 + (i * 7 % 200) * 0.5  # each end time shared by three tasks
        ended: float | None = end
        started: float | None = end - 1.0
        where: tuple[str | None, str | None, int | None, str | None] = (None, None, None, None)
        cache = exception = None
        if i > 580:  # not ended yet
            state, n_tries = ("pending", "queued", "running")[i % 3], 0
            ended, started = None, (submitted + 1 if state == "running" else None)
        elif i % 10 in (0, 3):  # two tries: the first lost with its worker, not charged
            state, n_tries = ("failed", 2) if i % 10 == 3 else ("done", 2)
            exception = "ValueError: bad" if state == "failed" else None
            outcome = "error" if exception else "ok"
            where = (host, pool, worker, outcome)
            tries.append((1, i, 1, submitted, None, started, end - 0.5, "lost", 0, "lost", None, "p9", "n9", 9,
                          None, None, None, None, None, None))  # fmt: skip
            tries.append((1, i, 2, submitted, None, started, ended, outcome, 1, exception, None, pool, host, worker,
                          None, None, None, None, None, None))  # fmt: skip
        elif i % 17 == 0 or i % 23 == 0 or i % 29 == 0:  # ended without running
            state = "memo_done" if i % 17 == 0 else "dep_fail" if i % 23 == 0 else "cancelled"
            cache, started, n_tries = ("hit" if state == "memo_done" else None), None, 0
        else:
            plain.append((1, i, func, None, "htex", submitted, submitted, submitted, started, ended, 1, pool, host,
                          worker, 100 + i, 2048, 0.5))  # fmt: skip
            expected.append(q.TaskRow(i, func, None, "htex", "done", submitted, started, end, 1.0, 1, None, None,
                                      host, pool, worker, "ok"))  # fmt: skip
            continue
        full.append((1, i, func, None, "htex", state, submitted, started, ended, n_tries, exception, None, cache,
                     None, None))  # fmt: skip
        duration = ended - started if ended is not None and started is not None else None
        expected.append(q.TaskRow(i, func, None, "htex", state, submitted, started, ended, duration, n_tries,
                                  exception, cache, *where))  # fmt: skip
    conn = connect(path)
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO run (run_id, family, kind, status, started) VALUES (1, 'mixed', 'htex', 'done', ?)",
        (t0,),
    )
    conn.executemany(f"INSERT INTO task_full {_values(15)}", full)
    conn.executemany(f"INSERT INTO try_full {_values(20)}", tries)
    conn.executemany(f"INSERT INTO task_plain {_values(17)}", plain)
    if other_run:
        conn.execute(
            "INSERT INTO run (run_id, family, kind, status, started) VALUES (2, 'mixed', 'htex', 'done', ?)",
            (t0,),
        )
        for i in (3, 7, 700):
            conn.execute("INSERT INTO task_full (run_id, task_id, func, state, ended) VALUES (2, ?, 'a', 'failed', ?)",
                         (i, t0 + 50))  # fmt: skip
            conn.execute("INSERT INTO task_plain (run_id, task_id, func, ended, try_no) VALUES (2, ?, 'a', ?, 1)",
                         (i + 1, t0 + 50))  # fmt: skip
    conn.execute("COMMIT")
    conn.close()
    return expected


def _by_end(row: q.TaskRow) -> tuple[bool, float, int]:
    return (row.ended is not None, row.ended or 0.0, row.task_id)  # SQLite puts NULL first


#: How each of q.ORDERS arranges a list of tasks.
_ARRANGE = {
    "id": lambda rows: sorted(rows, key=lambda r: r.task_id),
    "-id": lambda rows: sorted(rows, key=lambda r: r.task_id, reverse=True),
    "ended": lambda rows: sorted(rows, key=_by_end),
    "-ended": lambda rows: sorted(rows, key=_by_end, reverse=True),
}


@pytest.mark.parametrize("other_run", [False, True])
def test_pages_and_counts_of_plain_and_full_tasks_together(tmp_path: Path, other_run: bool) -> None:
    everything = _mixed_record(tmp_path / "mixed.db", other_run=other_run)
    assert set(_ARRANGE) == set(q.ORDERS)
    state_filters: list[str | list[str] | None] = [
        None, "done", "failed", "pending", "memo_done", ["done", "failed"], ["cancelled", "done", "dep_fail"],
        ["running", "queued", "pending"],
    ]  # fmt: skip
    conn = connect_for_reading(tmp_path / "mixed.db")
    try:
        for state in state_filters:
            wanted = None if state is None else {state} if isinstance(state, str) else set(state)
            for func in (None, "a", "c", "nope"):
                matching = [
                    r for r in everything
                    if (wanted is None or r.state in wanted) and (func is None or r.func == func)
                ]  # fmt: skip
                for order, arrange in _ARRANGE.items():
                    reference = arrange(matching)
                    for offset in sorted({0, 3, 40, 150, max(len(matching) - 5, 0), len(everything) + 1}):
                        rows, total = q.tasks(
                            conn, 1, state=state, func=func, order=order, offset=offset, limit=25
                        )
                        assert total == len(matching), (state, func, order)
                        assert rows == reference[offset : offset + 25], (state, func, order, offset)
        st = q.status(conn, 1)
        states = {s: sum(r.state == s for r in everything) for s in q.TASK_STATES}
        assert st.states == states and st.total == len(everything) and states["done"] > 300
        assert {f.func: f.states for f in st.by_func} == {
            func: {
                s: n
                for s in sorted(states)
                if (n := sum(r.state == s and r.func == func for r in everything))
            }
            for func in ("a", "b", "c")
        }
        assert (st.retries, st.requeues) == (0, sum(r.tries == 2 for r in everything))
    finally:
        conn.close()


def test_tries_of_plain_and_full_tasks_together(tmp_path: Path) -> None:
    everything = _mixed_record(tmp_path / "mixed.db", other_run=True)
    conn = connect_for_reading(tmp_path / "mixed.db")
    try:
        s = q.stream(conn, 1, limit=10_000)
        ended = [r for r in everything if r.outcome is not None]
        assert s.total == len(s.tries) == sum(r.tries for r in ended)  # both tries of the retried ones
        keys = [(y.end, y.task_id, y.try_no) for y in s.tries]
        assert keys == sorted(keys)
        assert {y.task_id for y in s.tries if y.try_no == 1 and y.outcome == "ok"} == {
            r.task_id for r in ended if r.tries == 1
        }
        latest = q.stream(conn, 1, limit=30)
        assert latest.truncated and [(y.end, y.task_id, y.try_no) for y in latest.tries] == keys[-30:]
        since = q.stream(conn, 1, since=keys[100][0], limit=40)
        assert [(y.end, y.task_id, y.try_no) for y in since.tries] == [
            k for k in keys if k[0] >= keys[100][0]
        ][:40]
        h = q.heatmap(conn, 1, buckets=7)
        assert sum(map(sum, (lane.ended for lane in h.lanes))) == s.total
        assert sum(map(sum, (lane.failed for lane in h.lanes))) == sum(y.outcome != "ok" for y in s.tries)
        (group,) = q.failures(conn, 1)
        assert group.count == sum(r.state == "failed" for r in everything)
    finally:
        conn.close()
