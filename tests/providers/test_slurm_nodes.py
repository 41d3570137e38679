"""Slurm with two real nodes on one machine: node lists, ``srun --nodelist``, node counts.

``.ci/setup-slurm.sh nodes-start`` runs a second Slurm cluster, "hpcfnodes", beside the
single-node one of tests/infra/slurm.sh: partition "multi" with nodes n1 and n2, each served
by its own slurmd (``slurmd -N n1``, ``slurmd -N n2``; Debian's slurmd is built with
``--enable-multiple-slurmd``), with a munged of its own.  Commands reach it with
``SLURM_CONF=/etc/slurm-nodes/slurm.conf`` and cannot disturb the single-node cluster the
other Slurm tests share.  Both nodes are this
machine: what is real here is Slurm's side (allocations over two slurmds, node lists, step
routing, node counts), not separate hosts, file systems or CPUs.

Jobs wait for each other with files and the tests poll ``squeue`` with deadlines; every job
of a test carries a name of its own and is cancelled when the test ends.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpcfutures.launchers.slurm import SrunLauncher
from hpcfutures.providers.base import JobState
from hpcfutures.providers.channels import LocalChannel
from hpcfutures.providers.slurm import SlurmProvider
from tests.launchers._run import PAYLOAD, marker_command, markers
from tests.providers.slurm_cluster import SlurmCluster, _other_users, slurm_cluster  # noqa: F401 - the fixture

from ..services import missing

pytestmark = pytest.mark.xdist_group("slurm")

SETUP = Path(__file__).resolve().parents[2] / ".ci" / "setup-slurm.sh"
NODES_CONF = "/etc/slurm-nodes/slurm.conf"
PARTITION = "multi"
NODES = ("n1", "n2")
#: squeue's long states after which a job never runs again.
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
}
DEADLINE = 60.0

_names = itertools.count()


def _setup(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), command], capture_output=True, text=True, timeout=300, check=False
    )


@dataclass(frozen=True)
class Job:
    """One line of ``squeue``."""

    id: str
    state: str
    nodes: str
    reason: str


@dataclass
class MultiNode:
    """The two-node cluster, as one test uses it: every job it submits is named ``name``."""

    name: str
    env: dict[str, str] = field(default_factory=lambda: {**os.environ, "SLURM_CONF": NODES_CONF})

    def run(
        self, *argv: str, timeout: float = DEADLINE, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against the two-node cluster."""
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}", pytrace=False
            )
        return proc

    def srun(self, *options: str) -> list[str]:
        """Run ``srun`` in partition multi (its own allocation, or a step inside a job); its lines."""
        out = self.run("srun", f"--partition={PARTITION}", f"--job-name={self.name}", "--time=1", *options)
        return out.stdout.splitlines()

    def sbatch(self, output: Path, script: str, *options: str) -> str:
        """Submit *script* (``--wrap``) to partition multi; return the job id."""
        out = self.run(
            "sbatch",
            "--parsable",
            f"--partition={PARTITION}",
            f"--job-name={self.name}",
            "--time=2",
            f"--output={output}",
            *options,
            f"--wrap={script}",
        )
        return out.stdout.strip().split(";")[0]

    def jobs(self) -> dict[str, Job]:
        """This test's jobs, finished ones included (the cluster keeps them MinJobAge=300 s)."""
        out = self.run("squeue", "--noheader", "--states=all", f"--name={self.name}", "--format=%i|%T|%N|%r")
        found = (Job(*line.split("|")) for line in out.stdout.splitlines() if line.count("|") == 3)
        return {job.id: job for job in found}

    def wait(
        self, what: str, done: Callable[[dict[str, Job]], bool], timeout: float = DEADLINE
    ) -> dict[str, Job]:
        """Poll squeue until ``done(jobs)``; fail the test after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if done(jobs):
                return jobs
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not after {timeout:g} s; squeue: {list(jobs.values())}", pytrace=False)
            time.sleep(0.1)

    def finished(self, *ids: str) -> dict[str, Job]:
        """Wait until every job in *ids* has finished; return the jobs."""
        return self.wait(
            f"jobs {ids} finished", lambda jobs: all(i in jobs and jobs[i].state in FINISHED for i in ids)
        )

    def cancel_all(self) -> None:
        """Cancel this test's jobs and wait until none is left running or pending."""
        self.run("scancel", f"--name={self.name}", check=False)
        self.wait("cancelled jobs gone", lambda jobs: all(job.state in FINISHED for job in jobs.values()))


