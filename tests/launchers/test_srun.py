"""Tests of hpcfutures.launchers.slurm: the fragments run inside real Slurm jobs.

The cluster (tests/infra/slurm.sh) has one node, so SrunLauncher's one-copy-per-node is
seen with one node; the flags for more nodes are checked as rendered.  The SrunMPILauncher
test runs a real MPICH program (compiled here with ``mpicc.mpich``) with ``srun --mpi=pmi2``
from inside the pool, as a task would.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.slurm import SrunLauncher, SrunMPILauncher
from hpcfutures.providers.base import JobState, JobStatus
from hpcfutures.providers.slurm import SlurmProvider
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

from ..services import need_commands
from ._run import MPI_SUM_PROGRAM, PAYLOAD, marker_command, markers


def test_srun_fragment_starts_one_copy_per_node() -> None:
    fragment = SrunLauncher(overrides="--cpu-bind=none")("echo 'hi there'", 4, 3)
    assert fragment == (
        "srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpu-bind=none "
        "/bin/bash -c 'echo '\"'\"'hi there'\"'\"''"
    )


def test_srun_mpi_fragment_sets_step_environment() -> None:
    fragment = SrunMPILauncher(mpi="pmi2")("pool", 2, 4)
    assert fragment.startswith("/usr/bin/env -u SLURM_CPUS_PER_TASK -u SLURM_NTASKS_PER_NODE")
    assert "SLURM_EXACT=1 SLURM_MPI_TYPE=pmi2 /bin/bash -c pool" in fragment
    assert "SLURM_MPI_TYPE" not in SrunMPILauncher()("pool", 2, 4)


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: SrunLauncher(overrides="--a\n--b"), "overrides"),
        (lambda: SrunLauncher(overrides="'unbalanced"), "overrides"),
        (lambda: SrunLauncher(executable="srun --x"), "executable"),
        (lambda: SrunMPILauncher(mpi="pmi 2"), "mpi"),
        (lambda: SrunLauncher()("", 1, 1), "command"),
        (lambda: SrunLauncher()("pool", 1, 0), "nodes_per_block"),
        (lambda: SrunMPILauncher()("pool", 0, 1), "max_workers"),
    ],
)
def test_bad_arguments_raise_configuration_error(make, word: str) -> None:
    with pytest.raises(ConfigurationError, match=word):
        make()


def run_block(provider: SlurmProvider, command: str, timeout: float = 90.0) -> JobStatus:
    """Submit *command* as a block and return its final status; fail after *timeout* s."""
    job = provider.submit(command, 1, "srun-test")
    deadline = time.monotonic() + timeout
    try:
        while True:
            (status,) = provider.status([job])
            if status.state.terminal:
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"block {job} did not end within {timeout:g} s: {status}")
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30, check=False)


def slurm_provider(directory: Path, *, launcher: object, cores: Sequence[int] = ()) -> SlurmProvider:
    provider = SlurmProvider(
        launcher=launcher,  # type: ignore[arg-type]
        walltime="00:03:00",
        cores_per_node=cores[0] if cores else None,
    )
    provider.script_dir = str(directory)
    return provider


@pytest.mark.xdist_group("slurm")
def test_srun_runs_the_pool_as_a_job_step(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "copies"
    out.mkdir()
    command = 'echo "step=$SLURM_STEP_ID tasks=$SLURM_NTASKS node=$SLURM_NODEID"; ' + marker_command(
        out, "SLURM_PROCID"
    )
    status = run_block(slurm_provider(tmp_path, launcher=SrunLauncher()), command)
    assert status.state is JobState.COMPLETED, status
    assert markers(out) == [("0", PAYLOAD)]  # one copy, rank 0, the command's quoting intact
    assert "step=0 tasks=1 node=0" in status.stdout_tail


@pytest.mark.xdist_group("slurm")
def test_srun_failing_pool_fails_the_block(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    command = marker_command(tmp_path, "SLURM_PROCID", exit_code=5)
    status = run_block(slurm_provider(tmp_path, launcher=SrunLauncher()), command)
    assert status.state is JobState.FAILED, status
    assert status.exit_code == 5
    assert "Exited with exit code 5" in status.stderr_tail  # srun's own report of the copy


@pytest.mark.xdist_group("slurm")
def test_srun_mpi_pool_runs_concurrent_mpi_steps(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    need_commands("the SrunMPILauncher test", "mpicc.mpich")
    if slurm_cluster.cpus < 2:
        pytest.skip("needs a node with 2 CPUs for a 2-rank MPI run")
    subprocess.run(
        ["mpicc.mpich", "-o", str(tmp_path / "hello"), "-x", "c", "-"],
        input=MPI_SUM_PROGRAM,
        text=True,
        check=True,
        timeout=120,
    )
    # What the pool's tasks would do: one 2-rank MPI run, then two 1-rank steps that must run
    # at the same time (each waits for the other's file; without SLURM_EXACT the first step
    # takes both CPUs, the second waits for it, and `timeout` ends them both).
    d = tmp_path
    command = (
        f'echo "cpus_per_task=${{SLURM_CPUS_PER_TASK-unset}}"; timeout 60 srun -n 2 {d}/hello; '
        f'(timeout 30 srun -n 1 bash -c "touch {d}/a; until [ -e {d}/b ]; do sleep 0.1; done; echo A saw B") & '
        f'(timeout 30 srun -n 1 bash -c "touch {d}/b; until [ -e {d}/a ]; do sleep 0.1; done; echo B saw A") & '
        "wait"
    )
    # cores_per_node sets --cpus-per-task=2 on the block: the launcher must keep it from the steps.
    provider = slurm_provider(tmp_path, launcher=SrunMPILauncher(mpi="pmi2"), cores=[slurm_cluster.cpus])
    status = run_block(provider, command)
    assert status.state is JobState.COMPLETED, status
    lines = status.stdout_tail.splitlines()
    assert "cpus_per_task=unset" in lines
    assert sorted(line for line in lines if line.startswith("rank")) == [
        "rank 0 of 2 sum 1",
        "rank 1 of 2 sum 1",
    ]
    assert "A saw B" in lines and "B saw A" in lines
