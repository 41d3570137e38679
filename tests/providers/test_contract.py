"""What every provider declares to the executor (hpcfutures.providers.base.ExecutionProvider):
its walltime, its block shape, the channels a tunnel opens on, and one meaning of ``close()``.

The declared members are checked on the base class's defaults and on each concrete provider
(built without a scheduler: constructors only check their settings); ``close()`` on real
processes (LocalProvider) and on the fake LSF commands (ClusterProvider's close).  SSHProvider's
close, which needs an sshd, is tested in test_ssh_provider.py.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence

import psutil
import pytest

from hpcfutures import HighThroughputExecutor
from hpcfutures.errors import ConfigurationError
from hpcfutures.providers import (
    CobaltProvider,
    CondorProvider,
    ExecutionProvider,
    GridEngineProvider,
    JobState,
    JobStatus,
    LocalChannel,
    LocalProvider,
    LSFProvider,
    PBSProProvider,
    SlurmProvider,
    SSHChannel,
    SSHProvider,
    TorqueProvider,
)
from hpcfutures.providers.base import TunnelChannel

from .fake_schedulers import FakeScheduler, wait_status


class _Minimal(ExecutionProvider):
    """A provider that declares nothing beyond what it must: the base class's defaults show."""

    def __init__(self) -> None:
        super().__init__(label="minimal")

    def submit(self, command: str, max_workers: int, job_name: str = "hpcfutures.block") -> str:
        raise NotImplementedError

    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        return [JobStatus(JobState.MISSING) for _ in job_ids]

    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        return [False for _ in job_ids]


# -- the base class's defaults ------------------------------------------------------------------


def test_walltime_defaults_to_no_limit():
    assert _Minimal().walltime_seconds is None


def test_cores_per_node_defaults_to_unknown():
    assert _Minimal().cores_per_node is None


def test_block_shape_defaults_to_one_node_and_full_parallelism():
    provider = _Minimal()
    assert (provider.nodes_per_block, provider.parallelism) == (1, 1.0)


def test_tunnel_channels_default_to_none():
    assert _Minimal().tunnel_channels() == []


def test_default_close_does_nothing_and_may_be_called_again():
    provider = _Minimal()
    provider.close()
    provider.close()


# -- each concrete provider ---------------------------------------------------------------------

#: name -> (a provider built with some settings, the members it must declare)
DECLARED: dict[str, tuple[Callable[[], ExecutionProvider], dict[str, object]]] = {
    "local": (
        lambda: LocalProvider(parallelism=0.5),
        dict(walltime_seconds=None, cores_per_node=None, nodes_per_block=1, parallelism=0.5),
    ),
    "slurm": (
        lambda: SlurmProvider(walltime="01:30:00", cores_per_node=8, nodes_per_block=2),
        dict(walltime_seconds=5400, cores_per_node=8, nodes_per_block=2, parallelism=1.0),
    ),
    "slurm-defaults": (
        lambda: SlurmProvider(),
        dict(walltime_seconds=1800, cores_per_node=None, nodes_per_block=1),
    ),
    "torque": (
        lambda: TorqueProvider(walltime=600, cores_per_node=4),
        dict(walltime_seconds=600, cores_per_node=4),
    ),
    "pbspro": (
        lambda: PBSProProvider(walltime="2-00:00:00", nodes_per_block=3),
        dict(walltime_seconds=172800, nodes_per_block=3),
    ),
    "gridengine": (
        lambda: GridEngineProvider(walltime="00:10:00", parallel_environment="smp", cores_per_node=4),
        dict(walltime_seconds=600, cores_per_node=4, nodes_per_block=1),
    ),
    "lsf": (
        lambda: LSFProvider(walltime=3600, cores_per_node=16, nodes_per_block=2),
        dict(walltime_seconds=3600, cores_per_node=16, nodes_per_block=2),
    ),
    "condor": (
        lambda: CondorProvider(walltime="00:45:00", cores_per_node=2),
        dict(walltime_seconds=2700, cores_per_node=2, nodes_per_block=1),
    ),
    "cobalt": (
        lambda: CobaltProvider(walltime="00:20:00", nodes_per_block=4, parallelism=0.25),
        dict(walltime_seconds=1200, nodes_per_block=4, parallelism=0.25),
    ),
    "ssh": (
        lambda: SSHProvider(["node1", "node2"]),
        dict(walltime_seconds=None, cores_per_node=None, nodes_per_block=1),
    ),
    "ssh-walltime": (
        lambda: SSHProvider(["node1"], walltime="00:05:00"),
        dict(walltime_seconds=300),
    ),
}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_each_provider_declares_its_walltime_and_block_shape(name):
    make, expected = DECLARED[name]
    provider = make()
    try:
        assert isinstance(provider, ExecutionProvider)
        assert {member: getattr(provider, member) for member in expected} == expected
    finally:
        provider.close()