@pytest.fixture(scope="module")
def nodes_cluster(slurm_cluster: SlurmCluster) -> Iterator[None]:  # noqa: F811 - the imported fixture
    """Start the two-node cluster (or check it) and stop it afterwards if this session started it.

    ``slurm_cluster`` checks root and Slurm's commands and registers this session among the
    Slurm users, so that no other session stops the cluster under these tests.
    """
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, timeout=60, check=False
    )
    if not re.search(r"^MULTIPLE_SLURMD\s*=\s*Yes", config.stdout, re.MULTILINE):
        missing(
            "this Slurm was built without --enable-multiple-slurmd: one machine cannot run slurmd for n1 and n2"
        )
    was_up = _setup("nodes-status").returncode != 3  # 3: a daemon is not running
    started = _setup("nodes-start")  # idempotent: on a running cluster it waits for n1 and n2
    if started.returncode != 0:
        pytest.fail(
            f".ci/setup-slurm.sh nodes-start exited {started.returncode}:\n{started.stderr[-3000:]}",
            pytrace=False,
        )
    try:
        yield
    finally:
        if not was_up and not _other_users():
            _setup("nodes-stop")


@pytest.fixture
def multi(nodes_cluster: None) -> Iterator[MultiNode]:
    cluster = MultiNode(name=f"hpcf-nodes-{os.getpid()}-{next(_names)}")
    try:
        yield cluster
    finally:
        cluster.cancel_all()


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_partition_has_two_nodes_that_take_jobs(multi: MultiNode) -> None:
    out = multi.run("sinfo", "--noheader", f"--partition={PARTITION}", "--Node", "--format=%N %t %c")
    assert sorted(line.split()[0] for line in out.stdout.splitlines()) == list(NODES)
    assert {line.split()[1] for line in out.stdout.splitlines()} <= {"idle", "mix", "alloc", "comp"}
    assert multi.run("sinfo", "--noheader", f"--partition={PARTITION}", "--format=%D").stdout.split() == ["2"]


