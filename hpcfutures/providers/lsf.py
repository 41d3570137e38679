"""LSFProvider: blocks as IBM Spectrum LSF batch jobs (``bsub``, ``bjobs``, ``bkill``).

The job script carries ``#BSUB`` directives and is submitted on ``bsub``'s standard input,
which is how LSF reads directives from a script.  One ``bjobs -a`` call with a custom
``-o`` format reports every job, finished ones included, with its exit code and LSF's
reason for ending it, so a block killed at its run limit reads TIMEOUT, not FAILED.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence

from typing_extensions import Unpack

from .._validate import check_bool, keyword_renamed
from ..errors import ConfigurationError
from .base import JobState, JobStatus
from .channels import CommandResult
from .cluster import BlockShape, ClusterProvider, SubmitError

#: ``bjobs -o`` fields the status command asks for, separated by ``|`` so that an exit
#: reason with spaces stays one field.
BJOBS_FORMAT = "jobid stat exit_code exit_reason delimiter='|'"

_STATES = {
    "PEND": JobState.PENDING,
    "PROV": JobState.PENDING,  # nodes being provisioned for the job
    "WAIT": JobState.PENDING,  # a chunk-job member waiting for its chunk
    "RUN": JobState.RUNNING,
    "DONE": JobState.COMPLETED,
    "EXIT": JobState.FAILED,
    # Suspended jobs resume when the user, an administrator or the load allows it.
    "PSUSP": JobState.HELD,
    "USUSP": JobState.HELD,
    "SSUSP": JobState.HELD,
    # LSF killed the job while its host was unreachable: it will not run again.
    "ZOMBI": JobState.FAILED,
    # mbatchd lost contact with the host; the job may still be running.
    "UNKWN": JobState.UNKNOWN,
}

_STATE_MESSAGES = {
    "PROV": "LSF is provisioning nodes for the job",
    "WAIT": "waiting for the other members of its chunk",
    "PSUSP": "suspended by its owner or an administrator while pending (PSUSP)",
    "USUSP": "suspended by its owner or an administrator while running (USUSP)",
    "SSUSP": "suspended by LSF (load or a preempting job) while running (SSUSP)",
    "ZOMBI": "LSF killed the job while it could not reach its execution host (ZOMBI)",
    "UNKWN": "LSF lost contact with the job's execution host (UNKWN)",
}

#: Exit reasons (``TERM_*``) for a job someone killed with ``bkill``.
_KILLED_REASONS = ("TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER", "TERM_FORCE_ADMIN")

_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")


def _check_word(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigurationError(f"{name} must be a non-empty string without spaces, or None; got {value!r}")
    return value


def _path(path: str) -> str:
    """Quote a path for a ``#BSUB`` line, where LSF reads double quotes but not shell quoting."""
    return f'"{path}"' if any(c.isspace() for c in path) else path


def parse_lsf_status(stdout: str) -> dict[str, JobStatus]:
    """Parse ``bjobs`` output: the ``-o``/``-noheader`` form this provider asks for, or the default table.

    Lines ``bjobs`` prints for jobs it does not know (``Job <7> is not found``) are skipped.
    """
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        if "|" in line:
            fields = [f.strip() for f in line.split("|")]
            job_id, stat = fields[0], fields[1] if len(fields) > 1 else ""
            code = fields[2] if len(fields) > 2 else "-"
            reason = fields[3] if len(fields) > 3 else "-"
        else:
            fields = line.split()
            if len(fields) < 2 or not fields[0].isdigit():
                continue  # the header, "Job <7> is not found", blank lines
            if fields[1] in _STATES:  # -o "jobid stat exit_code" without a delimiter
                job_id, stat = fields[0], fields[1]
                code = fields[2] if len(fields) > 2 else "-"
            elif len(fields) > 2 and fields[2] in _STATES:  # JOBID USER STAT QUEUE ...
                job_id, stat, code = fields[0], fields[2], "-"
            else:
                continue
            reason = "-"
        if job_id.isdigit() and stat:
            found[job_id] = lsf_job_status(stat, code, reason)
    return found


def lsf_job_status(stat: str, exit_code: str = "-", exit_reason: str = "-") -> JobStatus:
    """Map one job's ``bjobs`` fields (``STAT``, ``EXIT_CODE``, ``EXIT_REASON``) to a JobStatus."""
    code = int(exit_code) if exit_code.lstrip("-").isdigit() else None
    reason = "" if exit_reason in ("", "-") else exit_reason
    state = _STATES.get(stat, JobState.UNKNOWN)
    if state is JobState.COMPLETED:
        return JobStatus(JobState.COMPLETED, exit_code=0 if code is None else code)
    if stat == "EXIT":
        if reason.startswith("TERM_RUNLIMIT"):
            return JobStatus(
                JobState.TIMEOUT, exit_code=code, message=f"LSF killed the job at its run limit: {reason}"
            )
        if reason.startswith(_KILLED_REASONS):
            return JobStatus(JobState.CANCELLED, exit_code=code, message=f"killed with bkill: {reason}")
        detail = f"exit code {code}" if code is not None else "no exit code"
        return JobStatus(
            JobState.FAILED,
            exit_code=code,
            message=f"LSF reports EXIT ({detail})" + (f": {reason}" if reason else ""),
        )
    message = _STATE_MESSAGES.get(stat, "" if stat in _STATES else f"LSF reports the unknown state {stat!r}")
    return JobStatus(state, exit_code=code if state.terminal else None, message=message)


