"""SSHProvider: blocks started over SSH on a list of hosts, an ad-hoc cluster with no scheduler.

Each block is a bash script pushed to the next host in turn (round-robin) and started there in
a session of its own (``setsid``), detached from the SSH connection.  The provider watches
its blocks with one ``ps`` per host, reads the exit code the script leaves in a file when it
ends, and cancels a block by signalling every process of its session: SIGTERM first, SIGKILL
after a grace period.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import string
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from .._validate import check_seconds, check_text, keyword_renamed
from ..errors import ConfigurationError
from ..launchers.base import Launcher
from ..tails import TAIL_BYTES, TAIL_LINES, last_lines
from .base import ExecutionProvider, JobState, JobStatus, TunnelChannel
from .channels import DEFAULT_COMMAND_TIMEOUT, Channel, ChannelError
from .cluster import SubmitError, parse_walltime
from .ssh_channel import HOST_KEY_POLICIES, SSHChannel

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a block killed by ``walltime`` gets between SIGTERM and SIGKILL.
WALLTIME_KILL_AFTER = 10

#: The job script of one block.  ``$$`` is a literal ``$`` for the shell.
SCRIPT_TEMPLATE = string.Template(
    """#!/bin/bash
# hpcfutures block "${job_name}", started by SSHProvider "${label}" on ${host}.
# The user's worker_init lines:
${worker_init}