def test_two_node_job_sees_both_nodes_in_its_node_list(multi: MultiNode, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    job = multi.sbatch(
        out,
        'echo "list=$SLURM_JOB_NODELIST nodes=$SLURM_JOB_NUM_NODES nnodes=$SLURM_NNODES batch=$SLURMD_NODENAME"; '
        'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/^/host=/"; '
        "srun --ntasks-per-node=1 --label printenv SLURMD_NODENAME",
        "--nodes=2",
    )
    done = multi.finished(job)[job]
    assert (done.state, done.nodes) == ("COMPLETED", "n[1-2]"), lines_of(out)
    lines = lines_of(out)
    assert "list=n[1-2] nodes=2 nnodes=2 batch=n1" in lines  # the batch script runs on the first node
    assert [line for line in lines if line.startswith("host=")] == ["host=n1", "host=n2"]
    assert sorted(line for line in lines if re.match(r"\d+: ", line)) == ["0: n1", "1: n2"]


@pytest.mark.parametrize("node", NODES)
def test_srun_nodelist_routes_a_step_to_that_node(multi: MultiNode, tmp_path: Path, node: str) -> None:
    # On its own: srun makes a one-node allocation on the named node.
    assert multi.srun("--nodes=1", f"--nodelist={node}", "printenv", "SLURMD_NODENAME") == [node]
    # Inside a two-node job: the step runs on the named node only.
    out = tmp_path / "job.out"
    job = multi.sbatch(
        out,
        f"srun --nodes=1 --ntasks=1 --nodelist={node} bash -c 'echo step=$SLURMD_NODENAME:$SLURM_STEP_NODELIST'",
        "--nodes=2",
    )
    assert multi.finished(job)[job].state == "COMPLETED", lines_of(out)
    assert lines_of(out) == [f"step={node}:{node}"]


def test_concurrent_one_node_jobs_run_on_different_nodes(multi: MultiNode, tmp_path: Path) -> None:
    release = tmp_path / "release"
    # Each job holds its whole node until the test releases it (bounded by `timeout` anyway).
    hold = f"echo $SLURMD_NODENAME; timeout 60 bash -c 'until [ -e {release} ]; do sleep 0.1; done'"
    first, second, third = (
        multi.sbatch(tmp_path / f"job{i}.out", hold, "--nodes=1", "--exclusive") for i in range(3)
    )

    def two_run_one_waits(jobs: dict[str, Job]) -> bool:
        running = [jobs[i].state for i in (first, second) if i in jobs] == ["RUNNING", "RUNNING"]
        return (
            running and third in jobs and (jobs[third].state, jobs[third].reason) == ("PENDING", "Resources")
        )

    jobs = multi.wait("two jobs running and the third pending on Resources", two_run_one_waits)
    assert sorted([jobs[first].nodes, jobs[second].nodes]) == list(NODES)
    release.touch()
    done = multi.finished(first, second, third)
    assert [done[i].state for i in (first, second, third)] == ["COMPLETED"] * 3
    assert [lines_of(tmp_path / f"job{i}.out") for i in range(2)] == [
        [jobs[first].nodes],
        [jobs[second].nodes],
    ]
    assert lines_of(tmp_path / "job2.out") == [done[third].nodes]  # ran once a node was free


@pytest.mark.parametrize("count", [1, 2])
def test_node_counts_reach_jobs_and_steps(multi: MultiNode, count: int) -> None:
    lines = multi.srun(
        f"--nodes={count}",
        "--ntasks-per-node=1",
        "bash",
        "-c",
        "echo $SLURM_JOB_NUM_NODES $SLURM_NNODES $SLURM_STEP_NUM_NODES $SLURMD_NODENAME",
    )
    assert sorted(line.rsplit(" ", 1)[0] for line in lines) == [f"{count} {count} {count}"] * count
    used = [line.rsplit(" ", 1)[1] for line in lines]
    assert len(set(used)) == count and set(used) <= set(NODES)  # one task on each of `count` nodes


def test_more_nodes_than_the_partition_has_never_start(multi: MultiNode, tmp_path: Path) -> None:
    # Slurm's default (EnforcePartLimits=NO) takes the job and keeps it pending for good.
    job = multi.sbatch(tmp_path / "never.out", "true", "--nodes=3")
    multi.wait(
        "a 3-node job pending on PartitionConfig",
        lambda jobs: job in jobs and (jobs[job].state, jobs[job].reason) == ("PENDING", "PartitionConfig"),
    )
    test_only = multi.run(
        "sbatch", f"--partition={PARTITION}", "--nodes=3", "--test-only", "--wrap=true", check=False
    )
    assert test_only.returncode != 0
    assert "Requested node configuration is not available" in test_only.stderr


def test_srun_launcher_starts_one_pool_per_node(multi: MultiNode, tmp_path: Path) -> None:
    out = tmp_path / "copies"
    out.mkdir()
    provider = SlurmProvider(
        partition=PARTITION,
        nodes_per_block=2,
        walltime="00:03:00",
        launcher=SrunLauncher(),
        channel=LocalChannel(env={"SLURM_CONF": NODES_CONF}),
    )
    provider.script_dir = str(tmp_path)
    job = provider.submit(marker_command(out, "SLURMD_NODENAME"), 1, multi.name)
    deadline = time.monotonic() + DEADLINE
    while not (status := provider.status([job])[0]).state.terminal:
        if time.monotonic() > deadline:
            pytest.fail(f"block {job} did not end within {DEADLINE:g} s: {status}", pytrace=False)
        time.sleep(0.2)
    assert status.state is JobState.COMPLETED, status
    assert markers(out) == [("n1", PAYLOAD), ("n2", PAYLOAD)]  # one copy on each node, quoting intact


HEADLESS_DRIVER = """
import json, os, sys, time
from hpcfutures import HighThroughputExecutor
from hpcfutures.launchers import SrunLauncher
from hpcfutures.providers import LocalProvider

def node(_):
    return os.environ.get("SLURMD_NODENAME"), os.environ.get("HPCFUTURES_POOL_ID")

provider = LocalProvider(nodes_per_block=2, launcher=SrunLauncher())
with HighThroughputExecutor(max_workers=1, provider=provider) as ex:
    seen = set()
    deadline = time.monotonic() + 60  # the second node's pool may register seconds later
    while len({name for name, _pool in seen}) < 2 and time.monotonic() < deadline:
        seen.update(ex.map(node, range(10), timeout=60))
print(json.dumps(sorted(seen)))
"""


def test_headless_htex_runs_a_pool_on_every_node_of_its_allocation(multi: MultiNode, tmp_path: Path) -> None:
    """NERSC's "headless" mode: a script inside a two-node job runs HighThroughputExecutor
    with LocalProvider(nodes_per_block=2, launcher=SrunLauncher()): one pool per node."""
    driver = tmp_path / "driver.py"
    driver.write_text(HEADLESS_DRIVER)
    output = tmp_path / "out.txt"
    job = multi.sbatch(output, f"cd {tmp_path} && {sys.executable} {driver}", "--nodes=2")
    finished = multi.finished(job)[job]
    assert finished.state == "COMPLETED", f"{finished}: {output.read_text() if output.exists() else ''}"
    seen = json.loads(output.read_text().splitlines()[-1])
    assert sorted(name for name, _pool in seen) == ["n1", "n2"], seen
    assert len({pool for _name, pool in seen}) == 2, "one pool on each node"


MPI_DRIVER = """
import json, os, shlex, subprocess, time
from hpcfutures import MPIExecutor, Resources
from hpcfutures.providers import LocalProvider

def nodes_of_ranks(hold=0.0):
    start = time.monotonic()
    argv = shlex.split(os.environ["HPCFUTURES_MPI_PREFIX"]) + ["printenv", "SLURMD_NODENAME"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    time.sleep(hold)
    return {"nodes": sorted(out.stdout.split()), "rc": out.returncode, "err": out.stderr[-500:],
            "start": start, "end": time.monotonic()}

with MPIExecutor(provider=LocalProvider(nodes_per_block=2), mpi_launcher="srun") as ex:
    both = ex.options(resources=Resources(num_nodes=2)).submit(nodes_of_ranks).result(120)
    one = ex.options(resources=Resources(num_nodes=1, ranks_per_node=2))  # a whole node (2 cores)
    pair = [f.result(120) for f in [one.submit(nodes_of_ranks, 1.0) for _ in range(2)]]
print(json.dumps({"both": both, "pair": pair}))
"""


def test_mpi_executor_gives_concurrent_tasks_disjoint_nodes_of_a_real_allocation(
    multi: MultiNode, tmp_path: Path
) -> None:
    """MPIExecutor in a two-node job: the lead pool reads SLURM_JOB_NODELIST, a two-node task's
    srun prefix reaches both slurmds, and two whole-node tasks at once get different nodes."""
    driver = tmp_path / "mpi_driver.py"
    driver.write_text(MPI_DRIVER)
    output = tmp_path / "out.txt"
    # Two tasks per node, so that a whole-node task's two ranks fit the allocation.
    job = multi.sbatch(output, f"cd {tmp_path} && {sys.executable} {driver}", "--nodes=2", "--ntasks-per-node=2")
    finished = multi.finished(job)[job]
    assert finished.state == "COMPLETED", f"{finished}: {output.read_text() if output.exists() else ''}"
    result = json.loads(output.read_text().splitlines()[-1])
    assert result["both"]["rc"] == 0 and result["both"]["nodes"] == ["n1", "n2"], result["both"]
    first, second = result["pair"]
    assert first["rc"] == second["rc"] == 0, result["pair"]
    assert first["start"] < second["end"] and second["start"] < first["end"], "the two tasks did not overlap"
    assert first["nodes"] and second["nodes"], result["pair"]
    assert {len(set(first["nodes"])), len(set(second["nodes"]))} == {1}, "a one-node task's ranks spread"
    assert set(first["nodes"]) | set(second["nodes"]) == {"n1", "n2"}, "concurrent whole-node tasks shared a node"
