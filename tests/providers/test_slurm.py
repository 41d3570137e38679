"""SlurmProvider: rendering and parsing over real recorded outputs, and blocks on a real cluster.

The ``recorded/slurm_*.txt`` files are what this machine's Slurm 22.05 (no slurmdbd) really
printed; ``recorded/slurm_record.sh`` re-records them.  The end-to-end tests submit block
commands to the real single-node cluster started by :func:`slurm_cluster`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.base import JobState, JobStatus
from hpcfutures.providers.channels import Channel, CommandResult, LocalChannel
from hpcfutures.providers.cluster import SubmitError
from hpcfutures.providers.slurm import (
    SLURM_STATES,
    SlurmProvider,
    decode_exit_code,
    decode_wait_status,
    parse_sacct,
    parse_squeue,
    slurm_job_state,
)
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def recorded_ids() -> dict[str, str]:
    """The recorded jobs' ids: slurm_record.sh submits them one after another, in this order."""
    first = int(recorded("slurm_sbatch_parsable.txt").strip())
    names = ["completed", "failed", "timeout", "running", "cancelled", "pending", "held"]
    return {name: str(first + i) for i, name in enumerate(names)}


# -- rendering and validation ---------------------------------------------------------------


def test_directives_carry_every_option(tmp_path: Path) -> None:
    provider = SlurmProvider(
        partition="debug",
        account="proj42",
        qos="high",
        constraint="haswell&ib",
        exclusive=True,
        nodes_per_block=2,
        cores_per_node=8,
        mem_per_node=1.5,
        walltime="1-02:03:04",
        scheduler_options="#SBATCH --gres=gpu:1",
        worker_init="source env/bin/activate",
    )
    script = provider.render_script("blk", "/o/blk.out", "/o/blk.err", "/o/blk.sh.exitcode", 4, "pool --x")
    lines = script.splitlines()
    for expected in [
        "#SBATCH --job-name=blk",
        "#SBATCH --output=/o/blk.out",
        "#SBATCH --error=/o/blk.err",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=1536M",
        "#SBATCH --time=1-02:03:04",
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj42",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=haswell&ib",
        "#SBATCH --exclusive",
        "#SBATCH --gres=gpu:1",
        "source env/bin/activate",
        "pool --x",
    ]:
        assert expected in lines, expected
    # sbatch stops reading directives at the first command line.
    last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    first_command = min(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert last_directive < first_command


def test_without_cores_it_asks_a_cpu_per_worker() -> None:
    lines = SlurmProvider(walltime=90).directives("b", "o", "e", max_workers=3)
    assert "#SBATCH --ntasks-per-node=3" in lines
    assert not any("cpus-per-task" in line or "--mem" in line or "--partition" in line for line in lines)
    assert "#SBATCH --time=00:01:30" in lines


def test_the_old_keyword_tasks_per_node_still_renders_with_a_warning() -> None:
    provider = SlurmProvider(walltime=90)
    with pytest.warns(DeprecationWarning, match="max_workers="):
        assert provider.directives("b", "o", "e", tasks_per_node=3) == provider.directives("b", "o", "e", 3)
    with pytest.warns(DeprecationWarning, match="max_workers="):
        script = provider.render_script("b", "o", "e", "x", tasks_per_node=3, launch="pool")
    assert "#SBATCH --ntasks-per-node=3" in script


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"partition": "two words"}, "partition"),
        ({"partition": ""}, "partition"),
        ({"account": 42}, "account"),
        ({"qos": "a\nb"}, "qos"),
        ({"constraint": "#x"}, "constraint"),
        ({"exclusive": "yes"}, "exclusive"),
        ({"nodes_per_block": 0}, "nodes_per_block"),
        ({"cores_per_node": 0}, "cores_per_node"),
        ({"mem_per_node": -1}, "mem_per_node"),
        ({"walltime": "soon"}, "walltime"),
        ({"channel": "login1"}, "channel"),
        ({"min_blocks": 3, "max_blocks": 2}, "min_blocks"),
    ],
)
def test_bad_arguments_raise_configuration_error(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ConfigurationError, match=word):
        SlurmProvider(**kwargs)  # type: ignore[arg-type]


