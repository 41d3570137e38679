"""Tests of hpcfutures.launchers.parallel with the real GNU parallel from Debian.

This machine is one node.  Copies for this host run without ssh (GNU parallel's ``:``); for
the multi-host tests the launcher is given ``--ssh`` with a stand-in that runs the "remote"
command here as sshd would (``_run.remote_shell``), so parallel's own remote-execution path
(its perl wrapper and quoting) runs for real.
"""

from __future__ import annotations

import os
import socket

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.parallel import NODE_SOURCES, GnuParallelLauncher

from ..services import need_commands
from ._run import (
    PAYLOAD,
    gone,
    marker_command,
    markers,
    pid_command,
    reached_hosts,
    remote_shell,
    run_fragment,
    terminate_after_start,
)

RANK = "HPCFUTURES_LAUNCH_RANK"


@pytest.fixture(autouse=True)
def _parallel_installed():
    need_commands("the GNU parallel launcher tests", "parallel")


@pytest.fixture
def env():
    """The environment outside any batch job: no variable names the job's nodes."""
    return {k: v for k, v in os.environ.items() if k not in NODE_SOURCES}


@pytest.fixture
def out(tmp_path):
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def test_outside_a_job_the_copies_run_on_this_host(out, env):
    proc = run_fragment(GnuParallelLauncher()(marker_command(out, RANK), 4, 3), env=env)
    assert proc.returncode == 0, proc.stderr
    assert markers(out) == [("0", PAYLOAD), ("1", PAYLOAD), ("2", PAYLOAD)]


def test_copies_see_the_number_of_copies(tmp_path, env):
    proc = run_fragment(GnuParallelLauncher()(f'echo "$HPCFUTURES_LAUNCH_SIZE" >> {tmp_path}/size', 1, 2), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "size").read_text().split() == ["2", "2"]


def test_names_of_this_host_in_the_hostfile_run_here_without_ssh(tmp_path, out, env):
    # A PBS-style node file lists a host once per core; every name of this host means "here".
    shell = remote_shell(tmp_path)
    hostfile = tmp_path / "nodes"
    hostfile.write_text(f"{socket.gethostname()}\n{socket.gethostname()}\nlocalhost\n")
    launcher = GnuParallelLauncher(hostfile=str(hostfile), overrides=f"--ssh {shell}")
    proc = run_fragment(launcher(marker_command(out, RANK), 1, 2), env=env)
    assert proc.returncode == 0, proc.stderr
    assert [rank for rank, _ in markers(out)] == ["0", "1"]
    assert reached_hosts(shell) == []


def test_one_copy_per_host_over_ssh_with_quoting_intact(tmp_path, out, env):
    shell = remote_shell(tmp_path)
    hostfile = tmp_path / "nodes"
    hostfile.write_text("node-a slots=4\nnode-b slots=4\nnode-a\n")
    launcher = GnuParallelLauncher(hostfile=str(hostfile), overrides=f"--ssh {shell}")
    proc = run_fragment(launcher(marker_command(out, RANK), 1, 2), env=env)
    assert proc.returncode == 0, proc.stderr
    assert markers(out) == [("0", PAYLOAD), ("1", PAYLOAD)]
    assert reached_hosts(shell) == ["node-a", "node-b"]


def test_the_job_script_host_runs_one_copy_and_ssh_the_others(tmp_path, out, env):
    shell = remote_shell(tmp_path)
    hostfile = tmp_path / "nodes"
    hostfile.write_text(f"{socket.gethostname()}\nnode-b\nnode-c\n")
    launcher = GnuParallelLauncher(hostfile=str(hostfile), overrides=f"--ssh {shell}")
    proc = run_fragment(launcher(marker_command(out, RANK), 1, 3), env=env)
    assert proc.returncode == 0, proc.stderr
    assert [rank for rank, _ in markers(out)] == ["0", "1", "2"]
    assert reached_hosts(shell) == ["node-b", "node-c"]


def test_the_nodes_come_from_pbs_nodefile(tmp_path, out, env):
    shell = remote_shell(tmp_path)
    nodefile = tmp_path / "pbs_nodes"
    nodefile.write_text("node-a\nnode-a\nnode-b\nnode-b\n")
    launcher = GnuParallelLauncher(overrides=f"--ssh {shell}")
    proc = run_fragment(launcher(marker_command(out, RANK), 2, 2), env={**env, "PBS_NODEFILE": str(nodefile)})
    assert proc.returncode == 0, proc.stderr
    assert reached_hosts(shell) == ["node-a", "node-b"]


def test_the_nodes_come_from_a_slurm_node_list(tmp_path, out, env):
    need_commands("expanding a Slurm node list", "scontrol")
    shell = remote_shell(tmp_path)
    launcher = GnuParallelLauncher(overrides=f"--ssh {shell}")
    proc = run_fragment(launcher(marker_command(out, RANK), 1, 2), env={**env, "SLURM_JOB_NODELIST": "node-[7-8]"})
    assert proc.returncode == 0, proc.stderr
    assert reached_hosts(shell) == ["node-7", "node-8"]


def test_a_hostfile_variable_is_expanded_when_the_job_runs(tmp_path, out, env):
    shell = remote_shell(tmp_path)
    hostfile = tmp_path / "nodes"
    hostfile.write_text("node-x\n")
    launcher = GnuParallelLauncher(hostfile="${MY_NODES}", overrides=f"--ssh {shell}")
    proc = run_fragment(launcher(marker_command(out, RANK), 1, 1), env={**env, "MY_NODES": str(hostfile)})
    assert proc.returncode == 0, proc.stderr
    assert reached_hosts(shell) == ["node-x"]


def test_a_failing_copy_fails_the_fragment_with_its_status_after_all_ran(out, env):
    proc = run_fragment(GnuParallelLauncher()(marker_command(out, RANK, exit_code=6, failing="1"), 1, 3), env=env)
    assert proc.returncode == 6
    assert len(markers(out)) == 3


def test_terminating_the_fragment_stops_every_copy(tmp_path, env):
    status, pids = terminate_after_start(GnuParallelLauncher()(pid_command(tmp_path), 1, 2), tmp_path, 2, env=env)
    assert status != 0
    assert all(gone(pid) for pid in pids)


def test_an_unreadable_hostfile_fails_with_a_message(tmp_path, env):
    proc = run_fragment(GnuParallelLauncher(hostfile=str(tmp_path / "absent"))("true", 1, 1), env=env)
    assert proc.returncode == 2
    assert "cannot read the hostfile" in proc.stderr


def test_a_compound_command_runs_whole(tmp_path, env):
    fragment = GnuParallelLauncher()(f"cd {tmp_path} && echo 'a b' > one; echo two > two", 1, 1)
    assert run_fragment(fragment, env=env).returncode == 0
    assert (tmp_path / "one").read_text() == "a b\n" and (tmp_path / "two").read_text() == "two\n"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"hostfile": "$PBS NODEFILE"}, "hostfile"),
        ({"hostfile": None}, "hostfile"),
        ({"overrides": "--ssh 'ssh -p 22"}, "overrides"),
        ({"overrides": "--env A\n"}, "overrides"),
    ],
)
def test_options_are_validated(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        GnuParallelLauncher(**kwargs)


def test_call_arguments_are_validated():
    with pytest.raises(ConfigurationError, match="nodes_per_block"):
        GnuParallelLauncher()("pool", 1, 0)
