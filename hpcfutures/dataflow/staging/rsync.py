"""Staging with rsync over ssh, for ``rsync://host/path`` and scp-like ``user@host:path``."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence

from ..files import File
from .base import StagingError, StagingProvider, atomic_target, display_url


class RsyncStaging(StagingProvider):
    """Copy files with ``rsync -a`` over ssh (no rsync daemon is involved).

    ``rsync://[user@]host[:port]/abs/path`` and ``user@host:path`` both name a file on an
    ssh host; a port in the URL overrides ``ssh_port``.  ssh runs in batch mode (it never
    prompts), so the key must work without a passphrase or come from an agent.

    Args:
        ssh_port: the ssh port when the URL gives none (None: ssh's own default).
        ssh_key: a private key file passed to ssh with ``-i`` (None: ssh's defaults).
        ssh_options: extra ``-o`` options for ssh, such as
            ``("UserKnownHostsFile=/path/known_hosts", "StrictHostKeyChecking=yes")``.
        rsync: the rsync command.
        timeout: seconds one transfer may take before it is killed and fails.
    """

    schemes = frozenset({"rsync"})

    def __init__(
        self,
        ssh_port: int | None = None,
        ssh_key: str | os.PathLike[str] | None = None,
        ssh_options: Sequence[str] = (),
        rsync: str = "rsync",
        timeout: float = 600.0,
    ):
        if isinstance(ssh_options, str):
            raise TypeError(
                "RsyncStaging ssh_options must be a sequence of 'Key=value' strings, not one string"
            )
        if timeout <= 0:
            raise ValueError(f"RsyncStaging timeout must be positive, got {timeout!r}")
        self.ssh_port = ssh_port
        self.ssh_key = os.fspath(ssh_key) if ssh_key is not None else None
        self.ssh_options = tuple(ssh_options)
        self.rsync = rsync
        self.timeout = timeout

    def ssh_command(self, file: File) -> list[str]:
        """Return the ssh command (as argv) that rsync uses to reach the file's host."""
        command = ["ssh", "-o", "BatchMode=yes"]
        port = file.port or self.ssh_port
        if port is not None:
            command += ["-p", str(port)]
        if self.ssh_key is not None:
            command += ["-i", self.ssh_key, "-o", "IdentitiesOnly=yes"]
        for option in self.ssh_options:
            command += ["-o", option]
        return command

    @staticmethod
    def _remote(file: File) -> str:
        if not file.host:
            return file.path  # rsync:///path: a local copy
        host = file.host if ":" not in file.host else f"[{file.host}]"
        user = f"{file.username}@" if file.username else ""
        return f"{user}{host}:{file.path}"

    def _run(self, file: File, source: str, destination: str, direction: str) -> None:
        command = [self.rsync, "-a"]
        if file.host:
            command += ["-e", shlex.join(self.ssh_command(file))]
        command += ["--", source, destination]
        try:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout
            )
        except FileNotFoundError as e:
            raise StagingError(
                display_url(file), f"{self.rsync!r} is not installed", direction=direction
            ) from e
        except subprocess.TimeoutExpired as e:
            reason = f"rsync did not finish within {self.timeout} s"
            raise StagingError(display_url(file), reason, direction=direction) from e
        if result.returncode != 0:
            tail = " | ".join(line for line in result.stderr.strip().splitlines()[-4:] if line)
            reason = f"rsync exited with code {result.returncode}: {tail or 'no error output'}"
            raise StagingError(display_url(file), reason, direction=direction)

    def stage_in(self, file: File, directory: str) -> str:
        """Copy the file into ``directory`` with rsync and return its path."""
        final_path = self.local_name(file, directory)
        with atomic_target(final_path) as temp_path:
            self._run(file, self._remote(file), temp_path, "in")
        return final_path

    def stage_out(self, local_path: str, file: File) -> None:
        """Copy the file at ``local_path`` to the host; rsync renames it into place when complete."""
        self._run(file, local_path, self._remote(file), "out")

    def __repr__(self) -> str:
        return (
            f"RsyncStaging(ssh_port={self.ssh_port!r}, ssh_key={self.ssh_key!r}, "
            f"ssh_options={self.ssh_options!r})"
        )