class LSFProvider(ClusterProvider):
    """Run each block as an LSF batch job.

    Args:
        queue: the queue to submit to (``#BSUB -q``); None for the site's default.
        project: the project the job is charged to (``#BSUB -P``).
        nnodes: ask for whole nodes with ``#BSUB -nnodes`` (IBM CSM systems such as Summit
            and Lassen).  Otherwise the block asks for ``nodes_per_block * cores_per_node``
            slots with ``-n`` and spreads them ``cores_per_node`` per host with
            ``-R "span[ptile=...]"`` (one slot per host when ``cores_per_node`` is None).
        exclusive: add ``#BSUB -x``, so no other job shares the block's hosts.
        label: a short name used in job names and file names.
        **shape: the block-shape settings of :class:`~.cluster.ClusterProvider` (channel,
            nodes_per_block, cores_per_node, mem_per_node, walltime, …; see
            :class:`~.cluster.BlockShape`).  ``mem_per_node`` is a memory limit in GB,
            rendered as ``#BSUB -M <MB>MB``.

    ``walltime`` is rounded up to whole minutes for ``#BSUB -W``.  ``scheduler_options``
    lines are added as they are, so write them as ``#BSUB ...`` directives.

    Raises:
        ConfigurationError: an argument has a value that cannot work.
    """

    scheduler = "LSF"

    def __init__(
        self,
        *,
        queue: str | None = None,
        project: str | None = None,
        nnodes: bool = False,
        exclusive: bool = False,
        label: str = "lsf",
        **shape: Unpack[BlockShape],
    ) -> None:
        super().__init__(label=label, **shape)
        self.queue = _check_word("queue", queue)
        self.project = _check_word("project", project)
        self.nnodes = check_bool("nnodes", nnodes)
        self.exclusive = check_bool("exclusive", exclusive)

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#BSUB`` lines for one block."""
        lines = [
            f"#BSUB -J {re.sub(r'[^A-Za-z0-9_.-]', '_', job_name)}",
            f"#BSUB -o {_path(stdout)}",
            f"#BSUB -e {_path(stderr)}",
            f"#BSUB -W {max(1, math.ceil(self.walltime_seconds / 60))}",
        ]
        if self.nnodes:
            lines.append(f"#BSUB -nnodes {self.nodes_per_block}")
        else:
            per_host = self.cores_per_node or 1
            lines.append(f"#BSUB -n {self.nodes_per_block * per_host}")
            lines.append(f'#BSUB -R "span[ptile={per_host}]"')
        if self.exclusive:
            lines.append("#BSUB -x")
        if self.mem_per_node is not None:
            lines.append(f"#BSUB -M {math.ceil(self.mem_per_node * 1024)}MB")
        if self.queue:
            lines.append(f"#BSUB -q {self.queue}")
        if self.project:
            lines.append(f"#BSUB -P {self.project}")
        return lines

    def submit_command(self, script_path: str) -> str:
        """Return ``bsub < script``: on standard input, bsub reads the script's ``#BSUB`` lines."""
        return f"bsub < {shlex.quote(script_path)}"

    def parse_submit(self, result: CommandResult) -> str:
        """Return the id from ``Job <123> is submitted to queue <normal>.``."""
        match = _SUBMITTED.search(result.stdout) or _SUBMITTED.search(result.stderr)
        if match is None:
            raise SubmitError(
                f"bsub printed no job id: stdout {result.stdout.strip()[-2000:]!r}, "
                f"stderr {result.stderr.strip()[-2000:]!r}"
            )
        return match.group(1)

    def status_command(self, job_ids: Sequence[str]) -> str:
        """Return one ``bjobs -a`` call (finished jobs included) for every job."""
        return f"bjobs -a -noheader -o {shlex.quote(BJOBS_FORMAT)} " + " ".join(
            shlex.quote(j) for j in job_ids
        )

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output; see :func:`parse_lsf_status`."""
        return parse_lsf_status(stdout)

    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """Return ``bkill`` for every job; it reports finished ones and kills the rest."""
        return "bkill " + " ".join(shlex.quote(j) for j in job_ids)
