"""Tests of CondorProvider: the submit description in the job script, parsing of recorded HTCondor output, runs.

No HTCondor pool can be brought up here (Debian 12 carries no HTCondor packages and PyPI's
``htcondor`` wheel holds only the Python bindings, not a schedd), so the end-to-end tests
drive fake ``condor_submit``, ``condor_q``, ``condor_history`` and ``condor_rm``
(``tests/providers/fake_schedulers/condor/``) that keep a small job database, really run
each submitted job, and print the formats recorded from real HTCondor in
``tests/providers/recorded/condor_*.txt``.  Those samples come from the HTCondor manual
(``condor_q``/``condor_history`` ``-autoformat`` with its ``j`` and ``t`` qualifiers and
``undefined`` for missing attributes, the JobStatus codes 1-7, ``condor_submit``'s
``-terse`` form), from Parsl's and dask-jobqueue's HTCondor code (``1 job(s) submitted to
cluster 118907.``, ``34524642.0 2`` from ``condor_q -af:jr JobStatus``), and from job
records other projects captured on real pools: hold and remove reasons such as ``via
condor_rm (by user tkadelka)``, ``Job has encountered an out-of-memory event.`` and ``The
job attribute PeriodicRemove expression '...' evaluated to TRUE``, and ``Couldn't
find/remove all jobs in cluster 45013273``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.base import JobState
from hpcfutures.providers.channels import CommandResult
from hpcfutures.providers.cluster import SubmitError
from hpcfutures.providers.condor import (
    CondorProvider,
    parse_condor_af,
    quote_arguments,
    walltime_expression,
)

from .fake_schedulers import FakeScheduler, ProviderFactory, wait_status

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


@pytest.fixture
def condor(tmp_path):
    fake = FakeScheduler("condor", tmp_path / "condor-db", MARKER="from-the-submit-host")
    yield fake
    fake.stop()


@pytest.fixture
def make(tmp_path, condor):
    factory = ProviderFactory(CondorProvider, condor, tmp_path / "blocks")
    yield factory
    factory.close()


def description(provider: CondorProvider) -> list[str]:
    text = provider.render_script(
        "blk", "/s/blk.1.out", "/s/blk.1.err", "/s/blk.1.sh.exitcode", 1, "pool --run"
    )
    return [line[len("#CONDOR ") :] for line in text.splitlines() if line.startswith("#CONDOR ")]


# -- the job script and its submit description -----------------------------------------------------


def test_description_has_defaults_and_queue_last():
    lines = description(CondorProvider(walltime="00:10:00"))
    assert lines[:4] == ["universe = vanilla", "executable = /bin/bash", "transfer_executable = False",
                         "should_transfer_files = IF_NEEDED"]  # fmt: skip
    assert "initialdir = /s" in lines
    assert "output = /s/blk.1.out" in lines
    assert "error = /s/blk.1.err" in lines
    assert "log = /s/blk.1.condor.log" in lines
    assert "batch_name = blk" in lines
    assert "getenv = True" in lines
    assert "periodic_remove = (JobStatus == 2) && ((time() - EnteredCurrentStatus) > 600)" in lines
    assert not [line for line in lines if line.startswith(("request_", "requirements", "+ProjectName"))]
    assert lines[-1] == "queue 1"


def test_description_renders_every_option_and_user_lines_before_queue():
    provider = CondorProvider(
        cores_per_node=8,
        mem_per_node=1.5,
        requirements='(OpSys == "LINUX") && (Arch == "X86_64")',
        project="ProjX",
        getenv=False,
        scheduler_options='+AccountingGroup = "group_a"\n\naccounting_group_user = me\n',
    )
    lines = description(provider)
    assert "request_cpus = 8" in lines
    assert "request_memory = 1536" in lines
    assert 'requirements = (OpSys == "LINUX") && (Arch == "X86_64")' in lines
    assert '+ProjectName = "ProjX"' in lines
    assert "getenv = False" in lines
    assert lines[-3:] == ['+AccountingGroup = "group_a"', "accounting_group_user = me", "queue 1"]


def test_script_keeps_the_pool_command_after_worker_init():
    text = CondorProvider(worker_init="source env/bin/activate").render_script(
        "b", "/o", "/e", "/x", 1, "pool"
    )
    assert text.index("#CONDOR queue 1") < text.index("source env/bin/activate") < text.index("\npool\n")


def test_submit_command_writes_sub_file_and_appends_arguments():
    command = CondorProvider().submit_command("/s/blk 1.sh")
    assert command == (
        "sed -n 's/^#CONDOR //p' '/s/blk 1.sh' > '/s/blk 1.sub'"
        " && condor_submit -append 'arguments = \"'\"'\"'/s/blk 1.sh'\"'\"'\"' '/s/blk 1.sub'"
    )


@pytest.mark.parametrize(
    "args, text",
    [
        (["/s/b.sh"], '"/s/b.sh"'),
        (["/my dir/b.sh"], "\"'/my dir/b.sh'\""),
        (["it's", 'say "hi"'], "\"'it''s' 'say \"\"hi\"\"'\""),
        ([""], "\"''\""),
    ],
)
def test_quote_arguments(args, text):
    assert quote_arguments(args) == text


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"nodes_per_block": 2}, "nodes_per_block"),
        ({"requirements": ""}, "requirements"),
        ({"requirements": "a\nb"}, "requirements"),
        ({"project": 'a"b'}, "project"),
        ({"getenv": "yes"}, "getenv"),
        ({"cores_per_node": 1.5}, "cores_per_node"),
        ({"walltime": -5}, "walltime"),
        ({"max_blocks": -1}, "max_blocks"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        CondorProvider(**kwargs)


# -- parsing recorded output ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample, job_id", [("condor_submit.txt", "118907.0"), ("condor_submit_terse.txt", "118907.0")]
)
def test_parse_recorded_condor_submit(sample, job_id):
    assert CondorProvider().parse_submit(CommandResult(0, recorded(sample), "")) == job_id


def test_parse_submit_without_cluster_raises():
    with pytest.raises(SubmitError, match="does not exist"):
        CondorProvider().parse_submit(CommandResult(0, "", recorded("condor_submit_error.txt")))


def test_parse_recorded_condor_q_every_queue_state():
    found = parse_condor_af(recorded("condor_q_af.txt"))
    assert {job_id: status.state for job_id, status in found.items()} == {
        "34524642.0": JobState.PENDING,
        "34524643.0": JobState.RUNNING,
        "34524644.0": JobState.HELD,
        "34524645.0": JobState.RUNNING,
        "34524646.0": JobState.HELD,
        "34524647.0": JobState.CANCELLED,
    }
    assert "out-of-memory event" in found["34524644.0"].message
    assert "suspended" in found["34524646.0"].message
    assert "transferring output" in found["34524645.0"].message
    assert "condor_rm" in found["34524647.0"].message


def test_parse_recorded_condor_history_endings():
    provider = CondorProvider(walltime="00:30:00")
    found = provider.parse_accounting(recorded("condor_history_af.txt"))
    summary = {job_id: (status.state, status.exit_code) for job_id, status in found.items()}
    assert summary == {
        "45013270.0": (JobState.COMPLETED, 0),
        "45013271.0": (JobState.FAILED, 1),
        "45013272.0": (JobState.FAILED, -9),
        "45013273.0": (JobState.CANCELLED, None),
        "45013274.0": (JobState.TIMEOUT, None),  # removed by this provider's walltime expression
        "45013275.0": (JobState.FAILED, None),  # removed by another policy
    }
    assert "signal 9" in found["45013272.0"].message
    assert "QDate" in found["45013275.0"].message


def test_another_walltime_is_not_mistaken_for_ours():
    found = CondorProvider(walltime="00:10:00").parse_accounting(recorded("condor_history_af.txt"))
    assert found["45013274.0"].state is JobState.FAILED  # 1800 s is not this provider's 600 s


def test_parse_recorded_space_separated_autoformat():
    found = parse_condor_af(recorded("condor_q_af_space.txt"))
    assert {k: v.state for k, v in found.items()} == {
        "34524642.0": JobState.RUNNING,
        "34524643.0": JobState.PENDING,
    }


def test_unknown_job_status_is_unknown():
    (status,) = parse_condor_af("9.0\t8\n").values()
    assert status.state is JobState.UNKNOWN and "8" in status.message


def test_walltime_expression():
    assert walltime_expression(90) == "(JobStatus == 2) && ((time() - EnteredCurrentStatus) > 90)"


# -- end to end against the fake HTCondor ---------------------------------------------------------


def test_job_goes_pending_running_completed(make, condor, tmp_path):
    gate = tmp_path / "gate"
    provider = make(cores_per_node=2, mem_per_node=0.5)
    condor.pause()
    job_id = provider.submit(f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "marker=$MARKER"', 1)
    assert job_id.endswith(".0")
    wait_status(provider, job_id, [JobState.PENDING])
    commands = condor.job(job_id.split(".")[0])["commands"]
    assert commands["request_cpus"] == "2" and commands["request_memory"] == "512"
    sub_files = list((tmp_path / "blocks").glob("*.sub"))
    assert len(sub_files) == 1 and sub_files[0].read_text().splitlines()[-1] == "queue 1"
    condor.resume()
    wait_status(provider, job_id, [JobState.RUNNING])
    gate.touch()
    status = wait_status(provider, job_id, [JobState.COMPLETED])
    assert status.exit_code == 0
    assert "marker=from-the-submit-host" in status.stdout_tail  # getenv = True


def test_getenv_false_runs_without_the_submitters_environment(make):
    provider = make(getenv=False)
    job_id = provider.submit('echo "marker=${MARKER:-unset}"', 1)
    assert "marker=unset" in wait_status(provider, job_id, [JobState.COMPLETED]).stdout_tail


def test_failing_command_is_failed_with_exit_code_and_stderr(make):
    provider = make()
    job_id = provider.submit("bash -c 'echo it broke >&2; exit 7'", 1)
    status = wait_status(provider, job_id, [JobState.FAILED])
    assert status.exit_code == 7
    assert "it broke" in status.stderr_tail


def test_cancel_running_job_then_cancel_again(make, condor):
    provider = make()
    job_id = provider.submit("sleep 60", 1)
    wait_status(provider, job_id, [JobState.RUNNING])
    assert provider.cancel([job_id]) == [True]
    status = wait_status(provider, job_id, [JobState.CANCELLED])
    assert "condor_rm" in status.message
    assert provider.cancel([job_id]) == [True]
    assert len(condor.calls("condor_rm")) == 1


def test_cancel_of_job_that_just_finished_is_tolerated(make, condor):
    provider = make()
    job_id = provider.submit("echo done", 1)
    deadline = time.monotonic() + 30
    while condor.job(job_id.split(".")[0])["state"] != "finished":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert provider.cancel([job_id]) == [True]
    assert condor.calls("condor_rm") == [["condor_rm", job_id]]  # it answered "Job ... not found"
    status = wait_status(provider, job_id, [JobState.COMPLETED, JobState.CANCELLED])
    assert status.state is JobState.COMPLETED and "done" in status.stdout_tail


def test_many_jobs_one_queue_call_and_one_history_call(make, condor):
    provider = make()
    ids = [provider.submit(f"bash -c 'exit {code}'", 1) for code in (0, 3, 0, 5)]
    running = [provider.submit("sleep 60", 1) for _ in range(2)]
    for job_id in running:
        wait_status(provider, job_id, [JobState.RUNNING])
    for job_id in ids:
        deadline = time.monotonic() + 30
        while condor.job(job_id.split(".")[0])["state"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    condor.clear_calls()
    statuses = provider.status(ids + running + ["99.0"])
    assert [c[0] for c in condor.calls()] == ["condor_q", "condor_history"]
    assert condor.calls("condor_q")[0][1:7] == ids + running
    assert [s.state for s in statuses[:4]] == [JobState.COMPLETED, JobState.FAILED] * 2
    assert [s.exit_code for s in statuses[:4]] == [0, 3, 0, 5]
    assert [s.state for s in statuses[4:6]] == [JobState.RUNNING] * 2
    assert statuses[6].state is JobState.MISSING
    assert provider.cancel(running + ["99.0"]) == [True, True, False]
    assert len(condor.calls("condor_rm")) == 1


def test_walltime_removal_is_timeout(make):
    provider = make(walltime=1)
    job_id = provider.submit("sleep 60", 1)
    status = wait_status(provider, job_id, [JobState.TIMEOUT])
    assert "PeriodicRemove" in status.message


def test_refused_submit_raises_with_condor_message(make):
    provider = make(requirements="(Memory > 1024")
    with pytest.raises(SubmitError, match="Parse error"):
        provider.submit("echo hi", 1)