# -- parsing recorded outputs ---------------------------------------------------------------


def test_parse_submit_recorded_and_federated() -> None:
    provider = SlurmProvider()
    out = recorded("slurm_sbatch_parsable.txt")
    assert provider.parse_submit(CommandResult(0, out, "")) == out.strip()
    assert provider.parse_submit(CommandResult(0, "4242;cluster2\n", "")) == "4242"
    with pytest.raises(SubmitError, match="no job id"):
        provider.parse_submit(CommandResult(0, "", "sbatch: error: something"))


def test_parse_recorded_squeue_states() -> None:
    ids = recorded_ids()
    statuses = parse_squeue(recorded("slurm_squeue_states.txt"))
    assert {job_id: statuses[job_id].state for job_id in ids.values()} == {
        ids["completed"]: JobState.COMPLETED,
        ids["failed"]: JobState.FAILED,
        ids["timeout"]: JobState.TIMEOUT,
        ids["running"]: JobState.RUNNING,
        ids["cancelled"]: JobState.CANCELLED,
        ids["pending"]: JobState.PENDING,
        ids["held"]: JobState.HELD,
    }
    assert statuses[ids["completed"]].exit_code == 0
    assert statuses[ids["failed"]].exit_code == 3
    assert "NonZeroExitCode" in statuses[ids["failed"]].message
    assert statuses[ids["cancelled"]].exit_code == -15
    assert "SIGTERM" in statuses[ids["cancelled"]].message
    assert "TimeLimit" in statuses[ids["timeout"]].message
    assert statuses[ids["running"]].exit_code is None
    assert "Resources" in statuses[ids["pending"]].message or "Priority" in statuses[ids["pending"]].message


def test_short_state_codes_agree_with_long_names() -> None:
    """squeue's %t codes (recorded beside the long names) map like the names do."""
    for line in recorded("slurm_squeue_short.txt").splitlines():
        _job_id, short, long, *reason = line.split()
        assert slurm_job_state(short, " ".join(reason)) is slurm_job_state(long, " ".join(reason)), line
        assert slurm_job_state(short) is not JobState.UNKNOWN, line


def test_parse_invalid_job_id_and_disabled_accounting() -> None:
    invalid = recorded("slurm_squeue_invalid.txt")
    assert "Invalid job id specified" in invalid and "exit code: 1" in invalid
    assert SlurmProvider().parse_status(invalid) == {}
    disabled = recorded("slurm_sacct_disabled.txt")
    assert "accounting storage is disabled" in disabled
    assert parse_sacct(disabled) == {}


def test_parse_recorded_sacct_completion_log() -> None:
    ids = recorded_ids()
    statuses = parse_sacct(recorded("slurm_sacct_completion.txt"))
    assert statuses[ids["completed"]] == JobStatus(JobState.COMPLETED, exit_code=0, message="COMPLETED")
    assert (statuses[ids["failed"]].state, statuses[ids["failed"]].exit_code) == (JobState.FAILED, 3)
    assert statuses[ids["timeout"]].state is JobState.TIMEOUT
    assert statuses[ids["cancelled"]].state is JobState.CANCELLED


