"""ClusterProvider: the shared machinery of every batch-scheduler provider.

A scheduler provider differs from another only in its job-script directives and in the
commands (and output formats) that submit, list and cancel jobs.  This module does the rest
once: validating the block shape, rendering the job script from a readable template,
writing it and copying it to the scheduler's host through a :class:`~.channels.Channel`,
asking about many jobs in one command, and filling each :class:`~.base.JobStatus` with the
job's exit code and the tails of its output files.

Every job script ends by writing the launcher's exit code to ``<script>.exitcode``.  A job
that left the scheduler's queue is judged by that file when the scheduler keeps no
accounting of its own: code 0 is COMPLETED, anything else FAILED, no file at all means the
scheduler killed the script (CANCELLED when we asked for it, else FAILED).
"""

from __future__ import annotations

import abc
import logging
import os
import re
import shlex
import shutil
import string
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from typing_extensions import TypedDict

from .._validate import check_count, check_number, check_seconds, check_text, keyword_renamed
from ..errors import ConfigurationError
from ..exits import describe_exit
from ..launchers.base import Launcher
from ..tails import TAIL_LINES
from .base import ExecutionProvider, JobState, JobStatus, TunnelChannel
from .channels import DEFAULT_COMMAND_TIMEOUT, Channel, ChannelError, CommandResult, LocalChannel

logger = logging.getLogger(__name__)

#: A job that is not listed this soon after submission counts as pending: some schedulers
#: take a moment to show a new job.
SUBMIT_GRACE_SECONDS = 10.0

#: The job script every provider renders.  ``${directives}`` holds the scheduler's lines
#: (``#SBATCH …``) followed by the user's ``scheduler_options``.
SCRIPT_TEMPLATE = string.Template(
    """#!/bin/bash
${directives}

# hpcfutures block "${job_name}", written by ${provider}.
# The user's worker_init lines:
${worker_init}

# When the block must end, so pools stop taking tasks they cannot finish.
export HPCFUTURES_BLOCK_END=$$(( $$(date +%s) + ${walltime_seconds} ))

(
${launch}
)
rc=$$?
echo "$$rc" > ${exit_file}
exit "$$rc"
"""
)


class SubmitError(OSError):
    """The scheduler refused a job: carries the command, its exit code and its stderr."""


_NAME = re.compile(r"^[^\s#]+$")


def check_name(name: str, value: object, example: str) -> str | None:
    """Return *value*, a scheduler name (queue, partition, account, …) for a directive, or None.

    Raises:
        ConfigurationError: *value* is not a string, or holds whitespace or ``#``, which would
            break the directive line; the message names parameter *name* and shows *example*.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigurationError(
            f"{name} must be a name without spaces (for example {example!r}) or None, got {value!r}"
        )
    return value


def parse_walltime(value: object, name: str = "walltime") -> int:
    """Return *value* in seconds: an int/float of seconds or ``[D-]HH:MM:SS``, ``MM:SS``.

    Raises:
        ConfigurationError: the value is not one of those forms or is not positive.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be seconds or 'HH:MM:SS', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", value)
        if not match:
            raise ConfigurationError(
                f"{name} must be seconds or 'HH:MM:SS' (optionally 'D-HH:MM:SS'), got {value!r}"
            )
        days, first, second, third = match.groups()
        parts = [int(p) for p in (first, second, third) if p is not None]
        if len(parts) == 3:
            seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
        elif len(parts) == 2:
            seconds = parts[0] * 60 + parts[1]
        else:
            seconds = parts[0] * 60  # a bare number in a string means minutes, as sbatch reads it
        seconds += int(days or 0) * 86400
    else:
        raise ConfigurationError(f"{name} must be seconds or 'HH:MM:SS', got {type(value).__name__}")
    if seconds <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")
    return seconds


