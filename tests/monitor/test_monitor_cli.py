"""``hpcfutures monitor``: the records of test_query.py read back as a user reads them, in a
subprocess (``python -m hpcfutures monitor …``) and in-process through ``main``."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcfutures.cli import main as hpcfutures_main
from hpcfutures.monitor.cli import main

from .test_query import BIG, TB3, Records, build_records


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Records]:
    made = build_records(tmp_path_factory.mktemp("records"))
    try:
        yield made
    finally:
        made.live.close()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcfutures", "monitor", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- in a subprocess ---------------------------------------------------------------------


def test_ls_finds_the_record_directory_from_the_environment(records: Records) -> None:
    result = run("ls", env={"HPCFUTURES_RECORD_DIR": str(records.dir)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RUN", "KIND", "LABEL", "STATUS", "STARTED", "TIME", "TASKS", "DONE", "FAILED",
                                "CACHED", "RUNNING"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"sweep:1", "sweep:2", "big:1"}
    assert rows["sweep:1"][1:4] == ["dataflow", "flow", "done"] and rows["sweep:1"][-5:] == [
        "10",
        "5",
        "4",
        "1",
        "0",
    ]
    assert rows["sweep:2"][3] in ("running", "lost") and rows["sweep:2"][-1] == "2"
    assert rows["big:1"][-5:-3] == [str(BIG), str(BIG - BIG // 7)]


def test_status_json(records: Records) -> None:
    result = run("--dir", str(records.dir), "status", "sweep:1", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {s: n for s, n in status["states"].items() if n} == {
        "done": 5,
        "memo_done": 1,
        "failed": 3,
        "dep_fail": 1,
    }
    assert (status["retries"], status["requeues"], status["run"]["status"]) == (1, 1, "done")


def test_task_shows_every_try_and_the_traceback(records: Records) -> None:
    result = run("task", "3", "--run", f"{records.sweep}:1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("task 3  square  failed  tries 2  executor htex\n")
    assert (
        "try 1  error  host h1  pool p0  worker 0" in out
        and "try 2  error  host h1  pool p0  worker 1" in out
    )
    assert "\n".join("    " + line for line in TB3.splitlines()) in out
    assert "  stderr tail:\n    reading part 3" in out
    assert "children  7 (total, dep_fail)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["status", "nope"], "no run record of family 'nope' in {dir} (families there: big, sweep)"),
        (["status", "sweep:9"], "no run 9 in run record {dir}/sweep.db (its runs are 1, 2)"),
        (["task", "99", "--run", "sweep:1"], "no task 99 in run 1 of run record {dir}/sweep.db"),
        (["tasks", "big", "--state", "finished"], "unknown task state 'finished'; the states are pending,"),
        (
            ["tasks", "big", "--fields", "id,colour"],
            "unknown field 'colour' in --fields; the fields are task_id,",
        ),
    ],
)
def test_errors_are_one_line_and_exit_2(records: Records, args: list[str], message: str) -> None:
    result = run("--dir", str(records.dir), *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"hpcfutures monitor {args[0]}: " + message.format(dir=records.dir))
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_serve_is_dispatched_to_the_dashboard(records: Records) -> None:
    result = run("serve", "nope", "--dir", str(records.dir), "--port", "0")
    assert result.returncode == 2
    assert "no run record of family 'nope'" in result.stderr and "Traceback" not in result.stderr


# -- in-process --------------------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert hpcfutures_main(["--help"]) == 0
    assert "monitor" in capsys.readouterr().out
    code, out, _ = call(capsys, "--help")
    assert code == 0
    for command in ("ls", "status", "tasks", "task", "explain", "blocks", "failures", "export", "serve"):
        assert f"    {command}" in out


def test_through_the_hpcfutures_command(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    assert hpcfutures_main(["monitor", "--record", str(records.big), "status"]) == 0
    assert f"tasks     {BIG}: {BIG - BIG // 7} done, {BIG // 7} failed" in capsys.readouterr().out


def test_tasks_pages_with_chosen_fields(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "tasks", "big", "--state", "failed", "--limit", "5",
                        "--offset", "5", "--fields", "id,func,state")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "FUNC", "STATE"]
    assert [int(line.split()[0]) for line in lines[1:6]] == records.big_failed[5:10]
    assert all(line.split()[2] == "failed" for line in lines[1:6])
    assert lines[-1] == f"6-10 of {len(records.big_failed)}; --offset 10 for more"


def test_tasks_json(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "tasks", "sweep:1", "--func", "total", "--json")
    assert code == 0
    page = json.loads(out)
    assert page["total"] == 2
    assert [(t["task_id"], t["state"]) for t in page["tasks"]] == [(6, "done"), (7, "dep_fail")]


@pytest.mark.parametrize(
    "task, reason",
    [
        ("4", "waits on 1 dependency of 1: 1 (work, running)"),
        ("3", "queued: no free worker slot (1 pool, 2 workers, 2 busy)"),
        ("5", "its blocks are still queued at the scheduler: block 0 (job 777) PD since "),
    ],
)
def test_explain_says_why_a_task_waits(
    records: Records, capsys: pytest.CaptureFixture[str], task: str, reason: str
) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "explain", task, "--run", "sweep:2")
    assert code == 0
    assert f"\n  - {reason}" in out
    assert out.rstrip().endswith("cache: no cache decision recorded: the task was not looked up in a cache")


def test_explain_a_cache_miss(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "explain", "9", "--run", "sweep:1")
    assert code == 0
    assert out.splitlines() == [
        "task 9 (square) ended done:",
        out.splitlines()[1],
        "cache: miss (key 998877665544): argument 'x' changed; the task ran",
    ]
    assert out.splitlines()[1].startswith("  - it ended: done ")


def test_failures_grouped(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "failures", "sweep:1")
    assert code == 0
    assert out.startswith(
        "2 x ValueError: bad input N\n  functions: square; tasks 3, 4\n  traceback of task 3:\n"
    )
    assert "\n1 x KeyError: 'x'\n  functions: load; tasks 5\n" in out


def test_blocks_with_history_and_pools(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "blocks", "sweep:1")
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split()[:4] == ["htex", "1", "101", "failed"] and lines[2].endswith("NODE_FAIL")
    history = next(line for line in lines if line.startswith("  block 1: "))
    assert [step.split()[0] for step in history[len("  block 1: ") :].split(" -> ")] == [
        "pending",
        "running",
        "failed",
    ]
    lost = next(line for line in lines if line.split()[:2] == ["htex", "p1"])
    assert lost.endswith("killed by signal 9 (SIGKILL)")


def test_export_csv(records: Records, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "tasks.csv"
    code, _, err = call(
        capsys, "--dir", str(records.dir), "export", "sweep:1", "--format", "csv", "-o", str(out)
    )
    assert code == 0 and f"wrote {out}" in err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(r["task_id"]) for r in rows] == list(range(1, 11))
    three = rows[2]
    assert (three["state"], three["tries"], three["try_no"], three["outcome"], three["worker"]) == (
        "failed", "2", "2", "error", "1",
    )  # fmt: skip
    assert rows[9]["try_no"] == "2" and rows[9]["outcome"] == "ok"  # the requeued task's last try
    assert rows[7]["try_no"] == "" and rows[7]["state"] == "memo_done"  # never ran


def test_export_chrome_trace(records: Records, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--dir", str(records.dir), "export", "sweep:1", "--format", "chrome-trace")
    assert code == 0
    trace = json.loads(out)
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == 10  # one per try
    assert all(isinstance(e["pid"], int) and isinstance(e["tid"], int) for e in events)
    assert all(e["ts"] >= 0 and e["dur"] >= 0 for e in complete)
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names.values()) == ["h1/p0", "h2/p1"]
    assert {e["pid"] for e in complete} <= set(names)
    lost = next(e for e in complete if e["cat"] == "lost")
    assert (names[lost["pid"]], lost["tid"], lost["args"]["task"], lost["args"]["charged"]) == (
        "h2/p1",
        0,
        10,
        False,
    )
    assert {e["name"] for e in complete} == {"square", "load", "total"}
    assert trace["otherData"]["run"] == "sweep:1"


def test_export_html_is_self_contained(
    records: Records, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run.html"
    code, _, _ = call(
        capsys, "--dir", str(records.dir), "export", "sweep:1", "--format", "html", "-o", str(out)
    )
    assert code == 0
    page = out.read_text()
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "ValueError: bad input 3" in page
    for outside in ('src="http', "src='http", 'href="http', "@import"):
        assert outside not in page


def test_a_file_that_is_not_a_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\0" * 200)
    code, out, err = call(capsys, "--record", str(junk), "status")
    assert (code, out) == (2, "")
    assert err.startswith("hpcfutures monitor status: ") and "junk.db" in err and err.count("\n") == 1


def test_ls_with_no_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, "--dir", str(tmp_path), "ls") == (0, f"no runs recorded in {tmp_path}\n", "")
    assert call(capsys, "--dir", str(tmp_path), "ls", "--json") == (0, "[]\n", "")
    code, _, err = call(capsys, "--dir", str(tmp_path), "status")
    assert code == 2 and err == f"hpcfutures monitor status: no run records in {tmp_path}\n"


# -- a real run --------------------------------------------------------------------------


def _square(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad input {x}")
    return x * x


def _total(*parts: int) -> int:
    return sum(parts)


def test_a_real_dataflow_run_read_back(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from hpcfutures import DataflowExecutor

    record = tmp_path / "flow.db"
    with DataflowExecutor(ThreadPoolExecutor(2), record=record, retries=1, cache=True) as dfx:
        squares = [dfx.submit(_square, i) for i in range(10)]  # _square(3) fails, and again on its retry
        assert dfx.submit(_total, *squares[:5]).exception() is not None  # so this never runs
        assert squares[2].result() == 4
        assert dfx.submit(_square, 2).result() == 4  # a cache hit
    result = run("--record", str(record), "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {s: n for s, n in status["states"].items() if n} == {
        "done": 9,
        "failed": 1,
        "dep_fail": 1,
        "memo_done": 1,
    }
    assert (status["retries"], status["run"]["status"]) == (1, "done")
    result = run("--record", str(record), "failures")
    assert result.stdout.startswith("1 x ValueError: bad input N\n  functions: ")
    assert 'raise ValueError(f"bad input {x}")' in result.stdout
    result = run("--record", str(record), "explain", "11")
    assert result.stdout.splitlines()[:2] == [
        "task 11 (_total) ended dep_fail:",
        "  - it ended: a dependency failed (4), so it never ran",
    ]
    result = run("--record", str(record), "explain", "12")
    assert "cache: hit: the result was taken from the cache" in result.stdout