def test_parse_sacct_with_accounting_storage() -> None:
    """sacct from a cluster with slurmdbd: no such cluster runs here, so these lines follow
    sacct's documented ``--parsable2`` output (steps as ``ID.batch``/``ID.extern``, states
    such as ``CANCELLED by <uid>``, ExitCode ``rc:signal``)."""
    out = (
        "101|COMPLETED|0:0\n101.batch|COMPLETED|0:0\n101.extern|COMPLETED|0:0\n"
        "102|CANCELLED by 0|0:15\n102.batch|CANCELLED|0:15\n"
        "103|OUT_OF_MEMORY|0:125\n103.batch|OUT_OF_MEMORY|0:125\n"
        "104|NODE_FAIL|1:0\n105|TIMEOUT|0:0\n106|FAILED|2:0\n107|PREEMPTED|0:0\n"
    )
    statuses = parse_sacct(out)
    assert sorted(statuses) == ["101", "102", "103", "104", "105", "106", "107"]
    assert statuses["102"].state is JobState.CANCELLED and statuses["102"].exit_code == -15
    assert statuses["103"].state is JobState.FAILED and "OUT_OF_MEMORY" in statuses["103"].message
    assert statuses["104"].state is JobState.FAILED
    assert statuses["105"].state is JobState.TIMEOUT
    assert (statuses["106"].state, statuses["106"].exit_code) == (JobState.FAILED, 2)
    assert statuses["107"].state is JobState.CANCELLED


def test_every_documented_slurm_state_is_mapped() -> None:
    """The JOB STATE CODES of squeue(1) for Slurm 22.05, long and short."""
    documented = {
        "BOOT_FAIL": "BF", "CANCELLED": "CA", "COMPLETED": "CD", "CONFIGURING": "CF", "COMPLETING": "CG",
        "DEADLINE": "DL", "FAILED": "F", "NODE_FAIL": "NF", "OUT_OF_MEMORY": "OOM", "PENDING": "PD",
        "PREEMPTED": "PR", "RUNNING": "R", "RESV_DEL_HOLD": "RD", "REQUEUE_FED": "RF", "REQUEUE_HOLD": "RH",
        "REQUEUED": "RQ", "RESIZING": "RS", "REVOKED": "RV", "SIGNALING": "SI", "SPECIAL_EXIT": "SE",
        "STAGE_OUT": "SO", "STOPPED": "ST", "SUSPENDED": "S", "TIMEOUT": "TO",
    }  # fmt: skip
    for long, short in documented.items():
        assert SLURM_STATES[long] is SLURM_STATES[short], long
    assert slurm_job_state("PENDING") is JobState.PENDING
    assert slurm_job_state("CONFIGURING") is JobState.PENDING
    assert slurm_job_state("COMPLETING") is JobState.RUNNING
    assert slurm_job_state("SUSPENDED") is JobState.HELD
    assert slurm_job_state("REQUEUE_HOLD") is JobState.HELD
    assert slurm_job_state("PENDING", "JobHeldAdmin") is JobState.HELD
    assert slurm_job_state("CANCELLED by 1000") is JobState.CANCELLED
    assert slurm_job_state("NEW_STATE_FROM_SLURM_99") is JobState.UNKNOWN


def test_exit_code_decoding() -> None:
    assert [decode_wait_status(raw) for raw in (0, 768, 15, 9, 256 * 255)] == [0, 3, -15, -9, 255]
    assert [decode_exit_code(text) for text in ("0:0", "3:0", "0:9", "bad")] == [0, 3, -9, None]


# -- a real cluster ---------------------------------------------------------------------------


class CountingChannel(LocalChannel):
    """A LocalChannel that remembers every command it ran, to count scheduler calls."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.commands: list[str] = []

    def run(self, command: str, **kwargs: object) -> CommandResult:  # type: ignore[override]
        self.commands.append(command)
        return super().run(command, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def provider(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[SlurmProvider]:  # noqa: F811
    """A SlurmProvider on the real cluster whose jobs are all cancelled after the test."""
    made = SlurmProvider(partition=slurm_cluster.partition, walltime="00:05:00", channel=CountingChannel())
    made.script_dir = str(tmp_path)
    yield made
    ids = [job.job_id for job in made.jobs()]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30, check=False)
        slurm_cluster.wait_empty(ids)


def wait_for(
    provider: SlurmProvider, job_ids: Sequence[str], done: object, timeout: float = 60.0
) -> list[JobStatus]:
    """Poll status until ``done(statuses)`` is true; fail with the last statuses after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = provider.status(job_ids)
        if done(statuses):  # type: ignore[operator]
            return statuses
        if time.monotonic() > deadline:
            pytest.fail(f"jobs {list(job_ids)} did not get there in {timeout:g} s: {statuses}")
        time.sleep(0.2)


