"""The record writer's backlog (hpcfutures/monitor/writer.py): while the executor is busy the
writer keeps the run's counts current and defers the task rows; they follow, the same rows,
when it calms down, at a flush, or at the end of its input.

``serve`` runs on a thread here, fed frames through a real pipe, and writes a real SQLite
file under tmp_path; the busy threshold and the calm delay are patched in the writer module
(``serve`` reads them at every frame).
"""

from __future__ import annotations

import marshal
import os
import random
import select
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pytest

from hpcfutures import DataflowExecutor, ThreadExecutor
from hpcfutures.dataflow import tasklog
from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex import recording
from hpcfutures.monitor import writer
from hpcfutures.monitor.events import (
    BLOCK,
    CACHE,
    CLOSE,
    EDGE,
    END,
    FLUSH,
    FRAME,
    PLAIN,
    POOL,
    POOL_LOST,
    RAW,
    SAMPLE,
    STATE,
    SUBMIT,
    TRY,
    counted_as,
)
from hpcfutures.monitor.schema import (
    _PLAIN,
    _TABLES,
    APPLICATION_ID,
    FINAL_STATES,
    SCHEMA_VERSION,
    connect,
    connect_for_reading,
)

from ..record_rows import rows

FINAL_COUNTS = ("submitted", "done", "failed", "cached", "cancelled")
RUN_COUNTS = "submitted, running, done, failed, cached, cancelled"
TIMEOUT = 30.0

# -- helpers -------------------------------------------------------------------------------------


def new_record(path: Path) -> int:
    """A record at ``path`` with one run, as a Recorder makes it; its run id."""
    conn = connect(path)
    try:
        now = time.time()
        cursor = conn.execute(
            "INSERT INTO run (family, kind, label, status, started, heartbeat, config) "
            "VALUES ('fam', 'test', NULL, 'running', ?, ?, '{}')",
            (now, now),
        )
        return int(cursor.lastrowid or 0)
    finally:
        conn.close()



def run_row(path: Path) -> dict[str, Any]:
    conn = connect_for_reading(path)
    try:
        (row,) = conn.execute("SELECT * FROM run").fetchall()
        return dict(row)
    finally:
        conn.close()


def poll(what: Callable[[], Any], message: str, timeout: float = TIMEOUT) -> Any:
    """``what()`` once it is true, checked every 10 ms until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {message} (last: {value!r})")
        time.sleep(0.01)


def body_of(events: list[tuple[Any, ...]]) -> bytes:
    return marshal.dumps(events)


class Served:
    """``writer.serve`` on a thread, reading frames from a pipe and answering on another."""

    def __init__(self, path: Path, run_id: int, answers: Any = None, executor_pid: int | None = None) -> None:
        self.executor_pid = executor_pid
        read_fd, write_fd = os.pipe()
        self.source: BinaryIO = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed in end()
        self.pipe: BinaryIO = open(write_fd, "wb")  # noqa: SIM115
        answer_read, answer_write = os.pipe()
        self.replies: BinaryIO = open(answer_read, "rb", buffering=0)  # noqa: SIM115
        self.answers: Any = answers if answers is not None else open(answer_write, "wb", buffering=0)  # noqa: SIM115
        if answers is not None:
            os.close(answer_write)
        self._replied = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, args=(str(path), run_id), daemon=True)
        self.thread.start()

    def _serve(self, path: str, run_id: int) -> None:
        try:
            writer.serve(path, run_id, self.source, self.answers, executor_pid=self.executor_pid)
        except BaseException as exc:  # noqa: BLE001 - re-raised by end()
            self.error = exc

    def send(self, events: list[tuple[Any, ...]]) -> None:
        self.send_body(body_of(events))

    def send_body(self, body: bytes) -> None:
        self.pipe.write(FRAME.pack(len(body)) + body)
        self.pipe.flush()

    def reply(self, timeout: float = TIMEOUT) -> bytes:
        """The next line the writer answered."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._replied:
            left = deadline - time.monotonic()
            assert left > 0, "the writer did not answer"
            if select.select([self.replies], [], [], left)[0]:
                chunk = os.read(self.replies.fileno(), 4096)
                assert chunk, "the writer's answers ended"
                self._replied += chunk
        line, _, self._replied = self._replied.partition(b"\n")
        return line + b"\n"

    def end(self, timeout: float = TIMEOUT) -> None:
        """Close the input, wait for serve() to return; raise what it raised."""
        if not self.pipe.closed:
            self.pipe.close()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve() did not return after its input ended"
        for f in (self.source, self.replies, self.answers):
            if hasattr(f, "close") and not getattr(f, "closed", False):
                f.close()
        if self.error is not None:
            raise self.error


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(path: Path, run_id: int, answers: Any = None, executor_pid: int | None = None) -> Served:
        s = Served(path, run_id, answers, executor_pid)
        made.append(s)
        return s

    yield make
    for s in made:  # a failed test must not leave a thread reading a pipe
        if not s.pipe.closed:
            s.pipe.close()
        s.thread.join(TIMEOUT)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Each Folder.write: whether its events were counted already (deferred), and how many."""
    calls: list[tuple[bool, int]] = []
    original = writer.Folder.write

    def write(self: writer.Folder, events: Any, *, counted: bool = False) -> list[int]:
        events = list(events)
        calls.append((counted, len(events)))
        return original(self, events, counted=counted)

    monkeypatch.setattr(writer.Folder, "write", write)
    return calls


@pytest.fixture(autouse=True)
def fresh_htex_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTEX decoders keep a run's state in their module: each test starts a new one."""
    monkeypatch.setattr(recording, "_state", recording._Decoding())


def hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame is busy, and the executor never calms down until release()."""
    monkeypatch.setattr(writer, "BUSY_BYTES", 0)
    monkeypatch.setattr(writer, "CALM_SECONDS", 3600.0)


def release(monkeypatch: pytest.MonkeyPatch, served: Served) -> None:
    """Let the executor calm down now: a last tiny frame is calm as soon as it came."""
    monkeypatch.setattr(writer, "CALM_SECONDS", 0.0)
    served.send([])


def submit(
    task_id: int, at: float, func: str = "f", state: str = "queued", parents: tuple[int, ...] = ()
) -> tuple:
    return (SUBMIT, task_id, func, None, "threads", state, at, parents, None)


def plain(task_id: int, ended: float) -> tuple:
    return (PLAIN, task_id, 1, ended - 2, None, ended - 1, ended, None, None, None, None, None, None)


def end(task_id: int, state: str, at: float, tries: int = 1, exception: str | None = None) -> tuple:
    return (END, task_id, state, at, tries, exception)


def counts_of(path: Path) -> tuple[int, ...]:
    return rows(path, f"SELECT {RUN_COUNTS} FROM run")[0]


def task_count(path: Path) -> int:
    return rows(path, "SELECT count(*) FROM task")[0][0]


# -- 1. deferral ---------------------------------------------------------------------------------


def test_busy_frames_update_the_counts_now_and_the_rows_when_calm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], writes: list
) -> None:
    path = tmp_path / "r.db"
    run_id = new_record(path)
    hold(monkeypatch)
    s = served(path, run_id)
    t = 1000.0
    before = time.time()
    first = [submit(i, t) for i in range(1, 101)]
    first += [plain(i, t + i) for i in range(1, 51)]  # 50 done
    first += [(STATE, 51, "running", t + 1), (TRY, 51, 1, t, None, t + 1, t + 2, "error", 1, "E: x", None, None, None,
                                              None, None, None, None, None, None, None)]  # fmt: skip
    first += [
        end(51, "failed", t + 2, 1, "E: x"),
        end(52, "memo_done", t + 2, 0),
        end(53, "cancelled", t + 2, 0),
    ]
    first += [(STATE, 54, "running", t + 3)]
    s.send(first)
    poll(lambda: counts_of(path)[0] == 100, "the first busy frame counted")
    after = time.time()
    run = run_row(path)
    # counts are current (never `running`: a tally cannot know it), no row is written yet
    assert (run["submitted"], run["running"], run["done"], run["failed"], run["cached"], run["cancelled"]) == (
        100, 0, 50, 1, 1, 1,
    )  # fmt: skip
    assert before <= run["behind_since"] <= after
    assert task_count(path) == 0
    assert rows(path, "SELECT count(*) FROM try") == [(0,)]
    assert run["status"] == "running"
    # a second busy frame adds to the counts; behind_since stays the oldest frame's
    s.send([submit(i, t) for i in range(101, 121)] + [end(101, "dep_fail", t + 9, 0)])
    poll(lambda: counts_of(path)[0] == 120, "the second busy frame counted")
    second = run_row(path)
    assert (second["submitted"], second["done"], second["failed"]) == (120, 50, 2)
    assert second["behind_since"] == run["behind_since"]
    assert second["heartbeat"] >= run["heartbeat"]
    assert task_count(path) == 0
    assert writes == []  # nothing was folded yet
    # calm: the rows follow, the counts do not change (but for running, now known)
    release(monkeypatch, s)
    poll(lambda: run_row(path)["behind_since"] is None, "caught up")
    assert counts_of(path) == (120, 1, 50, 2, 1, 1)
    assert task_count(path) == 120
    states = dict(rows(path, "SELECT task_id, state FROM task"))
    assert [states[i] for i in (1, 50, 51, 52, 53, 54, 55, 101, 102)] == [
        "done", "done", "failed", "memo_done", "cancelled", "running", "queued", "dep_fail", "queued",
    ]  # fmt: skip
    assert rows(path, "SELECT count(*) FROM try") == [(51,)]  # 50 plain, one error
    assert writes and all(counted for counted, _ in writes)
    s.end()
    assert counts_of(path) == (120, 1, 50, 2, 1, 1)
    assert run_row(path)["status"] == "interrupted"


def test_the_rows_follow_once_no_busy_frame_came_for_calm_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], writes: list
) -> None:
    calm = 0.3
    monkeypatch.setattr(writer, "CALM_SECONDS", calm)
    path = tmp_path / "r.db"
    run_id = new_record(path)
    busy = [submit(i, 1.0) for i in range(1, 201)]
    small = [plain(1, 5.0)]
    monkeypatch.setattr(writer, "BUSY_BYTES", (len(body_of(busy)) + len(body_of(small))) // 2)
    s = served(path, run_id)
    sent = time.monotonic()
    s.send(busy)
    s.send(small)  # small, but it comes while a backlog waits: it waits too, in order
    poll(lambda: task_count(path) == 200, "the rows written once calm", timeout=10)
    seen = time.monotonic()
    assert seen - sent >= calm  # not before the executor had been calm for CALM_SECONDS
    run = run_row(path)
    assert run["behind_since"] is None
    assert (run["submitted"], run["done"]) == (200, 1)
    assert rows(path, "SELECT state FROM task WHERE task_id = 1") == [("done",)]
    assert [counted for counted, _ in writes] == [True]  # both frames in one catch-up
    s.send(small)  # calm now, no backlog: folded at once
    poll(lambda: len(writes) == 2, "the calm frame written")
    assert writes[1] == (False, 1)
    s.end()


def test_the_rows_wait_while_the_executors_process_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], writes: list
) -> None:
    # Which process is busy is decided by ProcessLoad (tested on real processes below); here
    # the test decides, to see that the writer asks it, waits while it says busy, and
    # catches up once it does not.
    process_busy = threading.Event()
    process_busy.set()
    looks: list[int] = []

    def busy(self: writer.ProcessLoad) -> bool:
        looks.append(self._process.pid)
        return process_busy.is_set()

    monkeypatch.setattr(writer.ProcessLoad, "busy", busy)
    monkeypatch.setattr(writer, "BUSY_BYTES", 0)  # every frame busy ...
    monkeypatch.setattr(writer, "CALM_SECONDS", 0.01)  # ... but only for a moment
    monkeypatch.setattr(writer, "SHARE_SECONDS", 0.01)
    path = tmp_path / "r.db"
    run_id = new_record(path)
    s = served(path, run_id, executor_pid=os.getpid())
    s.send([submit(i, 1.0) for i in range(1, 101)])
    poll(lambda: len(looks) >= 5, "the writer looking at the executor's process again and again")
    assert task_count(path) == 0  # the frames are calm, the process is not: the rows wait
    assert counts_of(path)[0] == 100  # the counts do not
    assert set(looks) == {os.getpid()}
    process_busy.clear()
    poll(lambda: task_count(path) == 100, "the rows written once the process is quiet")
    assert run_row(path)["behind_since"] is None
    assert [counted for counted, _ in writes] == [True]
    s.end()


def test_a_flush_writes_the_rows_while_the_executors_process_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served]
) -> None:
    monkeypatch.setattr(writer.ProcessLoad, "busy", lambda self: True)
    hold(monkeypatch)
    path = tmp_path / "r.db"
    run_id = new_record(path)
    s = served(path, run_id, executor_pid=os.getpid())
    s.send([submit(i, 1.0) for i in range(1, 51)])
    s.send([(FLUSH, 7)])
    assert s.reply() == b"flushed 7\n"
    assert task_count(path) == 50
    s.end()


def spin_or_sleep(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_process_load_tells_a_busy_process_from_a_quiet_one() -> None:
    spinner = spin_or_sleep("while True: pass")
    sleeper = spin_or_sleep("import time; time.sleep(120)")
    try:
        spinning, sleeping = writer.ProcessLoad(spinner.pid), writer.ProcessLoad(sleeper.pid)
        assert spinning.busy() and sleeping.busy()  # a first look has nothing to compare with
        time.sleep(1.0)  # the span a share is measured over, not a wait for an event
        assert spinning.busy(), "a process spinning on a CPU for a second counts as busy"
        assert not sleeping.busy(), "a process asleep for a second counts as quiet"
        sleeping.forget()
        assert sleeping.busy()  # after forget(), the next look is a first one again
        spinner.kill()
        spinner.wait()
        assert not spinning.busy(), "a process that ended is not busy"
    finally:
        for child in (spinner, sleeper):
            child.kill()
            child.wait()


# -- 2. equivalence: deferred or not, the same record ----------------------------------------------


def noop_a() -> None:
    pass


def noop_b() -> None:
    pass


class StubRecorder:
    def __init__(self) -> None:
        self.sources: list[Callable[[], Any]] = []

    def add_source(self, drain: Callable[[], Any]) -> None:
        self.sources.append(drain)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def tick(self) -> float:
        self.now += 0.001
        return self.now


FUNCS = ("f", "g", "h")
RESOURCES = (None, '{"cores": 2}', '{"memory_mb": 100}')


def direct_task(rng: random.Random, t: int, clock: Clock, earlier: list[int]) -> Iterator[tuple]:
    """A task told to the Recorder directly (dependencies, settings, retries, any end)."""
    parents = tuple(sorted(rng.sample(earlier, min(len(earlier), rng.choice((0, 0, 1, 2))))))
    resources = rng.choice(RESOURCES)
    yield ("direct", (SUBMIT, t, rng.choice(FUNCS), f"task-{t}", "threads", rng.choice(("pending", "queued")),
                      clock.now, parents, resources))  # fmt: skip
    if earlier and rng.random() < 0.15:
        yield ("direct", (EDGE, t, (rng.choice(earlier),)))
    if rng.random() < 0.3:
        decision = rng.choice(("hit", "miss", "dedup", "checkpoint", "off"))
        yield ("direct", (CACHE, t, decision, f"key{t}", "why" if decision == "miss" else None))
    if rng.random() < 0.5:
        yield ("direct", (STATE, t, "queued", clock.now))
    tries = 0
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        tries += 1
        if rng.random() < 0.5:
            yield ("direct", (STATE, t, "running", clock.now))
        outcome = rng.choice(("error", "lost", "walltime"))
        started = clock.now
        yield ("direct", (TRY, t, tries, started - 1, started - 0.5, started, started + 0.25, outcome,
                          int(outcome != "lost"), f"E{tries}: boom", "Traceback ...", rng.choice((7, 8, "pool-z", None)),
                          rng.choice((None, "nodeX")), rng.choice((None, 0, 3)), 1234, 500, 0.1, None, "out", None))  # fmt: skip
        yield ("direct", (STATE, t, "queued", clock.now))
    if rng.random() < 0.4:
        yield ("direct", (STATE, t, "running", clock.now))
    fate = rng.random()
    if fate < 0.35:
        ended = clock.now
        yield ("direct", (PLAIN, t, tries + 1, ended - 1, ended - 0.5, ended, ended + 0.1,
                          rng.choice((7, 8, 99, "pool-y", None)), rng.choice((None, "nodeY")), 1, 4321, 100, 0.5))  # fmt: skip
    elif fate < 0.5:
        started = clock.now
        yield ("direct", (TRY, t, tries + 1, None, None, started, started + 0.1, "ok", 1, None, None, None, None,
                          None, None, None, None, 0, None, None))  # fmt: skip
        yield ("direct", (END, t, "done", started + 0.1, tries + 1, None))
    elif fate < 0.9:
        state = rng.choice(sorted(FINAL_STATES))
        failed = counted_as(state) == "failed"
        yield ("direct", (END, t, state, clock.now, tries, f"E: {state}" if failed else None))
    else:
        return  # never ends
    if rng.random() < 0.1:
        yield ("direct", (STATE, t, "running", clock.now))  # late news


def compact_task(rng: random.Random, t: int, clock: Clock) -> Iterator[tuple]:
    """A task told to the TaskLog (a plain dataflow task): its submit, and its success if it
    succeeds; a failed try or another end is told directly."""
    fn, name = rng.choice(((noop_a, "noop_a"), (noop_b, "noop_b")))
    yield ("log_submit", t, clock.now, fn, name, "threads")
    queued = clock.now
    tries = 1
    if rng.random() < 0.2:
        yield ("direct", (TRY, t, 1, queued, None, None, clock.now, "error", 1, "E: once", "tb", None, None, None,
                          None, None, None, None, None, None))  # fmt: skip
        yield ("direct", (STATE, t, "queued", clock.now))
        tries = 2
    fate = rng.random()
    if fate < 0.5:
        yield ("log_done", t, tries, rng.choice((queued, None)), clock.now)
    elif fate < 0.75:  # run by an HTEX backend: its result's RESULT_META as it came
        started = clock.now
        meta = P.RESULT_META.unpack(P.RESULT_META.pack(
            t, P.OK, 0.25, started - 0.5, started, rng.choice((-1.0, 0.125)), rng.choice((0, 7, 8)),
            rng.choice((0, 4242)), rng.choice((0, 2048)), rng.choice((P.NO_WORKER, 1)), 0, 1, 0,
        ))  # fmt: skip
        yield ("log_ran", t, tries, rng.choice((queued, None)), meta)
    elif fate < 0.9:
        yield ("direct", (END, t, rng.choice(("failed", "cancelled")), clock.now, tries, None))


def htex_tasks(rng: random.Random, base: int, n: int, clock: Clock) -> Iterator[tuple]:
    """One HighThroughputExecutor's tasks, told as its raw events: submitted in ranges,
    started, lost, finished in RESULTS messages of many tasks, or ended by the driver."""
    label = "htex"
    submitted = 0
    live: list[int] = []
    started: set[int] = set()
    while submitted < n or live:
        now = clock.now
        r = rng.random()
        if submitted < n and (r < 0.25 or not live):
            first = base + submitted
            last = min(first + rng.randint(0, 14), base + n - 1)
            changes = []
            if submitted == 0 or rng.random() < 0.3:
                changes.append((first, rng.choice(FUNCS), rng.choice(RESOURCES)))
            if last > first and rng.random() < 0.3:
                changes.append((rng.randint(first + 1, last), rng.choice(FUNCS), rng.choice(RESOURCES)))
            rng.shuffle(changes)
            yield ("direct", (RAW, recording.DECODE_SUBMITS, (first, last, now, changes, label)))
            live.extend(range(first, last + 1))
            submitted += last - first + 1
        elif r < 0.35:
            lost = rng.sample(live, min(len(live), rng.randint(1, 3)))
            yield ("direct", (RAW, recording.DECODE_LOST, (now, lost, "its worker died", rng.choice((0, 7)),
                                                           rng.choice((0, 99)), rng.choice((None, 2)), rng.choice((None, -9)))))  # fmt: skip
        elif r < 0.85:
            starting: list[int] = []
            metas: list[bytes] = []
            failures: list[tuple] = []
            for t in rng.sample(live, min(len(live), rng.randint(1, 12))):
                if t not in started and rng.random() < 0.3:
                    starting.append(t)
                    started.add(t)
                    continue
                live.remove(t)
                status = rng.choice((P.OK,) * 5 + (P.ERROR, P.FAILED, P.CANCELLED))
                begun = status != P.CANCELLED and rng.random() < 0.85
                # the worker began it before the driver heard it had (STATE running's time)
                at_start = now - rng.uniform(0.0, 0.5) if begun else 0.0
                tag = rng.choice((7, 8, 12345)) if begun else rng.choice((0, 0, 7))
                metas.append(P.RESULT_META.pack(
                    t, status, 0.25 if begun else 0.0, at_start - 0.1 if begun else 0.0, at_start,
                    rng.choice((-1.0, 0.2)), tag, rng.choice((0, 4242)), rng.choice((0, 2048)),
                    rng.choice((P.NO_WORKER, 0, 1)), 0, 10, 0,
                ))  # fmt: skip
                if (status == P.OK and rng.random() < 0.1) or (status != P.OK and rng.random() < 0.6):
                    outcome = rng.choice(("error", "lost", "walltime"))
                    failures.append(
                        (t, outcome, f"{outcome}Error: x", rng.choice((None, "tb")), rng.choice((None, 3)))
                    )
            if rng.random() < 0.1 and live:  # a failure of a task not in this message: ignored
                failures.append((rng.choice(live), "error", "E", None, None))
            if starting and rng.random() < 0.3:  # the started ids may name tasks that also finished
                starting.append(rng.choice(starting))
            yield ("direct", (RAW, recording.DECODE_RESULTS,
                              (P.pack_ids(starting), b"".join(metas), now, failures or None)))  # fmt: skip
        elif r < 0.93:
            ended = rng.sample(live, min(len(live), rng.randint(1, 4)))
            for t in ended:
                live.remove(t)
            state = rng.choice(("cancelled", "failed"))
            yield (
                "direct",
                (
                    RAW,
                    recording.DECODE_ENDED,
                    (now, ended, state, "Broken: x" if state == "failed" else None),
                ),
            )
        elif r < 0.96 and live:
            live.remove(rng.choice(live))  # never ends
        else:
            yield ("nothing",)


def event_stream(seed: int, n_direct: int = 120, n_compact: int = 120, n_htex: int = 150) -> list[bytes]:
    """Frame bodies (the last one with CLOSE) of a random run told as the Recorder tells it:
    each shipment is the TaskLog's events first, then the events told directly, in order."""
    rng = random.Random(seed)
    clock = Clock()
    log_recorder = StubRecorder()
    log = tasklog.TaskLog(log_recorder)  # type: ignore[arg-type]
    (drain,) = log_recorder.sources
    scripts: list[Iterator[tuple]] = [htex_tasks(rng, 100_000, n_htex, clock)]
    earlier: list[int] = []
    next_direct, next_compact = 1, 50_000
    direct: list[tuple] = [
        (POOL, "htex", "pool-a", clock.now, "0", "node1", 11, 4, None, 7),
        (POOL, "htex", "pool-b", clock.now, None, "node2", 12, 4, '{"cores": 4}', 8),
    ]
    bodies: list[bytes] = []

    def ship(last: bool = False) -> None:
        events = [(RAW, name, (s, d, r, list(kinds))) for (_, name, (s, d, r, kinds)) in drain()] + direct
        direct.clear()
        if last:
            events.append((CLOSE, "done", None, 3))
        if events or rng.random() < 0.2:  # the Recorder ships an empty list too
            bodies.append(body_of(events))

    while scripts or next_direct <= n_direct or next_compact < 50_000 + n_compact:
        clock.tick()
        r = rng.random()
        if r < 0.07:
            ship()
            continue
        if r < 0.2 and next_direct <= n_direct:
            scripts.append(direct_task(rng, next_direct, clock, list(earlier)))
            earlier.append(next_direct)
            next_direct += 1
            continue
        if r < 0.33 and next_compact < 50_000 + n_compact:
            scripts.append(compact_task(rng, next_compact, clock))
            next_compact += 1
            continue
        if r < 0.36:
            direct.append(rng.choice((
                (BLOCK, "htex", str(rng.randint(0, 3)), rng.choice(("pending", "running")), clock.now, "j1", "PD", None),
                (POOL_LOST, "htex", "pool-b", clock.now, "heartbeat missed"),
                (SAMPLE, clock.now, "htex", "node1", "pool-a", 50.0, 1.0, 20.0, 100.0, 2, 4),
            )))  # fmt: skip
            continue
        if not scripts:
            continue
        script = rng.choice(scripts)
        item = next(script, None)
        if item is None:
            scripts.remove(script)
        elif item[0] == "direct":
            direct.append(item[1])
        elif item[0] == "log_submit":
            log.submitted(*item[1:])
        elif item[0] == "log_done":
            log.done(*item[1:])
        elif item[0] == "log_ran":
            assert log.ran(*item[1:])
    ship(last=True)
    return bodies


