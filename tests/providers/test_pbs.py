"""TorqueProvider and PBSProProvider: rendering, parsing, and blocks through real PBS commands.

Where the outputs come from:

- ``recorded/pbs_emulation_*.txt`` were recorded here (``recorded/pbs_record.sh``) from
  Debian's slurm-wlm-torque ``qsub``/``qstat``/``qdel`` on the real Slurm cluster; the
  end-to-end tests below run both providers through those same commands.
- No PBS Pro or Torque server can be installed on Debian 12, so ``pbs_pro_qstat_json.txt``
  is written to PBS Pro's documented ``qstat -f -F json -x`` format (a ``Jobs`` object of
  attribute objects; ``job_state`` F with ``Exit_status`` for finished jobs),
  ``pbs_pro_qstat_full.txt`` to its ``qstat -f`` text format (four-space indent, long
  values wrapped onto tab-led continuation lines), and ``pbs_torque_server_qstat_full.txt``
  to Torque's ``qstat -f`` format (``job_state = C`` with ``exit_status``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.base import JobState
from hpcfutures.providers.channels import CommandResult, LocalChannel
from hpcfutures.providers.cluster import SubmitError
from hpcfutures.providers.pbs import (
    PBS_STATES,
    PBSProProvider,
    TorqueProvider,
    decode_exit_status,
    parse_qstat_full,
    parse_qstat_json,
    parse_qstat_table,
)
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


# -- rendering and validation ---------------------------------------------------------------


def test_torque_directives() -> None:
    provider = TorqueProvider(
        queue="batch", account="proj7", nodes_per_block=2, cores_per_node=4, mem_per_node=2, walltime=5400
    )
    lines = provider.directives("hpcfutures.block-with-a-long-name", "/o/x.out", "/o/x.err", 3)
    assert lines == [
        "#PBS -N hpcfutures.bloc",  # Torque takes at most 15 characters
        "#PBS -o /o/x.out",
        "#PBS -e /o/x.err",
        "#PBS -l nodes=2:ppn=4",
        "#PBS -l mem=4096mb",  # Torque counts memory per job: 2 nodes x 2 GB
        "#PBS -l walltime=01:30:00",
        "#PBS -q batch",
        "#PBS -A proj7",
    ]
    assert "#PBS -l nodes=1:ppn=3" in TorqueProvider().directives("b", "o", "e", 3)  # a cpu per worker
    assert TorqueProvider().job_name("9lives") == "j9lives"  # names start with a letter


def test_pbspro_directives() -> None:
    provider = PBSProProvider(
        queue="workq",
        account="acct",
        project="climate",
        select_options="ngpus=1",
        place="scatter:excl",
        nodes_per_block=3,
        cores_per_node=64,
        mem_per_node=0.5,
        walltime="12:00:00",
        scheduler_options="#PBS -l filesystems=home",
    )
    script = provider.render_script("blk", "/o/blk.out", "/o/blk.err", "/o/blk.sh.exitcode", 4, "pool")
    for line in [
        "#PBS -N blk",
        "#PBS -l select=3:ncpus=64:mem=512mb:ngpus=1",
        "#PBS -l place=scatter:excl",
        "#PBS -l walltime=12:00:00",
        "#PBS -q workq",
        "#PBS -A acct",
        "#PBS -P climate",
        "#PBS -l filesystems=home",
    ]:
        assert line in script.splitlines(), line


def test_qsub_gets_the_output_paths_on_its_command_line() -> None:
    command = TorqueProvider().submit_command("/d/blk.1.sh")
    assert command == "qsub -o /d/blk.1.out -e /d/blk.1.err /d/blk.1.sh"


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: TorqueProvider(queue="two words"), "queue"),
        (lambda: TorqueProvider(account=7), "account"),
        (lambda: TorqueProvider(walltime="later"), "walltime"),
        (lambda: TorqueProvider(cores_per_node=-2), "cores_per_node"),
        (lambda: PBSProProvider(project=""), "project"),
        (lambda: PBSProProvider(select_options="ngpus=1 mem=2gb"), "select_options"),
        (lambda: PBSProProvider(place="pack it"), "place"),
        (lambda: PBSProProvider(json="yes"), "json"),
        (lambda: PBSProProvider(history=None), "history"),
        (lambda: PBSProProvider(nodes_per_block=0), "nodes_per_block"),
    ],
)
def test_bad_arguments_raise_configuration_error(make: Callable[[], object], word: str) -> None:
    with pytest.raises(ConfigurationError, match=word):
        make()


# -- parsing ----------------------------------------------------------------------------------


def test_parse_submit() -> None:
    provider = TorqueProvider()
    assert provider.parse_submit(CommandResult(0, recorded("pbs_emulation_qsub.txt"), "")) == "77"
    assert provider.parse_submit(CommandResult(0, "1234.pbs01.example.org\n", "")) == "1234.pbs01.example.org"
    with pytest.raises(SubmitError, match="no job id"):
        provider.parse_submit(CommandResult(0, "There was an error running the Slurm sbatch command.", ""))


def test_parse_recorded_emulation_full_and_table() -> None:
    full = parse_qstat_full(recorded("pbs_emulation_qstat_full.txt"))
    assert {job_id: attrs["job_state"] for job_id, attrs in full.items()} == {"77": "C", "78": "R", "79": "Q"}
    assert full["78"]["Resource_List.walltime"] == "00:05:00"
    assert parse_qstat_table(recorded("pbs_emulation_qstat_table.txt")) == {"77": "C", "78": "R", "79": "Q"}
    statuses = TorqueProvider().parse_status(recorded("pbs_emulation_qstat_full.txt"))
    assert statuses["78"].state is JobState.RUNNING and statuses["79"].state is JobState.PENDING
    # The emulation prints no exit status: a finished job not submitted by this provider has
    # no exit-code file to read, so it is left to the caller (not listed).
    assert "77" not in statuses


def test_recorded_emulation_limits() -> None:
    assert recorded("pbs_emulation_qstat_unknown.txt").strip() == "exit code: 153"  # silent
    assert "Unknown option: x" in recorded("pbs_emulation_qstat_x.txt")
    assert recorded("pbs_emulation_qdel_finished.txt").strip() == "exit code: 1"


def test_parse_pbspro_json() -> None:
    jobs = parse_qstat_json(recorded("pbs_pro_qstat_json.txt"))
    assert len(jobs) == 9 and jobs["1001.pbs01"]["Resource_List"]["select"] == "1:ncpus=4"
    statuses = PBSProProvider().parse_status(recorded("pbs_pro_qstat_json.txt"))
    expected = {
        "1001.pbs01": (JobState.RUNNING, None),
        "1002.pbs01": (JobState.PENDING, None),
        "1003.pbs01": (JobState.HELD, None),
        "1004.pbs01": (JobState.COMPLETED, 0),
        "1005.pbs01": (JobState.FAILED, 3),
        "1006.pbs01": (JobState.FAILED, -15),  # 256 + SIGTERM
        "1007.pbs01": (JobState.TIMEOUT, None),  # JOB_EXEC_KILL_WALLTIME
        "1009.pbs01": (JobState.RUNNING, None),  # E: exiting
    }
    assert {k: (statuses[k].state, statuses[k].exit_code) for k in expected} == expected
    assert "1008.pbs01" not in statuses  # finished without exit status: the exit-code file decides
    assert "Insufficient amount of resource" in statuses["1002.pbs01"].message
    assert statuses["1001"] == statuses["1001.pbs01"]  # qsub may print less of the server name


def test_parse_pbspro_text_with_wrapped_values() -> None:
    jobs = parse_qstat_full(recorded("pbs_pro_qstat_full.txt"))
    assert jobs["1001.pbs01"]["Error_Path"].endswith("hpcf.block.1.err")  # joined across the wrap
    statuses = PBSProProvider(json=False).parse_status(recorded("pbs_pro_qstat_full.txt"))
    assert statuses["1001.pbs01"].state is JobState.RUNNING
    assert (statuses["1004.pbs01"].state, statuses["1004.pbs01"].exit_code) == (JobState.COMPLETED, 0)
    assert (statuses["1005.pbs01"].state, statuses["1005.pbs01"].exit_code) == (JobState.FAILED, 2)


def test_parse_torque_server_full() -> None:
    statuses = TorqueProvider().parse_status(recorded("pbs_torque_server_qstat_full.txt"))
    got = {k: (v.state, v.exit_code) for k, v in statuses.items() if "." not in k}
    assert got == {
        "2001": (JobState.RUNNING, None),
        "2002": (JobState.COMPLETED, 0),
        "2003": (JobState.FAILED, -15),
        "2004": (JobState.PENDING, None),
        "2005": (JobState.PENDING, None),
    }
    assert statuses["2002.torque-srv"].state is JobState.COMPLETED


def test_every_job_state_letter_is_mapped() -> None:
    """Torque's C E H Q R T W S and PBS Pro's B E F H M Q R S T U W X."""
    assert set("CEHQRTWS") | set("BEFHMQRSTUWX") <= set(PBS_STATES)
    assert decode_exit_status(-27).state is JobState.FAILED and "mem" in decode_exit_status(-27).message
    assert decode_exit_status(-1).state is JobState.FAILED and decode_exit_status(-1).exit_code is None


# -- end to end through slurm-wlm-torque's qsub/qstat/qdel on the real Slurm cluster ------------


def wait_for(provider: TorqueProvider | PBSProProvider, job_ids: Sequence[str], done, timeout: float = 60.0):
    """Poll status until ``done(statuses)``; fail with the last statuses after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = provider.status(job_ids)
        if done(statuses):
            return statuses
        if time.monotonic() > deadline:
            pytest.fail(f"jobs {list(job_ids)} did not get there in {timeout:g} s: {statuses}")
        time.sleep(0.2)


