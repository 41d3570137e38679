"""Channels: where a provider runs its scheduler commands and puts its job scripts.

A cluster provider never calls ``subprocess`` itself.  It asks its channel to run ``sbatch``
or ``qstat`` and to copy a job script into place, so the same provider drives a scheduler on
this machine (:class:`LocalChannel`) or on a login node reached over SSH
(:class:`SSHChannel`).
"""

from __future__ import annotations

import abc
import os
import shutil
import subprocess
from dataclasses import dataclass

from .._validate import check_text
from ..errors import ConfigurationError
from ..tails import TAIL_LINES, read_tail

#: Seconds a scheduler command may run before the channel gives up on it.
DEFAULT_COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command a channel ran: exit code and decoded output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited with code 0."""
        return self.returncode == 0


class ChannelError(OSError):
    """A channel could not run a command or move a file (not: the command failed)."""


class Channel(abc.ABC):
    """Runs shell commands and moves files on the host where a scheduler's commands work.

    Every method may be called from any thread; implementations serialise what must be.
    """

    #: The host name commands run on, for messages.
    hostname: str = "localhost"

    @abc.abstractmethod
    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run *command* with ``/bin/sh -c`` and return its exit code and output.

        A command that runs longer than *timeout* seconds is killed and reported with exit
        code 124 (as coreutils' ``timeout`` does) and a message in ``stderr``.

        Raises:
            ChannelError: the command could not be started at all (no connection, …).
        """

    @abc.abstractmethod
    def push_file(self, local_path: str, remote_dir: str) -> str:
        """Copy the file at *local_path* into *remote_dir* (made if missing); return its path there."""

    @abc.abstractmethod
    def pull_file(self, remote_path: str, local_dir: str) -> str:
        """Copy the file at *remote_path* into *local_dir*; return its local path."""

    @abc.abstractmethod
    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create directory *path* and its parents on the channel's host, if missing."""

    @abc.abstractmethod
    def read_tail(self, path: str, lines: int = TAIL_LINES) -> str:
        """Return the last *lines* lines of the text file at *path*, or ``""`` if unreadable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default does nothing."""


class LocalChannel(Channel):
    """Run scheduler commands on this machine: the default channel.

    Args:
        env: variables added to the environment of every command (for example a ``PATH``
            that finds a site's scheduler commands).
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        import socket

        if env is not None and (
            not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise ConfigurationError(f"env must be a dict of str to str, got {env!r}")
        self.hostname = socket.gethostname()
        self.env = dict(env or {})

    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run *command* through ``/bin/sh`` here; see :meth:`Channel.run`."""
        check_text("command", command, what="a non-empty shell command string")
        full_env = None
        if env or self.env:
            full_env = dict(os.environ)
            full_env.update(self.env)
            full_env.update(env or {})
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                capture_output=True,
                timeout=timeout,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace")
            err = (exc.stderr or b"").decode(errors="replace")
            return CommandResult(124, out, err + f"\n[hpcfutures] command timed out after {timeout:g} s: {command}")
        except OSError as exc:
            raise ChannelError(f"could not run {command!r} on {self.hostname}: {exc}") from exc
        return CommandResult(
            proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        )

    def push_file(self, local_path: str, remote_dir: str) -> str:
        """Copy *local_path* into *remote_dir* unless it is already there."""
        self.makedirs(remote_dir)
        target = os.path.join(remote_dir, os.path.basename(local_path))
        if os.path.abspath(target) != os.path.abspath(local_path):
            shutil.copy2(local_path, target)
        return target

    def pull_file(self, remote_path: str, local_dir: str) -> str:
        """Copy *remote_path* into *local_dir* unless it is already there."""
        return self.push_file(remote_path, local_dir)

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create *path* (and parents) if missing."""
        os.makedirs(path, mode=mode, exist_ok=True)

    def read_tail(self, path: str, lines: int = TAIL_LINES) -> str:
        """Return the last *lines* lines of *path*."""
        return read_tail(path, lines)

    def __repr__(self) -> str:
        return f"LocalChannel(env={self.env!r})" if self.env else "LocalChannel()"
