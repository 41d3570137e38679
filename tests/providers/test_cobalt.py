"""Tests of CobaltProvider: the rendered ``#COBALT`` script, parsing of recorded Cobalt output, runs.

No Cobalt server can be installed here (ALCF's Cobalt is not packaged anywhere and was
retired with Theta), so the end-to-end tests drive fake ``qsub``, ``qstat`` and ``qdel``
(``tests/providers/fake_schedulers/cobalt/``, a directory of their own so they never shadow
Torque's ``qsub``) that keep a small job database, really run each submitted script, and
print the formats recorded from real Cobalt in ``tests/providers/recorded/cobalt_*.txt``.
Those samples follow Cobalt's own client test suite (``qsub`` printing the bare job id
``17``, the empty ``JobID  User  WallTime  Nodes  State  Location`` table with its ``=``
rule and the wider ``qstat -f`` header, the ``non-existant queue`` submit error), Cobalt's
``qdel`` client (``Deleted Jobs`` and a ``JobID  User`` table), a row recorded from a
real Theta queue by PanDA Harvester's Cobalt monitor (``77734  fcurtis  06:00:00  64
queued  None``), ALCF's user guides for the ``#COBALT`` directives, and the job states of
Cobalt's queue manager (queued, starting, running, exiting, killing, user_hold,
admin_hold, dep_hold, maxrun_hold, dep_fail).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers import cluster
from hpcfutures.providers.base import JobState
from hpcfutures.providers.channels import CommandResult
from hpcfutures.providers.cluster import SubmitError
from hpcfutures.providers.cobalt import CobaltProvider, parse_qstat

from .fake_schedulers import FakeScheduler, ProviderFactory, wait_status

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


@pytest.fixture
def cobalt(tmp_path, monkeypatch):
    # Cobalt forgets a job the moment it ends, so an unlisted job counts as pending for
    # SUBMIT_GRACE_SECONDS after its submission.  The fake lists every job from the moment
    # qsub returns, so the grace is not needed here and would only slow the tests down.
    monkeypatch.setattr(cluster, "SUBMIT_GRACE_SECONDS", 0.0)
    fake = FakeScheduler("cobalt", tmp_path / "cobalt-db")
    yield fake
    fake.stop()


@pytest.fixture
def make(tmp_path, cobalt):
    factory = ProviderFactory(CobaltProvider, cobalt, tmp_path / "blocks")
    yield factory
    factory.close()


def directives(provider: CobaltProvider) -> list[str]:
    text = provider.render_script(
        "blk", "/s/blk.1.out", "/s/blk.1.err", "/s/blk.1.sh.exitcode", 4, "pool --run"
    )
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    return [line for line in lines if line.startswith("#COBALT")]


# -- the job script ---------------------------------------------------------------------------


def test_script_has_default_directives_right_after_the_shebang():
    provider = CobaltProvider(walltime="01:00:00", worker_init="module load conda")
    text = provider.render_script(
        "blk", "/s/blk.1.out", "/s/blk.1.err", "/s/blk.1.sh.exitcode", 4, "pool --run"
    )
    lines = text.splitlines()
    assert lines[1:5] == [
        "#COBALT -t 60",
        "#COBALT -n 1",
        "#COBALT -o /s/blk.1.out",
        "#COBALT -e /s/blk.1.err",
    ]
    assert text.index("module load conda") < text.index("pool --run")


def test_script_renders_every_option():
    provider = CobaltProvider(
        nodes_per_block=128,
        walltime=90,
        queue="debug-cache-quad",
        account="Catalyst",
        attrs={"mcdram": "cache", "numa": "quad"},
        scheduler_options="#COBALT --jobname=hpcf",
    )
    assert directives(provider) == [
        "#COBALT -t 2",  # 90 s rounded up to whole minutes
        "#COBALT -n 128",
        "#COBALT -q debug-cache-quad",
        "#COBALT -A Catalyst",
        "#COBALT --attrs mcdram=cache:numa=quad",
        "#COBALT -o /s/blk.1.out",
        "#COBALT -e /s/blk.1.err",
        "#COBALT --jobname=hpcf",
    ]


def test_attrs_as_text_and_paths_with_spaces():
    provider = CobaltProvider(attrs="location=3824-3831")
    text = provider.render_script("b", "/my dir/b.out", "/my dir/b.err", "/x", 1, "cmd")
    assert "#COBALT --attrs location=3824-3831" in text.splitlines()
    assert "#COBALT -o '/my dir/b.out'" in text.splitlines()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"queue": "debug queue"}, "queue"),
        ({"account": ""}, "account"),
        ({"attrs": "a=1 b=2"}, "attrs"),
        ({"attrs": {"mcdram": 1}}, "attrs"),
        ({"attrs": {"a:b": "c"}}, "attrs"),
        ({"attrs": {}}, "attrs"),
        ({"nodes_per_block": 0}, "nodes_per_block"),
        ({"walltime": "1:2:3:4"}, "walltime"),
        ({"cmd_timeout": 0}, "cmd_timeout"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        CobaltProvider(**kwargs)


def test_memory_cannot_be_requested():
    with pytest.raises(TypeError, match="mem_per_node"):
        CobaltProvider(mem_per_node=16)  # type: ignore[call-arg]


# -- parsing recorded output ----------------------------------------------------------------------


def test_parse_recorded_qsub():
    assert CobaltProvider().parse_submit(CommandResult(0, recorded("cobalt_qsub.txt"), "")) == "17"


def test_parse_qsub_without_id_raises():
    with pytest.raises(SubmitError, match="non-existant queue"):
        CobaltProvider().parse_submit(CommandResult(1, "", recorded("cobalt_qsub_bad_queue.txt")))


def test_parse_recorded_qstat_every_state():
    found = parse_qstat(recorded("cobalt_qstat.txt"))
    assert {job_id: status.state for job_id, status in found.items()} == {
        "77734": JobState.PENDING,
        "77735": JobState.PENDING,
        "77736": JobState.RUNNING,
        "77737": JobState.RUNNING,
        "77738": JobState.RUNNING,
        "77739": JobState.HELD,
        "77740": JobState.HELD,
        "77741": JobState.HELD,
        "77742": JobState.HELD,
        "77743": JobState.FAILED,
    }
    assert "user_hold" in found["77739"].message
    assert "dep_fail" in found["77743"].message
    assert "killing" in found["77738"].message


def test_parse_recorded_qstat_full_and_empty():
    found = parse_qstat(recorded("cobalt_qstat_full.txt"))
    assert {k: v.state for k, v in found.items()} == {"362001": JobState.RUNNING, "362002": JobState.PENDING}
    assert parse_qstat(recorded("cobalt_qstat_empty.txt")) == {}


def test_unknown_state_is_unknown():
    (status,) = parse_qstat(
        "JobID  User  WallTime  Nodes  State  Location\n5  me  00:10:00  1  weird  None\n"
    ).values()
    assert status.state is JobState.UNKNOWN and "weird" in status.message


def test_commands():
    provider = CobaltProvider()
    assert provider.submit_command("/s/b.sh") == "chmod u+x /s/b.sh && qsub /s/b.sh"
    assert provider.status_command(["1", "2"]) == "qstat 1 2"
    assert provider.cancel_command(["1", "2"]) == "qdel 1 2"


# -- end to end against the fake Cobalt ---------------------------------------------------------


def test_job_goes_pending_running_completed(make, cobalt, tmp_path):
    gate = tmp_path / "gate"
    provider = make(nodes_per_block=2, walltime="00:20:00", queue="debug-cache-quad", attrs="mcdram=cache")
    cobalt.pause()
    job_id = provider.submit(
        f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "job $COBALT_JOBID on $COBALT_JOBSIZE nodes"', 1
    )
    wait_status(provider, job_id, [JobState.PENDING])
    record = cobalt.job(job_id)
    assert (record["queue"], record["nodes"], record["minutes"]) == ("debug-cache-quad", 2, 20)
    assert record["options"]["attrs"] == "mcdram=cache"
    cobalt.resume()
    wait_status(provider, job_id, [JobState.RUNNING])
    gate.touch()
    status = wait_status(provider, job_id, [JobState.COMPLETED])
    assert status.exit_code == 0
    assert f"job {job_id} on 2 nodes" in status.stdout_tail


def test_failing_command_is_failed_with_exit_code_and_stderr(make):
    provider = make()
    job_id = provider.submit("bash -c 'echo it broke >&2; exit 7'", 1)
    status = wait_status(provider, job_id, [JobState.FAILED])
    assert status.exit_code == 7
    assert "it broke" in status.stderr_tail


def test_held_job_is_held_then_cancelled(make, cobalt):
    provider = make(scheduler_options="#COBALT -h")
    job_id = provider.submit("echo never", 1)
    assert "user_hold" in wait_status(provider, job_id, [JobState.HELD]).message
    assert provider.cancel([job_id]) == [True]
    assert wait_status(provider, job_id, [JobState.CANCELLED]).stdout_tail == ""


def test_cancel_running_job_then_cancel_again(make, cobalt):
    provider = make()
    job_id = provider.submit("sleep 60", 1)
    wait_status(provider, job_id, [JobState.RUNNING])
    assert provider.cancel([job_id]) == [True]
    wait_status(provider, job_id, [JobState.CANCELLED])
    assert provider.cancel([job_id]) == [True]
    assert len(cobalt.calls("qdel")) == 1


def test_cancel_of_job_that_just_finished_is_tolerated(make, cobalt):
    provider = make()
    job_id = provider.submit("echo done", 1)
    deadline = time.monotonic() + 30
    while cobalt.job(job_id)["state"] != "finished":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert provider.cancel([job_id]) == [True]
    assert "not found" in cobalt.channel().run(f"qdel {job_id}").stdout
    status = wait_status(provider, job_id, [JobState.COMPLETED, JobState.CANCELLED])
    assert status.state is JobState.COMPLETED and "done" in status.stdout_tail


def test_many_jobs_one_status_call(make, cobalt):
    provider = make()
    ids = [provider.submit(f"bash -c 'exit {code}'", 1) for code in (0, 3, 0, 5)]
    for job_id in ids:
        wait_status(provider, job_id, [JobState.COMPLETED, JobState.FAILED])
    more = [provider.submit("sleep 60", 1) for _ in range(2)]
    cobalt.clear_calls()
    statuses = provider.status(ids + more + ["999"])
    assert cobalt.calls() == [["qstat", *more]]
    assert [s.state for s in statuses[:4]] == [JobState.COMPLETED, JobState.FAILED] * 2
    assert [s.exit_code for s in statuses[:4]] == [0, 3, 0, 5]
    assert all(s.state in (JobState.PENDING, JobState.RUNNING) for s in statuses[4:6])
    assert statuses[6].state is JobState.MISSING
    assert provider.cancel(more + ["999"]) == [True, True, False]
    assert len(cobalt.calls("qdel")) == 1


def test_walltime_kill_is_failed_without_exit_code(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "SUBMIT_GRACE_SECONDS", 0.0)
    fake = FakeScheduler("cobalt", tmp_path / "fast-cobalt", seconds_per_minute=1)
    provider = CobaltProvider(channel=fake.channel(), walltime=60)  # "-t 1": one second in this fake
    provider.script_dir = str(tmp_path / "blocks")
    try:
        job_id = provider.submit("sleep 60", 1)
        status = wait_status(provider, job_id, [JobState.FAILED])
        assert status.exit_code is None and "without finishing its script" in status.message
    finally:
        fake.stop()


def test_refused_submit_raises_with_cobalt_message(make):
    provider = make(queue="testing")
    with pytest.raises(SubmitError, match="non-existant queue .*testing"):
        provider.submit("echo hi", 1)