@pytest.mark.parametrize("name", sorted(n for n in DECLARED if not n.startswith("ssh")))
def test_providers_whose_commands_run_here_have_no_tunnel_channels(name):
    provider = DECLARED[name][0]()
    try:
        assert provider.tunnel_channels() == []
    finally:
        provider.close()


def test_a_scheduler_provider_tunnels_on_its_ssh_channel():
    login = SSHChannel("login.example.org")
    provider = SlurmProvider(channel=login)
    assert provider.tunnel_channels() == [login]
    assert isinstance(login, TunnelChannel) and not isinstance(LocalChannel(), TunnelChannel)
    provider.channel = LocalChannel()  # the answer follows the channel the provider uses now
    assert provider.tunnel_channels() == []


def test_an_ssh_provider_tunnels_on_every_hosts_channel_or_none():
    provider = SSHProvider(["node1", "node2"])
    assert provider.tunnel_channels() == provider.channels and len(provider.channels) == 2
    # blocks go to the hosts in turn: a tunnel on some hosts only would strand the others
    assert SSHProvider([SSHChannel("node1"), LocalChannel()]).tunnel_channels() == []


def test_tunnel_true_is_accepted_exactly_for_providers_with_tunnel_channels():
    for provider in (SlurmProvider(channel=SSHChannel("login")), SSHProvider(["node1"])):
        HighThroughputExecutor(provider=provider, tunnel=True).shutdown()  # never started
    with pytest.raises(ConfigurationError, match="tunnel=True needs a provider whose commands run over SSH"):
        HighThroughputExecutor(provider=SlurmProvider(), tunnel=True)


def test_the_executor_refuses_tasks_longer_than_the_declared_walltime():
    ex = HighThroughputExecutor(provider=SlurmProvider(walltime="01:00:00"))
    try:
        ex.options(walltime=3600)  # exactly the block's: accepted
        with pytest.raises(ValueError, match="exceeds the walltime of this executor's blocks"):
            ex.options(walltime=3601)
    finally:
        ex.shutdown()  # never started: no job was submitted


# -- close() --------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pid_of(path: str, timeout: float = 30.0) -> int:
    """The pid a job wrote to *path*, once it has (a job's own report: there is no event)."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        assert time.monotonic() < deadline, f"{path} never got a pid"
        time.sleep(0.02)


def test_local_close_cancels_live_jobs_and_is_idempotent(tmp_path):
    provider = LocalProvider(cancel_grace=0.5)
    script = "echo $$ > {}; exec sleep 300"  # the job's command line is one command: wrap it in sh
    commands = ["/bin/sh -c " + shlex.quote(script.format(tmp_path / f"pid{i}")) for i in range(2)]
    running = [provider.submit(command, 1) for command in commands]
    pids = [_pid_of(str(tmp_path / f"pid{i}")) for i in range(2)]
    ended = provider.submit("true", 1)
    directory = provider.script_dir
    assert directory is not None and all(_alive(pid) for pid in pids)
    provider.close()
    assert not any(_alive(pid) for pid in pids)  # cancel() returns once they are gone
    assert [s.state for s in provider.status(running)] == [JobState.CANCELLED] * 2
    assert provider.status([ended])[0].state.terminal
    assert not os.path.exists(directory) and provider.script_dir is None
    provider.close()  # again: nothing
    with pytest.raises(RuntimeError, match="closed"):
        provider.submit("true", 1)


@pytest.fixture
def lsf(tmp_path):
    fake = FakeScheduler("lsf", tmp_path / "lsf-db")
    yield fake
    fake.stop()


def test_cluster_close_cancels_jobs_not_seen_ending_and_is_idempotent(lsf):
    provider = LSFProvider(channel=lsf.channel())  # no script_dir: it makes a private one
    done = provider.submit("true", 1)
    wait_status(provider, done, [JobState.COMPLETED])
    lsf.pause()
    queued = provider.submit("echo never", 1)
    directory = provider.script_dir
    assert directory is not None and os.path.isdir(directory)
    provider.close()
    assert lsf.calls("bkill") == [["bkill", queued]]  # the job seen ending is left alone
    assert not os.path.exists(directory) and provider.script_dir is None
    provider.close()  # again: nothing, no second bkill
    assert len(lsf.calls("bkill")) == 1
    with pytest.raises(RuntimeError, match="closed"):
        provider.submit("true", 1)
    lsf.resume()
    assert wait_status(provider, queued, [JobState.CANCELLED]).state is JobState.CANCELLED


def test_cluster_close_keeps_a_directory_it_was_given(lsf, tmp_path):
    provider = LSFProvider(channel=lsf.channel())
    provider.script_dir = str(tmp_path / "blocks")
    done = provider.submit("echo kept", 1)
    wait_status(provider, done, [JobState.COMPLETED])
    provider.close()
    assert (tmp_path / "blocks" / "hpcfutures.block.1.out").read_text() == "kept\n"
    assert provider.script_dir == str(tmp_path / "blocks")
