"""Tests of GridEngineProvider: parsing of recorded real outputs, scripts, validation, and
end-to-end runs on a real single-node Son of Grid Engine cluster (the ``sge_cluster`` fixture).

The files in ``recorded/sge_*`` were captured from SGE 8.1.9 (Debian 12's gridengine
packages) started by ``tests/infra/sge.sh``: ``qstat -xml`` with running, suspended, pending,
held, error and array jobs, and jobs being deleted; ``qacct -j`` for a job that exited 3, one
that succeeded, one killed at its h_rt limit, one that killed itself with SIGKILL and one
deleted by ``qdel`` while running; ``qstat -j`` of two jobs in error state.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.base import JobState
from hpcfutures.providers.channels import CommandResult, LocalChannel
from hpcfutures.providers.cluster import SubmitError
from hpcfutures.providers.gridengine import (
    GridEngineProvider,
    parse_error_reasons,
    parse_qacct,
    parse_qstat_xml,
)
from tests.providers.sge_cluster import sge_cluster  # noqa: F401 - the session fixture

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


# -- parsing recorded real outputs -----------------------------------------------------------


def test_qstat_xml_states_map_to_job_states():
    statuses = parse_qstat_xml(recorded("sge_qstat_mixed.xml"))
    states = {job_id: status.state for job_id, status in statuses.items()}
    assert states == {
        "1": JobState.HELD,  # s: suspended with qmod -sj
        "2": JobState.PENDING,  # qw
        "3": JobState.HELD,  # hqw: submitted with qsub -h
        "4": JobState.FAILED,  # Eqw: its output file could not be opened
        "5": JobState.RUNNING,  # an array job: task 1 r, tasks 2,3 qw
    }
    assert "suspended" in statuses["1"].message
    assert "qrls" in statuses["3"].message
    assert "Eqw" in statuses["4"].message


def test_qstat_xml_jobs_being_deleted_are_not_finished_yet():
    statuses = parse_qstat_xml(recorded("sge_qstat_deleting.xml"))
    assert statuses["27"].state is JobState.RUNNING  # dr: deleted, execd not done with it
    assert "being deleted" in statuses["27"].message
    assert statuses["14"].state is JobState.RUNNING
    assert statuses["28"].state is JobState.PENDING


@pytest.mark.parametrize(
    "code, state",
    [
        ("qw", JobState.PENDING),
        ("hqw", JobState.HELD),
        ("r", JobState.RUNNING),
        ("t", JobState.RUNNING),
        ("Rr", JobState.RUNNING),
        ("hr", JobState.RUNNING),
        ("s", JobState.HELD),
        ("S", JobState.HELD),
        ("T", JobState.HELD),
        ("dr", JobState.RUNNING),
        ("dqw", JobState.PENDING),
        ("Eqw", JobState.FAILED),
        ("z", JobState.UNKNOWN),
    ],
)
def test_state_codes(code, state):
    # Codes from sge_status(5); the recorded outputs above hold the common ones for real.
    xml = recorded("sge_qstat_empty.xml").replace(
        "<job_info>\n  </job_info>",
        f"<job_info><job_list><JB_job_number>7</JB_job_number><state>{code}</state></job_list></job_info>",
    )
    assert parse_qstat_xml(xml)["7"].state is state


def test_qstat_xml_with_no_jobs():
    assert parse_qstat_xml(recorded("sge_qstat_empty.xml")) == {}


def test_qstat_xml_garbage_is_an_error():
    with pytest.raises(ValueError, match="qstat -xml"):
        parse_qstat_xml("error: commlib error: got select error (Connection refused)")


def test_qacct_records():
    statuses = parse_qacct(recorded("sge_qacct.txt"), walltime="00:00:03")
    assert statuses["6"].state is JobState.FAILED and statuses["6"].exit_code == 3
    assert statuses["7"].state is JobState.COMPLETED and statuses["7"].exit_code == 0
    assert statuses["8"].state is JobState.TIMEOUT  # failed 37: qmaster enforced h_rt
    assert "00:00:03" in statuses["8"].message
    assert statuses["9"].state is JobState.FAILED and statuses["9"].exit_code == -9
    assert "SIGKILL" in statuses["9"].message
    assert statuses["1"].exit_code == -9  # deleted by qdel while running


def test_qacct_takes_the_last_record_of_a_job():
    text = recorded("sge_qacct.txt")
    first, _, rest = text.partition("\n==")
    # A rerun of job 7 that failed, appended after its first (successful) record.
    rerun = rest.split("\n==")[0].replace("exit_status  0", "exit_status  5")
    statuses = parse_qacct(text + "==" + rerun + "\n")
    assert statuses["7"].exit_code == 5


def test_error_reasons_from_qstat_j():
    reasons = parse_error_reasons(recorded("sge_qstat_j_error.txt"))
    assert reasons["10"] == "error: can't chdir to /nonexistent: No such file or directory"
    assert reasons["11"].startswith("error: can't open output file \"/nonexistent/x\"")


def test_status_output_when_qstat_fails_makes_states_unknown():
    provider = GridEngineProvider()
    out = provider.parse_status("#hpcfutures-asked 41 42\n#hpcfutures-qstat-failed 1\n")
    assert {job_id: s.state for job_id, s in out.items()} == {"41": JobState.UNKNOWN, "42": JobState.UNKNOWN}
    assert "exited with code 1" in out["41"].message
    garbled = provider.parse_status("#hpcfutures-asked 41\nerror: commlib error\n")
    assert garbled["41"].state is JobState.UNKNOWN


def test_parse_submit():
    provider = GridEngineProvider()
    assert provider.parse_submit(CommandResult(0, "42\n", "")) == "42"
    assert provider.parse_submit(CommandResult(0, "43.1-3:1\n", "")) == "43"
    with pytest.raises(SubmitError, match="no job id"):
        provider.parse_submit(CommandResult(0, "Your job was submitted\n", ""))


# -- scripts and validation ------------------------------------------------------------------


def test_script_directives(tmp_path):
    provider = GridEngineProvider(
        label="sge",
        queue="all.q",
        project="physics",
        parallel_environment="smp",
        cores_per_node=4,
        mem_per_node=8,
        walltime="1-02:00:00",
        scheduler_options="#$ -l gpu=1",
        worker_init="source /opt/env/bin/activate",
    )
    text = provider.render_script(
        "run.block-1", f"{tmp_path}/b.out", f"{tmp_path}/b.err", f"{tmp_path}/b.sh.exitcode", 4, "pool --x"
    )
    lines = text.splitlines()
    for directive in (
        "#$ -N run.block-1",
        f"#$ -o {tmp_path}/b.out",
        f"#$ -e {tmp_path}/b.err",
        "#$ -S /bin/bash",
        "#$ -l h_rt=26:00:00",
        "#$ -pe smp 4",
        "#$ -l h_vmem=2048M",  # 8 GB over 4 slots: Grid Engine counts memory per slot
        "#$ -q all.q",
        "#$ -P physics",
        "#$ -l gpu=1",
    ):
        assert directive in lines
    # Directives must come before the first command, or qsub ignores them.
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(lines) if line.startswith("#$")) < first_command
    assert "source /opt/env/bin/activate" in lines


def test_multi_node_blocks_ask_for_all_slots():
    provider = GridEngineProvider(parallel_environment="mpi", nodes_per_block=3, cores_per_node=8, mem_per_node=1)
    lines = provider.directives("b", "/o", "/e", 8)
    assert "#$ -pe mpi 24" in lines
    assert "#$ -l h_vmem=128M" in lines
    assert provider.slots == 24


def test_memory_without_a_parallel_environment_and_other_resources():
    lines = GridEngineProvider(mem_per_node=1.5, memory_resource="mem_free").directives("b", "/o", "/e", 1)
    assert "#$ -l mem_free=1536M" in lines
    assert not any(line.startswith("#$ -pe") for line in lines)


def test_job_names_that_qsub_refuses_are_made_safe():
    lines = GridEngineProvider().directives("7 blocks:a/b", "/o", "/e", 1)
    assert "#$ -N b7_blocks_a_b" in lines


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"cores_per_node": 4}, "parallel_environment"),
        ({"nodes_per_block": 2}, "parallel_environment"),
        ({"nodes_per_block": 2, "parallel_environment": "mpi"}, "cores_per_node"),
        ({"queue": "all q"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"project": 3}, "project"),
        ({"parallel_environment": "smp 4"}, "parallel_environment"),
        ({"memory_resource": "h_vmem=4G"}, "memory_resource"),
        ({"scheduler_options": "module load x"}, "scheduler_options"),
        ({"walltime": "soon"}, "walltime"),
        ({"mem_per_node": -1}, "mem_per_node"),
        ({"cores_per_node": 0, "parallel_environment": "smp"}, "cores_per_node"),
        ({"channel": "login.example.org"}, "channel"),
        ({"cmd_timeout": 0}, "cmd_timeout"),
        ({"label": ""}, "label"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        GridEngineProvider(**kwargs)


def test_paths_a_directive_cannot_carry_are_refused(tmp_path):
    provider = GridEngineProvider(remote_script_dir=str(tmp_path / "with space"))
    provider.script_dir = str(tmp_path / "scripts")
    with pytest.raises(ConfigurationError, match="remote_script_dir"):
        provider.submit("true", 1)


# -- a real Grid Engine cluster --------------------------------------------------------------


class CountingChannel(LocalChannel):
    """A LocalChannel that remembers every command it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[str] = []

    def run(self, command, **kwargs):
        self.commands.append(command)
        return super().run(command, **kwargs)


