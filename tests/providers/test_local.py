"""Tests of LocalProvider with real processes: states, exit codes, tails, cancel, cleanup."""

from __future__ import annotations

import os
import shlex
import stat
import sys
import time

import psutil
import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers import Launcher
from hpcfutures.providers import JobState, LocalProvider


def wait_terminal(provider, job_id, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        (status,) = provider.status([job_id])
        if status.state.terminal:
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.02)


def wait_pids(path, count, timeout=15.0):
    """Return the processes whose pids a job wrote to *path*, once it holds *count* lines."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            lines = path.read_text().split()
            if len(lines) >= count:
                return [psutil.Process(int(pid)) for pid in lines]
        assert time.monotonic() < deadline, f"{path} never got {count} pids"
        time.sleep(0.02)


def alive(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_gone(procs, timeout=5.0):
    # A killed grandchild may linger for a moment as a zombie until init reaps it.
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in procs if alive(p)]


@pytest.fixture
def provider(tmp_path):
    provider = LocalProvider(cancel_grace=1.0)
    provider.script_dir = str(tmp_path / "blocks")
    yield provider
    provider.close()


def sh(script):
    return "/bin/sh -c " + shlex.quote(script)


def test_completed_job_has_exit_code_and_tails(provider, tmp_path):
    job_id = provider.submit(sh("echo out-line; echo err-line >&2"), 1)
    status = wait_terminal(provider, job_id)
    assert status.state is JobState.COMPLETED
    assert status.exit_code == 0
    assert status.stdout_tail == "out-line"
    assert status.stderr_tail == "err-line"
    files = sorted(p.name for p in (tmp_path / "blocks").iterdir())
    assert files == [f"hpcfutures.block.{job_id}.{ext}" for ext in ("err", "out", "sh")]


def test_nonzero_exit_is_failed_with_code_and_stderr(provider):
    job_id = provider.submit(sh("echo something broke >&2; exit 7"), 1)
    status = wait_terminal(provider, job_id)
    assert status.state is JobState.FAILED
    assert status.exit_code == 7
    assert "exited with code 7" in status.message
    assert status.stderr_tail == "something broke"


def test_death_by_signal_names_the_signal(provider):
    job_id = provider.submit(sh("kill -KILL $$"), 1)
    status = wait_terminal(provider, job_id)
    assert status.state is JobState.FAILED
    assert status.exit_code == -9
    assert "killed by signal SIGKILL" in status.message


def test_tails_hold_the_last_lines(provider):
    job_id = provider.submit(sh("for i in $(seq 1 500); do echo line $i; done"), 1)
    status = wait_terminal(provider, job_id)
    assert status.stdout_tail.splitlines() == [f"line {i}" for i in range(481, 501)]


def test_failing_worker_init_fails_the_job_with_its_stderr(tmp_path):
    provider = LocalProvider(worker_init="echo cannot load module >&2\nexit 3\n")
    provider.script_dir = str(tmp_path)
    try:
        job_id = provider.submit("sleep 1000", 1)
        status = wait_terminal(provider, job_id)
        assert status.state is JobState.FAILED
        assert status.exit_code == 3
        assert "cannot load module" in status.stderr_tail
    finally:
        provider.close()


def test_worker_init_runs_before_the_command(tmp_path):
    provider = LocalProvider(worker_init="export HPCF_GREETING=hello")
    provider.script_dir = str(tmp_path)
    try:
        job_id = provider.submit(sh('echo "$HPCF_GREETING from the block"'), 1)
        status = wait_terminal(provider, job_id)
        assert status.state is JobState.COMPLETED
        assert status.stdout_tail == "hello from the block"
        script = (tmp_path / f"hpcfutures.block.{job_id}.sh").read_text().splitlines()
        assert script.index("export HPCF_GREETING=hello") < len(script) - 1
        assert script[-1].startswith("exec ")
    finally:
        provider.close()


def test_launcher_wraps_the_command(tmp_path):
    calls = []

    class EnvLauncher(Launcher):
        def __call__(self, command, tasks_per_node, nodes_per_block):
            calls.append((command, tasks_per_node, nodes_per_block))
            return f"env HPCF_WRAPPED=yes {command}"

    provider = LocalProvider(launcher=EnvLauncher())
    provider.script_dir = str(tmp_path)
    try:
        job_id = provider.submit(sh('echo "wrapped=$HPCF_WRAPPED"'), 4)
        assert wait_terminal(provider, job_id).stdout_tail == "wrapped=yes"
        assert calls == [(sh('echo "wrapped=$HPCF_WRAPPED"'), 4, 1)]
    finally:
        provider.close()


def test_job_name_is_made_safe_for_file_names(provider, tmp_path):
    job_id = provider.submit("true", 1, job_name="my block/../x")
    wait_terminal(provider, job_id)
    assert (tmp_path / "blocks" / f"my_block_.._x.{job_id}.sh").exists()


def test_status_of_many_jobs_in_one_call(provider):
    ok = provider.submit("true", 1)
    bad = provider.submit(sh("exit 2"), 1)
    running = provider.submit("sleep 1000", 1)
    wait_terminal(provider, ok)
    wait_terminal(provider, bad)
    statuses = provider.status([ok, bad, running, "no-such-job", ok])
    assert [s.state for s in statuses] == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.RUNNING,
        JobState.MISSING,
        JobState.COMPLETED,
    ]
    assert statuses[1].exit_code == 2
    assert "no-such-job" in statuses[3].message
    assert len({ok, bad, running}) == 3


def test_cancel_stops_a_running_job(provider):
    job_id = provider.submit("sleep 1000", 1)
    assert provider.status([job_id])[0].state is JobState.RUNNING
    assert provider.cancel([job_id]) == [True]
    status = provider.status([job_id])[0]
    assert status.state is JobState.CANCELLED
    assert status.exit_code == -15


def test_cancel_kills_children_and_grandchildren(provider, tmp_path):
    pids = tmp_path / "pids"
    tree = f"echo $$ >> {pids}; (sleep 1000 & echo $! >> {pids}; wait) & echo $! >> {pids}; wait"
    job_id = provider.submit("/bin/bash -c " + shlex.quote(tree), 1)
    procs = wait_pids(pids, 3)
    assert all(alive(p) for p in procs)
    assert provider.cancel([job_id]) == [True]
    assert_gone(procs)


def test_cancel_kills_processes_that_left_the_process_group(provider, tmp_path):
    pids = tmp_path / "pids"
    spawn = (
        "import os, subprocess, time\n"
        "p = subprocess.Popen(['sleep', '1000'], preexec_fn=os.setpgrp)\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{p.pid}}')\n"
        "time.sleep(1000)\n"
    )
    job_id = provider.submit(shlex.join([sys.executable, "-c", spawn]), 1)
    leader, stray = wait_pids(pids, 2)
    assert os.getpgid(stray.pid) != os.getpgid(leader.pid)
    assert os.getsid(stray.pid) == os.getsid(leader.pid)
    assert provider.cancel([job_id]) == [True]
    assert_gone([leader, stray])


def test_cancel_kills_descendants_in_their_own_session(provider, tmp_path):
    pids = tmp_path / "pids"
    job_id = provider.submit(sh(f"echo $$ >> {pids}; setsid sleep 1000 & echo $! >> {pids}; wait"), 1)
    leader, escaped = wait_pids(pids, 2)
    deadline = time.monotonic() + 5
    while os.getsid(escaped.pid) == os.getsid(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # setsid may not have run yet
    assert os.getsid(escaped.pid) != os.getsid(leader.pid)
    assert provider.cancel([job_id]) == [True]
    assert_gone([leader, escaped])


def test_cancel_of_an_ended_job_kills_what_it_left_behind(provider, tmp_path):
    pids = tmp_path / "pids"
    spawn = (
        "import os, subprocess\n"
        "p = subprocess.Popen(['sleep', '1000'], preexec_fn=os.setpgrp)\n"
        f"open({str(pids)!r}, 'w').write(str(p.pid))\n"
    )
    job_id = provider.submit(shlex.join([sys.executable, "-c", spawn]), 1)
    assert wait_terminal(provider, job_id).state is JobState.COMPLETED
    (stray,) = wait_pids(pids, 1)
    assert alive(stray)
    assert provider.cancel([job_id]) == [True]
    assert_gone([stray])
    assert provider.status([job_id])[0].state is JobState.COMPLETED


def test_cancel_escalates_to_sigkill_in_bounded_time(tmp_path):
    provider = LocalProvider(cancel_grace=0.3)
    provider.script_dir = str(tmp_path)
    pids = tmp_path / "pids"
    try:
        job_id = provider.submit(sh(f"trap '' TERM; echo $$ > {pids}; sleep 1000 & wait"), 1)
        (leader,) = wait_pids(pids, 1)
        start = time.monotonic()
        assert provider.cancel([job_id]) == [True]
        assert time.monotonic() - start < 5.0
        status = provider.status([job_id])[0]
        assert status.state is JobState.CANCELLED
        assert "SIGKILL" in status.message
        assert_gone([leader])
    finally:
        provider.close()


def test_cancel_tolerates_unknown_and_finished_ids(provider):
    done = provider.submit("true", 1)
    wait_terminal(provider, done)
    assert provider.cancel(["no-such-job", done, done]) == [False, True, True]
    assert provider.status([done])[0].state is JobState.COMPLETED
    assert provider.cancel([]) == []


def test_cancel_of_many_jobs_waits_once(tmp_path):
    provider = LocalProvider(cancel_grace=1.0)
    provider.script_dir = str(tmp_path)
    try:
        ready = tmp_path / "ready"
        jobs = [
            provider.submit(sh(f"trap '' TERM; echo $$ >> {ready}; sleep 1000 & wait"), 1) for _ in range(4)
        ]
        wait_pids(ready, 4)  # every trap is set
        start = time.monotonic()
        assert provider.cancel(jobs) == [True] * 4
        assert time.monotonic() - start < 3.0  # one grace period, not four
    finally:
        provider.close()


def test_close_stops_jobs_and_removes_the_private_directory():
    provider = LocalProvider()
    assert provider.script_dir is None
    job_id = provider.submit("sleep 1000", 1)
    directory = provider.script_dir
    assert directory is not None
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    provider.close()
    assert provider.status([job_id])[0].state is JobState.CANCELLED
    assert not os.path.exists(directory)
    assert provider.script_dir is None
    provider.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="closed"):
        provider.submit("true", 1)


def test_close_keeps_a_directory_the_caller_chose(tmp_path):
    provider = LocalProvider()
    provider.script_dir = str(tmp_path / "mine")
    job_id = provider.submit("true", 1)
    wait_terminal(provider, job_id)
    provider.close()
    assert (tmp_path / "mine" / f"hpcfutures.block.{job_id}.out").exists()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_blocks": 2, "max_blocks": 1}, "min_blocks"),
        ({"init_blocks": -1}, "init_blocks"),
        ({"max_blocks": -1}, "max_blocks"),
        ({"cancel_grace": -1}, "cancel_grace"),
        ({"cancel_grace": float("nan")}, "cancel_grace"),
        ({"label": ""}, "label"),
    ],
)
def test_invalid_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        LocalProvider(**kwargs)