def format_walltime(seconds: int) -> str:
    """Return *seconds* as ``HH:MM:SS`` (hours may exceed 24), the form every scheduler reads."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


class WholeNodeShape(TypedDict, total=False):
    """The block-shape settings of :class:`ClusterProvider` but ``mem_per_node``.

    For schedulers that hand a job whole nodes and take no memory request (Cobalt): their
    providers accept these as ``**shape: Unpack[WholeNodeShape]``.  See :class:`BlockShape`.
    """

    channel: Channel | None
    nodes_per_block: int
    cores_per_node: int | None
    walltime: str | int | float
    init_blocks: int
    min_blocks: int
    max_blocks: int
    parallelism: float
    worker_init: str
    scheduler_options: str
    launcher: Launcher | None
    cmd_timeout: float
    remote_script_dir: str | None


class BlockShape(WholeNodeShape, total=False):
    """The keyword arguments every scheduler provider passes on to :class:`ClusterProvider`.

    They say where scheduler commands run and what each block asks for (nodes, cores,
    memory, time, how many blocks); :class:`ClusterProvider` documents and validates each one
    and gives its default.  A provider takes them as ``**shape: Unpack[BlockShape]``, so it
    states only its own options while type checkers still see every name and type.
    """

    mem_per_node: float | None


@dataclass(eq=False)  # identity, so jobs can be set members and dict keys
class ClusterJob:
    """What a cluster provider remembers about one job it submitted."""

    job_id: str
    job_name: str
    script: str  # the script's path on the scheduler's host
    stdout: str
    stderr: str
    exit_file: str
    submitted: float
    cancelled: bool = False
    last: JobStatus | None = None  # the newest non-terminal status
    final: JobStatus | None = None  # set once the job ended; never asked about again


class ClusterProvider(ExecutionProvider):
    """Base of providers that submit job scripts to a batch scheduler through a channel.

    Args:
        label: a short name used in job names and file names.
        channel: where scheduler commands run; :class:`LocalChannel` by default.
        nodes_per_block: nodes each block (job) asks for.
        cores_per_node: cores to ask for on each node; None leaves it to the scheduler.
        mem_per_node: memory per node in GB; None leaves it to the scheduler.
        walltime: the job's time limit, seconds or ``HH:MM:SS``.
        init_blocks, min_blocks, max_blocks, parallelism: see :class:`ExecutionProvider`.
        worker_init: shell lines run before the pool starts (``module load …``).
        scheduler_options: extra directive lines put in the script as they are.
        launcher: how the pool command starts on every node of the block.
        cmd_timeout: seconds each scheduler command may take.
        remote_script_dir: where scripts and job output go on the scheduler's host; by
            default the executor's block directory (right for a local channel or a shared
            file system), or ``~/.hpcfutures/<label>`` for a remote channel.

    Every argument but ``label`` is a block-shape setting: scheduler providers accept them as
    ``**shape: Unpack[BlockShape]`` (see :class:`BlockShape`) and pass them on unchanged.

    Subclasses set :attr:`scheduler` and implement :meth:`directives`,
    :meth:`submit_command`, :meth:`parse_submit`, :meth:`status_command`,
    :meth:`parse_status` and :meth:`cancel_command`.
    """

    #: The scheduler's name, for messages ("Slurm", "PBS Pro", …).
    scheduler: ClassVar[str] = "a scheduler"
    #: Every scheduler job has a time limit: ``walltime``, in seconds.
    walltime_seconds: int

    def __init__(
        self,
        *,
        label: str,
        channel: Channel | None = None,
        nodes_per_block: int = 1,
        cores_per_node: int | None = None,
        mem_per_node: float | None = None,
        walltime: str | int | float = "00:30:00",
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1.0,
        worker_init: str = "",
        scheduler_options: str = "",
        launcher: Launcher | None = None,
        cmd_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        remote_script_dir: str | None = None,
    ) -> None:
        super().__init__(
            label=label,
            init_blocks=init_blocks,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            nodes_per_block=nodes_per_block,
            worker_init=worker_init,
            launcher=launcher,
            parallelism=parallelism,
        )
        if channel is None:
            channel = LocalChannel()
        elif not isinstance(channel, Channel):
            raise ConfigurationError(
                f"channel must be an hpcfutures Channel (LocalChannel() or SSHChannel(...)), got {channel!r}"
            )
        check_count("cores_per_node", cores_per_node, 1, optional=True)
        check_number("mem_per_node", mem_per_node, unit="GB", optional=True)
        if not isinstance(scheduler_options, str):
            raise ConfigurationError(
                f"scheduler_options must be a string of directive lines, got {type(scheduler_options).__name__}"
            )
        check_seconds("cmd_timeout", cmd_timeout)
        if remote_script_dir is not None and not isinstance(remote_script_dir, str):
            raise ConfigurationError(f"remote_script_dir must be a path string or None, got {remote_script_dir!r}")
        self.channel = channel
        self.cores_per_node = cores_per_node
        self.mem_per_node = mem_per_node
        self.walltime_seconds = parse_walltime(walltime)
        self.walltime = format_walltime(self.walltime_seconds)
        self.scheduler_options = scheduler_options
        self.cmd_timeout = float(cmd_timeout)
        self.remote_script_dir = remote_script_dir
        self._jobs: dict[str, ClusterJob] = {}
        # Must be held while reading or changing _jobs, _counter, _private_dir and _closed.
        self._jobs_lock = threading.Lock()
        self._counter = 0
        self._private_dir: str | None = None
        self._closed = False

    # -- what a scheduler provider supplies ---------------------------------------------------

    @abc.abstractmethod
    def directives(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """Return the scheduler directive lines (``#SBATCH --nodes=2``, …) for one block.

        *max_workers* is how many workers each node's pool runs (see :meth:`submit`); a
        provider whose scheduler counts CPUs or tasks per node may ask for that many.
        """

    @abc.abstractmethod
    def submit_command(self, script_path: str) -> str:
        """Return the shell command that submits the script at *script_path*."""

    @abc.abstractmethod
    def parse_submit(self, result: CommandResult) -> str:
        """Return the job id from a successful submit command's output.

        Raises:
            SubmitError: no job id can be found in the output.
        """

    @abc.abstractmethod
    def status_command(self, job_ids: Sequence[str]) -> str:
        """Return one shell command that lists the state of every job in *job_ids*."""

    @abc.abstractmethod
    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command`'s output: job id -> status, for the jobs it lists."""

    @abc.abstractmethod
    def cancel_command(self, job_ids: Sequence[str]) -> str:
        """Return one shell command that cancels every job in *job_ids*."""

    def empty_queue_error(self, result: CommandResult) -> bool:
        """Whether a failed status command only means "none of these jobs is queued".

        Some schedulers fail ``squeue --jobs=…``/``qstat id…`` when every job asked about has
        left the queue; a provider recognises that here, so the jobs are judged by accounting
        or their exit-code files.  By default a failed status command counts as no answer.
        """
        return False

    def accounting_command(self, job_ids: Sequence[str]) -> str | None:
        """Return a command that reports jobs gone from the queue (``sacct``), or None."""
        return None

    def parse_accounting(self, stdout: str) -> dict[str, JobStatus]:
        """Parse :meth:`accounting_command`'s output like :meth:`parse_status`."""
        return {}

    # -- the ExecutionProvider interface --------------------------------------------------------

    @keyword_renamed("tasks_per_node", "max_workers")
    def submit(self, command: str, max_workers: int, job_name: str = "hpcfutures.block") -> str:
        """Render the job script, put it on the scheduler's host, submit it, return the job id.

        *max_workers* is how many workers each node's pool runs; see
        :meth:`ExecutionProvider.submit`.

        Raises:
            SubmitError: the scheduler refused the job (its stderr is in the message).
            ChannelError: the channel could not reach the scheduler's host.
            RuntimeError: the provider was closed.
        """
        check_text("command", command, what="a non-empty shell command")
        with self._jobs_lock:
            if self._closed:
                raise RuntimeError(f"cannot submit a block: {type(self).__name__} {self.label!r} is closed")
            self._counter += 1
            serial = self._counter
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", job_name)
        local_dir = self._local_dir()
        remote_dir = self._remote_dir(local_dir)
        base = f"{safe_name}.{serial}"
        stdout = os.path.join(remote_dir, base + ".out")
        stderr = os.path.join(remote_dir, base + ".err")
        exit_file = os.path.join(remote_dir, base + ".sh.exitcode")
        launch = self.launcher(command, max_workers, self.nodes_per_block)
        text = self.render_script(job_name, stdout, stderr, exit_file, max_workers, launch)
        local_script = os.path.join(local_dir, base + ".sh")
        with open(local_script, "w") as f:
            f.write(text)
        os.chmod(local_script, 0o700)
        script = self.channel.push_file(local_script, remote_dir)
        result = self.channel.run(self.submit_command(script), timeout=self.cmd_timeout, cwd=None)
        if not result.ok:
            raise SubmitError(
                f"{self.scheduler} refused block {job_name!r}: `{self.submit_command(script)}` exited with "
                f"code {result.returncode}; stderr: {result.stderr.strip()[-2000:]!r}"
            )
        job_id = self.parse_submit(result)
        with self._jobs_lock:
            self._jobs[job_id] = ClusterJob(job_id, job_name, script, stdout, stderr, exit_file, time.monotonic())
        logger.info("%s: submitted block %s as job %s", self.label, job_name, job_id)
        return job_id

    @keyword_renamed("tasks_per_node", "max_workers")
    def script_header(self, job_name: str, stdout: str, stderr: str, max_workers: int) -> list[str]:
        """The lines at the top of the job script: :meth:`directives`, then ``scheduler_options``.

        A scheduler whose extra lines need a prefix or a fixed place (HTCondor) overrides this.
        """
        lines = self.directives(job_name, stdout, stderr, max_workers)
        if self.scheduler_options.strip():
            lines.append(self.scheduler_options.strip("\n"))
        return lines

    @keyword_renamed("tasks_per_node", "max_workers")
    def render_script(
        self, job_name: str, stdout: str, stderr: str, exit_file: str, max_workers: int, launch: str
    ) -> str:
        """Return the text of one block's job script (see :data:`SCRIPT_TEMPLATE`)."""
        return SCRIPT_TEMPLATE.substitute(
            directives="\n".join(self.script_header(job_name, stdout, stderr, max_workers)),
            job_name=job_name,
            provider=type(self).__name__,
            worker_init=self.worker_init,
            walltime_seconds=self.walltime_seconds,
            launch=launch,
            exit_file=shlex.quote(exit_file),
        )

    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """Ask the scheduler once about every job still live; see :meth:`ExecutionProvider.status`."""
        with self._jobs_lock:
            jobs = [self._jobs.get(job_id) for job_id in job_ids]
        live = [job for job in jobs if job is not None and job.final is None]
        if live:
            self._refresh([job for job in dict.fromkeys(live)])
        out = []
        for job_id, job in zip(job_ids, jobs):
            if job is None:
                out.append(JobStatus(JobState.MISSING, message=f"job {job_id} was not submitted by this provider"))
            elif job.final is not None:
                out.append(job.final)
            else:
                out.append(job.last or JobStatus(JobState.PENDING))
        return out

    def _refresh(self, jobs: list[ClusterJob]) -> None:
        ids = [job.job_id for job in jobs]
        result = self.channel.run(self.status_command(ids), timeout=self.cmd_timeout)
        listed = self.parse_status(result.stdout) if result.ok or result.stdout.strip() else {}
        if not result.ok and not listed and not self.empty_queue_error(result):
            # The scheduler did not answer (a restarting controller, a timeout): that says
            # nothing about the jobs, which keep their last state until it answers again.
            logger.warning(
                "%s: `%s` exited %s: %s", self.label, self.status_command(ids), result.returncode,
                result.stderr.strip()[-500:],
            )  # fmt: skip
            for job in jobs:
                job.last = replace(job.last or JobStatus(JobState.UNKNOWN), message="the scheduler did not answer")
            return
        gone = [job for job in jobs if job.job_id not in listed]
        accounted: dict[str, JobStatus] = {}
        if gone:
            command = self.accounting_command([job.job_id for job in gone])
            if command:
                acct = self.channel.run(command, timeout=self.cmd_timeout)
                if acct.ok:
                    accounted = self.parse_accounting(acct.stdout)
        now = time.monotonic()
        for job in jobs:
            status = listed.get(job.job_id) or accounted.get(job.job_id) or self._judge_gone(job, now)
            if job.cancelled and status.state in (JobState.FAILED, JobState.MISSING):
                status = replace(status, state=JobState.CANCELLED)
            if status.state.terminal:
                job.final = self._with_tails(job, status)
            else:
                job.last = status

    def _judge_gone(self, job: ClusterJob, now: float) -> JobStatus:
        """The status of a job the scheduler no longer lists, from its exit-code file."""
        if now - job.submitted < SUBMIT_GRACE_SECONDS and not job.cancelled:
            return JobStatus(JobState.PENDING, message="submitted; not listed by the scheduler yet")
        code_text = self.channel.read_tail(job.exit_file, 1).strip()
        if code_text.lstrip("-").isdigit():
            code = int(code_text)
            if code == 0:
                return JobStatus(JobState.COMPLETED, exit_code=0)
            return JobStatus(JobState.FAILED, exit_code=code, message=f"the pool command {describe_exit(code)}")
        if job.cancelled:
            return JobStatus(JobState.CANCELLED, message="cancelled by this provider")
        return JobStatus(
            JobState.FAILED,
            message=f"job {job.job_id} left {self.scheduler}'s queue without finishing its script "
            "(killed by the scheduler or an administrator?)",
        )

    def _with_tails(self, job: ClusterJob, status: JobStatus) -> JobStatus:
        return replace(
            status,
            stdout_tail=status.stdout_tail or self.channel.read_tail(job.stdout, TAIL_LINES),
            stderr_tail=status.stderr_tail or self.channel.read_tail(job.stderr, TAIL_LINES),
        )

    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        """Cancel every known, unfinished job in one command; see :meth:`ExecutionProvider.cancel`."""
        with self._jobs_lock:
            jobs = [self._jobs.get(job_id) for job_id in job_ids]
        live = [job for job in jobs if job is not None and job.final is None]
        if live:
            for job in live:
                job.cancelled = True
            result = self.channel.run(self.cancel_command([job.job_id for job in live]), timeout=self.cmd_timeout)
            if not result.ok:
                # Some schedulers fail the whole command when one job already ended; the
                # status check below tells which jobs are really gone.
                logger.debug("%s: cancel exited %s: %s", self.label, result.returncode, result.stderr.strip())
        return [job is not None for job in jobs]

    def jobs(self) -> list[ClusterJob]:
        """Every job this provider submitted, finished or not."""
        with self._jobs_lock:
            return list(self._jobs.values())

    # -- directories -------------------------------------------------------------------------

    def _local_dir(self) -> str:
        with self._jobs_lock:
            if self.script_dir is None:
                self.script_dir = self._private_dir = tempfile.mkdtemp(prefix=f"hpcfutures-{self.label}-")
            directory = self.script_dir
        os.makedirs(directory, exist_ok=True)
        return directory

    def _remote_dir(self, local_dir: str) -> str:
        if self.remote_script_dir is not None:
            directory = self.remote_script_dir
        elif isinstance(self.channel, LocalChannel):
            directory = local_dir
        elif getattr(self.channel, "script_dir", None):
            directory = str(self.channel.script_dir)  # type: ignore[attr-defined]
        else:
            directory = f".hpcfutures/{self.label}"  # relative to the login's home directory
        self.channel.makedirs(directory)
        return directory

    def tunnel_channels(self) -> list[TunnelChannel]:
        """The channel, if it runs commands over SSH (see :meth:`ExecutionProvider.tunnel_channels`)."""
        return [self.channel] if isinstance(self.channel, TunnelChannel) else []

    def close(self) -> None:
        """Cancel the jobs not seen ending, remove the private script directory, close the channel.

        See :meth:`ExecutionProvider.close`.  The private directory is the one made when
        :attr:`script_dir` was None at a submit (then :attr:`script_dir` goes back to None);
        the scheduler-side directory (``remote_script_dir``, or ``~/.hpcfutures/<label>``
        over SSH) is kept: providers with the same label share it, and it holds the jobs'
        output.  Calling it again does nothing; :meth:`submit` fails after it.
        """
        with self._jobs_lock:
            if self._closed:
                return
            self._closed = True
            live = [job.job_id for job in self._jobs.values() if job.final is None]
            private, self._private_dir = self._private_dir, None
            if private is not None and self.script_dir == private:
                self.script_dir = None
        try:
            if live:
                self.cancel(live)
        except ChannelError as exc:
            logger.warning("%s: cannot cancel jobs %s while closing: %s", self.label, ", ".join(live), exc)
        finally:
            self.channel.close()
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(label={self.label!r}, nodes_per_block={self.nodes_per_block}, "
            f"walltime={self.walltime!r}, init_blocks={self.init_blocks}, min_blocks={self.min_blocks}, "
            f"max_blocks={self.max_blocks}, channel={self.channel!r})"
        )