def decoded(bodies: list[bytes]) -> list[tuple]:
    """Every event the frames stand for, raw ones decoded (with a fresh HTEX decoding state)."""
    folder = writer.Folder(None, 0)  # type: ignore[arg-type] - only its decoders are used
    saved = recording._state
    recording._state = recording._Decoding()
    try:
        return [event for body in bodies for event in folder.expand(marshal.loads(body))]
    finally:
        recording._state = saved


def expected_counts(events: list[tuple]) -> dict[str, int]:
    counts = dict.fromkeys(FINAL_COUNTS, 0)
    for event in events:
        if event[0] == SUBMIT:
            counts["submitted"] += 1
        elif event[0] == PLAIN:
            counts["done"] += 1
        elif event[0] == END:
            counts[counted_as(event[2])] += 1
    return counts


TABLES = {
    "run": f"SELECT {RUN_COUNTS}, dropped, status, error, behind_since, ended IS NOT NULL FROM run",
    "task": "SELECT * FROM task ORDER BY run_id, task_id",
    "try": "SELECT * FROM try ORDER BY run_id, task_id, try_no",
    "edge": "SELECT * FROM edge ORDER BY 1, 2, 3",
    "block": "SELECT * FROM block ORDER BY 1, 2, 3",
    "block_state": "SELECT * FROM block_state ORDER BY 1, 2, 3, 4, 5",
    "pool": "SELECT * FROM pool ORDER BY 1, 2, 3",
    "sample": "SELECT * FROM sample ORDER BY 1, 2",
}


