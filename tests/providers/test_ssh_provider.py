"""SSHProvider against a real sshd on loopback: blocks started, watched and cancelled over SSH.

The sshd runs on this machine, so the "remote" processes are visible to psutil here; that is
how the tests check that a cancelled block leaves nothing behind.  "127.0.0.1" and
"localhost" serve as two hosts of one sshd.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time

import psutil
import pytest

from hpcfutures import HighThroughputExecutor
from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.base import JobState
from hpcfutures.providers.ssh import SSHProvider
from hpcfutures.providers.ssh_channel import SSHChannel
from tests.sshd import sshd_fixture

sshd = sshd_fixture()


def make_provider(sshd, hosts=("127.0.0.1",), **kwargs):
    kwargs.setdefault("cancel_grace", 1.0)
    kwargs.setdefault("poll_interval", 0.0)
    return SSHProvider(
        list(hosts), port=sshd.port, username=sshd.user, key_filename=sshd.key, known_hosts=sshd.known_hosts, **kwargs
    )


@pytest.fixture
def provider(sshd, tmp_path):
    provider = make_provider(sshd)
    provider.script_dir = str(tmp_path / "blocks")
    yield provider
    provider.close()


def sh(script):
    return "/bin/sh -c " + shlex.quote(script)


def wait_status(provider, job_id, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        (status,) = provider.status([job_id])
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.05)


def wait_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.05)
    return path.read_text()


def session_members(sid):
    """Live processes of session *sid* (the block's script is its leader)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def wait_session_gone(sid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while session_members(sid):
        assert time.monotonic() < deadline, f"session {sid} still has {session_members(sid)}"
        time.sleep(0.05)


def pid_of(job_id):
    return int(job_id.rsplit(":", 1)[1])


def test_completed_block_has_exit_code_and_tails(provider, tmp_path):
    marker = tmp_path / "marker"
    job_id = provider.submit(sh(f"echo ran > {marker}; echo out-line; echo err-line >&2"), 1)
    assert job_id.startswith("127.0.0.1:")
    status = wait_status(provider, job_id, lambda s: s.state.terminal)
    assert status.state is JobState.COMPLETED and status.exit_code == 0
    assert (status.stdout_tail, status.stderr_tail) == ("out-line", "err-line")
    assert marker.read_text() == "ran\n"
    assert os.listdir(tmp_path / "blocks") == ["hpcfutures.block.0.sh"]  # rendered here, run there


def test_failed_block_has_exit_code_and_stderr_tail(provider):
    job_id = provider.submit(sh("for i in 1 2 3; do echo problem $i >&2; done; exit 3"), 1)
    status = wait_status(provider, job_id, lambda s: s.state.terminal)
    assert status.state is JobState.FAILED and status.exit_code == 3
    assert status.stderr_tail == "problem 1\nproblem 2\nproblem 3"
    assert "exited with code 3" in status.message


def test_worker_init_runs_first(sshd, tmp_path):
    provider = make_provider(sshd, worker_init="export GREETING=from-init\ncd /")
    try:
        job_id = provider.submit(sh('echo "$GREETING in $(pwd)"'), 1)
        status = wait_status(provider, job_id, lambda s: s.state.terminal)
        assert status.stdout_tail == "from-init in /"
    finally:
        provider.close()


def test_running_block_is_cancelled_with_its_whole_session(provider, tmp_path):
    pids = tmp_path / "pids"
    # The shell, a child, and a grandchild in a process group of its own (as pool workers are).
    command = sh(
        f"sleep 300 & {shlex.quote(sys.executable)} -c 'import os, time; os.setpgid(0, 0); time.sleep(300)' & "
        f"echo $$ $! > {pids}; wait"
    )
    job_id = provider.submit(command, 1)
    shell, grandchild = (int(p) for p in wait_file(pids).split())
    assert wait_status(provider, job_id, lambda s: True).state is JobState.RUNNING
    sid = pid_of(job_id)
    members = session_members(sid)
    assert {shell, grandchild, sid} <= {p.pid for p in members}
    assert os.getpgid(grandchild) != sid
    assert provider.cancel([job_id]) == [True]
    wait_session_gone(sid, timeout=2.0)  # cancel returned only once nothing was left
    status = wait_status(provider, job_id, lambda s: s.state.terminal)
    assert status.state is JobState.CANCELLED
    assert provider.cancel([job_id]) == [True]  # already ended: tolerated


def test_block_killed_from_outside_is_failed(provider, tmp_path):
    started = tmp_path / "started"
    job_id = provider.submit(sh(f"echo up > {started}; exec sleep 300"), 1)
    wait_file(started)
    sid = pid_of(job_id)
    for proc in session_members(sid):
        proc.kill()
    status = wait_status(provider, job_id, lambda s: s.state.terminal)
    assert status.state is JobState.FAILED
    assert "without writing its exit code" in status.message


def test_walltime_stops_the_block(sshd, tmp_path):
    provider = make_provider(sshd, walltime=2)
    try:
        job_id = provider.submit(sh('echo "end=$HPCFUTURES_BLOCK_END"; exec sleep 300'), 1)
        status = wait_status(provider, job_id, lambda s: s.state.terminal)
        assert status.state is JobState.TIMEOUT and status.exit_code == 124
        end = int(status.stdout_tail.removeprefix("end="))
        assert abs(end - time.time()) < 60
        wait_session_gone(pid_of(job_id))
    finally:
        provider.close()


def test_blocks_go_round_robin_and_cancel_together(sshd, tmp_path):
    provider = make_provider(sshd, hosts=["127.0.0.1", "localhost"], max_blocks=3)
    try:
        ids = [provider.submit(sh("exec sleep 300"), 1) for _ in range(3)]
        assert [i.split(":")[0] for i in ids] == ["127.0.0.1", "localhost", "127.0.0.1"]
        assert [s.state for s in provider.status(ids)] == [JobState.RUNNING] * 3
        assert provider.cancel([*ids, "nowhere:1"]) == [True, True, True, False]
        for job_id in ids:
            wait_session_gone(pid_of(job_id), timeout=2.0)
        assert [s.state for s in provider.status(ids)] == [JobState.CANCELLED] * 3
    finally:
        provider.close()


def test_unknown_job_is_missing(provider):
    (status,) = provider.status(["127.0.0.1:1"])
    assert status.state is JobState.MISSING
    assert provider.cancel(["127.0.0.1:1"]) == [False]


def test_close_cancels_blocks_and_removes_the_remote_directory(sshd, tmp_path):
    provider = make_provider(sshd)
    job_id = provider.submit(sh("exec sleep 300"), 1)
    directory = provider.remote_dir(0)
    home = os.path.expanduser("~" + sshd.user)
    assert os.path.isdir(os.path.join(home, directory))
    local = provider.script_dir
    assert local is not None and os.path.isdir(local)
    provider.close()
    wait_session_gone(pid_of(job_id), timeout=2.0)
    assert not os.path.exists(os.path.join(home, directory))
    assert not os.path.exists(local) and provider.script_dir is None
    with pytest.raises(RuntimeError, match="closed"):
        provider.submit("true", 1)
    provider.close()  # again: nothing


def test_given_remote_directory_is_kept(sshd, tmp_path):
    provider = make_provider(sshd, remote_script_dir=str(tmp_path / "remote"))
    try:
        job_id = provider.submit(sh("echo kept"), 1)
        wait_status(provider, job_id, lambda s: s.state.terminal)
    finally:
        provider.close()
    (sub,) = (tmp_path / "remote").iterdir()
    assert (sub / "hpcfutures.block.0.out").read_text() == "kept\n"
    assert (sub / "hpcfutures.block.0.sh.exitcode").read_text() == "0\n"


def test_unreachable_host_leaves_the_last_status(sshd, tmp_path):
    channel = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=sshd.known_hosts,
                         connect_timeout=5)
    provider = SSHProvider([channel], poll_interval=0)
    job_id = provider.submit(sh("exec sleep 300"), 1)
    try:
        assert provider.status([job_id])[0].state is JobState.RUNNING
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        channel.close()
        channel.port = closed_port
        (status,) = provider.status([job_id])
        assert status.state is JobState.RUNNING
        assert "cannot reach 127.0.0.1" in status.message
        assert provider.cancel([job_id]) == [False]
    finally:
        channel.close()
        channel.port = sshd.port
        assert provider.cancel([job_id]) == [True]
        provider.close()