@pytest.fixture(params=["torque", "pbspro-text"])
def pbs_provider(
    request,
    slurm_cluster: SlurmCluster,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> Iterator[TorqueProvider | PBSProProvider]:
    """TorqueProvider, and PBSProProvider reading ``qstat -f`` text (the emulation has no
    ``-F json`` and no ``-x``), both driving the Torque wrappers over the real cluster."""
    channel = LocalChannel(env=slurm_cluster.torque_env())
    provider: TorqueProvider | PBSProProvider
    if request.param == "torque":
        provider = TorqueProvider(channel=channel, walltime="00:05:00", cores_per_node=1, mem_per_node=0.25)
    else:
        provider = PBSProProvider(
            channel=channel,
            walltime="00:05:00",
            cores_per_node=1,
            mem_per_node=0.25,
            json=False,
            history=False,
        )
    provider.script_dir = str(tmp_path)
    yield provider
    ids = [job.job_id for job in provider.jobs()]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30, check=False)
        slurm_cluster.wait_empty(ids)


@pytest.mark.xdist_group("slurm")
def test_block_runs_then_completes(pbs_provider, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    job = pbs_provider.submit(f"echo pbs-block-up; while [ ! -e {gate} ]; do sleep 0.1; done", 1, "hello")
    assert job.isdigit()  # the wrapper prints Slurm's bare id
    wait_for(pbs_provider, [job], lambda s: s[0].state is JobState.RUNNING)
    gate.touch()
    (status,) = wait_for(pbs_provider, [job], lambda s: s[0].state.terminal)
    assert (status.state, status.exit_code) == (JobState.COMPLETED, 0), status
    assert status.stdout_tail == "pbs-block-up"


@pytest.mark.xdist_group("slurm")
def test_failing_block_reports_exit_code_and_stderr(pbs_provider) -> None:
    job = pbs_provider.submit("sh -c 'echo pool: no module named zmq >&2; exit 7'", 1, "fails")
    (status,) = wait_for(pbs_provider, [job], lambda s: s[0].state.terminal)
    assert (status.state, status.exit_code) == (JobState.FAILED, 7), status
    assert "no module named zmq" in status.stderr_tail


@pytest.mark.xdist_group("slurm")
def test_qdel_cancels_and_finished_jobs_are_tolerated(pbs_provider) -> None:
    done = pbs_provider.submit("true", 1, "quick")
    running = pbs_provider.submit("exec sleep 300", 1, "sleeper")
    wait_for(pbs_provider, [done, running], lambda s: s[0].state.terminal and s[1].state is JobState.RUNNING)
    assert pbs_provider.cancel([running, done, "999999"]) == [True, True, False]
    statuses = wait_for(pbs_provider, [running, done], lambda s: s[0].state.terminal)
    assert statuses[0].state is JobState.CANCELLED, statuses[0]
    assert statuses[1].state is JobState.COMPLETED
    assert pbs_provider.cancel([running]) == [True]


@pytest.mark.xdist_group("slurm")
def test_status_of_many_jobs_in_one_qstat(pbs_provider, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [pbs_provider.submit(f"echo job {i}", 1, f"many{i}") for i in range(3)]
    commands: list[str] = []
    real_run = pbs_provider.channel.run

    def counting_run(command: str, **kwargs):
        commands.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(pbs_provider.channel, "run", counting_run)
    statuses = pbs_provider.status([*jobs, "31337"])
    assert len([c for c in commands if "qstat" in c]) == 1, commands
    assert statuses[-1].state is JobState.MISSING
    final = wait_for(pbs_provider, jobs, lambda s: all(x.state.terminal for x in s))
    assert [(s.state, s.stdout_tail) for s in final] == [(JobState.COMPLETED, f"job {i}") for i in range(3)]


@pytest.mark.xdist_group("slurm")
def test_pbspro_json_status_against_the_emulation_is_unknown_not_finished(
    slurm_cluster: SlurmCluster,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    """The emulation's qstat has no ``-F json``/``-x``: with the defaults the provider
    submits and cancels, and reports the qstat error as UNKNOWN instead of a finished job."""
    provider = PBSProProvider(channel=LocalChannel(env=slurm_cluster.torque_env()), walltime=120)
    provider.script_dir = str(tmp_path)
    job = provider.submit("exec sleep 120", 1, "json")
    try:
        (status,) = provider.status([job])
        assert status.state is JobState.UNKNOWN, status
        assert "Unknown option" in status.message
    finally:
        assert provider.cancel([job]) == [True]
        slurm_cluster.wait_empty([job])


@pytest.mark.xdist_group("slurm")
def test_unreachable_server_is_unknown_not_gone(pbs_provider, tmp_path: Path) -> None:
    """A qstat that cannot reach its server (the real wrapper, with Slurm's controller port
    pointed at one nobody listens on) leaves a running block UNKNOWN, not finished."""
    job = pbs_provider.submit("exec sleep 300", 1, "steady")
    wait_for(pbs_provider, [job], lambda s: s[0].state is JobState.RUNNING)
    conf = Path("/etc/slurm/slurm.conf").read_text().replace("SlurmctldPort=6817", "SlurmctldPort=9")
    (tmp_path / "slurm.conf").write_text(conf)
    good = pbs_provider.channel
    pbs_provider.channel = LocalChannel(env={**good.env, "SLURM_CONF": str(tmp_path / "slurm.conf")})
    try:
        (status,) = pbs_provider.status([job])
    finally:
        pbs_provider.channel = good
    assert status.state is JobState.UNKNOWN, status
    assert "Problem loading jobs" in status.message
    assert pbs_provider.status([job])[0].state is JobState.RUNNING