@pytest.mark.xdist_group("slurm")
def test_block_runs_then_completes(provider: SlurmProvider, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    job = provider.submit(f"echo block-says-hello; while [ ! -e {gate} ]; do sleep 0.1; done", 1, "hello")
    first = provider.status([job])[0]
    assert first.state in (JobState.PENDING, JobState.RUNNING)
    wait_for(provider, [job], lambda s: s[0].state is JobState.RUNNING)
    gate.touch()
    (status,) = wait_for(provider, [job], lambda s: s[0].state.terminal)
    assert status.state is JobState.COMPLETED, status
    assert status.exit_code == 0
    assert "block-says-hello" in status.stdout_tail


@pytest.mark.xdist_group("slurm")
def test_failing_block_reports_exit_code_and_stderr(provider: SlurmProvider) -> None:
    job = provider.submit("echo partial output; echo 'pool: cannot import numpy' >&2; exit 3", 1, "fails")
    (status,) = wait_for(provider, [job], lambda s: s[0].state.terminal)
    assert status.state is JobState.FAILED, status
    assert status.exit_code == 3
    assert "cannot import numpy" in status.stderr_tail
    assert "partial output" in status.stdout_tail


@pytest.mark.xdist_group("slurm")
def test_cancel_running_block_and_tolerate_finished_ones(provider: SlurmProvider, tmp_path: Path) -> None:
    done = provider.submit("true", 1, "quick")
    running = provider.submit("echo up; exec sleep 300", 1, "sleeper")
    wait_for(provider, [done, running], lambda s: s[0].state.terminal and s[1].state is JobState.RUNNING)
    assert provider.cancel([running, done, "999999"]) == [True, True, False]
    statuses = wait_for(provider, [running, done], lambda s: s[0].state.terminal)
    assert statuses[0].state is JobState.CANCELLED, statuses[0]
    assert statuses[1].state is JobState.COMPLETED  # cancelling a finished job changed nothing
    assert provider.cancel([running]) == [True]  # again, already gone
    assert provider.status([running])[0].state is JobState.CANCELLED
    assert (
        running
        not in subprocess.run(
            ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True
        ).stdout.split()
    )


@pytest.mark.xdist_group("slurm")
def test_cancel_pending_and_held_blocks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    held_provider = SlurmProvider(walltime=300, scheduler_options="#SBATCH --hold")
    held_provider.script_dir = str(tmp_path)
    big = SlurmProvider(walltime=300, cores_per_node=slurm_cluster.cpus)
    big.script_dir = str(tmp_path)
    held = held_provider.submit("true", 1, "held")
    first = big.submit(f"while [ ! -e {tmp_path}/never ]; do sleep 0.2; done", 1, "holds-the-node")
    second = big.submit("true", 1, "waits")
    try:
        (status,) = wait_for(held_provider, [held], lambda s: s[0].state is JobState.HELD)
        assert "JobHeldUser" in status.message
        statuses = wait_for(big, [first, second], lambda s: s[0].state is JobState.RUNNING)
        assert statuses[1].state is JobState.PENDING and "Resources" in statuses[1].message
        assert held_provider.cancel([held]) == [True]
        assert big.cancel([second, first]) == [True, True]
        assert wait_for(held_provider, [held], lambda s: s[0].state.terminal)[0].state is JobState.CANCELLED
        ended = wait_for(big, [first, second], lambda s: all(x.state.terminal for x in s))
        assert [s.state for s in ended] == [JobState.CANCELLED, JobState.CANCELLED]
        assert ended[1].exit_code is None  # it never ran
    finally:
        subprocess.run(["scancel", held, first, second], capture_output=True, timeout=30, check=False)
        slurm_cluster.wait_empty([held, first, second])


@pytest.mark.xdist_group("slurm")
def test_status_of_many_jobs_takes_one_squeue_call(provider: SlurmProvider) -> None:
    jobs = [provider.submit(f"echo job {i}", 1, f"many{i}") for i in range(4)]
    channel = provider.channel
    assert isinstance(channel, CountingChannel)
    before = len(channel.commands)
    statuses = provider.status([*jobs, "424242"])
    assert len(channel.commands) == before + 1 and channel.commands[-1].startswith("out=$(squeue")
    assert statuses[-1].state is JobState.MISSING
    final = wait_for(provider, jobs, lambda s: all(x.state.terminal for x in s))
    assert [s.state for s in final] == [JobState.COMPLETED] * 4
    assert [s.stdout_tail for s in final] == [f"job {i}" for i in range(4)]
    before = len(channel.commands)
    provider.status(jobs)  # finished jobs are never asked about again
    assert len(channel.commands) == before


@pytest.mark.xdist_group("slurm")
def test_memory_exclusive_and_account_free_options_reach_sbatch(
    slurm_cluster: SlurmCluster,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    provider = SlurmProvider(
        partition=slurm_cluster.partition,
        mem_per_node=0.25,
        exclusive=True,
        cores_per_node=1,
        walltime="00:02:00",
    )
    provider.script_dir = str(tmp_path)
    job = provider.submit('echo "cpus=$SLURM_CPUS_PER_TASK mem=$SLURM_MEM_PER_NODE"', 1, "opts")
    (status,) = wait_for(provider, [job], lambda s: s[0].state.terminal)
    assert status.state is JobState.COMPLETED, status
    assert status.stdout_tail == "cpus=1 mem=256"


@pytest.mark.xdist_group("slurm")
def test_refused_job_raises_submit_error_with_sbatch_stderr(
    slurm_cluster: SlurmCluster,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    provider = SlurmProvider(partition="no-such-partition")
    provider.script_dir = str(tmp_path)
    with pytest.raises(SubmitError, match="invalid partition"):
        provider.submit("true", 1, "refused")


@pytest.mark.xdist_group("slurm")
def test_unreachable_controller_keeps_blocks_alive(provider: SlurmProvider, tmp_path: Path) -> None:
    """squeue that cannot reach slurmctld (a real squeue, pointed at a port nobody listens on)
    must not make a running block look finished."""
    job = provider.submit("exec sleep 300", 1, "steady")
    wait_for(provider, [job], lambda s: s[0].state is JobState.RUNNING)
    conf = Path("/etc/slurm/slurm.conf").read_text().replace("SlurmctldPort=6817", "SlurmctldPort=9")
    (tmp_path / "slurm.conf").write_text(conf)
    good: Channel = provider.channel
    provider.channel = LocalChannel(env={"SLURM_CONF": str(tmp_path / "slurm.conf")})
    try:
        (status,) = provider.status([job])
    finally:
        provider.channel = good
    assert status.state is JobState.UNKNOWN, status
    assert "squeue failed" in status.message
    assert provider.status([job])[0].state is JobState.RUNNING


@pytest.mark.xdist_group("slurm")
def test_accounting_fallback_without_slurmdbd(provider: SlurmProvider) -> None:
    """This cluster has no slurmdbd: plain sacct fails, and the command falls back to the
    job-completion log, which still knows the finished job."""
    job = provider.submit("exit 4", 1, "acct")
    wait_for(provider, [job], lambda s: s[0].state.terminal)
    command = provider.accounting_command([job])
    assert command is not None
    result = provider.channel.run(command)
    assert result.ok, result
    status = provider.parse_accounting(result.stdout)[job]
    assert (status.state, status.exit_code) == (JobState.FAILED, 4)
