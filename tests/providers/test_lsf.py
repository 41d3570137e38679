"""Tests of LSFProvider: the rendered ``#BSUB`` script, parsing of recorded LSF output, and runs.

No LSF server can be installed here (IBM Spectrum LSF is proprietary; nothing in Debian or
on PyPI runs one), so the end-to-end tests drive fake ``bsub``, ``bjobs`` and ``bkill``
(``tests/providers/fake_schedulers/lsf/``) that keep a small job database, really run each
submitted script in the background, and print the formats recorded from real LSF in
``tests/providers/recorded/lsf_*.txt``.  Those samples are transcribed from IBM's LSF 10.1
documentation (the ``bjobs`` tables and ``Job <123> is not found`` of the
LSB_BJOBS_CONSISTENT_EXIT_CODE page, the ``-o``/``delimiter=`` syntax of ``bjobs -o``, the
``TERM_RUNLIMIT``/``TERM_OWNER`` exit reasons of ``bjobs -l``) and from outputs other
projects recorded on real clusters: gc3pie's LSF backend (``Job <473713> is submitted to
queue <pub.1h>.``, a PEND row), equinor/ert's LSF driver tests (``Job <11> is being
terminated``, ``Job <11>: Job has already finished``, ``Job <22>: No matching job found``,
``-`` as the exit code of DONE jobs) and a ``bsub -W`` run that exited with code 140 at its
run limit.  Rows for the rarer states (PSUSP, ZOMBI, PROV, …) follow that same format.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hpcfutures import HighThroughputExecutor
from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.base import JobState
from hpcfutures.providers.channels import CommandResult
from hpcfutures.providers.cluster import SubmitError
from hpcfutures.providers.lsf import LSFProvider, parse_lsf_status

from .fake_schedulers import FakeScheduler, ProviderFactory, wait_status

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


@pytest.fixture
def lsf(tmp_path):
    fake = FakeScheduler("lsf", tmp_path / "lsf-db")
    yield fake
    fake.stop()


@pytest.fixture
def make(tmp_path, lsf):
    factory = ProviderFactory(LSFProvider, lsf, tmp_path / "blocks")
    yield factory
    factory.close()


def render(provider: LSFProvider, command: str = "pool --run") -> str:
    return provider.render_script("blk", "/s/blk.1.out", "/s/blk.1.err", "/s/blk.1.sh.exitcode", 2, command)


# -- the job script ---------------------------------------------------------------------------


def test_script_has_default_directives_then_worker_init_and_command():
    text = render(LSFProvider(walltime="00:30:00", worker_init="module load python"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [line for line in lines if line.startswith("#BSUB")]
    assert directives == [
        "#BSUB -J blk",
        "#BSUB -o /s/blk.1.out",
        "#BSUB -e /s/blk.1.err",
        "#BSUB -W 30",
        "#BSUB -n 1",
        '#BSUB -R "span[ptile=1]"',
    ]
    # LSF stops reading #BSUB lines at the first command: every directive comes before it.
    first_command = next(
        i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#")
    )
    assert all(lines.index(d) < first_command for d in directives)
    assert text.index("module load python") < text.index("pool --run")
    assert "/s/blk.1.sh.exitcode" in text


def test_script_renders_every_option():
    provider = LSFProvider(
        nodes_per_block=2,
        cores_per_node=16,
        mem_per_node=2.5,
        walltime=3601,
        queue="debug",
        project="ABC123",
        exclusive=True,
        scheduler_options='#BSUB -alloc_flags "smt4"',
    )
    directives = [line for line in render(provider).splitlines() if line.startswith("#BSUB")]
    assert "#BSUB -n 32" in directives
    assert '#BSUB -R "span[ptile=16]"' in directives
    assert "#BSUB -W 61" in directives  # rounded up: LSF's limit is in whole minutes
    assert "#BSUB -M 2560MB" in directives
    assert "#BSUB -q debug" in directives
    assert "#BSUB -P ABC123" in directives
    assert "#BSUB -x" in directives
    assert directives[-1] == '#BSUB -alloc_flags "smt4"'  # the user's lines come last


def test_script_asks_for_whole_nodes_with_nnodes():
    directives = render(LSFProvider(nnodes=True, nodes_per_block=3, cores_per_node=42)).splitlines()
    assert "#BSUB -nnodes 3" in directives
    assert not [line for line in directives if line.startswith(("#BSUB -n ", "#BSUB -R"))]


def test_short_walltime_is_one_minute_and_job_name_is_sanitised():
    text = LSFProvider(walltime=20).render_script("my block!", "/o", "/e", "/x", 1, "cmd")
    assert "#BSUB -W 1" in text.splitlines()
    assert "#BSUB -J my_block_" in text.splitlines()


def test_paths_with_spaces_are_quoted():
    text = LSFProvider().render_script("b", "/my dir/b.out", "/my dir/b.err", "/my dir/x", 1, "cmd")
    assert '#BSUB -o "/my dir/b.out"' in text.splitlines()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"queue": ""}, "queue"),
        ({"queue": "two words"}, "queue"),
        ({"project": 7}, "project"),
        ({"nnodes": "yes"}, "nnodes"),
        ({"exclusive": 1}, "exclusive"),
        ({"cores_per_node": 0}, "cores_per_node"),
        ({"mem_per_node": -1}, "mem_per_node"),
        ({"walltime": "soon"}, "walltime"),
        ({"nodes_per_block": 0}, "nodes_per_block"),
        ({"scheduler_options": ["#BSUB -x"]}, "scheduler_options"),
        ({"channel": "login1"}, "channel"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        LSFProvider(**kwargs)


# -- parsing recorded output ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample, job_id", [("lsf_bsub.txt", "473713"), ("lsf_bsub_default_queue.txt", "771278")]
)
def test_parse_recorded_bsub(sample, job_id):
    assert LSFProvider().parse_submit(CommandResult(0, recorded(sample), "")) == job_id


def test_parse_submit_without_job_id_raises():
    with pytest.raises(SubmitError, match="No such queue"):
        LSFProvider().parse_submit(CommandResult(0, "", recorded("lsf_bsub_no_queue.txt")))


def test_parse_recorded_bjobs_o_every_state():
    found = parse_lsf_status(recorded("lsf_bjobs_o.txt") + recorded("lsf_bjobs_o_stderr.txt"))
    summary = {job_id: (status.state, status.exit_code) for job_id, status in found.items()}
    assert summary == {
        "5001": (JobState.PENDING, None),
        "5002": (JobState.RUNNING, None),
        "5003": (JobState.COMPLETED, 0),
        "5004": (JobState.FAILED, 1),
        "5005": (JobState.TIMEOUT, 140),
        "5006": (JobState.CANCELLED, 130),
        "5007": (JobState.HELD, None),
        "5008": (JobState.HELD, None),
        "5009": (JobState.HELD, None),
        "5010": (JobState.FAILED, None),
        "5011": (JobState.UNKNOWN, None),
        "5012": (JobState.PENDING, None),
        "5013": (JobState.PENDING, None),
        "5014": (JobState.CANCELLED, 137),
        "5015": (JobState.FAILED, 139),
    }
    assert "5099" not in found  # "Job <5099> is not found" names no state
    assert "TERM_RUNLIMIT" in found["5005"].message
    assert "SSUSP" in found["5009"].message
    assert "exit code 139" in found["5015"].message


def test_parse_recorded_bjobs_default_table():
    found = parse_lsf_status(recorded("lsf_bjobs_default.txt"))
    assert {k: v.state for k, v in found.items()} == {"111": JobState.RUNNING, "473713": JobState.PENDING}


def test_unknown_state_is_unknown_with_its_name():
    (status,) = parse_lsf_status("7|BLAH|-|-\n").values()
    assert status.state is JobState.UNKNOWN and "BLAH" in status.message


def test_commands():
    provider = LSFProvider()
    assert provider.submit_command("/s/b 1.sh") == "bsub < '/s/b 1.sh'"
    assert provider.status_command(["1", "2"]) == (
        "bjobs -a -noheader -o 'jobid stat exit_code exit_reason delimiter='\"'\"'|'\"'\"'' 1 2"
    )
    assert provider.cancel_command(["1", "2"]) == "bkill 1 2"


# -- end to end against the fake LSF ------------------------------------------------------------


def test_job_goes_pending_running_completed(make, lsf, tmp_path):
    gate = tmp_path / "gate"
    provider = make(walltime="00:10:00", queue="short", worker_init="export GREETING=hello")
    lsf.pause()
    job_id = provider.submit(
        f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "$GREETING from $LSB_JOBID"', 1
    )
    assert wait_status(provider, job_id, [JobState.PENDING]).state is JobState.PENDING
    record = lsf.job(job_id)
    assert record["queue"] == "short" and record["walltime"] == 600
    lsf.resume()
    wait_status(provider, job_id, [JobState.RUNNING])
    gate.touch()
    status = wait_status(provider, job_id, [JobState.COMPLETED])
    assert status.exit_code == 0
    assert f"hello from {job_id}" in status.stdout_tail


def test_failing_command_is_failed_with_exit_code_and_stderr(make):
    provider = make()
    job_id = provider.submit("echo 'it broke' >&2; exit 7", 1)
    status = wait_status(provider, job_id, [JobState.FAILED])
    assert status.exit_code == 7
    assert "it broke" in status.stderr_tail


def test_cancel_running_job_then_cancel_again(make, lsf):
    provider = make()
    job_id = provider.submit("sleep 60", 1)
    wait_status(provider, job_id, [JobState.RUNNING])
    assert provider.cancel([job_id]) == [True]
    status = wait_status(provider, job_id, [JobState.CANCELLED])
    assert "TERM_OWNER" in status.message
    assert provider.cancel([job_id]) == [True]  # already ended: tolerated, bkill not even asked
    assert len(lsf.calls("bkill")) == 1


def test_cancel_pending_job(make, lsf):
    provider = make()
    lsf.pause()
    job_id = provider.submit("echo never", 1)
    wait_status(provider, job_id, [JobState.PENDING])
    assert provider.cancel([job_id]) == [True]
    assert wait_status(provider, job_id, [JobState.CANCELLED]).stdout_tail == ""


def test_cancel_of_job_that_just_finished_is_tolerated(make, lsf):
    provider = make()
    job_id = provider.submit("echo done", 1)
    # Watch the fake's own record, so the provider has not seen the job end before cancel().
    deadline = time.monotonic() + 30
    while lsf.job(job_id)["state"] != "finished":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert provider.cancel([job_id]) == [True]
    assert lsf.calls("bkill") == [["bkill", job_id]]  # bkill refused: "Job has already finished"
    status = wait_status(provider, job_id, [JobState.COMPLETED, JobState.CANCELLED])
    assert status.state is JobState.COMPLETED and status.exit_code == 0


def test_many_jobs_one_status_call(make, lsf):
    provider = make()
    ids = [provider.submit(f"exit {code}", 1) for code in (0, 3, 0, 5)]
    for job_id in ids:
        wait_status(provider, job_id, [JobState.COMPLETED, JobState.FAILED])
    more = [provider.submit("sleep 60", 1) for _ in range(2)]
    lsf.clear_calls()
    statuses = provider.status(ids + more + ["424242"])
    assert len(lsf.calls("bjobs")) == 1
    assert lsf.calls("bjobs")[0][5:] == more  # ended jobs are not asked about again, unknown ids never
    assert [s.state for s in statuses[:4]] == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.COMPLETED,
        JobState.FAILED,
    ]
    assert [s.exit_code for s in statuses[:4]] == [0, 3, 0, 5]
    assert all(s.state in (JobState.PENDING, JobState.RUNNING) for s in statuses[4:6])
    assert statuses[6].state is JobState.MISSING
    assert provider.cancel(more + ["424242"]) == [True, True, False]
    assert len(lsf.calls("bkill")) == 1


def test_walltime_kill_is_timeout(tmp_path):
    fake = FakeScheduler("lsf", tmp_path / "fast-lsf", seconds_per_minute=1)
    provider = LSFProvider(channel=fake.channel(), walltime=60)  # "-W 1": one second in this fake
    provider.script_dir = str(tmp_path / "blocks")
    try:
        job_id = provider.submit("sleep 60", 1)
        status = wait_status(provider, job_id, [JobState.TIMEOUT])
        assert "run limit" in status.message
    finally:
        fake.stop()


def test_refused_submit_raises_with_lsf_message(make):
    provider = make(queue="nosuchq")
    with pytest.raises(SubmitError, match="No such queue"):
        provider.submit("echo hi", 1)


def test_htex_runs_tasks_in_a_block_submitted_to_lsf(lsf, tmp_path):
    provider = LSFProvider(channel=lsf.channel(), walltime="00:10:00")
    with HighThroughputExecutor(max_workers=2, provider=provider, run_dir=tmp_path / "run") as ex:
        assert list(ex.map(pow, range(6), [2] * 6)) == [0, 1, 4, 9, 16, 25]
        (job,) = lsf.jobs()
        # The worker runs inside the job the fake LSF started for the block.
        assert ex.submit(os.getenv, "LSB_JOBID").result(timeout=30) == job["id"]
    assert [call[0] for call in lsf.calls("bsub")] == ["bsub"]
    assert [job["state"] for job in lsf.jobs()] == ["finished"]  # shutdown left nothing queued
