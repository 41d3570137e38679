"""The HighThroughputExecutor on a real Slurm cluster: pools started as Slurm jobs with
SlurmProvider and SrunLauncher, scaling out by submitting jobs, idle scale-in cancelling them,
a job killed with ``scancel`` mid-task having its task requeued onto another block, and
shutdown leaving ``squeue`` empty.  The cluster is the one tests/infra/slurm.sh starts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hpcfutures import HighThroughputExecutor
from hpcfutures.launchers import SrunLauncher
from hpcfutures.providers import SlurmProvider
from hpcfutures.testing import Gate, faults
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.xdist_group("slurm")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def our_jobs(ex: HighThroughputExecutor, cluster: SlurmCluster) -> set[str]:
    mine = {b.job_id for b in ex.blocks()}
    return mine & set(cluster.queued_ids())


def make_executor(cluster: SlurmCluster, tmp_path: Path, **kwargs) -> HighThroughputExecutor:
    provider = SlurmProvider(
        partition=cluster.partition,
        walltime="00:10:00",
        init_blocks=kwargs.pop("init_blocks", 0),
        min_blocks=0,
        max_blocks=2,
        launcher=SrunLauncher(),
    )
    return HighThroughputExecutor(
        max_workers=1,
        provider=provider,
        run_dir=tmp_path / "run",
        block_poll_period=0.5,
        heartbeat_period=0.5,
        heartbeat_threshold=5.0,
        **kwargs,
    )


def test_scale_out_scancel_requeue_scale_in_and_shutdown(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    ex = make_executor(slurm_cluster, tmp_path, max_idletime=1.0)
    try:
        with Gate() as gate:
            futures = [ex.submit(faults.identity_after, gate.wait) for _ in range(2)]
            gate.wait_entered(2, timeout=120)  # two one-worker blocks, started as Slurm jobs
            jobs = our_jobs(ex, slurm_cluster)
            assert len(jobs) == 2, ex.blocks()
            # Kill one block's job under its running task: the task must run again elsewhere.
            victim = sorted(jobs)[0]
            subprocess.run(["scancel", victim], check=True, timeout=30)
            gate.wait_entered(3, timeout=120)  # the lost task entered the gate again
            gate.open()
            seen = [f.result(timeout=120)["env"] for f in futures]
        assert all(env["SLURM_JOB_ID"] in {b.job_id for b in ex.blocks()} for env in seen)
        assert victim not in {env["SLURM_JOB_ID"] for env in seen}
        # Idle blocks are scaled in: their jobs leave the queue while the executor lives.
        wait_until(lambda: not our_jobs(ex, slurm_cluster), 60, "idle blocks' jobs to leave squeue")
        wait_until(lambda: {b.state for b in ex.blocks()} == {"ended"}, 30, "the executor to see them end")
        # New work scales out again.
        assert ex.submit(pow, 7, 2).result(timeout=120) == 49
        assert our_jobs(ex, slurm_cluster)
    finally:
        ex.shutdown()
    assert not our_jobs(ex, slurm_cluster)


def test_shutdown_cancels_queued_blocks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    # A block that waits in the queue (held) must not outlive the executor.
    provider = SlurmProvider(
        partition=slurm_cluster.partition,
        walltime="00:10:00",
        init_blocks=1,
        max_blocks=1,
        scheduler_options="#SBATCH --hold",
    )
    ex = HighThroughputExecutor(max_workers=1, provider=provider, run_dir=tmp_path / "run", block_poll_period=0.5)
    fut = ex.submit(pow, 2, 2)
    (block,) = ex.blocks()
    assert block.job_id in slurm_cluster.queued_ids()
    ex.shutdown(wait=False, cancel_futures=True)
    assert fut.cancelled()
    slurm_cluster.wait_empty([block.job_id])


def test_htex_runs_on_torque_commands_over_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    # TorqueProvider end to end: its blocks go through slurm-wlm-torque's real qsub/qstat/qdel.
    from hpcfutures.providers import LocalChannel, TorqueProvider

    provider = TorqueProvider(walltime="00:10:00", channel=LocalChannel(env=slurm_cluster.torque_env()))
    ex = HighThroughputExecutor(max_workers=1, provider=provider, run_dir=tmp_path / "run", block_poll_period=0.5)
    try:
        seen = ex.submit(faults.worker_identity).result(timeout=120)["env"]
        (block,) = ex.blocks()
        assert seen["SLURM_JOB_ID"] == block.job_id.split(".")[0]  # qsub's id is the Slurm job's
        assert sorted(ex.map(abs, [-2, -1])) == [1, 2]
    finally:
        ex.shutdown()
    slurm_cluster.wait_empty([block.job_id.split(".")[0]])


def test_a_refused_block_breaks_the_executor_with_sbatchs_words(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    from hpcfutures import BrokenExecutorError, PoolStartError

    provider = SlurmProvider(partition="no_such_partition", walltime="00:05:00")
    ex = HighThroughputExecutor(max_workers=1, provider=provider, run_dir=tmp_path / "run")
    try:
        with pytest.raises(BrokenExecutorError) as info:
            ex.submit(pow, 2, 2)
        cause = info.value.__cause__
        assert isinstance(cause, PoolStartError)
        assert "invalid partition" in str(cause).lower()
        assert ex.block_failures and "no_such_partition" in ex.block_failures[0].message
    finally:
        ex.shutdown()
