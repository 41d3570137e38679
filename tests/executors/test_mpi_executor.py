"""MPIExecutor (issue 13): whole nodes per task, disjoint for concurrent tasks, the launch
prefix in the task's environment, real MPI programs started through it.

The block's nodes come from ``HPCFUTURES_NODELIST``, the override every node-list source
yields to: fake names where only the bookkeeping is checked, ``localhost`` where real Open
MPI and MPICH start real ranks.  A real two-node Slurm job runs it in
tests/providers/test_slurm_nodes.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpcfutures import MPIExecutor, Resources, ResourceUnsatisfiableError, UnsupportedOptionError
from hpcfutures.errors import ConfigurationError, PoolStartError
from hpcfutures.launchers import SrunLauncher
from hpcfutures.providers import LocalProvider

TIMEOUT = 60
ROOT_OMPI = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def placement(hold: float = 0.0) -> dict[str, Any]:
    """What an MPI task was given, and when it ran."""
    start = time.monotonic()
    time.sleep(hold)
    return {
        "nodes": os.environ["HPCFUTURES_MPI_NODELIST"].split(","),
        "num_nodes": int(os.environ["HPCFUTURES_NUM_NODES"]),
        "ranks_per_node": int(os.environ["HPCFUTURES_RANKS_PER_NODE"]),
        "num_ranks": int(os.environ["HPCFUTURES_NUM_RANKS"]),
        "prefix": os.environ["HPCFUTURES_MPI_PREFIX"],
        "parsl_prefix": os.environ["PARSL_MPI_PREFIX"],
        "start": start,
        "end": time.monotonic(),
    }


def run_ranks(program: str) -> list[str]:
    """Start ``python -c program`` under the task's launch prefix; its output lines, sorted."""
    argv = [*shlex.split(os.environ["HPCFUTURES_MPI_PREFIX"]), sys.executable, "-c", program]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode:
        raise RuntimeError(f"{argv} exited {out.returncode}: {out.stderr[-2000:]}")
    return sorted(out.stdout.split())


def test_concurrent_tasks_get_disjoint_nodes(monkeypatch):
    monkeypatch.setenv("HPCFUTURES_NODELIST", "n1,n2,n3,n4")
    with MPIExecutor(provider=LocalProvider(nodes_per_block=4), mpi_launcher="mpich") as ex:
        two = ex.options(resources=Resources(num_nodes=2, ranks_per_node=3))
        runs = [f.result(TIMEOUT) for f in [two.submit(placement, 0.2) for _ in range(6)]]
        one = ex.submit(placement).result(TIMEOUT)
    for run in runs:
        assert len(run["nodes"]) == run["num_nodes"] == 2 and run["num_ranks"] == 6
        assert run["prefix"] == run["parsl_prefix"] == f"mpiexec -n 6 --ppn 3 --hosts {','.join(run['nodes'])}"
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["nodes"]) & set(b["nodes"]), f"concurrent tasks shared nodes: {a} {b}"
    assert one["num_nodes"] == one["num_ranks"] == 1, "Resources() is one node and one rank"


def test_num_ranks_alone_is_spread_over_the_nodes(monkeypatch):
    monkeypatch.setenv("HPCFUTURES_NODELIST", "n1,n2")
    with MPIExecutor(provider=LocalProvider(nodes_per_block=2), mpi_launcher="srun") as ex:
        got = ex.options(resources=Resources(num_nodes=2, num_ranks=8)).submit(placement).result(TIMEOUT)
    assert got["ranks_per_node"] == 4 and got["num_ranks"] == 8
    assert got["prefix"] == "srun --nodes=2 --ntasks=8 --ntasks-per-node=4 --nodelist=n1,n2"


@pytest.mark.parametrize(
    ("flavour", "executable", "rank_variable", "env"),
    [
        ("mpich", "mpiexec.mpich", "PMI_RANK", {}),
        ("openmpi", "mpirun.openmpi", "OMPI_COMM_WORLD_RANK", ROOT_OMPI),
    ],
    ids=["mpich", "openmpi"],
)
@pytest.mark.parametrize("ranks", [2, 4])
def test_a_command_task_starts_real_ranks_through_its_prefix(monkeypatch, flavour, executable, rank_variable, env, ranks):
    if shutil.which(executable) is None:
        pytest.skip(f"{executable} is not installed (.ci/setup-launchers.sh installs it)")
    monkeypatch.setenv("HPCFUTURES_NODELIST", "localhost")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # One write per line: ranks share the output pipe, and print() may split a line in two.
    program = f"import os; os.write(1, (os.environ[{rank_variable!r}] + '\\n').encode())"
    with MPIExecutor(
        provider=LocalProvider(), mpi_launcher=flavour, mpi_executable=executable, oversubscribe=flavour == "openmpi"
    ) as ex:
        view = ex.options(resources=Resources(num_nodes=1, ranks_per_node=ranks))
        assert view.submit(run_ranks, program).result(TIMEOUT) == sorted(str(r) for r in range(ranks))


def test_what_no_block_could_give_is_refused_when_the_view_is_made(monkeypatch):
    monkeypatch.setenv("HPCFUTURES_NODELIST", "n1,n2")
    provider = LocalProvider(nodes_per_block=2)
    provider.cores_per_node = 4
    ex = MPIExecutor(provider=provider, mpi_launcher="mpich")
    with pytest.raises(ResourceUnsatisfiableError, match=r"num_nodes=3\) can never run: .*nodes_per_block=2"):
        ex.options(resources=Resources(num_nodes=3))
    with pytest.raises(ResourceUnsatisfiableError, match="ranks_per_node=8.*cores_per_node=4"):
        ex.options(resources=Resources(ranks_per_node=8))
    with pytest.raises(UnsupportedOptionError, match="whole nodes"):
        ex.options(resources=Resources(gpus=1))
    ex.shutdown()


