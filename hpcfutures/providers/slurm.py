"""SlurmProvider: blocks as Slurm batch jobs (sbatch, squeue, sacct, scancel).

Status takes one ``squeue --states=all`` call for every live job: it lists finished jobs too,
with their raw exit status, for ``MinJobAge`` seconds (300 by default) after they end.  Jobs
older than that are looked up with one ``sacct`` call; a cluster without accounting storage
(no slurmdbd) answers "accounting storage is disabled", so ``sacct --completion`` (the
job-completion log) is tried next, and the job's exit-code file last (see
:mod:`.cluster`).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Sequence

from typing_extensions import Unpack

from .._validate import check_bool, keyword_renamed
from ..exits import exit_signal
from .base import JobState, JobStatus
from .channels import CommandResult
from .cluster import BlockShape, ClusterProvider, SubmitError, check_name

logger = logging.getLogger(__name__)

#: Every Slurm job state (long names, as ``squeue %T`` and ``sacct`` print them, and the
#: short codes of ``squeue %t``) and the JobState it means for a block.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING, "PD": JobState.PENDING,
    "CONFIGURING": JobState.PENDING, "CF": JobState.PENDING,  # nodes booting for it
    "REQUEUED": JobState.PENDING, "RQ": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING, "RF": JobState.PENDING,
    "RESIZING": JobState.RUNNING, "RS": JobState.RUNNING,
    "RUNNING": JobState.RUNNING, "R": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING, "CG": JobState.RUNNING,  # the script ended; epilogs run
    "SIGNALING": JobState.RUNNING, "SI": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING, "SO": JobState.RUNNING,
    "SUSPENDED": JobState.HELD, "S": JobState.HELD,
    "STOPPED": JobState.HELD, "ST": JobState.HELD,  # SIGSTOPped, keeps its nodes
    "REQUEUE_HOLD": JobState.HELD, "RH": JobState.HELD,
    "RESV_DEL_HOLD": JobState.HELD, "RD": JobState.HELD,
    "SPECIAL_EXIT": JobState.HELD, "SE": JobState.HELD,  # requeued and held after a special exit code
    "COMPLETED": JobState.COMPLETED, "CD": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "F": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED, "BF": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED, "NF": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "OOM": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED, "CA": JobState.CANCELLED,
    "PREEMPTED": JobState.CANCELLED, "PR": JobState.CANCELLED,  # stopped for another job, not our failure
    "REVOKED": JobState.CANCELLED, "RV": JobState.CANCELLED,  # a federation sibling ran it
    "TIMEOUT": JobState.TIMEOUT, "TO": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT, "DL": JobState.TIMEOUT,
}  # fmt: skip

#: Pending reasons that mean the job is held, not merely waiting its turn.
_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin")

#: Reasons squeue keeps showing for a job cancelled while pending; they say nothing about its end.
_PENDING_ONLY_REASONS = (
    "None",
    "Priority",
    "Resources",
    "Dependency",
    "BeginTime",
    "JobHeldUser",
    "JobHeldAdmin",
)

#: Status line fields; ``exit_code`` is the raw wait status (``768`` is exit code 3).
_SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|"
_SQUEUE_LINE = re.compile(
    r"^\s*(?P<id>\d+(?:[_+][0-9A-Za-z\[\]-]+)?)\|(?P<state>[A-Z_]+)\|(?P<reason>[^|]*)\|(?P<raw>-?\d*)\|?\s*$"
)

#: squeue's answer when none of the requested jobs is known any more (exit code 1).
_INVALID_JOB = "Invalid job id specified"

#: The line our status command prints when squeue failed for another reason (controller
#: down, timeout): every job then keeps an UNKNOWN state instead of counting as gone.
_UNREACHABLE = "hpcfutures: squeue failed:"

_SACCT_FORMAT = "JobID,State,ExitCode"



def _describe(state: str, exit_code: int | None, reason: str) -> str:
    parts = [state]
    if reason and reason not in ("None", "(null)"):
        parts.append(f"reason: {reason}")
    killer = exit_signal(exit_code)
    if killer is not None:
        parts.append(f"killed by {killer}")
    elif exit_code:
        parts.append(f"exit code {exit_code}")
    return ", ".join(parts)


def slurm_job_state(state: str, reason: str = "") -> JobState:
    """Return the JobState for a Slurm state (``RUNNING``, ``CA``, ``CANCELLED by 0``).

    A pending job whose reason says it is held (``JobHeldUser``, ``JobHeldAdmin``) is HELD;
    a state Slurm may add later maps to UNKNOWN.
    """
    word = state.split()[0] if state.split() else ""
    mapped = SLURM_STATES.get(word.rstrip("+"), JobState.UNKNOWN)  # sacct marks "CANCELLED+" when cut short
    if mapped is JobState.PENDING and reason.strip() in _HELD_REASONS:
        return JobState.HELD
    return mapped


def decode_wait_status(raw: int) -> int:
    """Return a Popen-style exit code from a raw wait status (squeue's ``exit_code`` field)."""
    if raw & 0x7F:
        return -(raw & 0x7F)
    return (raw >> 8) & 0xFF


def decode_exit_code(text: str) -> int | None:
    """Return a Popen-style exit code from Slurm's ``rc:signal`` (``3:0`` -> 3, ``0:15`` -> -15)."""
    match = re.fullmatch(r"\s*(\d+):(\d+)\s*", text)
    if not match:
        return None
    code, sig = int(match.group(1)), int(match.group(2))
    return -sig if sig else code


def parse_squeue(stdout: str) -> dict[str, JobStatus]:
    """Parse the output of :meth:`SlurmProvider.status_command` (``squeue -O``)."""
    out: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        match = _SQUEUE_LINE.match(line)
        if not match:
            continue
        state, reason = match.group("state"), match.group("reason").strip()
        job_state = slurm_job_state(state, reason)
        exit_code = None
        if job_state.terminal and match.group("raw"):
            exit_code = decode_wait_status(int(match.group("raw")))
            if job_state is JobState.CANCELLED and exit_code == 0:
                exit_code = None  # cancelled before it ran: there is no exit code
        if job_state.terminal and reason in _PENDING_ONLY_REASONS:
            reason = ""  # why it waited (Priority, Resources), not why it ended
        out[match.group("id")] = JobStatus(
            job_state, exit_code=exit_code, message=_describe(state, exit_code, reason)
        )
    return out


def parse_sacct(stdout: str) -> dict[str, JobStatus]:
    """Parse ``sacct --parsable2 --format=JobID,State,ExitCode`` output (allocations only).

    Step lines (``12.batch``, ``12.extern``) are skipped: the allocation's line carries the
    batch script's exit code.
    """
    out: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or not fields[0] or "." in fields[0] or not fields[0][0].isdigit():
            continue
        job_id, state, code_text = fields[0], fields[1], fields[2]
        exit_code = decode_exit_code(code_text)
        out[job_id] = JobStatus(
            slurm_job_state(state), exit_code=exit_code, message=_describe(state, exit_code, "")
        )
    return out



def format_slurm_time(seconds: int) -> str:
    """Return *seconds* in a form ``sbatch --time`` reads: ``HH:MM:SS``, or ``D-HH:MM:SS`` past a day."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms


class SlurmProvider(ClusterProvider):
    """Start blocks as Slurm batch jobs.

    Args:
        partition: the partition (queue) to submit to; None uses the cluster's default.
        account: the account charged for the jobs (``--account``).
        qos: the quality of service (``--qos``).
        constraint: node features the jobs need (``--constraint``, e.g. ``"haswell"``).
        exclusive: ask for whole nodes, shared with no other job (``--exclusive``).
        label: a short name used in job names and file names.
        **shape: the block-shape settings of
            :class:`~hpcfutures.providers.cluster.ClusterProvider` (channel, nodes_per_block,
            cores_per_node, mem_per_node, walltime, …; see
            :class:`~hpcfutures.providers.cluster.BlockShape`).  ``scheduler_options``
            lines are written as they are, e.g. ``"#SBATCH --gres=gpu:1"``.

    Each block asks for ``nodes_per_block`` nodes.  With ``cores_per_node`` it asks for one
    task per node with that many CPUs (``--ntasks-per-node=1 --cpus-per-task=N``): one pool
    per node, which is what :class:`~hpcfutures.launchers.SrunLauncher` starts.  Without it,
    it asks for a CPU per worker (``--ntasks-per-node=<workers per node>``).

    Raises:
        ConfigurationError: an option has the wrong type or a name holds whitespace.
    """

    scheduler = "Slurm"

    def __init__(
        self,
        *,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        constraint: str | None = None,
        exclusive: bool = False,
        label: str = "slurm",
        **shape: Unpack[BlockShape],
    ) -> None:
        super().__init__(label=label, **shape)
        self.partition = check_name("partition", partition, "debug")
        self.account = check_name("account", account, "proj123")
        self.qos = check_name("qos", qos, "normal")
        self.constraint = check_name("constraint", constraint, "haswell&ib")
        self.exclusive = check_bool("exclusive", exclusive)

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#SBATCH`` lines for one block."""
        lines = [
            f"#SBATCH --job-name={job_name}",
            f"#SBATCH --output={stdout}",
            f"#SBATCH --error={stderr}",
            f"#SBATCH --nodes={self.nodes_per_block}",
        ]
        if self.cores_per_node is not None:
            lines += ["#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={self.cores_per_node}"]
        else:
            lines.append(f"#SBATCH --ntasks-per-node={max(1, max_workers)}")
        if self.mem_per_node is not None:
            lines.append(f"#SBATCH --mem={max(1, round(self.mem_per_node * 1024))}M")
        lines.append(f"#SBATCH --time={format_slurm_time(self.walltime_seconds)}")
        for option, value in (
            ("partition", self.partition),
            ("account", self.account),
            ("qos", self.qos),
            ("constraint", self.constraint),
        ):
            if value is not None:
                lines.append(f"#SBATCH --{option}={value}")
        if self.exclusive:
            lines.append("#SBATCH --exclusive")
        return lines

    def submit_command(self, script_path: str) -> str:
        """Return ``sbatch --parsable <script>``."""
        return f"sbatch --parsable {shlex.quote(script_path)}"

    def parse_submit(self, result: CommandResult) -> str:
        """Return the id ``sbatch --parsable`` printed (``123`` or ``123;cluster``)."""
        for line in reversed(result.stdout.strip().splitlines()):
            job_id = line.strip().split(";")[0]
            if job_id.isdigit():
                return job_id
        raise SubmitError(
            f"sbatch printed no job id; stdout: {result.stdout!r}, stderr: {result.stderr.strip()!r}"
        )

    def status_command(self, job_ids: Sequence[str]) -> str:
        """Return one ``squeue --states=all`` command for every job in *job_ids*.

        squeue exits 1 with "Invalid job id specified" when it knows none of the jobs; that
        prints nothing, so every job counts as gone.  Any other failure prints a line that
        :meth:`parse_status` turns into UNKNOWN for each job, so a controller that does not
        answer never makes running blocks look finished.
        """
        ids = ",".join(job_ids)
        squeue = (
            f"squeue --noheader --states=all --jobs={shlex.quote(ids)} --Format={shlex.quote(_SQUEUE_FORMAT)}"
        )
        return (
            f'out=$({squeue} 2>&1); rc=$?; printf "%s\\n" "$out"; '
            f'if [ "$rc" -ne 0 ]; then case "$out" in *{shlex.quote(_INVALID_JOB)}*) ;; '
            f'*) echo {shlex.quote(_UNREACHABLE)} {shlex.quote(ids)}; exit "$rc" ;; esac; fi'
        )

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output; see :func:`parse_squeue`."""
        out = parse_squeue(stdout)
        lines = stdout.splitlines()
        failed = [line for line in lines if line.startswith(_UNREACHABLE)]
        if failed:
            error = " ".join(
                line.strip() for line in lines if line.strip() and not line.startswith(_UNREACHABLE)
            )
            for job_id in failed[-1][len(_UNREACHABLE) :].strip().split(","):
                out.setdefault(job_id, JobStatus(JobState.UNKNOWN, message=f"squeue failed: {error[-500:]}"))
        return out

    def accounting_command(self, job_ids: Sequence[str]) -> str | None:
        """Return ``sacct`` for jobs squeue forgot, falling back to ``sacct --completion``."""
        ids = shlex.quote(",".join(job_ids))
        sacct = f"sacct --noheader --parsable2 --allocations --jobs={ids} --format={_SACCT_FORMAT}"
        # Without slurmdbd plain sacct fails ("accounting storage is disabled"); the
        # job-completion log may still know the job.
        return f"{sacct} 2>/dev/null || {sacct} --completion"

    def parse_accounting(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`accounting_command`'s output; see :func:`parse_sacct`."""
        return parse_sacct(stdout)

    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """Return one ``scancel`` command for every job in *job_ids*."""
        return "scancel " + " ".join(shlex.quote(job_id) for job_id in job_ids)

    def __repr__(self) -> str:
        return (
            f"SlurmProvider(label={self.label!r}, partition={self.partition!r}, "
            f"nodes_per_block={self.nodes_per_block}, walltime={self.walltime!r}, "
            f"init_blocks={self.init_blocks}, min_blocks={self.min_blocks}, max_blocks={self.max_blocks}, "
            f"channel={self.channel!r})"
        )
