"""SSHChannel driving the Slurm provider: ``sbatch``/``squeue``/``scancel`` run on the
"login node" over a real SSH connection (paramiko to a real sshd on loopback), job scripts are
copied there by SFTP, and a HighThroughputExecutor gets its pools from Slurm that way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcfutures import HighThroughputExecutor
from hpcfutures.providers import JobState, SlurmProvider, SSHChannel
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture
from tests.sshd import sshd_fixture

pytestmark = pytest.mark.xdist_group("slurm")

sshd = sshd_fixture()


def login(sshd) -> SSHChannel:
    return SSHChannel(
        "127.0.0.1", port=sshd.port, username=sshd.user, key_filename=str(sshd.key), known_hosts=str(sshd.known_hosts)
    )


def wait_state(provider, job_id, states, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        (status,) = provider.status([job_id])
        if status.state in states:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status} after {timeout} s")
        time.sleep(0.2)


def test_slurm_provider_over_ssh_submits_watches_and_cancels(slurm_cluster: SlurmCluster, sshd, tmp_path: Path):  # noqa: F811
    remote = tmp_path / "login-home" / "blocks"
    provider = SlurmProvider(
        partition=slurm_cluster.partition, walltime="00:05:00", channel=login(sshd), remote_script_dir=str(remote)
    )
    provider.script_dir = str(tmp_path / "local")
    try:
        done = provider.submit("echo hello from $SLURM_JOB_ID; echo to-stderr >&2", 1, "ssh-demo")
        status = wait_state(provider, done, {JobState.COMPLETED, JobState.FAILED})
        assert status.state is JobState.COMPLETED and status.exit_code == 0
        assert f"hello from {done}" in status.stdout_tail and "to-stderr" in status.stderr_tail
        assert (remote / "ssh-demo.1.sh").exists()  # the script was copied over SFTP
        sleeper = provider.submit("sleep 300", 1, "ssh-sleeper")
        wait_state(provider, sleeper, {JobState.RUNNING})
        assert provider.cancel([sleeper]) == [True]
        assert wait_state(provider, sleeper, {JobState.CANCELLED}).state is JobState.CANCELLED
        slurm_cluster.wait_empty([done, sleeper])
    finally:
        provider.close()


def test_htex_gets_slurm_pools_through_an_ssh_channel(slurm_cluster: SlurmCluster, sshd, tmp_path: Path):  # noqa: F811
    provider = SlurmProvider(partition=slurm_cluster.partition, walltime="00:05:00", channel=login(sshd))
    ex = HighThroughputExecutor(max_workers=1, provider=provider, run_dir=tmp_path / "run", block_poll_period=0.5)
    try:
        assert sorted(ex.map(abs, [-3, -2, -1])) == [1, 2, 3]
        (block,) = ex.blocks()
        assert block.job_id in slurm_cluster.queued_ids()
    finally:
        ex.shutdown()
    slurm_cluster.wait_empty([block.job_id])
