"""CondorProvider: blocks as HTCondor vanilla-universe jobs (``condor_submit``, ``condor_q``, ``condor_rm``).

HTCondor does not read directives from a script: it takes a *submit description*.  The job
script this provider renders carries that description in ``#CONDOR`` lines (comments to
bash); the submit command extracts them into ``<script>.sub`` beside the script and hands
that file to ``condor_submit``, with the script as the argument of ``/bin/bash``.  So a
block stays one readable file, and the ``.sub`` file is there to inspect or resubmit.

Status comes from one ``condor_q`` call for the jobs still queued and one
``condor_history`` call for those that left the queue, both with ``-af:jt`` (the job id,
then tab-separated attributes, so a hold or remove reason with spaces stays one field).
The walltime is enforced by a ``periodic_remove`` expression; a job it removed reads
TIMEOUT.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Sequence

from typing_extensions import Unpack

from .._validate import check_bool, keyword_renamed
from ..errors import ConfigurationError
from .base import JobState, JobStatus
from .channels import CommandResult
from .cluster import BlockShape, ClusterProvider, SubmitError

#: Marks the submit-description lines inside a job script.
PREFIX = "#CONDOR "

#: The job attributes both status commands print after the job id, in this order.
ATTRIBUTES = ("JobStatus", "ExitCode", "ExitBySignal", "ExitSignal", "HoldReason", "RemoveReason")

_SUBMITTED = re.compile(r"(\d+) job\(s\) submitted to cluster (\d+)")
_TERSE = re.compile(r"^(\d+)\.(\d+) - \d+\.\d+\s*$", re.MULTILINE)
_JOB_ID = re.compile(r"\d+\.\d+")


def walltime_expression(seconds: int) -> str:
    """Return the ``periodic_remove`` expression that removes a job running longer than *seconds*."""
    return f"(JobStatus == 2) && ((time() - EnteredCurrentStatus) > {seconds})"


def quote_arguments(args: Sequence[str]) -> str:
    """Quote *args* in HTCondor's "new" ``arguments`` syntax: double quotes around the list,
    single quotes around an argument with spaces, every quote character doubled."""
    quoted = []
    for arg in args:
        text = arg.replace('"', '""').replace("'", "''")
        quoted.append(f"'{text}'" if (" " in text or "'" in arg or not text) else text)
    return '"' + " ".join(quoted) + '"'


def condor_job_status(fields: Sequence[str], walltime_expr: str | None = None) -> JobStatus:
    """Map one job's attributes (``JobStatus``, ``ExitCode``, … as in :data:`ATTRIBUTES`) to a JobStatus.

    Args:
        fields: the printed values; ``undefined`` (or a missing field) for an attribute the
            job does not have.
        walltime_expr: the ``periodic_remove`` expression the provider submitted; a job it
            removed is TIMEOUT, while one removed by another policy is FAILED.
    """
    values = dict(zip(ATTRIBUTES, [f.strip() for f in fields]))
    for name in ATTRIBUTES:
        if values.get(name, "") in ("", "undefined"):
            values[name] = ""
    code = values["JobStatus"]
    if code == "1":
        return JobStatus(JobState.PENDING, message="idle: waiting for a matching slot")
    if code == "2":
        return JobStatus(JobState.RUNNING)
    if code == "6":
        return JobStatus(JobState.RUNNING, message="transferring output")
    if code == "5":
        return JobStatus(JobState.HELD, message=f"held: {values['HoldReason'] or 'no reason given'}")
    if code == "7":
        return JobStatus(JobState.HELD, message="suspended")
    if code == "3":
        reason = values["RemoveReason"] or "removed"
        if walltime_expr is not None and walltime_expr in reason:
            return JobStatus(JobState.TIMEOUT, message=f"removed at its walltime: {reason}")
        if "condor_rm" in reason or reason == "removed":
            return JobStatus(JobState.CANCELLED, message=reason)
        return JobStatus(JobState.FAILED, message=f"removed by HTCondor: {reason}")
    if code == "4":
        if values["ExitBySignal"].lower() == "true" and values["ExitSignal"].isdigit():
            signal_number = int(values["ExitSignal"])
            return JobStatus(
                JobState.FAILED, exit_code=-signal_number, message=f"killed by signal {signal_number}"
            )
        exit_code = int(values["ExitCode"]) if values["ExitCode"].lstrip("-").isdigit() else None
        if exit_code == 0:
            return JobStatus(JobState.COMPLETED, exit_code=0)
        return JobStatus(
            JobState.FAILED, exit_code=exit_code, message=f"the job exited with code {exit_code}"
        )
    return JobStatus(JobState.UNKNOWN, message=f"HTCondor reports JobStatus {code or 'undefined'}")


def parse_condor_af(stdout: str, walltime_expr: str | None = None) -> dict[str, JobStatus]:
    """Parse ``condor_q``/``condor_history`` output printed with ``-af:jt`` and :data:`ATTRIBUTES`."""
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        fields = line.lstrip("\t").split("\t") if "\t" in line else line.split()
        if fields and _JOB_ID.fullmatch(fields[0].strip()):
            found[fields[0].strip()] = condor_job_status(fields[1:], walltime_expr)
    return found


def _check_line(name: str, value: object, forbidden: str = "") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value or any(c in value for c in forbidden):
        raise ConfigurationError(
            f"{name} must be a non-empty one-line string{' without ' + forbidden if forbidden else ''}, "
            f"or None; got {value!r}"
        )
    return value.strip()


class CondorProvider(ClusterProvider):
    """Run each block as an HTCondor vanilla-universe job in one slot.

    Args:
        requirements: a ClassAd expression the slot must satisfy (``requirements``).
        project: the accounting project, submitted as ``+ProjectName = "..."`` (the OSG
            convention).
        getenv: copy the submitter's environment into the job (``getenv = True``), so the
            pool finds the same Python; set False on pools that forbid it and activate an
            environment in ``worker_init`` instead.
        label: a short name used in job names and file names.
        **shape: the block-shape settings of :class:`~.cluster.ClusterProvider` (channel,
            init_blocks, max_blocks, walltime, …; see :class:`~.cluster.BlockShape`).
            Here ``cores_per_node`` is the slot's cores (``request_cpus``);
            ``mem_per_node`` its memory in GB (``request_memory`` in MB); ``walltime`` is
            enforced with ``periodic_remove`` (a job removed by it reads TIMEOUT);
            ``scheduler_options`` are extra submit-description lines
            (``+AccountingGroup = "x"``, ``accounting_group = y``) that come after this
            provider's lines, so they can override them; and ``nodes_per_block`` must be 1,
            as a vanilla-universe job holds one slot (ask for more blocks with
            ``max_blocks`` instead).

    The job runs ``/bin/bash <script>`` where the script was written: the submit host and
    the execute nodes must share that file system, as with every batch provider here.

    Raises:
        ConfigurationError: an argument has a value that cannot work.
    """

    scheduler = "HTCondor"

    def __init__(
        self,
        *,
        requirements: str | None = None,
        project: str | None = None,
        getenv: bool = True,
        label: str = "condor",
        **shape: Unpack[BlockShape],
    ) -> None:
        super().__init__(label=label, **shape)
        if self.nodes_per_block != 1:
            raise ConfigurationError(
                f"nodes_per_block must be 1 for CondorProvider (a vanilla-universe job holds one slot), "
                f"got {self.nodes_per_block}; raise max_blocks to run more pools"
            )
        self.requirements = _check_line("requirements", requirements)
        self.project = _check_line("project", project, forbidden='"')
        self.getenv = check_bool("getenv", getenv)
        self.walltime_expression = walltime_expression(self.walltime_seconds)

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#CONDOR`` submit-description lines for one block (``queue`` excluded)."""
        base = stdout[: -len(".out")] if stdout.endswith(".out") else stdout
        lines = [
            "universe = vanilla",
            "executable = /bin/bash",
            "transfer_executable = False",
            "should_transfer_files = IF_NEEDED",
            f"initialdir = {posixpath.dirname(stdout) or '.'}",
            f"output = {stdout}",
            f"error = {stderr}",
            f"log = {base}.condor.log",
            f"batch_name = {re.sub(r'[^A-Za-z0-9_.-]', '_', job_name)}",
            f"getenv = {self.getenv}",
            f"periodic_remove = {self.walltime_expression}",
        ]
        if self.cores_per_node is not None:
            lines.append(f"request_cpus = {self.cores_per_node}")
        if self.mem_per_node is not None:
            lines.append(f"request_memory = {math.ceil(self.mem_per_node * 1024)}")
        if self.requirements:
            lines.append(f"requirements = {self.requirements}")
        if self.project:
            lines.append(f'+ProjectName = "{self.project}"')
        return [PREFIX + line for line in lines]

    @keyword_renamed("tasks_per_node", "max_workers")
    def script_header(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """The submit description as ``#CONDOR`` lines: directives, the user's lines, ``queue`` last."""
        lines = self.directives(job_name, stdout, stderr, max_workers)
        lines += [PREFIX + line.strip() for line in self.scheduler_options.splitlines() if line.strip()]
        lines.append(PREFIX + "queue 1")
        return lines

    def submit_command(self, script_path: str) -> str:
        """Return the command that writes ``<script>.sub`` from the ``#CONDOR`` lines and submits it."""
        submit_file = posixpath.splitext(script_path)[0] + ".sub"
        arguments = f"arguments = {quote_arguments([script_path])}"
        return (
            f"sed -n {shlex.quote('s/^' + PREFIX + '//p')} {shlex.quote(script_path)} > {shlex.quote(submit_file)}"
            f" && condor_submit -append {shlex.quote(arguments)} {shlex.quote(submit_file)}"
        )

    def parse_submit(self, result: CommandResult) -> str:
        """Return ``<cluster>.0`` from ``1 job(s) submitted to cluster 42.`` (or ``-terse`` output)."""
        match = _SUBMITTED.search(result.stdout)
        if match is not None:
            return f"{match.group(2)}.0"
        terse = _TERSE.search(result.stdout)
        if terse is not None:
            return f"{terse.group(1)}.{terse.group(2)}"
        raise SubmitError(
            f"condor_submit printed no cluster id: stdout {result.stdout.strip()[-2000:]!r}, "
            f"stderr {result.stderr.strip()[-2000:]!r}"
        )

    def status_command(self, job_ids: Sequence[str]) -> str:
        """Return one ``condor_q`` call for every job still in the queue."""
        return " ".join(["condor_q", *map(shlex.quote, job_ids), "-af:jt", *ATTRIBUTES])

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output; see :func:`parse_condor_af`."""
        return parse_condor_af(stdout, self.walltime_expression)

    def accounting_command(self, job_ids: Sequence[str]) -> str | None:
        """Return one ``condor_history`` call for the jobs that left the queue."""
        clusters = sorted({job_id.split(".")[0] for job_id in job_ids}, key=int)
        constraint = " || ".join(f"ClusterId == {cluster}" for cluster in clusters)
        return " ".join(
            [
                "condor_history",
                "-constraint",
                shlex.quote(constraint),
                "-limit",
                str(len(job_ids)),
                "-af:jt",
                *ATTRIBUTES,
            ]
        )

    def parse_accounting(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`accounting_command`'s output like :meth:`parse_status`."""
        return parse_condor_af(stdout, self.walltime_expression)

    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """Return ``condor_rm`` for every job."""
        return "condor_rm " + " ".join(shlex.quote(j) for j in job_ids)
