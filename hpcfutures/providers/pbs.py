"""PBSProProvider and TorqueProvider: blocks as PBS batch jobs (qsub, qstat, qdel).

Both schedulers descend from OpenPBS and share ``qsub``/``qdel`` and the full ``qstat -f``
format (``Job Id: 12.server`` then indented ``attribute = value`` lines).  They differ in
the resource request (Torque: ``-l nodes=N:ppn=C``; PBS Pro: ``-l select=N:ncpus=C``), in
how long finished jobs stay visible (Torque lists them in state ``C`` for
``keep_completed`` seconds; PBS Pro only with ``qstat -x`` when job history is on), and in
PBS Pro's JSON output (``qstat -f -F json``).

A finished job is judged by its ``exit_status`` when qstat shows one: 0 completed, above
256 killed by signal ``status - 256``, negative when PBS itself ended or could not start
the job (``JOB_EXEC_*`` codes; PBS Pro's -29 is the walltime limit).  Without one (jobs
already purged, or Slurm's PBS wrappers, which print no exit status) the job's exit-code
file decides (see :mod:`.cluster`).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import Unpack

from .._validate import check_bool, keyword_renamed
from ..errors import ConfigurationError
from ..exits import signal_name
from .base import JobState, JobStatus
from .channels import CommandResult
from .cluster import BlockShape, ClusterProvider, SubmitError, check_name

logger = logging.getLogger(__name__)

#: PBS job_state letters (Torque and PBS Pro) and the JobState they mean.  C, F and X
#: (finished) are judged by the exit status instead, see :func:`pbs_job_status`.
PBS_STATES: dict[str, JobState] = {
    "Q": JobState.PENDING,  # queued
    "W": JobState.PENDING,  # waiting for its start time (qsub -a)
    "T": JobState.PENDING,  # in transit to another server
    "M": JobState.PENDING,  # PBS Pro: moved to another server
    "H": JobState.HELD,  # held by a user, an operator or the system
    "S": JobState.HELD,  # suspended
    "U": JobState.HELD,  # PBS Pro: suspended because the workstation is busy
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,  # exiting: the script ended, files are being staged out
    "B": JobState.RUNNING,  # PBS Pro: an array job whose subjobs started
    "C": JobState.COMPLETED,  # Torque: completed (or deleted, or failed)
    "F": JobState.COMPLETED,  # PBS Pro: finished (qstat -x)
    "X": JobState.COMPLETED,  # PBS Pro: a finished subjob
}
_FINISHED = frozenset({"C", "F", "X"})

#: PBS Pro's exit statuses for jobs it killed for exceeding a limit (JOB_EXEC_KILL_*).
_PBSPRO_LIMITS = {-24: "ncpus burst", -25: "ncpus sum", -26: "vmem", -27: "mem", -28: "cput", -29: "walltime"}

_JOB_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?$")


def decode_exit_status(status: int, scheduler: str = "PBS") -> JobStatus:
    """Return the final JobStatus a PBS ``exit_status``/``Exit_status`` value means."""
    if status == 0:
        return JobStatus(JobState.COMPLETED, exit_code=0, message="finished, exit status 0")
    if status >= 256:
        sig = status - 256
        return JobStatus(
            JobState.FAILED, exit_code=-sig, message=f"killed by {signal_name(sig)} (exit status {status})"
        )
    if status > 0:
        return JobStatus(JobState.FAILED, exit_code=status, message=f"exit status {status}")
    limit = _PBSPRO_LIMITS.get(status)
    if limit == "walltime":
        return JobStatus(
            JobState.TIMEOUT, message=f"killed by {scheduler} at its walltime (exit status {status})"
        )
    if limit:
        return JobStatus(
            JobState.FAILED,
            message=f"killed by {scheduler} for exceeding its {limit} limit (exit status {status})",
        )
    return JobStatus(
        JobState.FAILED, message=f"{scheduler} could not run the job or ended it (JOB_EXEC code {status})"
    )


def pbs_job_status(attributes: dict[str, Any], scheduler: str = "PBS") -> JobStatus | None:
    """Return the status one job's qstat attributes mean, or None when only its exit-code
    file can tell (finished, but qstat shows no exit status)."""
    state = str(attributes.get("job_state", "")).strip()
    comment = str(attributes.get("comment", "")).strip()
    if state in _FINISHED:
        raw = attributes.get("Exit_status", attributes.get("exit_status"))
        try:
            code = int(str(raw).strip()) if raw is not None else None
        except ValueError:
            code = None
        if code is None:
            return None
        status = decode_exit_status(code, scheduler)
        if comment:
            status = JobStatus(status.state, status.exit_code, f"{status.message}; {comment}")
        return status
    mapped = PBS_STATES.get(state, JobState.UNKNOWN)
    message = f"job_state {state}" + (f"; {comment}" if comment else "")
    return JobStatus(mapped, message=message)


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """Parse ``qstat -f`` text: job id -> {attribute: value}.

    Handles both layouts seen in the wild: attributes indented by four spaces (PBS Pro,
    Torque) or by a tab (Slurm's PBS wrappers), and long values that qstat wraps onto
    continuation lines that start with a tab and hold no ``=``.
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            last_key = ""
            continue
        if current is None or not line.strip():
            continue
        stripped = line.strip()
        key, sep, value = stripped.partition(" = ")
        if sep and " " not in key:
            current[key] = value.strip()
            last_key = key
        elif last_key and line[:1] in ("\t", " "):
            current[last_key] += stripped  # a wrapped value goes on
    return jobs


def parse_qstat_json(text: str) -> dict[str, dict[str, Any]]:
    """Parse PBS Pro's ``qstat -f -F json``: job id -> attributes (``{}`` when none listed)."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        # raw_decode: lines after the object (our own failure marker) are not JSON.
        data, _end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return {}
    jobs = data.get("Jobs") if isinstance(data, dict) else None
    return {str(k): v for k, v in jobs.items() if isinstance(v, dict)} if isinstance(jobs, dict) else {}


def parse_qstat_table(text: str) -> dict[str, str]:
    """Parse the default ``qstat`` table: job id -> job_state letter.

    The table (``Job id  Name  User  Time Use S Queue`` then a dashed line) has no exit
    status; the provider reads the full format, this serves scripts and tests.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and _JOB_ID.match(fields[0]) and len(fields[-2]) == 1:
            out[fields[0]] = fields[-2]
    return out


def _aliases(job_id: str) -> list[str]:
    """``12.srv.example.org`` -> itself, ``12.srv``, ``12``: qsub and qstat may differ in how
    much of the server name they print."""
    parts = job_id.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


#: The line our status command prints when qstat failed for another reason than unknown
#: jobs (server down): every job then keeps an UNKNOWN state instead of counting as gone.
_UNREACHABLE = "hpcfutures: qstat failed:"



class _PBSProvider(ClusterProvider):
    """What Torque and PBS Pro share: qsub with -o/-e, qstat -f parsing, qdel."""

    #: Longest job name the scheduler takes.
    max_name: ClassVar[int] = 15

    def __init__(
        self, *, queue: str | None, account: str | None, label: str, **shape: Unpack[BlockShape]
    ) -> None:
        super().__init__(label=label, **shape)
        self.queue = check_name("queue", queue, "batch")
        self.account = check_name("account", account, "proj123")

    def job_name(self, job_name: str) -> str:
        """Return *job_name* as PBS takes it: starting with a letter, at most :attr:`max_name` long."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", job_name)
        if not name[:1].isalpha():
            name = "j" + name
        return name[: self.max_name]

    def _common(self, job_name: str, stdout: str, stderr: str) -> list[str]:
        return [f"#PBS -N {self.job_name(job_name)}", f"#PBS -o {stdout}", f"#PBS -e {stderr}"]

    def _closing_directives(self) -> list[str]:
        lines = [f"#PBS -l walltime={self.walltime}"]
        if self.queue is not None:
            lines.append(f"#PBS -q {self.queue}")
        if self.account is not None:
            lines.append(f"#PBS -A {self.account}")
        return lines

    def submit_command(self, script_path: str) -> str:
        """Return ``qsub -o <out> -e <err> <script>``.

        The paths are in the script's ``#PBS -o/-e`` too; giving them on the command line as
        well is the same request to PBS, and the one Slurm's ``qsub`` wrapper honours.
        """
        # ClusterProvider names a block's files <base>.sh, <base>.out and <base>.err.
        base = script_path[:-3] if script_path.endswith(".sh") else script_path
        return "qsub -o {} -e {} {}".format(
            *(shlex.quote(p) for p in (base + ".out", base + ".err", script_path))
        )

    def parse_submit(self, result: CommandResult) -> str:
        """Return the job id qsub printed (``12.server``; Slurm's wrapper prints ``12``)."""
        for line in reversed(result.stdout.strip().splitlines()):
            if _JOB_ID.match(line.strip()):
                return line.strip()
        raise SubmitError(
            f"qsub printed no job id; stdout: {result.stdout!r}, stderr: {result.stderr.strip()!r}"
        )

    def _qstat(self, job_ids: Sequence[str]) -> str:
        return "qstat -f " + " ".join(shlex.quote(job_id) for job_id in job_ids)

    def status_command(self, job_ids: Sequence[str]) -> str:
        """Return one qstat call for every job, marking a failure that is not "unknown job".

        qstat exits non-zero when any job is unknown (finished and purged) yet still prints
        the others; that is normal.  Any other failure (no server) prints a line that
        :meth:`parse_status` turns into UNKNOWN for every job.
        """
        ids = " ".join(shlex.quote(job_id) for job_id in job_ids)
        return (
            f'err=$(mktemp); {self._qstat(job_ids)} 2>"$err"; rc=$?; cat "$err" >&2; '
            f'if [ "$rc" -ne 0 ] && [ -s "$err" ] && ! grep -qi "unknown job" "$err"; then '
            f'echo {shlex.quote(_UNREACHABLE)} {ids} "$(head -c 500 "$err" | tr "\\n" " ")"; fi; rm -f "$err"; exit "$rc"'
        )

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output (full ``qstat -f`` text)."""
        return self._statuses(parse_qstat_full(stdout), stdout)

    def _statuses(self, jobs: dict[str, dict[str, Any]], stdout: str) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        for job_id, attributes in jobs.items():
            status = pbs_job_status(attributes, self.scheduler) or self._from_exit_file(job_id)
            if status is not None:
                for alias in _aliases(job_id):
                    out.setdefault(alias, status)
        for line in stdout.splitlines():
            if line.startswith(_UNREACHABLE):
                words = line[len(_UNREACHABLE) :].split()
                asked = [w for w in words if _JOB_ID.match(w)]
                error = " ".join(w for w in words if not _JOB_ID.match(w))
                for job_id in asked:
                    out.setdefault(job_id, JobStatus(JobState.UNKNOWN, message=f"qstat failed: {error}"))
        return out

    def _from_exit_file(self, job_id: str) -> JobStatus | None:
        """The status of a job qstat lists as finished without an exit status, from the
        exit-code file its script writes; None for a job this provider did not submit."""
        known = {alias: job for job in self.jobs() for alias in _aliases(job.job_id)}
        job = next((known[alias] for alias in _aliases(job_id) if alias in known), None)
        if job is None:
            return None
        text = self.channel.read_tail(job.exit_file, 1).strip()
        if text.lstrip("-").isdigit():
            code = int(text)
            if code == 0:
                return JobStatus(JobState.COMPLETED, exit_code=0, message="finished with exit code 0")
            return JobStatus(
                JobState.FAILED, exit_code=code, message=f"the pool command exited with code {code}"
            )
        if job.cancelled:
            return JobStatus(JobState.CANCELLED, message="cancelled by this provider")
        return JobStatus(
            JobState.FAILED,
            message=f"{self.scheduler} lists job {job_id} as finished, but its script did not finish "
            "(killed by the scheduler or an administrator?)",
        )

    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """Return one ``qdel`` for every job (it complains about finished ones and goes on)."""
        return "qdel " + " ".join(shlex.quote(job_id) for job_id in job_ids)

class TorqueProvider(_PBSProvider):
    """Start blocks as Torque (or OpenPBS-style ``nodes=``) batch jobs.

    Args:
        queue: the queue to submit to (``-q``); None uses the server's default.
        account: the account charged (``-A``).
        label: a short name used in job names and file names.
        **shape: the block-shape settings of
            :class:`~hpcfutures.providers.cluster.ClusterProvider` (channel, nodes_per_block,
            cores_per_node, mem_per_node, walltime, …; see
            :class:`~hpcfutures.providers.cluster.BlockShape`); ``scheduler_options`` lines
            look like ``"#PBS -l gres=gpu"``.

    Each block asks for ``-l nodes=<nodes_per_block>:ppn=<cores_per_node>`` (or as many
    processors per node as workers when ``cores_per_node`` is None), and
    ``-l mem=`` for all its nodes together, as Torque counts memory per job.

    Raises:
        ConfigurationError: an option has the wrong type or a name holds whitespace.
    """

    scheduler = "Torque"
    max_name = 15

    def __init__(
        self,
        *,
        queue: str | None = None,
        account: str | None = None,
        label: str = "torque",
        **shape: Unpack[BlockShape],
    ) -> None:
        super().__init__(queue=queue, account=account, label=label, **shape)

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#PBS`` lines for one block."""
        ppn = self.cores_per_node if self.cores_per_node is not None else max(1, max_workers)
        lines = self._common(job_name, stdout, stderr)
        lines.append(f"#PBS -l nodes={self.nodes_per_block}:ppn={ppn}")
        if self.mem_per_node is not None:
            lines.append(f"#PBS -l mem={max(1, round(self.mem_per_node * 1024 * self.nodes_per_block))}mb")
        return lines + self._closing_directives()


class PBSProProvider(_PBSProvider):
    """Start blocks as PBS Professional (or OpenPBS) batch jobs.

    Args:
        queue: the queue to submit to (``-q``); None uses the server's default.
        account: the account string (``-A``).
        project: the project charged (``-P``), where the site uses projects.
        select_options: extra resources for each chunk, e.g. ``"ngpus=1"`` or
            ``"mpiprocs=4"``, appended to ``-l select=``.
        place: how chunks are placed (``-l place=``): ``"scatter"`` (default) puts each
            chunk on its own node, so the launcher starts one pool per node;
            ``"scatter:excl"`` also keeps other jobs off those nodes.
        json: read status with ``qstat -f -F json`` (PBS Pro 18 and later); False reads the
            text of ``qstat -f``, for older servers and for Slurm's PBS wrappers.
        history: add ``-x`` so qstat lists finished jobs with their exit status (when the
            server keeps job history); False for servers whose qstat has no ``-x``.
        label: a short name used in job names and file names.
        **shape: the block-shape settings of
            :class:`~hpcfutures.providers.cluster.ClusterProvider` (channel, nodes_per_block,
            cores_per_node, mem_per_node, walltime, …; see
            :class:`~hpcfutures.providers.cluster.BlockShape`).

    Each block asks for ``-l select=<nodes_per_block>:ncpus=<cores_per_node>[:mem=<GB>gb]``
    (as many cpus as workers per node when ``cores_per_node`` is None).

    Raises:
        ConfigurationError: an option has the wrong type or a name holds whitespace.
    """

    scheduler = "PBS Pro"
    max_name = 236

    def __init__(
        self,
        *,
        queue: str | None = None,
        account: str | None = None,
        project: str | None = None,
        select_options: str = "",
        place: str = "scatter",
        json: bool = True,
        history: bool = True,
        label: str = "pbspro",
        **shape: Unpack[BlockShape],
    ) -> None:
        super().__init__(queue=queue, account=account, label=label, **shape)
        self.project = check_name("project", project, "_pbs_project_default")
        if not isinstance(select_options, str) or not re.match(r"^[A-Za-z0-9_=:.+-]*$", select_options):
            raise ConfigurationError(
                f"select_options must be chunk resources joined by ':' such as 'ngpus=1:mpiprocs=4', got {select_options!r}"
            )
        if not isinstance(place, str) or not re.match(r"^[a-z]+(:[a-z_=A-Z0-9]+)*$", place):
            raise ConfigurationError(
                f"place must be a PBS placement such as 'scatter' or 'scatter:excl', got {place!r}"
            )
        check_bool("json", json)
        check_bool("history", history)
        self.select_options = select_options.strip(":")
        self.place = place
        self.json = json
        self.history = history

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#PBS`` lines for one block."""
        ncpus = self.cores_per_node if self.cores_per_node is not None else max(1, max_workers)
        chunk = [str(self.nodes_per_block), f"ncpus={ncpus}"]
        if self.mem_per_node is not None:
            chunk.append(f"mem={max(1, round(self.mem_per_node * 1024))}mb")
        if self.select_options:
            chunk.append(self.select_options)
        lines = self._common(job_name, stdout, stderr)
        lines += [f"#PBS -l select={':'.join(chunk)}", f"#PBS -l place={self.place}"]
        lines += self._closing_directives()
        if self.project is not None:
            lines.append(f"#PBS -P {self.project}")
        return lines

    def _qstat(self, job_ids: Sequence[str]) -> str:
        flags = "-f" + (" -F json" if self.json else "") + (" -x" if self.history else "")
        return f"qstat {flags} " + " ".join(shlex.quote(job_id) for job_id in job_ids)

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output: ``qstat -f -F json``, or the text form."""
        jobs: dict[str, dict[str, Any]] = dict(parse_qstat_json(stdout)) if self.json else {}
        if not self.json:
            jobs.update(parse_qstat_full(stdout))
        return self._statuses(jobs, stdout)
