"""Tests of hpcfutures.launchers.mpi with the real MPI launchers from Debian.

``MpiExecLauncher`` runs under MPICH's Hydra (``mpiexec.mpich``), ``MpiRunLauncher`` under
Open MPI (``mpirun.openmpi``); .ci/setup-launchers.sh installs both.  This machine is one
node, so the two-node tests give the launcher a hostfile naming ``localhost`` and
``127.0.0.2`` and tell it to reach the "remote" node through a remote shell that runs the
command here, as ``sshd`` would (``$SHELL -c '<arguments joined>'``).  Everything else is the
real launcher: it starts its real proxy (``hydra_pmi_proxy`` / ``orted``) through that shell,
which then starts the copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.mpi import MpiExecLauncher, MpiRunLauncher

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

FLAVOURS = {
    "hydra": (MpiExecLauncher, "mpiexec.mpich", "PMI_RANK"),
    "openmpi": (MpiRunLauncher, "mpirun.openmpi", "OMPI_COMM_WORLD_RANK"),
}


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request):
    launcher_class, executable, rank_var = FLAVOURS[request.param]
    need_commands(f"the {request.param} launcher tests", executable)
    return launcher_class, executable, rank_var


@pytest.fixture
def mpi_env(tmp_path):
    """The environment for running MPI here, with two loopback "nodes" reachable."""
    shell = remote_shell(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "OMPI_", "HYDRA_"))}
    env.update(
        HYDRA_LAUNCHER="ssh",
        HYDRA_LAUNCHER_EXEC=str(shell),
        OMPI_MCA_plm_rsh_agent=str(shell),
    )
    if os.geteuid() == 0:  # Open MPI refuses root without both of these (see MpiRunLauncher)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


@pytest.fixture
def two_nodes(tmp_path) -> Path:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost\n127.0.0.2\n")
    return hostfile


def test_one_copy_on_one_node_with_quoting_intact(tmp_path, flavour, mpi_env):
    launcher_class, executable, rank_var = flavour
    out = tmp_path / "out"
    out.mkdir()
    fragment = launcher_class(executable=executable)(marker_command(out, rank_var), 4, 1)
    proc = run_fragment(fragment, env=mpi_env)
    assert proc.returncode == 0, proc.stderr
    assert markers(out) == [("0", PAYLOAD)]


def test_one_copy_per_node_on_two_nodes(tmp_path, flavour, mpi_env, two_nodes):
    launcher_class, executable, rank_var = flavour
    out = tmp_path / "out"
    out.mkdir()
    launcher = launcher_class(executable=executable, hostfile=str(two_nodes))
    proc = run_fragment(launcher(marker_command(out, rank_var), 4, 2), env=mpi_env)
    assert proc.returncode == 0, proc.stderr
    assert markers(out) == [("0", PAYLOAD), ("1", PAYLOAD)]
    # The second copy went through the remote shell, to the second node of the hostfile.
    assert reached_hosts(tmp_path / "remote-shell") == ["127.0.0.2"]


def test_a_hostfile_variable_is_expanded_when_the_job_runs(tmp_path, flavour, mpi_env, two_nodes):
    launcher_class, executable, rank_var = flavour
    out = tmp_path / "out"
    out.mkdir()
    launcher = launcher_class(executable=executable, hostfile="$TEST_NODEFILE")
    fragment = launcher(marker_command(out, rank_var), 1, 2)
    assert "$TEST_NODEFILE" in fragment
    proc = run_fragment(fragment, env={**mpi_env, "TEST_NODEFILE": str(two_nodes)})
    assert proc.returncode == 0, proc.stderr
    assert [rank for rank, _ in markers(out)] == ["0", "1"]


def test_a_failing_copy_fails_the_fragment_with_its_status(tmp_path, flavour, mpi_env, two_nodes):
    launcher_class, executable, rank_var = flavour
    out = tmp_path / "out"
    out.mkdir()
    launcher = launcher_class(executable=executable, hostfile=str(two_nodes))
    proc = run_fragment(launcher(marker_command(out, rank_var, exit_code=9, failing="1"), 1, 2), env=mpi_env)
    assert proc.returncode == 9, proc.stderr


def test_terminating_the_fragment_stops_every_copy(tmp_path, flavour, mpi_env, two_nodes):
    launcher_class, executable, _ = flavour
    out = tmp_path / "out"
    out.mkdir()
    fragment = launcher_class(executable=executable, hostfile=str(two_nodes))(pid_command(out), 1, 2)
    _, pids = terminate_after_start(fragment, out, 2, env=mpi_env)
    # The exit status is the implementation's: Hydra exits 0 after passing TERM on to copies
    # on more than one node (15 on one node).  What matters is that no copy is left.
    assert all(gone(pid) for pid in pids)


def test_a_compound_command_runs_whole_in_each_copy(tmp_path, flavour, mpi_env):
    launcher_class, executable, _ = flavour
    fragment = launcher_class(executable=executable)(f"cd {tmp_path} && echo 'a b' > one; echo two > two", 1, 1)
    assert run_fragment(fragment, env=mpi_env).returncode == 0
    assert (tmp_path / "one").read_text() == "a b\n" and (tmp_path / "two").read_text() == "two\n"


@pytest.mark.parametrize(
    "name, overrides",
    [("hydra", "-genv HPCF_GREETING 'hello there'"), ("openmpi", "-x HPCF_GREETING='hello there'")],
)
def test_overrides_are_passed_to_the_launcher(tmp_path, mpi_env, name, overrides):
    launcher_class, executable, _ = FLAVOURS[name]
    need_commands(f"the {name} launcher tests", executable)
    out = tmp_path / "greeting"
    fragment = launcher_class(executable=executable, overrides=overrides)(f'echo "$HPCF_GREETING" > {out}', 1, 1)
    assert run_fragment(fragment, env=mpi_env).returncode == 0
    assert out.read_text() == "hello there\n"


def test_rendered_command_lines():
    assert MpiExecLauncher()("python -m pool 'a b'", 8, 3) == (
        "mpiexec -n 3 --ppn 1 --bind-to none /bin/bash -c 'python -m pool '\"'\"'a b'\"'\"''"
    )
    launcher = MpiRunLauncher(hostfile="$PBS_NODEFILE", bind_to="", overrides="-x PATH")
    assert launcher("pool", 8, 2) == 'mpirun -np 2 -npernode 1 --hostfile "$PBS_NODEFILE" -x PATH /bin/bash -c pool'
    pals = MpiExecLauncher(bind_flag="--cpu-bind", bind_to="depth", hostfile="/a b/nodes")
    assert pals("pool", 1, 4) == "mpiexec -n 4 --ppn 1 --hostfile '/a b/nodes' --cpu-bind depth /bin/bash -c pool"


@pytest.mark.parametrize("launcher_class", [MpiExecLauncher, MpiRunLauncher])
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"executable": "mpiexec -v"}, "executable"),
        ({"executable": ""}, "executable"),
        ({"hostfile": "$1nodes"}, "hostfile"),
        ({"hostfile": "$A $B"}, "hostfile"),
        ({"hostfile": 3}, "hostfile"),
        ({"bind_to": "core; rm -rf x"}, "bind_to"),
        ({"bind_flag": "bind"}, "bind_flag"),
        ({"overrides": "-x 'A"}, "overrides"),
        ({"overrides": "-x A\n-x B"}, "overrides"),
        ({"overrides": ["-x", "A"]}, "overrides"),
    ],
)
def test_options_are_validated(launcher_class, kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        launcher_class(**kwargs)


@pytest.mark.parametrize("launcher_class", [MpiExecLauncher, MpiRunLauncher])
def test_call_arguments_are_validated(launcher_class):
    with pytest.raises(ConfigurationError, match="nodes_per_block"):
        launcher_class()("pool", 1, 0)
    with pytest.raises(ConfigurationError, match="command"):
        launcher_class()("  ", 1, 1)
