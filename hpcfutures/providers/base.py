"""The ExecutionProvider interface, and the job states and statuses every provider reports.

A provider starts *blocks*: batch jobs (or local process groups) that each run one worker-pool
command.  It knows nothing about tasks; the executor decides when to start or stop blocks and
asks about all of its jobs in one :meth:`ExecutionProvider.status` call.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._validate import check_count, check_number, check_text
from ..errors import ConfigurationError
from ..launchers.base import Launcher, SimpleLauncher


class JobState(enum.Enum):
    """Where a block's job stands, in the words every provider maps its scheduler's states to."""

    PENDING = "pending"
    """Queued; not running yet."""
    RUNNING = "running"
    COMPLETED = "completed"
    """Ended with exit code 0."""
    FAILED = "failed"
    """Ended with a nonzero exit code or a signal, or the scheduler reports a failure."""
    CANCELLED = "cancelled"
    """Stopped by :meth:`ExecutionProvider.cancel` or by someone else (``scancel``, …)."""
    TIMEOUT = "timeout"
    """Killed by the scheduler because it reached its walltime."""
    HELD = "held"
    """Kept in the queue by the scheduler or an administrator; may run later."""
    MISSING = "missing"
    """The provider does not know the job (never submitted here, or forgotten by the scheduler)."""
    UNKNOWN = "unknown"
    """The scheduler reported a state that maps to none of the others."""

    @property
    def terminal(self) -> bool:
        """Return True for states a job never leaves (it will not run, or run again)."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.MISSING}
)


@dataclass(frozen=True)
class JobStatus:
    """What a provider knows about one job.

    ``exit_code`` follows :class:`subprocess.Popen`: a negative value ``-N`` means the job was
    killed by signal ``N``, and ``message`` then names the signal.  The tails hold the last
    lines of the job's stdout and stderr where the provider can read them, else ``""``.
    """

    state: JobState
    exit_code: int | None = None
    message: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""


@runtime_checkable
class TunnelChannel(Protocol):
    """A channel that can open an SSH tunnel back to this machine (:class:`~.ssh_channel.SSHChannel`).

    With ``tunnel=True`` the executor asks each of its provider's
    :meth:`~ExecutionProvider.tunnel_channels` for a remote forward to the interchange's
    port, so pools on that host connect to ``127.0.0.1:<port>`` there.
    """

    def forward_remote(self, remote_port: int, local_host: str, local_port: int) -> int:
        """Make *remote_port* on the channel's host (0: any) lead to *local_host*:*local_port*; return it."""
        ...

    def cancel_forward(self, remote_port: int) -> None:
        """Stop the forward of *remote_port* made by :meth:`forward_remote`."""
        ...


