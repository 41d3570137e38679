"""Tests of hpcfutures.launchers.mpi_prefix: the prefixes start real MPI runs where they can.

- Open MPI (``mpirun.openmpi``) and MPICH's Hydra (``mpiexec.mpich``), both from Debian, run
  real 2- and 4-rank jobs through the built prefixes: on this node, and on two loopback
  "nodes" (``localhost`` and ``127.0.0.2``).  The launchers reach the second one through a
  remote shell that runs the command here, as sshd would, and exports ``HPCF_TEST_NODE``
  (the host it was asked for), so each rank can say on which "node" it was started.  A real
  MPI program checks that the ranks form one communicator.
- ``srun`` runs real job steps on the test Slurm cluster (tests/infra/slurm.sh).
- No Cray ALPS or IBM Job Step Manager can be installed here, so the ``aprun`` and ``jsrun``
  prefixes run under the stand-ins in ``fake_bin`` (see test_aprun_jsrun.py): they check
  the placement against an allocation of ``FAKE_NODES`` nodes and tell each rank its node.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.mpi_prefix import FLAVOURS, MPISpec, detect_flavour, mpi_environment, mpi_prefix
from hpcfutures.launchers.nodes import expand_hostlist
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

from ..services import need_commands
from ._run import MPI_SUM_PROGRAM, run_fragment

FAKE_BIN = Path(__file__).parent / "fake_bin"

#: Prints the rank (from the variable named by argv[1]) and the "node" the rank started on,
#: in one write, so that the ranks' lines cannot interleave even if Python runs unbuffered.
_REPORT = (
    "import os, sys\n"
    "line = 'rank %s node %s\\n' % (os.environ.get(sys.argv[1], 'none'), os.environ.get('HPCF_TEST_NODE', 'local'))\n"
    "os.write(1, line.encode())\n"
)

# Like _run.remote_shell, and also tells the command which host it was sent to.
_NODE_SHELL = """#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -o|-l|-p|-i|-F) shift 2;; -*) shift;; *) break;; esac; done
echo "$1" >> "$0.hosts"
export HPCF_TEST_NODE="$1"
shift
[ "${1-}" = -- ] && shift
export SHELL=/bin/bash
exec /bin/bash -c "$*"
"""


class Mpi(NamedTuple):
    flavour: str
    executable: str
    rank_var: str
    compiler: str


MPIS = {
    "hydra": Mpi("hydra", "mpiexec.mpich", "PMI_RANK", "mpicc.mpich"),
    "openmpi": Mpi("openmpi", "mpirun.openmpi", "OMPI_COMM_WORLD_RANK", "mpicc.openmpi"),
}


def report(rank_var: str) -> list[str]:
    """The command each rank runs: print its rank and node."""
    return [sys.executable, "-c", _REPORT, rank_var]


def ranks(stdout: str) -> list[tuple[int, str]]:
    """Return ``(rank, node)`` for each line the report command printed, sorted by rank."""
    found = []
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "rank" and words[2] == "node":
            found.append((int(words[1]), words[3]))
    return sorted(found)


def run(argv: list[str], env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_fragment(shlex.join(argv), env=env, timeout=timeout)


def compile_mpi_sum(compiler: str, directory: Path) -> Path:
    program = directory / "mpi_sum"
    subprocess.run(
        [compiler, "-o", str(program), "-x", "c", "-"], input=MPI_SUM_PROGRAM, text=True, check=True, timeout=120
    )
    return program


def clean_env() -> dict[str, str]:
    """This environment without any batch system's or MPI launcher's variables."""
    prefixes = ("SLURM_", "PBS_", "OMPI_", "HYDRA_", "PMI_", "PMIX_", "HPCFUTURES_", "PARSL_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@pytest.fixture(params=sorted(MPIS))
def mpi(request) -> Mpi:
    found = MPIS[request.param]
    need_commands(f"the {found.flavour} prefix tests", found.executable)
    return found


@pytest.fixture
def node_shell(tmp_path) -> Path:
    path = tmp_path / "node-shell"
    path.write_text(_NODE_SHELL)
    path.chmod(0o755)
    return path


@pytest.fixture
def mpi_env(node_shell) -> dict[str, str]:
    """The environment for running MPI here, with a second loopback "node" reachable."""
    env = clean_env()
    env.update(
        HYDRA_LAUNCHER="ssh", HYDRA_LAUNCHER_EXEC=str(node_shell), OMPI_MCA_plm_rsh_agent=str(node_shell)
    )
    if os.geteuid() == 0:  # Open MPI refuses to run as root without both (ompi #5598)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def reached(node_shell: Path) -> list[str]:
    log = node_shell.with_name(node_shell.name + ".hosts")
    return sorted(log.read_text().split()) if log.exists() else []


# --- real Open MPI and MPICH runs ------------------------------------------------------------


@pytest.mark.parametrize("ranks_per_node", [2, 4])
def test_every_rank_runs_once_on_this_node(mpi: Mpi, mpi_env, node_shell, ranks_per_node):
    spec = MPISpec((socket.gethostname(),), ranks_per_node)
    # 4 ranks on this 2-core machine: Open MPI's --host h:4 already gives the node 4 slots;
    # --oversubscribe is what a user adds when the ranks outnumber the cores, so run with it.
    oversubscribe = mpi.flavour == "openmpi" and ranks_per_node > 2
    prefix = mpi_prefix(mpi.flavour, spec, executable=mpi.executable, oversubscribe=oversubscribe)
    proc = run(prefix + report(mpi.rank_var), mpi_env)
    assert proc.returncode == 0, proc.stderr
    assert ranks(proc.stdout) == [(r, "local") for r in range(ranks_per_node)]
    assert reached(node_shell) == []  # this node's name was recognised as this node


def test_ranks_per_node_land_on_the_named_nodes(mpi: Mpi, mpi_env, node_shell):
    spec = MPISpec(("localhost", "127.0.0.2"), 2)
    proc = run(mpi_prefix(mpi.flavour, spec, executable=mpi.executable) + report(mpi.rank_var), mpi_env)
    assert proc.returncode == 0, proc.stderr
    # Two ranks on each node, in node order: without --ppn / ppr:2:node the launcher would
    # fill localhost's slots first or round-robin the ranks.
    assert ranks(proc.stdout) == [(0, "local"), (1, "local"), (2, "127.0.0.2"), (3, "127.0.0.2")]
    assert reached(node_shell) == ["127.0.0.2"]


#: Open MPI's shared-memory transport assumes ranks on different nodes are on different
#: machines; the two loopback "nodes" are one machine, so they talk over TCP on loopback.
LOOPBACK_NODES_OMPI = {"OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": "lo"}


@pytest.mark.parametrize("two_nodes", [False, True], ids=["one-node", "two-nodes"])
def test_a_real_mpi_program_gets_one_world_of_four_ranks(mpi: Mpi, mpi_env, tmp_path, two_nodes):
    need_commands(f"the {mpi.flavour} MPI program test", mpi.compiler)
    program = compile_mpi_sum(mpi.compiler, tmp_path)
    if two_nodes:
        spec, env = MPISpec(("localhost", "127.0.0.2"), 2), {**mpi_env, **LOOPBACK_NODES_OMPI}
    else:
        spec, env = MPISpec((socket.gethostname(),), 4), mpi_env
    oversubscribe = mpi.flavour == "openmpi" and spec.ranks_per_node > 2
    prefix = mpi_prefix(mpi.flavour, spec, executable=mpi.executable, oversubscribe=oversubscribe)
    proc = run(prefix + [str(program)], env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == [f"rank {r} of 4 sum 6" for r in range(4)]


@pytest.mark.parametrize("variable", ["HPCFUTURES_MPI_PREFIX", "PARSL_MPI_PREFIX"])
def test_the_prefix_variable_starts_the_run_from_a_shell_line(mpi: Mpi, mpi_env, variable):
    # What a command task writes: $PARSL_MPI_PREFIX ./app, the variable split into words.
    spec = MPISpec(("localhost", "127.0.0.2"), 1)
    env = {**mpi_env, **mpi_environment(mpi.flavour, spec, executable=mpi.executable)}
    line = f"${variable} {shlex.join(report(mpi.rank_var))}"
    proc = run_fragment(f"/bin/bash -c {shlex.quote(line)}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert ranks(proc.stdout) == [(0, "local"), (1, "127.0.0.2")]


# --- real srun under the test Slurm cluster --------------------------------------------------


def slurm_node() -> str:
    """The test cluster's node, as Slurm names it."""
    out = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, timeout=30, check=True)
    return expand_hostlist(out.stdout.strip())[0]