def test_status_is_cached_for_poll_interval(sshd, tmp_path):
    provider = make_provider(sshd, poll_interval=3600)
    try:
        job_id = provider.submit(sh("exec sleep 300"), 1)
        assert provider.status([job_id])[0].state is JobState.RUNNING
        for proc in session_members(pid_of(job_id)):
            proc.kill()
        wait_session_gone(pid_of(job_id))
        assert provider.status([job_id])[0].state is JobState.RUNNING  # not asked again yet
        provider.poll_interval = 0
        assert provider.status([job_id])[0].state is JobState.FAILED
    finally:
        provider.close()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"hosts": []}, "hosts"),
        ({"hosts": "node1"}, "hosts"),
        ({"hosts": ["node1", "node1"]}, "hosts"),
        ({"hosts": [42]}, "hosts"),
        ({"hosts": ["bad host"]}, "hostname"),
        ({"port": 0}, "port"),
        ({"key_filename": "/nonexistent/key"}, "key_filename"),
        ({"host_key_policy": "yes"}, "host_key_policy"),
        ({"walltime": "soon"}, "walltime"),
        ({"cancel_grace": -1}, "cancel_grace"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"cmd_timeout": 0}, "cmd_timeout"),
        ({"remote_script_dir": ""}, "remote_script_dir"),
        ({"min_blocks": 3, "max_blocks": 2}, "min_blocks"),
        ({"init_blocks": -1}, "init_blocks"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    args = {"hosts": ["node1"], **kwargs}
    hosts = args.pop("hosts")
    with pytest.raises(ConfigurationError, match=name):
        SSHProvider(hosts, **args)


def test_max_blocks_defaults_to_one_per_host():
    assert SSHProvider(["a", "b", "c"]).max_blocks == 3


# -- end to end ---------------------------------------------------------------------------------


def test_htex_runs_tasks_on_a_pool_started_over_ssh(sshd, tmp_path):
    def where():  # defined here, so it is pickled by value: the pool cannot import tests
        import os

        return os.getsid(0), os.getpid()

    provider = make_provider(sshd, poll_interval=0.5)
    ex = HighThroughputExecutor(max_workers=2, provider=provider, address="127.0.0.1", run_dir=tmp_path / "run")
    try:
        assert list(ex.map(pow, range(10), [2] * 10)) == [i * i for i in range(10)]
        (block,) = provider._jobs.values()
        sid, worker = ex.submit(where).result(timeout=60)
        assert sid == block.pid  # the worker runs in the session the provider started over SSH
        assert worker != os.getpid()
    finally:
        ex.shutdown(wait=True)
    wait_session_gone(block.pid)
    assert provider._closed
