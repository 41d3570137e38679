"""CobaltProvider: blocks as Cobalt batch jobs (``qsub``, ``qstat``, ``qdel``), as on ALCF's Theta.

The job script carries ``#COBALT`` directives (time in minutes, node count, queue, project,
``--attrs``, output files) and ``qsub`` prints the new job's id.  ``qstat`` lists only jobs
still in the queue, with Cobalt's state names (``queued``, ``running``, ``user_hold``, …);
a job that left it is judged by the exit-code file its script writes.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence

from typing_extensions import Unpack

from .._validate import keyword_renamed
from ..errors import ConfigurationError
from .base import JobState, JobStatus
from .channels import CommandResult
from .cluster import ClusterProvider, SubmitError, WholeNodeShape

_STATES = {
    "queued": (JobState.PENDING, ""),
    "starting": (JobState.PENDING, "starting: Cobalt is preparing the job's nodes"),
    "running": (JobState.RUNNING, ""),
    "exiting": (JobState.RUNNING, "exiting: the job script ended, Cobalt is cleaning up"),
    "killing": (JobState.RUNNING, "killing: Cobalt is stopping the job"),
    "user_hold": (JobState.HELD, "held by its owner (user_hold)"),
    "admin_hold": (JobState.HELD, "held by an administrator (admin_hold)"),
    "dep_hold": (JobState.HELD, "waiting for the jobs it depends on (dep_hold)"),
    "maxrun_hold": (JobState.HELD, "held: the user's limit of running jobs is reached (maxrun_hold)"),
    "hold": (JobState.HELD, "held"),
    "dep_fail": (JobState.FAILED, "a job it depends on failed (dep_fail): it will never run"),
}

_JOB_ID = re.compile(r"^\s*(\d+)\s*$", re.MULTILINE)


def parse_qstat(stdout: str) -> dict[str, JobStatus]:
    """Parse Cobalt ``qstat`` tables (the default one or ``-f``), finding columns by their headers."""
    found: dict[str, JobStatus] = {}
    id_column = state_column = None
    for line in stdout.splitlines():
        fields = line.split()
        if not fields or set(line.strip()) == {"="}:
            continue
        if "JobID" in fields and "State" in fields:
            id_column, state_column = fields.index("JobID"), fields.index("State")
            continue
        if id_column is None or state_column is None or len(fields) <= max(id_column, state_column):
            continue
        job_id = fields[id_column]
        if job_id.isdigit():
            found[job_id] = cobalt_job_status(fields[state_column])
    return found


def cobalt_job_status(state: str) -> JobStatus:
    """Map one Cobalt job state (``queued``, ``running``, ``user_hold``, …) to a JobStatus."""
    mapped = _STATES.get(state.lower())
    if mapped is None:
        return JobStatus(JobState.UNKNOWN, message=f"Cobalt reports the unknown state {state!r}")
    return JobStatus(mapped[0], message=mapped[1])


def _check_word(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigurationError(f"{name} must be a non-empty string without spaces, or None; got {value!r}")
    return value


def _attrs(value: object) -> str | None:
    """Return ``--attrs`` text from ``"k=v:k2=v2"`` or a mapping."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
        if not pairs or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            raise ConfigurationError(f"attrs must map attribute names to string values, got {value!r}")
        bad = [f"{k}={v}" for k, v in pairs if not k or any(c in f"{k}{v}" for c in ":= \t\n")]
        if bad:
            raise ConfigurationError(f"attrs names and values may not hold ':', '=' or spaces; got {bad}")
        return ":".join(f"{k}={v}" for k, v in pairs)
    return _check_word("attrs", value)


class CobaltProvider(ClusterProvider):
    """Run each block as a Cobalt batch job.

    Args:
        queue: the queue to submit to (``#COBALT -q``), e.g. ``debug-cache-quad``.
        account: the project charged for the job (``#COBALT -A``).
        attrs: node attributes (``#COBALT --attrs``), as ``"mcdram=cache:numa=quad"`` or
            ``{"mcdram": "cache", "numa": "quad"}``.
        label: a short name used in job names and file names.
        **shape: the block-shape settings of :class:`~.cluster.ClusterProvider` but
            ``mem_per_node`` (channel, nodes_per_block, init_blocks, …; see
            :class:`~.cluster.WholeNodeShape`).  Here ``walltime`` is rounded up to whole
            minutes for ``#COBALT -t``; ``cores_per_node`` is the cores a pool may use, not
            sent to Cobalt, which allocates whole nodes; write ``scheduler_options`` as
            ``#COBALT ...`` lines.

    Cobalt allocates whole nodes, so there is no ``mem_per_node``.  It forgets a job as soon
    as it ends: the block's exit-code file tells a completed job from a failed one, and a job
    killed at its walltime reads FAILED (its script never finished).

    Raises:
        ConfigurationError: an argument has a value that cannot work.
    """

    scheduler = "Cobalt"

    def __init__(
        self,
        *,
        queue: str | None = None,
        account: str | None = None,
        attrs: str | Mapping[str, str] | None = None,
        label: str = "cobalt",
        **shape: Unpack[WholeNodeShape],
    ) -> None:
        if "mem_per_node" in shape:
            raise TypeError(
                "CobaltProvider() takes no mem_per_node: a Cobalt job owns its nodes' memory; drop the argument"
            )
        super().__init__(label=label, **shape)
        self.queue = _check_word("queue", queue)
        self.account = _check_word("account", account)
        self.attrs = _attrs(attrs)

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#COBALT`` lines for one block."""
        lines = [
            f"#COBALT -t {max(1, math.ceil(self.walltime_seconds / 60))}",
            f"#COBALT -n {self.nodes_per_block}",
        ]
        if self.queue:
            lines.append(f"#COBALT -q {self.queue}")
        if self.account:
            lines.append(f"#COBALT -A {self.account}")
        if self.attrs:
            lines.append(f"#COBALT --attrs {self.attrs}")
        lines.append(f"#COBALT -o {shlex.quote(stdout)}")
        lines.append(f"#COBALT -e {shlex.quote(stderr)}")
        return lines

    def submit_command(self, script_path: str) -> str:
        """Return ``qsub <script>``; Cobalt runs only executable scripts, so make it one first."""
        quoted = shlex.quote(script_path)
        return f"chmod u+x {quoted} && qsub {quoted}"

    def parse_submit(self, result: CommandResult) -> str:
        """Return the job id ``qsub`` prints on a line of its own."""
        ids = _JOB_ID.findall(result.stdout)
        if not ids:
            raise SubmitError(
                f"qsub printed no job id: stdout {result.stdout.strip()[-2000:]!r}, "
                f"stderr {result.stderr.strip()[-2000:]!r}"
            )
        return str(ids[-1])

    def status_command(self, job_ids: Sequence[str]) -> str:
        """Return one ``qstat`` call for every job."""
        return "qstat " + " ".join(shlex.quote(j) for j in job_ids)

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output; see :func:`parse_qstat`."""
        return parse_qstat(stdout)

    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """Return ``qdel`` for every job."""
        return "qdel " + " ".join(shlex.quote(j) for j in job_ids)