def make_provider(tmp_path, **kwargs) -> GridEngineProvider:
    kwargs.setdefault("walltime", "00:05:00")
    provider = GridEngineProvider(label="sgetest", **kwargs)
    provider.script_dir = str(tmp_path / "blocks")
    return provider


def wait_for(provider, job_id, states, timeout=60.0):
    """Poll until the job reaches one of *states*; return every state seen and the last status."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        (status,) = provider.status([job_id])
        if not seen or seen[-1] is not status.state:
            seen.append(status.state)
        if status.state in states:
            return seen, status
        assert not status.state.terminal, f"job {job_id} ended as {status} while waiting for {states}"
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout} s"
        time.sleep(0.1)


def queued_ids() -> set[str]:
    out = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, timeout=30, check=True).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


def wait_unqueued(job_ids, timeout=30.0):
    deadline = time.monotonic() + timeout
    while set(job_ids) & queued_ids():
        assert time.monotonic() < deadline, f"jobs {set(job_ids) & queued_ids()} still in qstat"
        time.sleep(0.1)


pytestmark_sge = pytest.mark.xdist_group("sge")


@pytestmark_sge
def test_block_runs_and_completes(sge_cluster, tmp_path):  # noqa: F811
    flag = tmp_path / "go"
    provider = make_provider(tmp_path, parallel_environment=sge_cluster.parallel_environment, cores_per_node=2)
    job_id = provider.submit(
        f'echo "slots=$NSLOTS pe=$PE"; while [ ! -e {flag} ]; do sleep 0.1; done; echo finished', 2, "ok"
    )
    seen, _ = wait_for(provider, job_id, {JobState.RUNNING})
    assert seen[0] in (JobState.PENDING, JobState.RUNNING)
    flag.touch()
    _, status = wait_for(provider, job_id, {JobState.COMPLETED})
    assert status.exit_code == 0
    assert status.stdout_tail.splitlines() == ["slots=2 pe=smp", "finished"]
    assert job_id not in queued_ids()


@pytestmark_sge
def test_job_waits_pending_while_the_cluster_is_full(sge_cluster, tmp_path):  # noqa: F811
    flag = tmp_path / "go"
    provider = make_provider(
        tmp_path, parallel_environment=sge_cluster.parallel_environment, cores_per_node=sge_cluster.slots
    )
    hog = provider.submit(f"while [ ! -e {flag} ]; do sleep 0.1; done", 1, "hog")
    wait_for(provider, hog, {JobState.RUNNING})
    waiting = provider.submit("echo ran", 1, "waiting")
    (status,) = provider.status([waiting])
    assert status.state is JobState.PENDING  # every slot is taken by the running hog
    flag.touch()
    wait_for(provider, hog, {JobState.COMPLETED})
    _, status = wait_for(provider, waiting, {JobState.COMPLETED})
    assert status.stdout_tail == "ran"


@pytestmark_sge
def test_failing_block_reports_exit_code_and_stderr(sge_cluster, tmp_path):  # noqa: F811
    provider = make_provider(tmp_path)
    job_id = provider.submit("echo 'pool could not import numpy' >&2; exit 3", 1, "fails")
    _, status = wait_for(provider, job_id, {JobState.FAILED})
    assert status.exit_code == 3
    assert "pool could not import numpy" in status.stderr_tail


@pytestmark_sge
def test_block_killed_by_a_signal(sge_cluster, tmp_path):  # noqa: F811
    provider = make_provider(tmp_path)
    job_id = provider.submit("kill -9 $$", 1, "killed")  # the job script itself dies
    _, status = wait_for(provider, job_id, {JobState.FAILED})
    assert status.exit_code == -9, status
    assert "SIGKILL" in status.message


@pytestmark_sge
def test_block_past_its_walltime_times_out(sge_cluster, tmp_path):  # noqa: F811
    provider = make_provider(tmp_path, walltime=2)
    job_id = provider.submit("sleep 120", 1, "slow")
    _, status = wait_for(provider, job_id, {JobState.TIMEOUT}, timeout=90)
    assert "limit" in status.message


@pytestmark_sge
def test_cancel_running_and_pending_blocks(sge_cluster, tmp_path):  # noqa: F811
    provider = make_provider(
        tmp_path, parallel_environment=sge_cluster.parallel_environment, cores_per_node=sge_cluster.slots
    )
    running = provider.submit("sleep 300", 1, "running")
    wait_for(provider, running, {JobState.RUNNING})
    pending = provider.submit("sleep 300", 1, "pending")
    done = provider.submit("true", 1, "done")
    assert provider.cancel([running, pending]) == [True, True]
    for job_id in (running, pending):
        _, status = wait_for(provider, job_id, {JobState.CANCELLED})
    wait_unqueued([running, pending])
    _, status = wait_for(provider, done, {JobState.COMPLETED})
    # Cancelling again (finished jobs) and an unknown id is tolerated.
    assert provider.cancel([running, done, "999999"]) == [True, True, False]
    assert provider.status(["999999"])[0].state is JobState.MISSING


@pytestmark_sge
def test_many_jobs_one_status_command(sge_cluster, tmp_path):  # noqa: F811
    channel = CountingChannel()
    provider = make_provider(tmp_path, channel=channel)
    flag = tmp_path / "go"
    ids = [provider.submit(f"while [ ! -e {flag} ]; do sleep 0.1; done; echo {i}", 1, f"many{i}") for i in range(6)]
    channel.commands.clear()
    statuses = provider.status(ids)
    assert len(statuses) == 6
    assert all(s.state in (JobState.PENDING, JobState.RUNNING) for s in statuses)
    assert len(channel.commands) == 1 and "qstat -xml" in channel.commands[0]
    flag.touch()
    deadline = time.monotonic() + 90
    while not all(s.state.terminal for s in provider.status(ids)):
        assert time.monotonic() < deadline, provider.status(ids)
        time.sleep(0.2)
    statuses = provider.status(ids)
    assert [s.state for s in statuses] == [JobState.COMPLETED] * 6
    assert [s.stdout_tail for s in statuses] == [str(i) for i in range(6)]


@pytestmark_sge
def test_job_in_error_state_fails_with_the_reason_and_is_deleted(sge_cluster, tmp_path):  # noqa: F811
    # A working directory that does not exist keeps the job in Eqw forever.
    provider = make_provider(tmp_path, scheduler_options=f"#$ -wd {tmp_path}/missing")
    job_id = provider.submit("true", 1, "eqw")
    _, status = wait_for(provider, job_id, {JobState.FAILED})
    assert "can't chdir" in status.message and "deleted" in status.message
    wait_unqueued([job_id])


@pytestmark_sge
def test_refused_submission_raises_with_qsub_stderr(sge_cluster, tmp_path):  # noqa: F811
    provider = make_provider(tmp_path, queue="no_such.q")
    with pytest.raises(SubmitError, match="no_such.q"):
        provider.submit("true", 1, "refused")


@pytestmark_sge
def test_htex_runs_tasks_on_a_pool_started_as_a_grid_engine_job(sge_cluster, tmp_path):  # noqa: F811
    import os

    from hpcfutures import HighThroughputExecutor

    provider = GridEngineProvider(
        label="sgehtex",
        parallel_environment=sge_cluster.parallel_environment,
        cores_per_node=2,
        walltime="00:10:00",
    )
    with HighThroughputExecutor(
        max_workers=2, provider=provider, address="127.0.0.1", run_dir=tmp_path / "run"
    ) as ex:
        assert list(ex.map(pow, range(6), [2] * 6)) == [0, 1, 4, 9, 16, 25]
        # The workers run inside the batch job: Grid Engine set JOB_ID and NSLOTS for them.
        (job,) = provider.jobs()
        assert ex.submit(os.getenv, "JOB_ID").result(timeout=60) == job.job_id
        assert ex.submit(os.getenv, "NSLOTS").result(timeout=60) == "2"
        assert job.job_id in queued_ids()
    # Shutdown deleted the block: at most it is still being deleted, and then it is gone.
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, timeout=30, check=True).stdout
    left = parse_qstat_xml(out)
    assert job.job_id not in left or "being deleted" in left[job.job_id].message
    wait_unqueued([job.job_id])
