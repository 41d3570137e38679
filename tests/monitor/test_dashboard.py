"""The dashboard (hpcfutures.monitor.server): its JSON API, /metrics read by the official
Prometheus parser, and the page itself loaded in a real headless Chromium against runs
recorded by a real Recorder, asserting on what the DOM shows and that a screenshot is not
blank."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hpcfutures.monitor import Recorder
from hpcfutures.monitor.server import DashboardServer, render_snapshot

from ..services import missing

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def _chromium_present() -> None:
    if CHROMIUM is None:
        missing("needs Debian's chromium package for the browser tests (.ci/setup-browser.sh installs it)")


# Skipped without Chromium, but failed under CI (HPCF_REQUIRE_SERVICES=1), which installs it.
needs_chromium = pytest.mark.usefixtures("_chromium_present")

LABEL = 'odd "label" \\ with\nnewline'
#: Printed by the failing tries: markup the page must show as text, inlined or not.
STDERR = "warning: <b>low</b> memory </script><!-- &amp; -->\n"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/home/user/sweep.py", line 12, in simulate\n'
    "    raise ValueError(f'bad input {seed}')\n"
    "ValueError: bad input 13\n"
)


# -- recording runs -------------------------------------------------------------------------


@dataclass
class Recorded:
    """What :func:`record_run` told the recorder, to compare the page against."""

    run_id: int
    states: dict[str, int]
    tries: int
    failed_task: int
    retried_task: int
    requeued_task: int
    cached_task: int
    dep_fail_task: int
    reduce_task: int


def record_run(
    path: Path, *, tasks: int = 40, duration: float = 1.0, seed: int = 1, label: str | None = LABEL
) -> Recorded:
    """Record a finished run of ``tasks`` tasks on two blocks of worker pools, squeezed into
    about ``duration`` seconds from now (the recorder stamps the run's start and end with
    the clock, so the tasks' times must fall between them: this waits for its last event).

    It holds done tasks, failures with a traceback, a task retried after an error, one
    requeued after its pool was lost, cache hits and a miss with its reason, a reduce step
    that depends on others, a task whose dependency failed, blocks with their scheduler
    history (pending, running, completed), pools, one lost, and node samples.
    """
    rng = random.Random(seed)
    rec = Recorder(path, family="sweep", kind="htex", label=label, config={"max_workers": 8})
    t0 = rec.started + 0.01
    # the run's events are laid out in units of time: eight lanes take about 1.5 units a task
    scale = duration / (10 + tasks * 1.7 / 8)

    def at(u: float) -> float:
        return t0 + u * scale

    hosts = ["node001", "node002"]
    rec.block("htex", "0", "pending", at(0), job_id="4711", raw_state="PD", reason="Priority")
    rec.block("htex", "1", "pending", at(0.5), job_id="4712", raw_state="PD", reason="Resources")
    rec.block("htex", "0", "running", at(3), job_id="4711", raw_state="R")
    rec.block("htex", "1", "running", at(6), job_id="4712", raw_state="R")
    for i, host in enumerate(hosts):
        rec.pool_registered(
            "htex", f"pool-{i}", at(4 + 3 * i), block_id=str(i), host=host, pid=2000 + i, workers=4,
            shape={"cores": 4}, tag=i,
        )  # fmt: skip
    lanes = [(h, f"pool-{i}", w) for i, h in enumerate(hosts) for w in range(4)]
    free = {lane: 7.0 + 3 * (lane[1] == "pool-1") for lane in lanes}
    states = dict.fromkeys(("done", "memo_done", "failed", "dep_fail"), 0)
    n_tries = 0
    ids = iter(range(1, 10**9))
    failed_task = retried_task = requeued_task = cached_task = 0
    simulate_ids: list[int] = []

    def run_task(task_id: int, func: str, outcome_plan: list[str], *, parents: tuple[int, ...] = ()) -> str:
        """Schedule a task's tries on the least busy lane; return its final state."""
        nonlocal n_tries
        submitted = at(1 + task_id * 0.01)
        rec.submitted(task_id, func, submitted, name=f"{func}-{task_id}", executor="htex", parents=parents)
        state = "done"
        end = submitted
        for try_no, outcome in enumerate(outcome_plan, start=1):
            lane = min(lanes, key=lambda lane: free[lane])
            if outcome == "lost":
                lane = next(lane for lane in lanes if lane[1] == "pool-1")
            start = max(free[lane], (end - t0) / scale)
            length = rng.uniform(0.6, 2.4) * (3 if func == "reduce" else 1)
            end_u = start + length
            free[lane] = end_u
            end = at(end_u)
            error = outcome == "error"
            rec.attempt(
                task_id, try_no, outcome, queued=submitted, dispatched=at(start - 0.05), started=at(start), ended=end,
                charged=outcome != "lost", exception=f"ValueError: bad input {task_id}" if error else
                ("WorkerLost: worker 0 of pool-1 on node002 died (SIGKILL)" if outcome == "lost" else None),
                traceback=TRACEBACK.replace("13", str(task_id)) if error else None, pool=lane[1], host=lane[0],
                worker=lane[2], pid=3000 + task_id, rss_kb=rng.randint(40_000, 90_000), cpu=length * scale * 0.9,
                exit_code=None, stdout_tail=f"{func} {task_id}: step 1\n{func} {task_id}: step 2\n",
                stderr_tail=STDERR if error else None,
            )  # fmt: skip
            n_tries += 1
            state = "failed" if error else "done"
        rec.ended(
            task_id, state, end, tries=len(outcome_plan),
            exception=f"ValueError: bad input {task_id}" if state == "failed" else None,
        )  # fmt: skip
        states[state] += 1
        return state

    for _ in range(tasks):
        task_id = next(ids)
        kind = task_id % 20
        if kind == 7:  # answered from the cache: no try
            rec.submitted(task_id, "simulate", at(1), name=f"simulate-{task_id}", executor="htex")
            rec.cache(task_id, "hit", hashlib.sha1(b"%d" % task_id).hexdigest())
            rec.ended(task_id, "memo_done", at(1.01), tries=0)
            states["memo_done"] += 1
            cached_task = cached_task or task_id
            continue
        if kind == 13:
            plan = ["error", "error"]  # retried once, failed for good
            failed_task = failed_task or task_id
        elif kind == 5:
            plan = ["error", "ok"]
            retried_task = retried_task or task_id
        elif kind == 11:
            plan = ["lost", "ok"]
            requeued_task = requeued_task or task_id
        else:
            plan = ["ok"]
        func = "load_input" if kind in (1, 2) else "simulate"
        if kind in (3, 5):
            rec.cache(
                task_id, "miss", hashlib.sha1(b"%d" % task_id).hexdigest(), reason="argument 'seed' changed"
            )
        run_task(task_id, func, plan)
        if func == "simulate":
            simulate_ids.append(task_id)
    # a reduce over the first simulations, and a task that depended on the failed one
    reduce_task = next(ids)
    run_task(reduce_task, "reduce", ["ok"], parents=tuple(simulate_ids[:6]))
    dep_fail_task = next(ids)
    rec.submitted(
        dep_fail_task, "analyse", at(2), name="analyse-failed", executor="htex", parents=(failed_task,)
    )
    rec.ended(dep_fail_task, "dep_fail", at(60), exception=f"DependencyError: task {failed_task} failed")
    states["dep_fail"] += 1
    # pool-1's node fails after its last task; block 0 completes after everything
    lost_at = max(free[lane] for lane in lanes if lane[1] == "pool-1") + 0.5
    last = max(free.values()) + 1.0
    rec.pool_lost("htex", "pool-1", at(lost_at), "missed 3 heartbeats")
    rec.block("htex", "1", "failed", at(lost_at + 0.5), job_id="4712", raw_state="NF", reason="NodeFail")
    rec.block("htex", "0", "completed", at(last), job_id="4711", raw_state="CD")
    steps = 30
    for k in range(steps):
        u = 5 + k * (last - 6) / steps
        for i, host in enumerate(hosts):
            if i == 1 and u > lost_at:
                continue
            rec.sample(
                at(u), executor="htex", host=host, pool_id=f"pool-{i}", cpu_percent=55 + 40 * rng.random(),
                load1=2 + 2 * rng.random(), mem_percent=30 + 20 * rng.random(), rss_mb=800 + 400 * rng.random(),
                busy=rng.randint(2, 4), workers=4,
            )  # fmt: skip
    time.sleep(max(0.0, at(last + 0.5) - time.time()))
    rec.close("done")
    return Recorded(
        rec.run_id,
        states,
        n_tries,
        failed_task,
        retried_task,
        requeued_task,
        cached_task,
        dep_fail_task,
        reduce_task,
    )


@dataclass
class Live:
    """A run left open: what :func:`open_live_run` made, and its recorder to close."""

    recorder: Recorder
    run_id: int
    running: int
    waiting: int  # pending on the running one
    queued: int  # its executor's only block is still pending


def open_live_run(path: Path) -> Live:
    """Start a run that stays live: a task running on a local pool, one waiting on it, and
    one queued for an executor whose only block is still pending at the scheduler."""
    rec = Recorder(path, family="sweep", kind="dataflow", flush_interval=0.2)
    now = time.time()
    rec.pool_registered("local", "pool-a", now, host="laptop", workers=1)
    rec.submitted(1, "prepare", now, executor="local")
    rec.state(1, "running", now)
    rec.submitted(2, "train", now, executor="local", parents=[1])
    rec.block("slurm", "0", "pending", now, job_id="99", raw_state="PD", reason="Resources")
    rec.submitted(3, "evaluate", now, executor="slurm", state="queued")
    assert rec.flush(), "the live run's record could not be written"
    return Live(rec, rec.run_id, 1, 2, 3)


def record_big_run(path: Path, tries: int = 5200) -> int:
    """A finished run with more tries than the stream draws one by one: the heatmap's.  Most
    of its tasks are plain (one try, ended ok), as the writer keeps them."""
    rec = Recorder(path, family="sweep", kind="htex", label="big")
    t0 = rec.started
    for task_id in range(1, tries + 1):
        u = task_id / tries
        started, ended = t0 + u * 0.5, t0 + u * 0.5 + 0.001
        where = {"pool": f"pool-{task_id % 3}", "host": f"node{task_id % 3}", "worker": task_id % 8}
        rec.submitted(task_id, "tiny", started, executor="htex")
        if task_id % 50:
            rec.succeeded(task_id, 1, ended, started=started, **where)
            continue
        rec.attempt(task_id, 1, "error", started=started, ended=ended, **where)
        rec.ended(task_id, "failed", ended, tries=1)
    time.sleep(max(0.0, t0 + 0.6 - time.time()))
    rec.close("done")
    return rec.run_id


@dataclass
class Setup:
    server: DashboardServer
    record: Path
    run: Recorded
    live: Live
    big: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One record with a finished run, a live one and a big one, served by a DashboardServer."""
    record = tmp_path_factory.mktemp("dashboard") / "sweep.db"
    run = record_run(record)
    live = open_live_run(record)
    big = record_big_run(record)
    server = DashboardServer([record]).start()
    try:
        yield Setup(server, record, run, live, big)
    finally:
        server.close()
        live.recorder.close("done")


# -- HTTP helpers ---------------------------------------------------------------------------


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """GET ``url``: its status, content type and body (errors included)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


# -- the server -----------------------------------------------------------------------------


def test_binds_loopback_by_default(setup: Setup) -> None:
    host, port = setup.server.address
    assert host == "127.0.0.1" and port > 0
    assert setup.server.url == f"http://127.0.0.1:{port}/"
    status, content_type, body = get(setup.server.url)
    assert status == 200 and content_type.startswith("text/html")
    assert b'<script src="app.js"></script>' in body and b"//cdn" not in body and b"https://" not in body


def test_unknown_paths_answer_404(setup: Setup) -> None:
    base = setup.server.url.rstrip("/")
    run = setup.run.run_id
    for path in ("/nope", "/api/nope", "/api/run/1", f"/api/run/{run}/nope", "/api/run/999/overview",
                 f"/api/run/{run}/task/999999", "/static/../server.py"):  # fmt: skip
        status, content_type, body = get(base + path)
        assert status == 404, (path, body)
        assert "error" in json.loads(body), path


@pytest.mark.parametrize(
    "query",
    [
        "tasks?offset=abc",
        "tasks?offset=-1",
        "tasks?limit=0",
        "tasks?limit=100000",
        "tasks?state=sleeping",
        "tasks?colour=red",
        "tasks?state=done&state=failed",
        "stream?since=yesterday",
        "stream?since=nan",
        "overview?x=1",
        "task/abc",
    ],
)
def test_bad_parameters_answer_400(setup: Setup, query: str) -> None:
    status, _, body = get(f"{setup.server.url}api/run/{setup.run.run_id}/{query}")
    assert status == 400, body
    assert json.loads(body)["error"]


def test_refuses_other_host_names_on_loopback(setup: Setup) -> None:
    """A page elsewhere that rebinds its DNS name to 127.0.0.1 must not read the records."""
    status, _, _ = get(f"{setup.server.url}api/runs", headers={"Host": "attacker.example:80"})
    assert status == 403
    status, _, _ = get(
        f"{setup.server.url}api/runs", headers={"Host": f"localhost:{setup.server.address[1]}"}
    )
    assert status == 200


def test_api_answers_what_was_recorded(setup: Setup) -> None:
    base = f"{setup.server.url}api/run/{setup.run.run_id}"
    o = get_json(f"{base}/overview")
    for state, n in setup.run.states.items():
        assert o["counts"][state] == n, state
    assert o["tries"] == setup.run.tries
    assert o["retries"] >= 2 and o["requeued"] == 2  # two tasks lost a try with pool-1
    assert not o["live"] and o["run"]["label"] == LABEL
    page = get_json(f"{base}/tasks?state=failed&limit=2")
    assert page["total"] == setup.run.states["failed"] and len(page["tasks"]) == 2
    assert {t["state"] for t in page["tasks"]} == {"failed"}
    detail = get_json(f"{base}/task/{setup.run.failed_task}")
    assert [t["outcome"] for t in detail["tries"]] == ["error", "error"]
    assert "ValueError: bad input" in detail["tries"][-1]["traceback"]
    detail = get_json(f"{base}/task/{setup.run.requeued_task}")
    assert [t["charged"] for t in detail["tries"]] == [False, True]
    stream = get_json(f"{base}/stream")
    assert stream["mode"] == "tries" and len(stream["tries"]) == setup.run.tries
    again = get_json(f"{base}/stream?since={stream['until']}")
    assert stream["tries"][-1] in again["tries"]  # the last, and those of a few seconds before
    assert get_json(f"{base}/stream?since={stream['until'] + 60}")["tries"] == []
    big = get_json(f"{setup.server.url}api/run/{setup.big}/stream")
    assert big["mode"] == "heatmap" and "tries" not in big
    assert sum(sum(lane["ended"]) for lane in big["lanes"]) == 5200


def test_answers_stay_small_for_a_big_run(setup: Setup) -> None:
    """Nothing the page asks for grows with the number of tasks."""
    base = f"{setup.server.url}api/run/{setup.big}"
    for view in ("overview", "stream", "tasks", "failures", "blocks", "pools", "samples"):
        status, _, body = get(f"{base}/{view}")
        assert status == 200 and len(body) < 200_000, (view, len(body))


def test_live_run_is_read_while_it_runs(setup: Setup) -> None:
    base = f"{setup.server.url}api/run/{setup.live.run_id}"
    assert setup.live.recorder.flush()
    o = get_json(f"{base}/overview")
    assert o["live"] and o["counts"]["running"] == 1
    rec = setup.live.recorder
    rec.submitted(10, "extra", time.time(), executor="local")
    rec.ended(10, "done", time.time(), tries=1)
    assert rec.flush()
    time.sleep(1.1)  # a live run's answers are kept for a second
    assert get_json(f"{base}/overview")["counts"]["done"] == 1


def test_serve_command_prints_the_url_and_stops_on_ctrl_c(setup: Setup) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcfutures", "monitor", "serve", "--record", str(setup.record), str(setup.run.run_id)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/#/run/{setup.run.run_id}"), line
        status, _, body = get(url.split("#")[0] + f"api/run/{setup.run.run_id}/overview")
        assert status == 200 and json.loads(body)["total"] == sum(setup.run.states.values())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_empty_directory_serves_no_runs_and_an_unknown_run_is_refused(tmp_path: Path) -> None:
    with DashboardServer([tmp_path]) as server:
        assert get_json(server.url + "api/runs")["runs"] == []
        status, _, body = get(server.url + "api/run/1/overview")
        assert status == 404 and b"no run records" in body
    proc = subprocess.run(
        [sys.executable, "-m", "hpcfutures", "monitor", "serve", "--dir", str(tmp_path), "7"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "no run records" in proc.stderr and not proc.stdout


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_parse_with_the_prometheus_parser(setup: Setup) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert setup.live.recorder.flush()
    status, content_type, body = get(setup.server.url + "metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode("utf-8")
    assert "# HELP hpcfutures_tasks " in text and "# TYPE hpcfutures_tasks gauge" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, sample: str | None = None, **labels: str) -> float:
        found = [
            s.value for s in families[family].samples
            if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip
        assert len(found) == 1, (family, labels, families[family].samples)
        return found[0]

    run = str(setup.run.run_id)
    for state, n in setup.run.states.items():
        assert value("hpcfutures_tasks", run=run, state=state) == n
    assert families["hpcfutures_tries"].type == "counter"
    assert value("hpcfutures_tries", "hpcfutures_tries_total", run=run) == setup.run.tries
    assert value("hpcfutures_requeued", "hpcfutures_requeued_total", run=run) == 2
    assert value("hpcfutures_blocks", run=run, state="completed") == 1
    assert value("hpcfutures_blocks", run=run, state="failed") == 1
    assert value("hpcfutures_pools", run=run, state="lost") == 1
    assert value("hpcfutures_samples_dropped", "hpcfutures_samples_dropped_total", run=run) == 0
    # the label with quotes, a backslash and a newline comes back as it was recorded
    assert value("hpcfutures_run_info", run=run, label=LABEL, status="done") == 1
    # the live run is reported too, and is live
    live = str(setup.live.run_id)
    assert value("hpcfutures_run_live", run=live) == 1
    assert value("hpcfutures_tasks", run=live, state="running") == 1
    assert value("hpcfutures_blocks", run=live, state="pending") == 1


# -- the page in Chromium ---------------------------------------------------------------------


class Node:
    """An element of a dumped DOM: enough of one to find elements and read their text."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        """Elements with ``tag`` whose attributes match (``class_`` for class, ``data_x`` for
        data-x; None: present with any value; a class matches one of the element's classes)."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}

        def matches(node: Node) -> bool:
            for key, value in wanted.items():
                if key not in node.attrs:
                    return False
                if value is None:
                    continue
                have = node.attrs[key]
                if key == "class" and value in have.split():
                    continue
                if have != value:
                    return False
            return True

        return [n for n in self.walk() if (tag is None or n.tag == tag) and matches(n)]

    def find(self, tag: str | None = None, **attrs: str | None) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'}> with {attrs}"
        return found[0]

    def by_id(self, ident: str) -> Node:
        return self.find(id=ident)


class _TreeBuilder(HTMLParser):
    _VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self._VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_dom(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def chromium(url: str, *extra: str, timeout: float = 90) -> str:
    """Load ``url`` in headless Chromium with a fresh profile; what it printed."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="hpcf-chromium-") as profile:
        proc = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                "--virtual-time-budget=5000", *extra, url,
            ],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, "LANG": "C.UTF-8"},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def load(url: str) -> Node:
    """The DOM of the page at ``url`` once its view has rendered."""
    dom = parse_dom(chromium(url, "--dump-dom"))
    body = dom.find("body")
    assert body.attrs.get("data-ready") == "1", f"the view never rendered: {body.text()[:2000]}"
    error = dom.by_id("error")
    assert "hidden" in error.attrs, f"the page showed an error: {error.text()}"
    return dom


@needs_chromium
def test_page_runs_list(setup: Setup) -> None:
    dom = load(setup.server.url)
    rows = dom.by_id("runs-table").find_all("tr", data_run=None)
    assert {r.attrs["data-run"] for r in rows} == {
        str(setup.run.run_id),
        str(setup.live.run_id),
        str(setup.big),
    }


@needs_chromium
def test_page_overview_counts(setup: Setup) -> None:
    dom = load(f"{setup.server.url}#/run/{setup.run.run_id}")
    assert dom.find("body").attrs["data-view"] == "overview"
    for state, n in setup.run.states.items():
        assert dom.by_id(f"count-{state}").find(class_="n").text() == str(n), state
    assert dom.by_id("count-total").find(class_="n").text() == str(sum(setup.run.states.values()))
    assert dom.by_id("count-tries").find(class_="n").text() == str(setup.run.tries)
    assert dom.by_id("count-requeued").find(class_="n").text() == "2"
    funcs = {r.attrs["data-func"] for r in dom.by_id("funcs-table").find_all("tr", data_func=None)}
    assert funcs == {"simulate", "load_input", "reduce", "analyse"}
    assert len(dom.by_id("throughput-chart").find_all("rect")) >= 5
    assert "finished" in dom.by_id("eta").text()


@needs_chromium
def test_page_failed_task_shows_its_traceback(setup: Setup) -> None:
    task = setup.run.failed_task
    dom = load(f"{setup.server.url}#/run/{setup.run.run_id}/task/{task}")
    detail = dom.by_id("task-detail")
    assert detail.attrs["data-task"] == str(task) and detail.attrs["data-state"] == "failed"
    assert dom.by_id("task-state").text() == "failed"
    tries = dom.by_id("tries").find_all("tr", data_outcome=None)
    assert [t.attrs["data-outcome"] for t in tries] == ["error", "error"]
    assert all(t.find(class_="charged").text() == "charged" for t in tries)
    traceback = dom.find("pre", class_="traceback", data_try="2").text()
    assert "Traceback (most recent call last)" in traceback and f"ValueError: bad input {task}" in traceback
    assert "step 2" in dom.find("pre", class_="stdout", data_try="2").text()
    assert dom.find("pre", class_="stderr", data_try="2").text() == STDERR
    assert "it ended: failed" in dom.by_id("why-text").text().lower()
    assert dom.by_id("children").find("a", data_task=str(setup.run.dep_fail_task))


@needs_chromium
def test_page_task_relatives_and_cache(setup: Setup) -> None:
    dom = load(f"{setup.server.url}#/run/{setup.run.run_id}/task/{setup.run.reduce_task}")
    parents = dom.by_id("parents").find_all("a", data_task=None)
    assert len(parents) == 6 and all(
        a.attrs["href"].startswith(f"#/run/{setup.run.run_id}/task/") for a in parents
    )
    dom = load(f"{setup.server.url}#/run/{setup.run.run_id}/task/{setup.run.cached_task}")
    assert dom.by_id("cache-text").attrs["data-decision"] == "hit"
    assert "taken from the cache" in dom.by_id("cache-text").text()
    dom = load(f"{setup.server.url}#/run/{setup.run.run_id}/task/{setup.run.requeued_task}")
    charged = [t.find(class_="charged").text() for t in dom.by_id("tries").find_all("tr", data_outcome=None)]
    assert charged == ["requeued", "charged"]


@needs_chromium
def test_page_why_not_running(setup: Setup) -> None:
    live = setup.live
    assert live.recorder.flush()  # a fresh heartbeat: the run reads as live, not lost
    dom = load(f"{setup.server.url}#/run/{live.run_id}/task/{live.waiting}")
    why = dom.by_id("why-not-running")
    assert why.attrs["data-kind"] == "waiting"
    text = dom.by_id("why-text").text()
    assert "waits on 1 dependency" in text.lower() and "prepare" in text, text
    dom = load(f"{setup.server.url}#/run/{live.run_id}/task/{live.queued}")
    text = dom.by_id("why-text").text()
    assert "still queued at the scheduler" in text and "job 99" in text, text
    assert dom.find("body").attrs["data-live"] == "1"


@needs_chromium
def test_page_blocks_and_their_history(setup: Setup) -> None:
    dom = load(f"{setup.server.url}#/run/{setup.run.run_id}/blocks")
    block0 = dom.by_id("blocks-table").find("tr", data_block="0")
    assert block0.find("td", class_="state").text() == "completed"
    assert [li.attrs["data-state"] for li in block0.find("ol", class_="history").find_all("li")] == [
        "pending", "running", "completed",
    ]  # fmt: skip
    assert "Priority" in block0.text() and "4711" in block0.text()
    block1 = dom.by_id("blocks-table").find("tr", data_block="1")
    assert block1.find("td", class_="state").text() == "failed" and "NodeFail" in block1.text()
    live = load(f"{setup.server.url}#/run/{setup.live.run_id}/blocks")
    assert (
        live.by_id("blocks-table").find("tr", data_block="0").find("td", class_="state").text() == "pending"
    )


@needs_chromium
def test_page_tasks_table_filters_and_pages(setup: Setup) -> None:
    run = setup.run.run_id
    dom = load(f"{setup.server.url}#/run/{run}/tasks?state=failed")
    rows = dom.by_id("tasks-table").find_all("tr", data_task=None)
    assert len(rows) == setup.run.states["failed"] and {r.attrs["data-state"] for r in rows} == {"failed"}
    assert dom.by_id("filter-state").find("option", selected=None).attrs["value"] == "failed"
    dom = load(f"{setup.server.url}#/run/{setup.big}/tasks?offset=50")
    assert dom.by_id("tasks-range").text() == "51–100 of 5,200"
    assert dom.by_id("tasks-table").find_all("tr", data_task=None)[0].attrs["data-task"] == "51"
    assert dom.by_id("page-prev").tag == "a" and dom.by_id("page-next").tag == "a"


@needs_chromium
def test_page_failures_stream_and_pools(setup: Setup) -> None:
    run = setup.run.run_id
    dom = load(f"{setup.server.url}#/run/{run}/failures")
    group = dom.find(class_="failure-group", data_exception="ValueError")
    assert group.attrs["data-count"] == str(setup.run.states["failed"])
    assert "Traceback" in group.find("pre", class_="traceback").text()
    assert dom.by_id("failed-tries-table").find("tr", data_outcome="lost")
    dom = load(f"{setup.server.url}#/run/{run}/stream")
    assert dom.by_id("stream").attrs["data-mode"] == "tries"
    assert len(dom.by_id("stream-chart").find_all("rect", class_="try")) == setup.run.tries
    dom = load(f"{setup.server.url}#/run/{setup.big}/stream")
    assert dom.by_id("stream").attrs["data-mode"] == "heatmap"
    assert dom.by_id("heatmap").find_all("rect", class_="cell")
    dom = load(f"{setup.server.url}#/run/{run}/pools")
    pools = dom.by_id("pools-table").find_all("tr", data_pool=None)
    assert {p.attrs["data-pool"]: p.attrs["data-lost"] for p in pools} == {"pool-0": "0", "pool-1": "1"}
    assert {n.attrs["data-host"] for n in dom.by_id("nodes-table").find_all("tr", data_host=None)} == {
        "node001",
        "node002",
    }
    assert dom.by_id("samples-chart").find("polyline", data_series="cpu_percent")


@needs_chromium
def test_snapshot_works_without_a_server(setup: Setup, tmp_path: Path) -> None:
    html = render_snapshot(setup.record, setup.run.run_id)
    assert "app.js" not in html.split("<script>", 1)[0] and "http" not in html.replace(
        "http://www.w3.org", ""
    )
    page = tmp_path / "run.html"
    page.write_text(html, encoding="utf-8")
    dom = load(f"{page.as_uri()}#/run/{setup.run.run_id}/task/{setup.run.failed_task}")
    assert (
        f"ValueError: bad input {setup.run.failed_task}"
        in dom.find("pre", class_="traceback", data_try="2").text()
    )
    assert dom.find("pre", class_="stderr", data_try="2").text() == STDERR
    dom = load(f"{page.as_uri()}#/run/{setup.run.run_id}")
    assert dom.by_id("count-failed").find(class_="n").text() == str(setup.run.states["failed"])


@needs_chromium
def test_page_says_when_the_task_rows_lag_the_counts(tmp_path: Path) -> None:
    """A busy executor's record keeps its counts current and writes its task rows later
    (run.behind_since): the overview shows the run's counts and says the rows lag."""
    from hpcfutures.monitor.schema import connect

    record = tmp_path / "busy.db"
    conn = connect(record)
    now = time.time()
    run_id = conn.execute(
        "INSERT INTO run (family, kind, status, started, heartbeat, config, submitted, done, failed, behind_since) "
        "VALUES ('busy', 'htex', 'running', ?, ?, '{}', 5000, 4200, 3, ?)",
        (now - 60, now, now - 7),
    ).lastrowid
    conn.close()
    page = tmp_path / "run.html"
    page.write_text(render_snapshot(record, int(run_id or 0)), encoding="utf-8")
    dom = load(f"{page.as_uri()}#/run/{run_id}")
    assert dom.by_id("count-done").find(class_="n").text() == "4,200"
    assert dom.by_id("count-queued").find(class_="n").text() == "797"
    assert dom.by_id("count-total").find(class_="n").text() == "5,000"
    assert "behind them" in dom.by_id("behind").text()


# -- a screenshot that is not blank ---------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG with the standard library: its width,
    height and pixels (each as bytes of RGB)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = 0
    channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[bytes] = []
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        pixels.extend(bytes(row[x : x + 3]) for x in range(0, stride, channels))
        previous = row
    return width, height, pixels


def screenshot(url: str, path: Path, size: str = "1280,900") -> bytes:
    chromium(url, f"--screenshot={path}", f"--window-size={size}", "--hide-scrollbars")
    return path.read_bytes()


@needs_chromium
def test_screenshot_is_not_blank(setup: Setup, tmp_path: Path) -> None:
    data = screenshot(f"{setup.server.url}#/run/{setup.run.run_id}", tmp_path / "overview.png")
    width, height, pixels = png_pixels(data)
    assert (width, height) == (1280, 900)
    counts: dict[bytes, int] = {}
    for pixel in pixels[::7]:  # a sample is enough, and quick
        counts[pixel] = counts.get(pixel, 0) + 1
    # the overview has about 1000 colours, its background a half; "Loading…" alone is 90% one colour
    background = max(counts.values()) / sum(counts.values())
    assert len(counts) >= 200, f"only {len(counts)} colours: the page rendered (nearly) blank"
    assert background < 0.75, f"{background:.0%} of the page is one colour: it rendered (nearly) blank"
    # the state colours of the progress bar are there
    for colour in ("2f9e44", "e03131"):
        assert bytes.fromhex(colour) in counts, f"no #{colour} pixel: the progress bar is missing"