@pytest.mark.xdist_group("slurm")
def test_srun_prefix_runs_a_job_step_on_the_named_node(slurm_cluster: SlurmCluster):  # noqa: F811
    need_commands("the srun prefix test (srun starts the ranks as a Slurm job step)", "srun")
    node = slurm_node()
    per_node = min(2, slurm_cluster.cpus)
    line = "echo rank $SLURM_PROCID node $SLURMD_NODENAME of $SLURM_NTASKS"
    prefix = mpi_prefix("srun", MPISpec((node,), per_node))
    proc = run(prefix + ["/bin/sh", "-c", line], clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == [
        f"rank {r} node {node} of {per_node}" for r in range(per_node)
    ]


@pytest.mark.xdist_group("slurm")
def test_srun_prefix_starts_a_real_mpi_program(slurm_cluster: SlurmCluster, tmp_path):  # noqa: F811
    need_commands("the srun MPI program test", "srun", "mpicc.mpich")
    if slurm_cluster.cpus < 2:
        pytest.skip("needs a Slurm node with 2 CPUs for a 2-rank MPI run")
    program = compile_mpi_sum("mpicc.mpich", tmp_path)
    prefix = mpi_prefix("srun", MPISpec((slurm_node(),), 2), options=["--mpi=pmi2"])
    proc = run(prefix + [str(program)], clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["rank 0 of 2 sum 1", "rank 1 of 2 sum 1"]


@pytest.mark.xdist_group("slurm")
def test_srun_prefix_refuses_a_node_the_cluster_lacks(slurm_cluster: SlurmCluster):  # noqa: F811
    need_commands("the srun prefix test", "srun")
    prefix = mpi_prefix("srun", MPISpec(("hpcf-no-such-node",), 1))
    proc = run(prefix + ["/bin/true"], clean_env(), timeout=120)
    assert proc.returncode != 0
    assert "node" in proc.stderr.lower(), proc.stderr


# --- aprun and jsrun, under the fake launchers -----------------------------------------------


def fake_env(nodes: int) -> dict[str, str]:
    return {**clean_env(), "PATH": f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}", "FAKE_NODES": str(nodes)}


_FAKE_REPORT = (
    "import os; os.write(1, ('rank %s node %s\\n' % (os.environ['{var}'], os.environ['FAKE_NODE'])).encode())"
)


@pytest.mark.parametrize("flavour, rank_var", [("aprun", "ALPS_APP_PE"), ("jsrun", "JSM_NAMESPACE_RANK")])
def test_fake_aprun_and_jsrun_place_ranks_per_node(flavour, rank_var):
    spec = MPISpec(("nid00012", "nid00013"), 2)
    command = [sys.executable, "-c", _FAKE_REPORT.format(var=rank_var)]
    proc = run(mpi_prefix(flavour, spec) + command, fake_env(2))
    assert proc.returncode == 0, proc.stderr
    assert ranks(proc.stdout) == [(0, "0"), (1, "0"), (2, "1"), (3, "1")], proc.stdout + proc.stderr


@pytest.mark.parametrize("flavour", ["aprun", "jsrun"])
def test_fake_aprun_and_jsrun_refuse_more_nodes_than_the_allocation(flavour):
    # Three nodes' worth of ranks do not fit a 2-node allocation: the prefix asks for whole
    # nodes (aprun -N, jsrun -r 1), not for ranks packed wherever they fit.
    spec = MPISpec(("nid00012", "nid00013", "nid00014"), 2)
    proc = run(mpi_prefix(flavour, spec) + ["/bin/true"], fake_env(2))
    assert proc.returncode != 0
    assert "node" in proc.stderr, proc.stderr


# --- the prefixes as rendered ----------------------------------------------------------------


def test_rendered_prefixes():
    spec = MPISpec(("n1", "n2"), 3)
    assert mpi_prefix("hydra", spec) == ["mpiexec", "-n", "6", "--ppn", "3", "--hosts", "n1,n2"]
    assert mpi_prefix("mpich", spec) == mpi_prefix("hydra", spec) == mpi_prefix("pals", spec)
    assert mpi_prefix("openmpi", spec) == [
        "mpirun", "-n", "6", "--host", "n1:3,n2:3", "--map-by", "ppr:3:node",
    ]  # fmt: skip
    assert mpi_prefix("openmpi", spec, oversubscribe=True)[-1] == "--oversubscribe"
    assert mpi_prefix("srun", spec) == [
        "srun", "--nodes=2", "--ntasks=6", "--ntasks-per-node=3", "--nodelist=n1,n2",
    ]  # fmt: skip
    assert mpi_prefix("jsrun", spec) == [
        "jsrun", "-n", "2", "-r", "1", "-a", "3", "-c", "ALL_CPUS", "-g", "ALL_GPUS",
    ]  # fmt: skip
    nids = MPISpec(("nid00032", "nid00040.cluster", "7", "0010"), 1)
    # aprun reads a leading 0 as octal: nid00032 must become 32, and "0010" node 10.
    assert mpi_prefix("aprun", nids) == ["aprun", "-n", "4", "-N", "1", "-L", "32,40,7,10"]


def test_executable_and_options_are_placed_around_the_flags():
    spec = MPISpec(("n1",), 1)
    assert mpi_prefix("pals", spec, executable="/opt/cray/pals/bin/mpiexec", options=["--cpu-bind", "depth"]) == [
        "/opt/cray/pals/bin/mpiexec", "-n", "1", "--ppn", "1", "--hosts", "n1", "--cpu-bind", "depth",
    ]  # fmt: skip
    assert mpi_prefix("openmpi", spec, oversubscribe=True, options=("-x", "PATH"))[-3:] == [
        "--oversubscribe", "-x", "PATH",
    ]  # fmt: skip


def test_mpi_environment_has_hpcfutures_and_parsl_names():
    spec = MPISpec(("n1", "n2"), 2)
    env = mpi_environment("hydra", spec, options=["--env", "A", "a b"])
    expected = {
        "MPI_PREFIX": "mpiexec -n 4 --ppn 2 --hosts n1,n2 --env A 'a b'",
        "MPI_NODELIST": "n1,n2",
        "NUM_NODES": "2",
        "RANKS_PER_NODE": "2",
        "NUM_RANKS": "4",
    }
    assert env == {f"{ns}_{key}": value for ns in ("HPCFUTURES", "PARSL") for key, value in expected.items()}
    assert shlex.split(env["PARSL_MPI_PREFIX"]) == mpi_prefix("hydra", spec, options=["--env", "A", "a b"])


def test_unknown_flavour_lists_the_known_ones():
    with pytest.raises(ConfigurationError) as info:
        mpi_prefix("mvapich", MPISpec(("n1",), 1))
    assert all(name in str(info.value) for name in FLAVOURS)
    assert set(FLAVOURS) == {"aprun", "hydra", "jsrun", "mpich", "openmpi", "pals", "srun"}


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: mpi_prefix("hydra", MPISpec(("n1",), 1), oversubscribe=True), "oversubscribe"),
        (lambda: mpi_prefix("openmpi", MPISpec(("n1",), 1), oversubscribe=1), "oversubscribe"),
        (lambda: mpi_prefix("hydra", MPISpec(("n1",), 1), executable="mpiexec -v"), "executable"),
        (lambda: mpi_prefix("hydra", MPISpec(("n1",), 1), executable=""), "executable"),
        (lambda: mpi_prefix("hydra", MPISpec(("n1",), 1), options="--cpu-bind depth"), "options"),
        (lambda: mpi_prefix("hydra", MPISpec(("n1",), 1), options=[3]), "options"),
        (lambda: mpi_prefix("hydra", ("n1",)), "spec"),
        (lambda: mpi_prefix(None, MPISpec(("n1",), 1)), "flavour"),
        (lambda: mpi_prefix("aprun", MPISpec(("login1",), 1)), "login1"),
    ],
)
def test_bad_arguments_raise_configuration_error(call, word):
    with pytest.raises(ConfigurationError, match=word):
        call()