def dump(path: Path) -> dict[str, list[tuple]]:
    return {name: rows(path, sql) for name, sql in TABLES.items()}


def feed(
    path: Path, bodies: list[bytes], make: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = new_record(path)
    monkeypatch.setattr(recording, "_state", recording._Decoding())
    s = make(path, run_id)
    for body in bodies:
        s.send_body(body)
    s.end()


def differences(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> list[str]:
    """Readable differences between two dumps (at most 10 rows a table)."""
    out = []
    for name in a:
        if a[name] != b[name]:
            only_a = [r for r in a[name] if r not in b[name]][:5]
            only_b = [r for r in b[name] if r not in a[name]][:5]
            out.append(
                f"{name}: {len(a[name])} vs {len(b[name])} rows; live only {only_a}; deferred only {only_b}"
            )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["deferred", "deferred_in_small_drains", "mixed"])
def test_a_deferred_stream_makes_the_same_record_as_a_live_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    served: Callable[..., Served],
    writes: list,
    seed: int,
    mode: str,
) -> None:
    bodies = event_stream(seed)
    events = decoded(bodies)
    kinds = {event[0] for body in bodies for event in marshal.loads(body)}
    assert {SUBMIT, STATE, TRY, END, PLAIN, CACHE, EDGE, RAW, CLOSE, POOL} <= kinds
    ended_in = {event[2] for event in events if event[0] == END}
    assert ended_in == FINAL_STATES
    expected = expected_counts(events)

    monkeypatch.setattr(writer, "BUSY_BYTES", 1 << 40)  # never busy: every frame folded as it comes
    feed(tmp_path / "live.db", bodies, served, monkeypatch)
    assert writes == [(False, len(marshal.loads(body))) for body in bodies]
    live = dump(tmp_path / "live.db")

    writes.clear()
    if mode == "mixed":  # some frames busy; whether the writer catches up between them is up to timing
        sizes = sorted(len(body) for body in bodies)
        monkeypatch.setattr(writer, "BUSY_BYTES", sizes[len(sizes) // 2])
        monkeypatch.setattr(writer, "CALM_SECONDS", 0.002)
    else:
        monkeypatch.setattr(writer, "BUSY_BYTES", 0)
        monkeypatch.setattr(writer, "CALM_SECONDS", 3600.0)
        if mode == "deferred_in_small_drains":
            monkeypatch.setattr(writer, "DRAIN_BYTES", 3000)
    feed(tmp_path / "deferred.db", bodies, served, monkeypatch)
    if mode == "mixed":
        assert any(counted for counted, _ in writes)
    else:  # everything deferred, then folded at the CLOSE
        assert all(counted for counted, _ in writes)
        assert sum(n for _, n in writes) == sum(len(marshal.loads(body)) for body in bodies)
        if mode == "deferred":
            assert len(writes) == 1
        else:
            assert len(writes) > 5
    deferred = dump(tmp_path / "deferred.db")

    # every column of every table the same (a task's start too: see
    # test_a_tasks_start_does_not_depend_on_how_frames_are_batched)
    assert differences(live, deferred) == []
    for run in (live["run"], deferred["run"]):
        ((submitted, _running, done, failed, cached, cancelled, dropped, status, error, behind, ended),) = run
        assert dict(zip(FINAL_COUNTS, (submitted, done, failed, cached, cancelled))) == expected
        assert (dropped, status, error, behind, ended) == (3, "done", None, None, 1)
    submitted_ids = {event[1] for event in events if event[0] == SUBMIT}
    assert {row[1] for row in live["task"]} == submitted_ids


# A task's start is the earliest it was told: the running state's time or a try's start,
# whichever came first, in one write as across two (a busy run batches frames otherwise).


@pytest.mark.parametrize(
    "first, second, earliest",
    [
        # a running time, then a plain success that began later (one write: task_plain keeps 12.0)
        ([submit(1, 1.0), (STATE, 1, "running", 10.0)],
         [(PLAIN, 1, 1, 9.0, None, 12.0, 13.0, None, None, None, None, None, None)], 10.0),
        # a full row made running by the driver, then the worker's try that began before it
        ([(SUBMIT, 1, "f", None, "threads", "queued", 1.0, (), '{"cores": 2}'), (STATE, 1, "running", 10.0)],
         [(TRY, 1, 1, None, None, 8.0, 13.0, "ok", 1, None, None, None, None, None, None, None, None, None, None,
           None), end(1, "done", 13.0)], 8.0),
    ],
    ids=["plain-after-running", "try-before-running"],
)  # fmt: skip
def test_a_tasks_start_does_not_depend_on_how_frames_are_batched(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    served: Callable[..., Served],
    first: list,
    second: list,
    earliest: float,
) -> None:
    started = {}
    for mode in ("live", "deferred"):
        if mode == "live":
            monkeypatch.setattr(writer, "BUSY_BYTES", 1 << 40)
        else:
            hold(monkeypatch)
        path = tmp_path / f"{mode}.db"
        s = served(path, new_record(path))
        s.send(first)
        s.send(second)
        s.end()
        ((started[mode], state),) = rows(path, "SELECT started, state FROM task")
        assert state == "done"
    assert started == {"live": earliest, "deferred": earliest}


# -- 3. each decoder's tally is what its events count ------------------------------------------------


def counted(events: list[tuple]) -> dict[str, int]:
    return {k: v for k, v in expected_counts(events).items() if v}


def nonzero(tally: dict[str, int]) -> dict[str, int]:
    assert set(tally) <= set(FINAL_COUNTS)
    return {k: v for k, v in tally.items() if v}


@pytest.mark.parametrize("seed", range(5))
def test_a_tally_counts_what_its_decoder_yields(seed: int) -> None:
    rng = random.Random(seed)
    decoders = [tasklog.decode, recording.decode_submits, recording.decode_results, recording.decode_lost,
                recording.decode_ended]  # fmt: skip
    assert all(callable(getattr(d, "tally", None)) for d in decoders)
    seen = dict.fromkeys(FINAL_COUNTS, 0)
    for _ in range(300):
        which = rng.randrange(5)
        ids = rng.sample(range(1, 60), rng.randint(0, 12))
        if which == 0:
            log = tasklog.TaskLog(StubRecorder())  # type: ignore[arg-type]
            for t in ids:
                if rng.random() < 0.7:
                    log.submitted(t, 1.0, rng.choice((noop_a, noop_b)), "n", "threads")
                if rng.random() < 0.6:
                    log.done(t, rng.randint(1, 3), rng.choice((None, 0.5)), 2.0)
                elif rng.random() < 0.5:  # an HTEX backend's result; one lost before is not told
                    lost = rng.choice((0, 0, 1))
                    meta = (t, P.OK, 0.1, 1.0, 1.5, -1.0, 7, 99, 0, 0, lost, 1, 0)
                    assert log.ran(t, 1, 0.5, meta) is (lost == 0)
            drained = log._drain()
            if not drained:
                continue
            ((_, name, payload),) = drained
            assert name == tasklog.DECODER
        elif which == 1:
            first = rng.randint(1, 1000)
            payload = (first, first + rng.randint(0, 20), 1.0, [(first, "f", None)], "htex")
        elif which == 2:
            metas, failures = [], []
            for t in ids:
                status = rng.choice((P.OK, P.OK, P.ERROR, P.FAILED, P.CANCELLED))
                begun = rng.random() < 0.7
                metas.append(P.RESULT_META.pack(t, status, 0.1, 0.0, 5.0 if begun else 0.0, -1.0,
                                                rng.choice((0, 7)), 0, 0, P.NO_WORKER, 0, 1, 0))  # fmt: skip
                if rng.random() < 0.3:
                    failures.append((t, rng.choice(("error", "lost", "walltime")), "E", None, None))
            if rng.random() < 0.2:
                failures.append((1000, "error", "E", None, None))  # a task not in the message
            if ids and rng.random() < 0.2:  # a task twice in one message
                metas.append(metas[0])
            if rng.random() < 0.3:  # lost tries before, which the decoder keeps
                list(recording.decode_lost((1.0, ids[: len(ids) // 2], "lost", 0, 0, None, None)))
            payload = (P.pack_ids(rng.sample(range(1, 60), 3)), b"".join(metas), 9.0, failures or None)
        elif which == 3:
            payload = (1.0, ids, "lost", 7, 1, None, None)
        else:
            payload = (1.0, ids, rng.choice(sorted(FINAL_STATES)), rng.choice((None, "E")))
        decoder = decoders[which]
        tally = decoder.tally(marshal.loads(marshal.dumps(payload)))  # as the writer gets it
        events = list(decoder(marshal.loads(marshal.dumps(payload))))
        assert nonzero(tally) == counted(events), (decoder.__name__, payload)
        for key, n in tally.items():
            seen[key] += n
    assert all(seen[key] > 0 for key in FINAL_COUNTS)  # every count was exercised


# -- 4. a flush in a deferred frame ----------------------------------------------------------------


class SnapshotAnswers:
    """The writer's answers, each with what a reader of the record saw as it was written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[bytes, int, Any]] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        run = run_row(self.path)
        self.seen.append((data, task_count(self.path), run["behind_since"]))
        return len(data)

    def flush(self) -> None:
        pass


def test_a_flush_in_a_deferred_frame_is_answered_once_the_rows_before_it_are_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], writes: list
) -> None:
    path = tmp_path / "r.db"
    run_id = new_record(path)
    hold(monkeypatch)
    answers = SnapshotAnswers(path)
    s = served(path, run_id, answers)
    s.send([submit(i, 1.0) for i in range(1, 41)])
    poll(lambda: counts_of(path)[0] == 40, "the busy frame counted")
    assert task_count(path) == 0
    s.send([plain(i, 3.0) for i in range(1, 11)] + [submit(41, 2.0), (FLUSH, 7), submit(42, 2.0)])
    poll(lambda: answers.seen, "the flush answered")
    assert answers.seen == [(b"flushed 7\n", 42, None)]  # everything before it (and its frame) is in
    assert [c for c, _ in writes] == [True]
    run = run_row(path)
    assert (run["submitted"], run["done"], run["behind_since"]) == (42, 10, None)
    # a real pipe too: the answer is read back on the other end
    s.end()
    s2_path = tmp_path / "r2.db"
    s2 = served(s2_path, new_record(s2_path))
    s2.send([submit(i, 1.0) for i in range(1, 31)])
    poll(lambda: counts_of(s2_path)[0] == 30, "the busy frame counted")
    s2.send([(FLUSH, 3)])
    assert s2.reply() == b"flushed 3\n"
    assert task_count(s2_path) == 30
    s2.end()


# -- 5. end of input with a backlog ------------------------------------------------------------------


@pytest.mark.parametrize("closed", [None, ("failed", "it broke", 5)])
def test_the_end_of_input_writes_the_backlog_and_finishes_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], writes: list, closed: Any
) -> None:
    path = tmp_path / "r.db"
    run_id = new_record(path)
    hold(monkeypatch)
    s = served(path, run_id)
    s.send([submit(i, 1.0) for i in range(1, 21)] + [plain(i, 2.0) for i in range(1, 6)])
    s.send([end(6, "failed", 3.0, 1, "E: x"), (STATE, 7, "running", 3.0)])
    poll(lambda: counts_of(path)[:4] == (20, 0, 5, 1), "the busy frames counted")
    assert run_row(path)["behind_since"] is not None and task_count(path) == 0
    if closed is not None:
        s.send([(CLOSE, *closed)])
    s.end()
    run = run_row(path)
    assert (run["submitted"], run["running"], run["done"], run["failed"]) == (20, 1, 5, 1)
    assert run["behind_since"] is None and run["ended"] is not None
    if closed is None:
        assert (run["status"], run["error"]) == (
            "interrupted",
            "the executor's process ended without closing its record",
        )
        assert run["dropped"] == 0
    else:
        assert (run["status"], run["error"], run["dropped"]) == closed
    assert task_count(path) == 20
    assert rows(path, "SELECT state, count(*) FROM task GROUP BY state ORDER BY 1") == [
        ("done", 5), ("failed", 1), ("queued", 13), ("running", 1),
    ]  # fmt: skip
    assert writes and all(c for c, _ in writes)


# -- 6. a raw event that cannot be tallied -----------------------------------------------------------

UNTALLIED = f"{__name__}:untallied"


def untallied(payload: list[tuple[int, str]]) -> list[tuple]:
    """A decoder without a tally: a try and an end for each (task id, state)."""
    events = []
    for task_id, state in payload:
        outcome = "ok" if state == "done" else "error"
        events.append((TRY, task_id, 1, None, None, 4.0, 5.0, outcome, 1, None, None, None, None, None, None, None,
                       None, None, None, None))  # fmt: skip
        events.append((END, task_id, state, 5.0, 1, None if state == "done" else "E: x"))
    return events


def test_an_untallied_raw_event_folds_the_backlog_first_and_keeps_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], writes: list
) -> None:
    path = tmp_path / "r.db"
    run_id = new_record(path)
    hold(monkeypatch)
    s = served(path, run_id)
    s.send([submit(i, 1.0, func="slow") for i in range(1, 4)])
    poll(lambda: counts_of(path)[0] == 3, "the busy frame counted")
    assert task_count(path) == 0
    s.send([(RAW, UNTALLIED, [(1, "done"), (2, "failed")]), (STATE, 3, "running", 4.0)])
    # The backlog's write alone makes the three rows: wait for the frame's write too.
    folded = [(1, "slow", "done", 1), (2, "slow", "failed", 1), (3, "slow", "running", 0)]
    poll(lambda: rows(path, "SELECT task_id, func, state, tries FROM task ORDER BY 1") == folded,
         "the backlog and the frame folded")  # fmt: skip
    assert writes == [(True, 3), (False, 2)]  # the backlog, then the frame itself, not deferred
    run = run_row(path)
    assert (run["submitted"], run["running"], run["done"], run["failed"], run["behind_since"]) == (
        3,
        1,
        1,
        1,
        None,
    )
    # still busy: the next frame is deferred again
    s.send([submit(4, 6.0)])
    poll(lambda: counts_of(path)[0] == 4, "the next busy frame counted")
    assert run_row(path)["behind_since"] is not None and task_count(path) == 3
    s.end()
    assert task_count(path) == 4 and run_row(path)["behind_since"] is None


def broken_tally(payload: Any) -> list[tuple]:
    """A decoder whose tally raises (a payload it does not understand)."""
    return []


def _raise(payload: Any) -> dict[str, int]:
    raise TypeError(f"cannot count {payload!r}")


broken_tally.tally = _raise  # type: ignore[attr-defined]

# A raw event that cannot be counted while the executor is busy is folded at once, where a
# broken one is logged and loses only its own frame, as when calm.


@pytest.mark.parametrize("decoder", ["no_such_module_here:decode", f"{__name__}:broken_tally"])
def test_a_raw_event_that_cannot_be_tallied_while_busy_does_not_end_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], decoder: str
) -> None:
    path = tmp_path / "r.db"
    run_id = new_record(path)
    hold(monkeypatch)
    s = served(path, run_id)
    s.send([submit(1, 1.0)])
    s.send([(RAW, decoder, ("junk",))])
    s.send([submit(2, 1.0), (CLOSE, "done", None, 0)])
    s.end()  # as when calm: the broken frame is logged and lost, nothing else
    assert rows(path, "SELECT task_id FROM task ORDER BY 1") == [(1,), (2,)]
    assert run_row(path)["status"] == "done"


def test_a_raw_event_that_cannot_be_decoded_when_calm_loses_only_its_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served]
) -> None:
    """What the busy case above should do too (this is today's behaviour when calm)."""
    path = tmp_path / "r.db"
    run_id = new_record(path)
    monkeypatch.setattr(writer, "BUSY_BYTES", 1 << 40)
    s = served(path, run_id)
    s.send([submit(1, 1.0)])
    s.send([(RAW, "no_such_module_here:decode", ("junk",))])
    s.send([submit(2, 1.0), (CLOSE, "done", None, 0)])
    s.end()
    assert rows(path, "SELECT task_id FROM task ORDER BY 1") == [(1,), (2,)]
    assert run_row(path)["status"] == "done"


# -- 7. schema version 2 -> 3 ------------------------------------------------------------------------


def make_v2(path: Path) -> None:
    """A record as schema version 2 made it: the same tables without run.behind_since."""
    conn = sqlite3.connect(path)
    run_table = _TABLES[0].replace(",\n        behind_since REAL", "")
    assert "behind_since" not in run_table and run_table != _TABLES[0]
    for statement in (run_table, *_TABLES[1:], *_PLAIN):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO run (run_id, family, kind, status, started, submitted, done) "
        "VALUES (1, 'fam', 'test', 'done', 1.0, 2, 2)"
    )
    conn.execute("INSERT INTO task_full (run_id, task_id, func, state, tries) VALUES (1, 1, 'f', 'done', 1)")
    conn.execute("INSERT INTO task_plain (run_id, task_id, func, try_no, ended) VALUES (1, 2, 'g', 1, 2.0)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("opener", ["connect", "connect_for_reading"])
def test_a_version_2_record_is_migrated_to_3_and_keeps_its_rows(tmp_path: Path, opener: str) -> None:
    path = tmp_path / "v2.db"
    make_v2(path)
    with pytest.raises(sqlite3.OperationalError):  # really version 2: no such column
        sqlite3.connect(path).execute("SELECT behind_since FROM run").fetchall()
    conn = connect(path) if opener == "connect" else connect_for_reading(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert [
            tuple(r) for r in conn.execute("SELECT run_id, status, submitted, done, behind_since FROM run")
        ] == [(1, "done", 2, 2, None)]
        assert [tuple(r) for r in conn.execute("SELECT task_id, func, state FROM task ORDER BY 1")] == [
            (1, "f", "done"), (2, "g", "done"),
        ]  # fmt: skip
    finally:
        conn.close()
    assert rows(path, "SELECT count(*) FROM try") == [(1,)]


def test_a_writer_goes_on_in_a_migrated_version_2_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served]
) -> None:
    path = tmp_path / "v2.db"
    make_v2(path)
    run_id = new_record(path)  # migrates it
    hold(monkeypatch)
    s = served(path, run_id)
    s.send([submit(1, 1.0)])
    poll(
        lambda: rows(path, "SELECT behind_since IS NOT NULL FROM run WHERE run_id = ?", run_id) == [(1,)],
        "behind",
    )
    s.end()
    assert rows(path, "SELECT run_id, task_id FROM task ORDER BY 1, 2") == [(1, 1), (1, 2), (run_id, 1)]
    assert rows(path, "SELECT run_id, behind_since FROM run ORDER BY 1") == [(1, None), (run_id, None)]


# -- 8. end to end ------------------------------------------------------------------------------------


def nothing() -> None:
    pass


def test_a_busy_dataflow_run_is_counted_and_fully_written_by_its_end(tmp_path: Path) -> None:
    """A real DataflowExecutor and writer process; 20,000 no-op tasks at once keep the writer busy.

    Whether the reader catches the writer behind depends on the machine's speed, so that is
    only looked for (and reported in the assertion messages of what follows), not asserted;
    what is asserted is deterministic: while behind, the counts run ahead of the rows, and
    at the end every task has its row and the counts match them.
    """
    path = tmp_path / "runs" / "busy.db"
    n = 20_000
    dfx = DataflowExecutor(ThreadExecutor(max_workers=2), shutdown_executors=True, record=path)
    try:
        recorder = dfx.recorder
        assert recorder is not None
        futures = [dfx.submit(nothing) for _ in range(n)]
        behind = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            conn = connect_for_reading(path)
            try:
                conn.execute("BEGIN")  # one snapshot for the run row and the task count
                run = dict(conn.execute("SELECT * FROM run").fetchone())
                written = conn.execute("SELECT count(*) FROM task").fetchone()[0]
                conn.execute("COMMIT")
            finally:
                conn.close()
            if run["behind_since"] is not None and run["submitted"] > 0:
                behind.append((run["submitted"], written))
                assert written <= run["submitted"]
            if all(f.done() for f in futures[-100:]) and run["done"] == n:
                break
            time.sleep(0.02)
        for f in futures:
            f.result(timeout=TIMEOUT)
    finally:
        dfx.shutdown()
    run = run_row(path)
    assert (run["status"], run["submitted"], run["done"], run["failed"], run["running"], run["behind_since"]) == (
        "done", n, n, 0, 0, None,
    ), f"seen behind {len(behind)} times"  # fmt: skip
    assert rows(path, "SELECT count(*), count(DISTINCT task_id), sum(state = 'done') FROM task") == [
        (n, n, n)
    ]
    assert rows(path, "SELECT count(*) FROM try") == [(n,)]


# -- what readers make of a record that is behind ------------------------------------------------


def test_status_the_cli_and_the_page_use_the_runs_counts_while_its_rows_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served]
) -> None:
    from hpcfutures.monitor import query, webdata
    from hpcfutures.monitor.cli import main as cli_main

    path = tmp_path / "fam.db"
    run_id = new_record(path)
    t = time.time()
    s = served(path, run_id)
    s.send([submit(i, t) for i in range(1, 11)] + [plain(i, t + 0.01) for i in range(1, 6)])  # calm: rows now
    poll(lambda: task_count(path) == 10, "the calm frame written")
    hold(monkeypatch)
    s.send(
        [submit(i, t) for i in range(11, 41)]
        + [plain(i, t + 0.02) for i in range(6, 31)]
        + [end(31, "failed", t + 0.02, 1, "E: x"), end(32, "memo_done", t + 0.02, 0)]
    )
    poll(lambda: counts_of(path)[0] == 40, "the busy frame counted")
    assert task_count(path) == 10  # the rows lag

    conn = connect_for_reading(path)
    try:
        st = query.status(conn, run_id)
        page = webdata.overview(conn, run_id)
    finally:
        conn.close()
    # the counts by state are the run's: 40 submitted, 30 done, 1 failed, 1 cached, 8 still queued
    assert {k: v for k, v in st.states.items() if v} == {"done": 30, "failed": 1, "memo_done": 1, "queued": 8}
    assert (st.total, st.finished) == (40, 32)
    assert st.behind is not None and 0 <= st.behind < TIMEOUT
    assert st.rate_recent is None  # it would come from the rows, which lag
    assert st.eta is not None  # from the overall rate
    assert sum(f.total for f in st.by_func) == 10  # by function: from the rows, as far as they go
    assert page["behind"] is not None and page["counts"]["done"] == 30

    out = _captured(cli_main, ["--dir", str(tmp_path), "status", f"fam:{run_id}"])
    assert "tasks     40: 8 queued, 30 done, 1 memo_done, 1 failed" in out
    assert "the task rows are" in out and "behind them" in out

    release(monkeypatch, s)
    poll(lambda: run_row(path)["behind_since"] is None, "caught up")
    conn = connect_for_reading(path)
    try:
        st = query.status(conn, run_id)
    finally:
        conn.close()
    assert st.behind is None
    assert {k: v for k, v in st.states.items() if v} == {"done": 30, "failed": 1, "memo_done": 1, "queued": 8}
    assert st.rate_recent is not None
    assert "behind" not in _captured(cli_main, ["--dir", str(tmp_path), "status", f"fam:{run_id}"])
    s.end()


def _captured(command: Callable[[list[str]], int], argv: list[str]) -> str:
    """What ``command(argv)`` prints."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert command(argv) == 0
    return out.getvalue()


def test_frames_that_cannot_be_kept_for_later_are_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    def full(self: writer.Backlog, body: bytes, at: float) -> None:
        raise OSError(28, "No space left on device")

    path = tmp_path / "r.db"
    run_id = new_record(path)
    hold(monkeypatch)
    monkeypatch.setattr(writer.Backlog, "append", full)
    s = served(path, run_id)
    t = 1000.0
    s.send([submit(i, t) for i in range(1, 21)] + [plain(i, t + i) for i in range(1, 11)])
    poll(lambda: task_count(path) == 20, "the busy frame written at once")
    assert counts_of(path)[:3] == (20, 0, 10)
    assert run_row(path)["behind_since"] is None
    s.send([plain(i, t + i) for i in range(11, 21)] + [(CLOSE, "done", None, 0)])
    s.end()
    assert counts_of(path)[:3] == (20, 0, 20)
    assert run_row(path)["status"] == "done"
    assert sum("cannot keep frames to write later" in r.getMessage() for r in caplog.records) == 1