def test_bad_settings_fail_in_the_constructor():
    with pytest.raises(ConfigurationError, match="mpi_launcher must be"):
        MPIExecutor(mpi_launcher="mvapich9")
    with pytest.raises(ConfigurationError, match="one lead pool per block"):
        MPIExecutor(provider=LocalProvider(launcher=SrunLauncher()))
    with pytest.raises(ConfigurationError, match="cores_per_worker does not apply"):
        MPIExecutor(cores_per_worker=2)


def test_a_lead_pool_that_finds_no_node_list_refuses_with_the_reason(monkeypatch):
    for name in ("HPCFUTURES_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "PBS_NODEFILE", "LSB_MCPU_HOSTS",
                 "LSB_HOSTS", "PE_HOSTFILE", "COBALT_NODEFILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with MPIExecutor(mpi_launcher="mpich", start_timeout=20) as ex:
        with pytest.raises(PoolStartError, match="HPCFUTURES_NODELIST"):
            ex.submit(placement).result(TIMEOUT)


# -- functions on every rank (mpi4py) --------------------------------------------------------------


def rank_and_size(offset: int = 0) -> tuple[int, int]:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.Get_rank() + offset)  # a collective: every rank takes part
    return comm.Get_rank(), total


def fails_on_rank_one() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 1:
        raise ValueError("rank one cannot")
    comm.Barrier()  # the others wait here: only the abort frees them
    return comm.Get_rank()


def mpich_abi(tmp_path: Path) -> dict[str, str]:
    """Make mpi4py's wheel load MPICH (Debian names MPICH's library libmpich.so.12)."""
    library = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    if not library.exists():
        pytest.skip("MPICH's libmpich.so.12 is not installed (.ci/setup-launchers.sh installs it)")
    (tmp_path / "libmpi.so.12").symlink_to(library)
    return {"MPI4PY_MPIABI": "mpich", "LD_LIBRARY_PATH": str(tmp_path)}


@pytest.mark.parametrize("flavour", ["openmpi", "mpich"])
def test_a_function_runs_on_every_rank_and_the_future_gets_rank_0s_value(monkeypatch, tmp_path, flavour):
    pytest.importorskip("mpi4py", reason="mpi4py is a test dependency: pip install -e '.[test]'")
    env = ROOT_OMPI if flavour == "openmpi" else mpich_abi(tmp_path)
    executable = "mpirun.openmpi" if flavour == "openmpi" else "mpiexec.mpich"
    monkeypatch.setenv("HPCFUTURES_NODELIST", "localhost")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    common = {"mpi_launcher": flavour, "mpi_executable": executable, "oversubscribe": flavour == "openmpi"}
    # No more ranks than CPUs: busy-polling ranks that outnumber the cores can crawl for
    # minutes in a collective call on a loaded two-CPU machine.
    spec = Resources(ranks_per_node=2)
    with MPIExecutor(provider=LocalProvider(), function_ranks="all", **common) as ex:
        assert ex.options(resources=spec).submit(rank_and_size, 10).result(TIMEOUT) == (0, 21)
        failing = ex.options(resources=spec).submit(fails_on_rank_one)
        error = failing.exception(TIMEOUT)
    assert isinstance(error, ValueError) and "rank one cannot" in str(error)
    assert any("raised on MPI rank 1 of 2; the job was aborted" in note for note in getattr(error, "__notes__", []))
    with MPIExecutor(provider=LocalProvider(), function_ranks="gather", **common) as ex:
        assert ex.options(resources=spec).submit(rank_and_size).result(TIMEOUT) == [(0, 1), (1, 1)]


def test_without_mpi4py_the_task_fails_saying_how_to_install_it(monkeypatch, tmp_path):
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no MPI here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("HPCFUTURES_NODELIST", "localhost")
    with MPIExecutor(provider=LocalProvider(), mpi_launcher="mpich", function_ranks="all") as ex:
        error = ex.submit(rank_and_size).exception(TIMEOUT)
    assert isinstance(error, ImportError) and "pip install 'hpcfutures[mpi]'" in str(error)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="packing needs nodes of at least two cores")
def test_small_tasks_pack_within_a_node_and_never_overfill_it(monkeypatch):
    cores = len(os.sched_getaffinity(0))  # the lead pool takes its own node's cores for every node
    monkeypatch.setenv("HPCFUTURES_NODELIST", "n1,n2")
    with MPIExecutor(provider=LocalProvider(nodes_per_block=2), max_workers_per_block=6, mpi_launcher="mpich") as ex:
        small = ex.options(resources=Resources(num_nodes=1, ranks_per_node=1))
        whole = ex.options(resources=Resources(num_nodes=1, ranks_per_node=cores))
        futures = [small.submit(placement, 0.3) for _ in range(4)] + [whole.submit(placement, 0.3)]
        runs = [f.result(TIMEOUT) for f in futures]
    small_runs, whole_run = runs[:4], runs[4]
    for a in runs:
        at_once = [b for b in runs if b["start"] <= a["start"] < b["end"] and b["nodes"] == a["nodes"]]
        assert sum(b["ranks_per_node"] for b in at_once) <= cores, f"node {a['nodes']} overfilled"
    assert any(
        a is not b and a["nodes"] == b["nodes"] and a["start"] < b["end"] and b["start"] < a["end"]
        for a in small_runs
        for b in small_runs
    ), "no two one-rank tasks shared a node"
    for a in small_runs:
        assert not (a["nodes"] == whole_run["nodes"] and a["start"] < whole_run["end"] and whole_run["start"] < a["end"])