# --- MPISpec -----------------------------------------------------------------------------------


def test_spec_counts_and_stores_nodes_as_a_tuple():
    spec = MPISpec(["a", "b", "c"], 4)
    assert spec.nodes == ("a", "b", "c")
    assert (spec.num_nodes, spec.ranks_per_node, spec.num_ranks) == (3, 4, 12)
    assert spec == MPISpec(("a", "b", "c"), 4) and hash(spec) == hash(MPISpec(("a", "b", "c"), 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.ranks_per_node = 2


@pytest.mark.parametrize(
    "nodes, ranks_per_node, word",
    [
        ((), 1, "MPISpec.nodes"),
        ("n1,n2", 1, "MPISpec.nodes"),
        (None, 1, "MPISpec.nodes"),
        (("n1", ""), 1, "MPISpec.nodes"),
        (("n1 n2",), 1, "MPISpec.nodes"),
        (("n1,n2",), 1, "MPISpec.nodes"),
        (("n1:4",), 1, "MPISpec.nodes"),
        (("n[1-2]",), 1, "MPISpec.nodes"),
        (("-n1",), 1, "MPISpec.nodes"),
        ((3,), 1, "MPISpec.nodes"),
        (("n1", "n2", "n1"), 1, "n1 twice"),
        (("n1",), 0, "MPISpec.ranks_per_node"),
        (("n1",), 1.0, "MPISpec.ranks_per_node"),
        (("n1",), True, "MPISpec.ranks_per_node"),
        (("n1",), "2", "MPISpec.ranks_per_node"),
    ],
)
def test_spec_is_validated(nodes, ranks_per_node, word):
    with pytest.raises(ConfigurationError, match=word):
        MPISpec(nodes, ranks_per_node)


# --- detect_flavour ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "executable, flavour",
    [
        ("mpiexec.openmpi", "openmpi"),
        ("mpirun.openmpi", "openmpi"),
        ("mpiexec.mpich", "hydra"),
        ("mpirun.mpich", "hydra"),
    ],
)
def test_detect_flavour_of_the_installed_launchers(executable, flavour):
    need_commands("detecting the MPI flavour", executable)
    assert detect_flavour(executable) == flavour


def fake_launcher(path: Path, script: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_detect_flavour_recognises_pals_by_its_path(tmp_path):
    mpiexec = fake_launcher(tmp_path / "opt/cray/pals/1.7/bin/mpiexec", "echo 'mpiexec version 1.7.1'")
    assert detect_flavour(mpiexec) == "pals"


def test_detect_flavour_refuses_what_it_does_not_recognise(tmp_path):
    mpiexec = fake_launcher(tmp_path / "mpiexec", "echo 'Some MPI 9.9'")
    with pytest.raises(ConfigurationError, match="Some MPI 9.9"):
        detect_flavour(mpiexec)
    with pytest.raises(ConfigurationError, match="not on PATH"):
        detect_flavour("hpcf-no-such-mpiexec")


def test_detect_flavour_gives_up_on_a_launcher_that_does_not_answer(tmp_path):
    mpiexec = fake_launcher(tmp_path / "mpiexec", "exec sleep 60")
    with pytest.raises(ConfigurationError, match="failed"):
        detect_flavour(mpiexec, timeout=0.5)