class ExecutionProvider(abc.ABC):
    """Starts, watches and stops blocks: jobs that each run one worker-pool command.

    Attributes:
        label: a short name for logs and job names.
        init_blocks: blocks the executor starts when it starts.
        min_blocks: blocks the executor keeps running even when idle.
        max_blocks: blocks the executor never exceeds.
        nodes_per_block: nodes each block asks for.
        worker_init: shell lines run in the job script before the pool command (``module
            load …``, ``source env/bin/activate``).
        launcher: wraps the pool command so it runs on every node of the block.
        parallelism: how eagerly the executor scales out, from 0 to 1: it asks for enough
            blocks to give ``parallelism`` times the queued tasks a worker each (1: a worker
            per queued task, up to ``max_blocks``; 0: as few as possible, ``min_blocks``, or one
            block while tasks wait).
        script_dir: the directory where job scripts, stdout and stderr go.  The executor sets
            it before the first :meth:`submit`; a provider may pick its own when it is None.
        walltime_seconds: how long each block may run, in seconds; None (the default): no
            limit.  The executor refuses a task whose own walltime exceeds it, since no
            block could finish it.
        cores_per_node: the cores each node of a block has (or asks for); None (the
            default): unknown, left to the scheduler.  The executor sizes a block by it when
            neither ``max_workers`` nor a connected pool says how many workers a block runs.
        mem_per_node: the memory in GB each node of a block has (or asks for); None (the
            default): unknown.  The executor refuses a task asking for more.

    What the executor asks of every provider is declared here, with a default that suits a
    provider that lacks it: the settings above, :meth:`tunnel_channels` and one meaning of
    :meth:`close`.  Subclasses implement :meth:`submit`, :meth:`status` and :meth:`cancel`,
    set the attributes they know better, and override :meth:`tunnel_channels` when their
    commands run over SSH and :meth:`close` when they keep jobs or files.  Every method may
    be called from any thread.
    """

    def __init__(
        self,
        *,
        label: str,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        nodes_per_block: int = 1,
        worker_init: str = "",
        launcher: Launcher | None = None,
        parallelism: float = 1.0,
    ) -> None:
        """Validate and store the settings every provider shares.

        Raises:
            ConfigurationError: a count is negative or not an integer, ``min_blocks`` exceeds
                ``max_blocks``, ``nodes_per_block`` is below 1, or ``label``, ``worker_init``
                or ``launcher`` has the wrong type.
        """
        check_text("label", label)
        check_count("init_blocks", init_blocks, 0)
        check_count("min_blocks", min_blocks, 0)
        check_count("max_blocks", max_blocks, 0)
        check_count("nodes_per_block", nodes_per_block, 1)
        if min_blocks > max_blocks:
            raise ConfigurationError(
                f"min_blocks ({min_blocks}) must not exceed max_blocks ({max_blocks}); "
                f"raise max_blocks to at least {min_blocks} or lower min_blocks"
            )
        check_number(
            "parallelism", parallelism, at_least=0, at_most=1, note="the share of queued tasks to start workers for"
        )
        if not isinstance(worker_init, str):
            raise ConfigurationError(
                f"worker_init must be a string of shell lines, got {type(worker_init).__name__}; "
                "join a list of commands with newlines"
            )
        if launcher is None:
            launcher = SimpleLauncher()
        elif not isinstance(launcher, Launcher):
            raise ConfigurationError(f"launcher must be a hpcfutures.launchers.Launcher, got {launcher!r}")
        self.label = label
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.nodes_per_block = nodes_per_block
        self.parallelism = float(parallelism)
        self.worker_init = worker_init
        self.launcher = launcher
        self.script_dir: str | None = None
        self.walltime_seconds: float | None = None
        self.cores_per_node: int | None = None
        self.mem_per_node: float | None = None

    @abc.abstractmethod
    def submit(self, command: str, max_workers: int, job_name: str = "hpcfutures.block") -> str:
        """Start one block that runs *command*, wrapped by the launcher, and return its job id.

        Args:
            command: the worker-pool command, one shell command line.
            max_workers: how many workers each node's pool runs (the executor's
                ``max_workers``, or 1 when the pool chooses); passed to the launcher.
                Slurm and PBS providers without ``cores_per_node`` ask for this many CPUs per
                node.  Called ``tasks_per_node`` before; the built-in providers still accept
                that keyword, with a DeprecationWarning.
            job_name: a name for the job, used in file names and the scheduler's queue.

        Raises:
            OSError: the job script could not be written or started.
        """

    @abc.abstractmethod
    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """Return the status of each job in *job_ids*, in order, asking the scheduler once.

        An id the provider does not know gets :attr:`JobState.MISSING`; this never raises
        for an unknown or finished job.
        """

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        """Stop each job in *job_ids* and return, in order, whether it is now stopped.

        Jobs that already ended are tolerated (True); unknown ids give False.  Returns in
        bounded time.
        """

    def tunnel_channels(self) -> list[TunnelChannel]:
        """Return the SSH channels on which the executor opens its tunnel (``tunnel=True``).

        One per host the provider runs its commands on; pools on that host reach the
        interchange through it.  Empty when the provider's commands do not run over SSH (the
        default), or not all of them do: a block on a host without a tunnel could not
        connect back.
        """
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Cancel every job still live, remove the provider's own files, release its connections.

        "Live" is every job the provider has not seen end, cancelled before or not (a cancel
        may not have taken).  "Its own files" are those in directories the provider made
        itself (a private :attr:`script_dir`, a subdirectory of its own on a remote host);
        files in a directory it was given are left for whoever gave it.  Errors reaching a
        host or scheduler are logged, not raised, so closing always finishes.  Calling it
        again does nothing.  A provider that keeps jobs refuses :meth:`submit` after it
        (:class:`RuntimeError`): a job started then would have nobody to cancel it.

        The executor calls it at shutdown, once it has stopped its blocks, so this is the
        backstop for jobs nobody else cancelled.  The default, for a provider that keeps no
        jobs, files or connections, does nothing.
        """

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(label={self.label!r}, init_blocks={self.init_blocks}, "
            f"min_blocks={self.min_blocks}, max_blocks={self.max_blocks}, "
            f"nodes_per_block={self.nodes_per_block})"
        )

