"""GridEngineProvider: blocks as (Son of / Univa / Altair) Grid Engine batch jobs.

Scripts carry ``#$`` directives and are submitted with ``qsub -terse``; one ``qstat -xml``
lists every job; jobs gone from the queue are looked up with ``qacct -j`` (exit status, and
whether Grid Engine killed the job for its time limit), else judged by the exit-code file
:class:`~.cluster.ClusterProvider` has every script write.

A job that Grid Engine could not start (an output file it cannot open, a missing working
directory, …) sits in the queue in state ``Eqw`` forever.  For a block that is a failure, so
this provider reports it as FAILED with Grid Engine's "error reason" and deletes the job,
which would otherwise stay in the queue after the executor has let go of it.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import replace

from typing_extensions import Unpack

from .._validate import keyword_renamed
from ..errors import ConfigurationError
from ..exits import signal_name
from .base import JobState, JobStatus
from .channels import CommandResult
from .cluster import BlockShape, ClusterProvider, SubmitError

logger = logging.getLogger(__name__)

# The status command first echoes the ids it asks about, so that the parser can tell "qstat
# failed" (every job's state unknown) from "the job left the queue".
_ASKED = "#hpcfutures-asked"
_FAILED = "#hpcfutures-qstat-failed"

# Grid Engine's ``failed`` code for a job the qmaster killed at its h_rt/h_cpu/h_vmem limit.
_FAILED_LIMIT = 37

# Characters ``qsub -N`` refuses in a job name.
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _state_of(code: str) -> tuple[JobState, str]:
    """Map one ``qstat`` state code (``qw``, ``hqw``, ``r``, ``Eqw``, ``dr``, …) to a JobState."""
    if "E" in code:
        return JobState.FAILED, f"Grid Engine could not start the job (state {code})"
    if "d" in code:  # being deleted: still holds its slots until the execd has killed it
        return (JobState.RUNNING if "r" in code or "t" in code else JobState.PENDING), f"being deleted (state {code})"
    if "s" in code or "S" in code or "T" in code:
        return JobState.HELD, f"suspended (state {code})"
    if "r" in code or "t" in code:  # a hold on a running job ("hr") only stops reruns
        return JobState.RUNNING, ""
    if "h" in code:
        return JobState.HELD, f"on hold (state {code}); `qrls` releases it"
    if "q" in code or "w" in code:
        return JobState.PENDING, ""
    return JobState.UNKNOWN, f"unrecognised Grid Engine state {code!r}"


# When an array job lists several tasks, the most telling state stands for the job.
_RANK = {
    JobState.FAILED: 0,
    JobState.RUNNING: 1,
    JobState.HELD: 2,
    JobState.PENDING: 3,
    JobState.UNKNOWN: 4,
}


def parse_qstat_xml(text: str) -> dict[str, JobStatus]:
    """Return job id -> status for every job in ``qstat -xml`` output.

    Raises:
        ValueError: *text* holds no ``qstat -xml`` document.
    """
    start = text.find("<?xml")
    if start < 0:
        start = text.find("<job_info")
    if start < 0:
        raise ValueError("no qstat -xml document in the output")
    end = text.rfind("</job_info>")
    try:
        root = ElementTree.fromstring(text[start : end + len("</job_info>")] if end >= 0 else text[start:])
    except ElementTree.ParseError as exc:
        raise ValueError(f"unparsable qstat -xml output: {exc}") from exc
    out: dict[str, JobStatus] = {}
    for entry in root.iter("job_list"):
        job_id = (entry.findtext("JB_job_number") or "").strip()
        code = (entry.findtext("state") or "").strip()
        if not job_id:
            continue
        state, message = _state_of(code)
        known = out.get(job_id)
        if known is None or _RANK[state] < _RANK[known.state]:
            out[job_id] = JobStatus(state, message=message)
    return out


def parse_qacct(text: str, walltime: str = "") -> dict[str, JobStatus]:
    """Return job id -> final status for every record in ``qacct -j`` output.

    A job with several records (array tasks, reruns) is judged by its last one.  *walltime*
    only goes into the message of a job killed at its limit.
    """
    records: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("====="):
            records.append({})
            continue
        key, _, value = line.strip().partition(" ")
        if key and records:
            records[-1][key] = value.strip()
    out: dict[str, JobStatus] = {}
    for record in records:
        job_id = record.get("jobnumber", "")
        status_text = record.get("exit_status", "").split()
        if not job_id or not status_text or not status_text[0].lstrip("-").isdigit():
            continue
        out[job_id] = _judge_record(int(status_text[0]), record.get("failed", "0"), walltime)
    return out


def _judge_record(exit_status: int, failed_text: str, walltime: str) -> JobStatus:
    code_text, _, reason = failed_text.partition(":")
    failed = int(code_text) if code_text.strip().isdigit() else 0
    reason = reason.strip()
    if failed == _FAILED_LIMIT:
        limit = f" of {walltime}" if walltime else ""
        return JobStatus(
            JobState.TIMEOUT,
            exit_code=_signal_code(exit_status),
            message=f"Grid Engine killed the job at its limit{limit} ({reason})",
        )
    if failed == 0 and exit_status == 0:
        return JobStatus(JobState.COMPLETED, exit_code=0)
    if failed == 0:
        return JobStatus(JobState.FAILED, exit_code=exit_status, message=f"the job exited with code {exit_status}")
    code = _signal_code(exit_status)
    if code < 0:
        name = signal_name(-code)
        return JobStatus(JobState.FAILED, exit_code=code, message=f"the job was killed by {name} (Grid Engine: {reason})")
    return JobStatus(
        JobState.FAILED,
        exit_code=exit_status,
        message=f"Grid Engine reports failure {failed} ({reason}), exit status {exit_status}",
    )


def _signal_code(exit_status: int) -> int:
    """Grid Engine reports death by signal N as 128 + N; JobStatus wants -N."""
    return -(exit_status - 128) if 128 < exit_status < 128 + 65 else exit_status



def parse_error_reasons(text: str) -> dict[str, str]:
    """Return job id -> the last "error reason" line of each job in ``qstat -j`` output."""
    reasons: dict[str, str] = {}
    job_id = ""
    for line in text.splitlines():
        if line.startswith("job_number:"):
            job_id = line.split(":", 1)[1].strip()
        elif line.startswith("error reason") and job_id:
            # "error reason    1:      11/21/2026 12:05:05 [0:22942]: error: can't chdir to …"
            match = re.search(r"\]:\s*(.*)$", line)
            reasons[job_id] = (match.group(1) if match else line.split(":", 1)[-1]).strip()
    return reasons


def _check_word(name: str, value: object, example: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigurationError(f"{name} must be a non-empty name without spaces (e.g. {example!r}) or None, got {value!r}")
    return value


class GridEngineProvider(ClusterProvider):
    """Start blocks as Grid Engine jobs (Son of Grid Engine, Univa/Altair Grid Engine, OGS).

    Args:
        queue: the cluster queue to submit to (``#$ -q``); None lets Grid Engine choose.
        project: the project to charge (``#$ -P``).
        parallel_environment: the parallel environment (``#$ -pe``) that grants a block
            several slots; ``qconf -spl`` lists a cluster's.  Needed for ``cores_per_node``
            and for blocks of more than one node.  A block asks for
            ``nodes_per_block * cores_per_node`` slots.
        memory_resource: the resource that carries ``mem_per_node`` (``h_vmem``,
            ``mem_free``, ``virtual_free``, …, whichever the site uses).  Grid Engine counts
            it per slot, so each slot asks for ``mem_per_node / cores_per_node``.
        label: a short name used in job names and file names.
        **shape: the block-shape settings of :class:`~.cluster.ClusterProvider` (channel,
            nodes_per_block, cores_per_node, mem_per_node, walltime, …; see
            :class:`~.cluster.BlockShape`).  ``scheduler_options`` lines must start with ``#$``.

    Raises:
        ConfigurationError: an argument has the wrong type or value, or ``cores_per_node``
            or ``nodes_per_block > 1`` is given without ``parallel_environment``.
    """

    scheduler = "Grid Engine"

    def __init__(
        self,
        *,
        label: str = "gridengine",
        queue: str | None = None,
        project: str | None = None,
        parallel_environment: str | None = None,
        memory_resource: str = "h_vmem",
        **shape: Unpack[BlockShape],
    ) -> None:
        super().__init__(label=label, **shape)
        self.queue = _check_word("queue", queue, "all.q")
        self.project = _check_word("project", project, "myproject")
        self.parallel_environment = _check_word("parallel_environment", parallel_environment, "smp")
        if not isinstance(memory_resource, str) or not _NAME_RE.fullmatch(memory_resource):
            raise ConfigurationError(
                f"memory_resource must be the name of a Grid Engine resource such as 'h_vmem' or 'mem_free', "
                f"got {memory_resource!r}"
            )
        self.memory_resource = memory_resource
        if self.parallel_environment is None:
            if self.cores_per_node is not None:
                raise ConfigurationError(
                    f"cores_per_node={self.cores_per_node} needs parallel_environment: Grid Engine grants a job "
                    "several slots only through a parallel environment (`qconf -spl` lists them), "
                    "e.g. parallel_environment='smp'"
                )
            if self.nodes_per_block > 1:
                raise ConfigurationError(
                    f"nodes_per_block={self.nodes_per_block} needs parallel_environment (one whose allocation_rule "
                    "spreads slots over hosts) and cores_per_node"
                )
        elif self.nodes_per_block > 1 and self.cores_per_node is None:
            raise ConfigurationError(
                f"nodes_per_block={self.nodes_per_block} needs cores_per_node, so that the block can ask its "
                f"parallel environment for nodes_per_block * cores_per_node slots"
            )
        for line in self.scheduler_options.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                raise ConfigurationError(
                    f"scheduler_options lines must be '#$ ...' directives, got {line.strip()!r}; "
                    "put shell commands in worker_init"
                )
        self._errored: set[str] = set()
        self._errored_lock = threading.Lock()  # guards _errored, filled by parse_status

    @property
    def slots(self) -> int:
        """How many Grid Engine slots one block asks for."""
        if self.parallel_environment is None:
            return 1
        return self.nodes_per_block * (self.cores_per_node or 1)

    # -- what ClusterProvider asks of a scheduler ----------------------------------------------

    @keyword_renamed("tasks_per_node", "max_workers")
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the ``#$`` lines of one block's script."""
        for what, path in (("stdout", stdout), ("stderr", stderr)):
            if any(c.isspace() for c in path) or ":" in path:
                raise ConfigurationError(
                    f"the block's {what} path {path!r} holds a space or ':', which a '#$ -o/-e' line cannot "
                    "carry; choose a script directory without them (remote_script_dir=...)"
                )
        name = _BAD_NAME_CHARS.sub("_", job_name)
        if not name[:1].isalpha():
            name = "b" + name  # qsub refuses names that start with a digit
        lines = [
            f"#$ -N {name}",
            f"#$ -o {stdout}",
            f"#$ -e {stderr}",
            "#$ -S /bin/bash",
            f"#$ -l h_rt={self.walltime}",
        ]
        if self.parallel_environment is not None:
            lines.append(f"#$ -pe {self.parallel_environment} {self.slots}")
        if self.mem_per_node is not None:
            # Grid Engine multiplies a per-slot request by the slots a job holds on a host.
            slots_per_node = (self.cores_per_node or 1) if self.parallel_environment else 1
            per_slot_mb = math.ceil(self.mem_per_node * 1024 / slots_per_node)
            lines.append(f"#$ -l {self.memory_resource}={per_slot_mb}M")
        if self.queue is not None:
            lines.append(f"#$ -q {self.queue}")
        if self.project is not None:
            lines.append(f"#$ -P {self.project}")
        return lines

    def submit_command(self, script_path: str) -> str:
        """``qsub -terse`` prints only the job id."""
        return f"qsub -terse {shlex.quote(script_path)}"

    def parse_submit(self, result: CommandResult) -> str:
        """Return the id ``qsub -terse`` printed (``42``; ``42.1-3:1`` for an array job)."""
        for line in reversed(result.stdout.splitlines()):
            match = re.match(r"\s*(\d+)(?:\.\S*)?\s*$", line)
            if match:
                return match.group(1)
        raise SubmitError(f"qsub printed no job id: stdout {result.stdout.strip()!r}, stderr {result.stderr.strip()!r}")

    def status_command(self, job_ids: Sequence[str]) -> str:
        """Echo the ids asked about, then one ``qstat -xml`` for all of this user's jobs."""
        asked = " ".join(shlex.quote(job_id) for job_id in job_ids)
        return f'echo "{_ASKED}" {asked}; qstat -xml || echo "{_FAILED} $?"'

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output (or plain ``qstat -xml`` output).

        When qstat failed or printed something unparsable, every job asked about is UNKNOWN
        rather than gone: a qmaster that is restarting must not fail running blocks.
        """
        asked: list[str] = []
        failure = ""
        for line in stdout.splitlines()[:1] + stdout.splitlines()[-1:]:
            if line.startswith(_ASKED):
                asked = line.split()[1:]
            elif line.startswith(_FAILED):
                failure = f"qstat exited with code {line.split()[-1]}"
        if not failure:
            try:
                listed = parse_qstat_xml(stdout)
            except ValueError as exc:
                failure = str(exc)
        if failure:
            logger.warning("%s: %s; the state of jobs %s is unknown for now", self.label, failure, " ".join(asked))
            return {job_id: JobStatus(JobState.UNKNOWN, message=f"{failure}; state unknown") for job_id in asked}
        mine = {job.job_id for job in self.jobs()}
        errored = {job_id for job_id in asked if job_id in mine and listed.get(job_id, _NONE).state is JobState.FAILED}
        if errored:
            with self._errored_lock:
                self._errored |= errored
        return listed

    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """One ``qdel`` for all jobs; it exits 1 when some already ended, which is tolerated."""
        return "qdel " + " ".join(shlex.quote(job_id) for job_id in job_ids)

    def accounting_command(self, job_ids: Sequence[str]) -> str | None:
        """``qacct -j`` for each job gone from the queue (it takes one id per call)."""
        ids = " ".join(shlex.quote(job_id) for job_id in job_ids)
        return f'for id in {ids}; do qacct -j "$id" 2>/dev/null; done; exit 0'

    def parse_accounting(self, stdout: str) -> dict[str, JobStatus]:
        """Parse ``qacct -j`` records; see :func:`parse_qacct`."""
        return parse_qacct(stdout, self.walltime)

    # -- jobs stuck in an error state ----------------------------------------------------------

    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """Ask the scheduler once about every job still live; see :meth:`ExecutionProvider.status`.

        A job of this provider found in Grid Engine's error state (``Eqw``) is reported as
        FAILED with Grid Engine's error reason, and deleted from the queue.
        """
        statuses = super().status(job_ids)
        with self._errored_lock:
            errored, self._errored = self._errored, set()
        if not errored:
            return statuses
        ids = sorted(errored, key=lambda job_id: (len(job_id), job_id))
        details = self.channel.run("qstat -j " + ",".join(ids), timeout=self.cmd_timeout)
        reasons = parse_error_reasons(details.stdout)
        deleted = self.channel.run(self.cancel_command(ids), timeout=self.cmd_timeout)
        if not deleted.ok:
            logger.warning("%s: could not delete jobs %s in error state: %s", self.label, ids, deleted.stderr.strip())
        updated: dict[str, JobStatus] = {}
        for job in self.jobs():
            if job.job_id in errored and job.final is not None and job.final.state is JobState.FAILED:
                reason = reasons.get(job.job_id, "`qstat -j` gave no error reason")
                job.final = replace(
                    job.final, message=f"{job.final.message}: {reason}; the job was deleted from the queue"
                )
                updated[job.job_id] = job.final
        return [updated.get(job_id, status) for job_id, status in zip(job_ids, statuses)]

_NONE = JobStatus(JobState.MISSING)