${block_end}
${launch}
rc=$$?
# $$0 is the script's absolute path: SSHProvider reads the exit code beside it.
echo "$$rc" > "$$0.exitcode"
exit "$$rc"
"""
)

# Lists, for the sessions named in $sids, the pids of their live (non-zombie) processes
# as "<sid> <pid>" lines.
_SESSION_MEMBERS = (
    "members() { ps -eo sid=,pid=,stat= 2>/dev/null | awk -v s=\"$sids\" "
    "'BEGIN{n=split(s,w,\" \"); for(i=1;i<=n;i++) want[w[i]]=1} ($1 in want) && $3 !~ /^Z/ {print $1, $2}'; }"
)
_TAIL_MARK = "@@hpcfutures-tail@@"


@dataclass
class _SSHJob:
    """One block: where it runs and where its files are."""

    job_id: str
    host: int  # index into SSHProvider.channels
    pid: int  # the job script's bash, leader of the block's session
    stdout: str
    stderr: str
    exit_file: str
    cancelled: bool = False
    last: JobStatus | None = None
    final: JobStatus | None = None


def _per_host(work: Callable[[int, list[_SSHJob]], T], by_host: dict[int, list[_SSHJob]]) -> dict[int, T]:
    """Return ``work(host, jobs)`` for each host, asking the hosts in parallel when there are several."""
    if len(by_host) <= 1:
        return {host: work(host, jobs) for host, jobs in by_host.items()}
    with ThreadPoolExecutor(min(16, len(by_host)), thread_name_prefix="hpcfutures-ssh-provider") as pool:
        futures = {host: pool.submit(work, host, jobs) for host, jobs in by_host.items()}
        return {host: future.result() for host, future in futures.items()}


class SSHProvider(ExecutionProvider):
    """Start blocks over SSH on a fixed list of hosts: a cluster without a scheduler.

    Args:
        hosts: the hosts blocks run on, in turn.  Each is a host name (reached with the SSH
            settings below) or a ready :class:`~hpcfutures.providers.channels.Channel`, such as
            an :class:`SSHChannel` with its own settings.
        username, port, key_filename, known_hosts, host_key_policy, connect_timeout: how to
            log in to the hosts given by name; see :class:`SSHChannel`.
        init_blocks, min_blocks, parallelism: see
            :class:`~hpcfutures.providers.base.ExecutionProvider`.
        max_blocks: blocks running at most; one per host by default.
        worker_init: shell lines run before the pool command on the host (``source
            env/bin/activate``).
        walltime: seconds or ``HH:MM:SS`` after which a block is stopped (its pools learn the
            end time from ``HPCFUTURES_BLOCK_END``); None: blocks run until cancelled.
        remote_script_dir: the directory on the hosts under which each provider keeps its
            scripts and block output (in a subdirectory of its own).  By default
            ``~/.hpcfutures``, and the subdirectory is removed by :meth:`close`; a directory
            given here is kept, for the logs.
        launcher: wraps the pool command; the block runs on one host, so keep the default
            unless the command needs a prefix (:class:`~hpcfutures.launchers.WrappedLauncher`).
        label: a short name for logs and file names.
        cancel_grace: seconds :meth:`cancel` waits after SIGTERM before SIGKILL.
        cmd_timeout: seconds each command on a host may take.
        poll_interval: :meth:`status` asks each host at most this often, and answers from
            what it last learned in between.

    Hosts need bash, ``setsid``, ``ps`` and ``tail`` (any Linux).  The pool command, its
    Python and hpcfutures must exist there at the same paths as here.
    """

    def __init__(
        self,
        hosts: Sequence[str | Channel],
        *,
        username: str | None = None,
        port: int = 22,
        key_filename: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        host_key_policy: str = "reject",
        connect_timeout: float = 15.0,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int | None = None,
        parallelism: float = 1.0,
        worker_init: str = "",
        walltime: str | int | float | None = None,
        remote_script_dir: str | None = None,
        launcher: Launcher | None = None,
        label: str = "ssh",
        cancel_grace: float = 5.0,
        cmd_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        poll_interval: float = 1.0,
    ) -> None:
        """Validate the settings and make a channel per host; nothing connects until a submit.

        Raises:
            ConfigurationError: a parameter cannot work; the message names it.
        """
        if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence) or not hosts:
            raise ConfigurationError(
                f"hosts must be a non-empty list of host names or channels, got {hosts!r}; "
                "for one host write hosts=[name]"
            )
        if max_blocks is None:
            max_blocks = max(len(hosts), min_blocks if isinstance(min_blocks, int) else 0)
        super().__init__(
            label=label,
            init_blocks=init_blocks,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            nodes_per_block=1,
            worker_init=worker_init,
            launcher=launcher,
            parallelism=parallelism,
        )
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ConfigurationError(
                f"host_key_policy must be one of {', '.join(map(repr, HOST_KEY_POLICIES))}, got {host_key_policy!r}"
            )
        channels: list[Channel] = []
        seen: set[str] = set()
        for host in hosts:
            if isinstance(host, Channel):
                channels.append(host)
                continue
            if not isinstance(host, str):
                raise ConfigurationError(f"hosts must hold host names or Channels, got {host!r}")
            if host in seen:
                raise ConfigurationError(
                    f"hosts lists {host!r} twice; list each host once (blocks go to the hosts in turn)"
                )
            seen.add(host)
            channels.append(
                SSHChannel(
                    host,
                    username=username,
                    port=port,
                    key_filename=key_filename,
                    known_hosts=known_hosts,
                    host_key_policy=host_key_policy,
                    connect_timeout=connect_timeout,
                )
            )
        self.channels = channels
        self.walltime_seconds = None if walltime is None else parse_walltime(walltime)
        self.remote_script_dir = check_text(
            "remote_script_dir", remote_script_dir, what="a directory path on the hosts", optional=True
        )
        self.cancel_grace = float(check_seconds("cancel_grace", cancel_grace, allow_zero=True, finite=True))
        self.cmd_timeout = float(check_seconds("cmd_timeout", cmd_timeout))
        self.poll_interval = float(check_seconds("poll_interval", poll_interval, allow_zero=True, finite=True))
        self._token = uuid.uuid4().hex[:8]
        # Must be held while reading or changing _jobs, _counter, _polled, _private_dir and _closed.
        self._lock = threading.Lock()
        self._jobs: dict[str, _SSHJob] = {}
        self._counter = 0
        self._polled: dict[int, float] = {}  # host index -> when its jobs were last asked about
        self._private_dir: str | None = None
        self._used_hosts: set[int] = set()
        self._closed = False

    # -- submitting ---------------------------------------------------------------------------

    def remote_dir(self, host: int) -> str:
        """Return the directory on host number *host* where this provider's block files go."""
        base = self.remote_script_dir or getattr(self.channels[host], "script_dir", None) or ".hpcfutures"
        return f"{base.rstrip('/')}/{self.label}-{self._token}"

    @keyword_renamed("tasks_per_node", "max_workers")
    def submit(self, command: str, max_workers: int, job_name: str = "hpcfutures.block") -> str:
        """Start a block on the next host and return its job id (``host:pid``).

        *max_workers* is how many workers the pool runs, passed to the launcher.

        Raises:
            SubmitError: the host did not start the script.
            ChannelError: the host could not be reached.
            RuntimeError: the provider was closed.
        """
        check_text("command", command, what="a non-empty shell command")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cannot submit a block: SSHProvider {self.label!r} is closed")
            serial = self._counter
            self._counter += 1
            local_dir = self._local_dir()
            self._used_hosts.add(serial % len(self.channels))
        host = serial % len(self.channels)
        channel = self.channels[host]
        base = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job_name) or 'block'}.{serial}"
        local_script = os.path.join(local_dir, base + ".sh")
        remote = self.remote_dir(host)
        with open(local_script, "w") as f:
            f.write(self.render_script(command, job_name, channel.hostname, max_workers))
        os.chmod(local_script, 0o700)
        script = channel.push_file(local_script, remote)  # an absolute path on the host
        directory = script.rsplit("/", 1)[0]
        stdout, stderr = f"{directory}/{base}.out", f"{directory}/{base}.err"
        start = (
            f"cd {shlex.quote(directory)} && "
            f"setsid /bin/bash {shlex.quote(script)} </dev/null >{shlex.quote(stdout)} 2>{shlex.quote(stderr)} & "
            'echo "$!"'
        )
        result = channel.run(start, timeout=self.cmd_timeout)
        pid_text = result.stdout.strip()
        if not result.ok or not pid_text.isdigit():
            raise SubmitError(
                f"{channel.hostname} did not start block {job_name!r}: exit code {result.returncode}, "
                f"stdout {pid_text!r}, stderr {result.stderr.strip()[-2000:]!r}"
            )
        pid = int(pid_text)
        job_id = f"{channel.hostname}:{pid}"
        with self._lock:
            if job_id in self._jobs:  # the same pid on two channels to one host name
                job_id = f"{job_id}.{serial}"
            self._jobs[job_id] = _SSHJob(job_id, host, pid, stdout, stderr, script + ".exitcode")
        logger.info("%s: started block %s on %s as pid %d", self.label, job_name, channel.hostname, pid)
        return job_id

    @keyword_renamed("tasks_per_node", "max_workers")
    def render_script(self, command: str, job_name: str, host: str, max_workers: int) -> str:
        """Return the text of one block's script (see :data:`SCRIPT_TEMPLATE`)."""
        launch = self.launcher(command, max_workers, 1)
        block_end = ""
        if self.walltime_seconds is not None:
            seconds = self.walltime_seconds
            block_end = (
                "# When the block must end, so pools stop taking tasks they cannot finish.\n"
                f"export HPCFUTURES_BLOCK_END=$(( $(date +%s) + {seconds} ))"
            )
            launch = f"timeout --kill-after={WALLTIME_KILL_AFTER} {seconds} /bin/bash -c {shlex.quote(launch)}"
        return SCRIPT_TEMPLATE.substitute(
            job_name=job_name,
            label=self.label,
            host=host,
            worker_init=self.worker_init,
            block_end=block_end,
            launch=launch,
        )

    def _local_dir(self) -> str:
        if self.script_dir is None:
            self.script_dir = self._private_dir = tempfile.mkdtemp(prefix=f"hpcfutures-{self.label}-")
        os.makedirs(self.script_dir, exist_ok=True)
        return self.script_dir

    # -- status -------------------------------------------------------------------------------

    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """Return each job's status, asking each host with live jobs once (at most every ``poll_interval``).

        A host that cannot be reached leaves its jobs in their last known state, or UNKNOWN,
        with the error in the message; this does not raise.
        """
        with self._lock:
            jobs = [self._jobs.get(job_id) for job_id in job_ids]
            now = time.monotonic()
            by_host: dict[int, list[_SSHJob]] = {}
            for job in jobs:
                if job is not None and job.final is None:
                    by_host.setdefault(job.host, [])
            for host in list(by_host):
                if now - self._polled.get(host, float("-inf")) < self.poll_interval:
                    del by_host[host]
                else:
                    self._polled[host] = now
                    by_host[host] = [j for j in self._jobs.values() if j.host == host and j.final is None]
        _per_host(self._refresh, by_host)
        out = []
        for job_id, job in zip(job_ids, jobs):
            if job is None:
                out.append(JobStatus(JobState.MISSING, message=f"job {job_id} was not started by SSHProvider {self.label!r}"))
            else:
                out.append(job.final or job.last or JobStatus(JobState.RUNNING))
        return out

    def _refresh(self, host: int, jobs: list[_SSHJob]) -> None:
        channel = self.channels[host]
        sids = " ".join(str(job.pid) for job in jobs)
        lines = [f"sids={shlex.quote(sids)}", _SESSION_MEMBERS, 'members | awk \'$1 == $2 {print "leader", $1}\'']
        lines += [
            f"printf 'exit %s %s\\n' {job.pid} \"$(head -n 1 {shlex.quote(job.exit_file)} 2>/dev/null)\"" for job in jobs
        ]
        try:
            result = channel.run("\n".join(lines), timeout=self.cmd_timeout)
        except ChannelError as exc:
            self._unreachable(jobs, f"cannot reach {channel.hostname}: {exc}")
            return
        if not result.ok:
            self._unreachable(jobs, f"the status command failed on {channel.hostname}: {result.stderr.strip()[-500:]}")
            return
        leaders: set[int] = set()
        codes: dict[int, str] = {}
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "leader" and fields[1].isdigit():
                leaders.add(int(fields[1]))
            elif len(fields) >= 2 and fields[0] == "exit" and fields[1].isdigit():
                codes[int(fields[1])] = fields[2] if len(fields) > 2 else ""
        ended = []
        for job in jobs:
            status = self._judge(job, job.pid in leaders, codes.get(job.pid, ""))
            if status.state.terminal:
                ended.append((job, status))
            else:
                job.last = status
        if ended:
            tails = self._read_tails(channel, [path for job, _ in ended for path in (job.stdout, job.stderr)])
            for i, (job, status) in enumerate(ended):
                job.final = replace(status, stdout_tail=tails[2 * i], stderr_tail=tails[2 * i + 1])

    def _judge(self, job: _SSHJob, leader_alive: bool, code_text: str) -> JobStatus:
        host = self.channels[job.host].hostname
        if code_text.lstrip("-").isdigit():
            code = int(code_text)
            if job.cancelled:
                return JobStatus(JobState.CANCELLED, exit_code=code, message=f"cancelled; the pool command exited with code {code}")
            if code == 0:
                return JobStatus(JobState.COMPLETED, exit_code=0, message=f"the pool command on {host} exited with code 0")
            if code == 124 and self.walltime_seconds is not None:
                return JobStatus(JobState.TIMEOUT, exit_code=code, message=f"stopped on {host} at its walltime")
            return JobStatus(JobState.FAILED, exit_code=code, message=f"the pool command on {host} exited with code {code}")
        if leader_alive:
            return JobStatus(JobState.RUNNING, message=f"running on {host} as pid {job.pid}")
        if job.cancelled:
            return JobStatus(JobState.CANCELLED, message=f"cancelled by SSHProvider {self.label!r}")
        return JobStatus(
            JobState.FAILED,
            message=f"the block's script (pid {job.pid} on {host}) ended without writing its exit code: "
            "it was killed by a signal, or the host rebooted",
        )

    def _unreachable(self, jobs: list[_SSHJob], message: str) -> None:
        logger.warning("%s: %s", self.label, message)
        for job in jobs:
            job.last = replace(job.last, message=message) if job.last else JobStatus(JobState.UNKNOWN, message=message)

    @staticmethod
    def _read_tails(channel: Channel, paths: list[str]) -> list[str]:
        """Return the tail of each file in *paths* on *channel*'s host, with one command."""
        command = "\n".join(
            f"printf '\\n{_TAIL_MARK} {i}\\n'; tail -n {TAIL_LINES} -- {shlex.quote(path)} 2>/dev/null | tail -c {TAIL_BYTES}"
            for i, path in enumerate(paths)
        )
        tails = [""] * len(paths)
        try:
            result = channel.run(command, timeout=DEFAULT_COMMAND_TIMEOUT)
        except ChannelError as exc:
            logger.debug("cannot read output tails on %s: %s", channel.hostname, exc)
            return tails
        pieces = re.split(rf"\n{_TAIL_MARK} (\d+)\n", result.stdout)
        for index, text in zip(pieces[1::2], pieces[2::2]):
            tails[int(index)] = last_lines(text, None, cut=len(text.encode()) >= TAIL_BYTES)
        return tails

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        """Stop every process of each block's session: SIGTERM, SIGKILL after ``cancel_grace`` s.

        One command per host covers all of that host's jobs.  Returns, in order, True when
        nothing of the job is left running (also for a job that had already ended), False
        for an unknown id, an unreachable host or a process that outlived SIGKILL.
        """
        with self._lock:
            found = [self._jobs.get(job_id) for job_id in job_ids]
            by_host: dict[int, list[_SSHJob]] = {}
            for job in {id(j): j for j in found if j is not None}.values():
                # An ended job is left alone: its pid may already belong to someone else.
                if job.final is None:
                    job.cancelled = True
                    by_host.setdefault(job.host, []).append(job)
            for host in by_host:
                self._polled.pop(host, None)  # the next status must look again
        survivors: set[tuple[int, int]] = set()
        failed_hosts: set[int] = set()
        outcomes = _per_host(lambda host, jobs: self._kill_sessions(host, [job.pid for job in jobs]), by_host)
        for host, left in outcomes.items():
            if left is None:
                failed_hosts.add(host)
            else:
                survivors |= {(host, pid) for pid in left}
        results = []
        for job_id, maybe in zip(job_ids, found):
            if maybe is None:
                results.append(False)
            elif maybe.final is None and (maybe.host in failed_hosts or (maybe.host, maybe.pid) in survivors):
                logger.warning("%s: block %s may still be running", self.label, job_id)
                results.append(False)
            else:
                results.append(True)
        return results

    def _kill_sessions(self, host: int, sids: list[int]) -> set[int] | None:
        """Stop the sessions *sids* on *host*; return those with processes left, None if unreachable."""
        grace_steps = int(self.cancel_grace * 10)
        script = "\n".join(
            [
                f"sids={shlex.quote(' '.join(map(str, sids)))}",
                _SESSION_MEMBERS,
                "for s in $sids; do kill -TERM -$s 2>/dev/null; done",
                "members | while read -r s p; do kill -TERM $p 2>/dev/null; done",
                f'i=0; while [ -n "$(members)" ] && [ $i -lt {grace_steps} ]; do sleep 0.1; i=$((i+1)); done',
                "members | while read -r s p; do kill -KILL $p 2>/dev/null; done",
                'i=0; while [ -n "$(members)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done',
                "members | awk '{print \"left\", $1}' | sort -u",
            ]
        )
        channel = self.channels[host]
        try:
            result = channel.run(script, timeout=self.cancel_grace + self.cmd_timeout)
        except ChannelError as exc:
            logger.warning("%s: cannot cancel blocks on %s: %s", self.label, channel.hostname, exc)
            return None
        if result.returncode == 124:
            logger.warning("%s: cancelling blocks on %s timed out", self.label, channel.hostname)
            return None
        return {int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("left ")}

    # -- tunnels and closing ------------------------------------------------------------------

    def tunnel_channels(self) -> list[TunnelChannel]:
        """Every host's channel, when all of them can tunnel (SSH); else none.

        See :meth:`ExecutionProvider.tunnel_channels`: blocks go to the hosts in turn, so a
        tunnel is of use only when every host has one.
        """
        tunnels: list[TunnelChannel] = [c for c in self.channels if isinstance(c, TunnelChannel)]
        return tunnels if len(tunnels) == len(self.channels) else []

    def close(self) -> None:
        """Cancel the blocks still running, remove this provider's files, close the connections.

        See :meth:`ExecutionProvider.close`.  The remote subdirectory is removed when
        ``remote_script_dir`` was not given (the provider made it); the local script
        directory when the provider made it.  Calling it again does nothing; :meth:`submit`
        fails after it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = [job.job_id for job in self._jobs.values() if job.final is None]
            used = sorted(self._used_hosts)
            private, self._private_dir = self._private_dir, None
        try:
            if live:
                self.cancel(live)
            if self.remote_script_dir is None:
                for host in used:
                    directory = self.remote_dir(host)
                    try:
                        self.channels[host].run(f"rm -rf -- {shlex.quote(directory)}", timeout=self.cmd_timeout)
                    except ChannelError as exc:
                        logger.warning("%s: cannot remove %s on %s: %s", self.label, directory,
                                       self.channels[host].hostname, exc)
        finally:
            for channel in self.channels:
                channel.close()
            if private is not None:
                if self.script_dir == private:
                    self.script_dir = None
                shutil.rmtree(private, ignore_errors=True)

    def __repr__(self) -> str:
        hosts = [channel.hostname for channel in self.channels]
        return (
            f"SSHProvider(hosts={hosts!r}, label={self.label!r}, init_blocks={self.init_blocks}, "
            f"min_blocks={self.min_blocks}, max_blocks={self.max_blocks})"
        )
