"""LocalProvider: blocks as process sessions on this machine.

Each block is a bash job script run in a new session (so its process group and session id
are the script's pid).  Cancelling a block signals the whole group, then hunts down what
left it: processes still in the session, and descendants that started sessions of their own
while their parents were alive.  A process that double-forks *and* calls ``setsid`` escapes;
nothing short of cgroups can follow it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence

import psutil

from .._validate import check_seconds, keyword_renamed
from ..exits import SIGKILL_HINT, describe_exit, exit_signal
from ..launchers.base import Launcher
from ..tails import read_tail
from .base import ExecutionProvider, JobState, JobStatus

logger = logging.getLogger(__name__)

_POLL_INTERVAL = 0.02
# After SIGKILL, how long cancel() waits for processes to vanish before it gives up on them
# (a process in uninterruptible sleep can outlive SIGKILL for a while).
_KILL_WAIT = 5.0
# Rounds of "find what is left, kill it" after SIGKILL, to catch processes forked meanwhile.
_KILL_ROUNDS = 3



def _failure(returncode: int) -> str:
    """How a block's script failed: its exit code, or the signal that killed it."""
    name = exit_signal(returncode)
    if name is None:
        return describe_exit(returncode)
    return f"killed by signal {name}" + (f" ({SIGKILL_HINT})" if name == "SIGKILL" else "")

class _Job:
    """One submitted block: its leader process and where its files are."""

    __slots__ = ("cancelled", "job_id", "popen", "script", "stderr", "stdout")

    def __init__(self, job_id: str, popen: subprocess.Popen[bytes], script: str, stdout: str, stderr: str):
        self.job_id = job_id
        self.popen = popen
        self.script = script
        self.stdout = stdout
        self.stderr = stderr
        # Set when cancel() signals a running job, so its end reads CANCELLED, not FAILED.
        self.cancelled = False

    @property
    def pid(self) -> int:
        return self.popen.pid


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil refuses if the pid now belongs to another process
    except psutil.Error:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _session_members(sids: set[int]) -> dict[int, list[psutil.Process]]:
    """Return the processes of each session in *sids*, except its leader, in one scan."""
    found: dict[int, list[psutil.Process]] = {sid: [] for sid in sids}
    if not sids:
        return found
    for pid in psutil.pids():
        if pid in sids:
            continue
        try:
            sid = os.getsid(pid)
            if sid in found:
                found[sid].append(psutil.Process(pid))
        except (OSError, psutil.Error):
            continue
    return found


class LocalProvider(ExecutionProvider):
    """Run each block as a bash job script in its own session on this machine.

    Job ``n`` writes ``<job_name>.<n>.sh`` into :attr:`script_dir` (the user's
    ``worker_init`` lines, then ``exec`` of the launched command) and sends its stdout and
    stderr to ``<job_name>.<n>.out`` and ``.err`` beside it.  When :attr:`script_dir` is None
    at a submit, it is set to a new private temporary directory (mode 0700), which
    :meth:`close` removes.  Blocks always have one node.
    """

    def __init__(
        self,
        *,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1.0,
        worker_init: str = "",
        cancel_grace: float = 2.0,
        label: str = "local",
        launcher: Launcher | None = None,
        nodes_per_block: int = 1,
    ) -> None:
        """Create a provider; nothing starts until :meth:`submit`.

        Args:
            init_blocks, min_blocks, max_blocks, parallelism: the executor's scaling; see
                :class:`~hpcfutures.providers.ExecutionProvider`.
            worker_init: shell lines the job script runs before the pool command.  They run
                without ``set -e``: end a line with ``|| exit 1`` to make its failure fatal.
            cancel_grace: seconds :meth:`cancel` waits after SIGTERM before SIGKILL.
            label: a short name for logs.
            launcher: wraps the pool command; :class:`~hpcfutures.launchers.SimpleLauncher`
                by default.
            nodes_per_block: the nodes a block spans, for a script that already holds an
                allocation of several nodes ("headless" mode): with a launcher that starts
                one copy per node, such as ``SrunLauncher()`` inside ``salloc -N 4`` or an
                ``sbatch`` job, each block runs one pool on every node.

        Raises:
            ConfigurationError: a parameter has a value that cannot work.
        """
        super().__init__(
            label=label,
            init_blocks=init_blocks,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            parallelism=parallelism,
            nodes_per_block=nodes_per_block,
            worker_init=worker_init,
            launcher=launcher,
        )
        self.cancel_grace = float(check_seconds("cancel_grace", cancel_grace, allow_zero=True, finite=True))
        # Must be held while reading or changing _jobs, _next_id, _private_dir, _closed, and
        # script_dir once jobs may be submitted.
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._next_id = 0
        self._private_dir: str | None = None
        self._closed = False

    @keyword_renamed("tasks_per_node", "max_workers")
    def submit(self, command: str, max_workers: int, job_name: str = "hpcfutures.block") -> str:
        """Start a block running *command* (wrapped by the launcher); return its job id.

        *max_workers* is how many workers the pool runs, passed to the launcher.

        Raises:
            RuntimeError: the provider was closed.
            OSError: the script directory or files could not be created, or bash not started.
        """
        launched = self.launcher(command, max_workers, self.nodes_per_block)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", job_name) or "block"
        init = self.worker_init.rstrip("\n")
        body = (
            f"#!/bin/bash\n# hpcfutures block of LocalProvider {self.label!r}\n"
            + (f"{init}\n" if init else "")
            + f"exec {launched}\n"
        )
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cannot submit a block: LocalProvider {self.label!r} is closed")
            directory = self._directory()
            job_id, script = self._create_script(directory, name, body)
            base = script[: -len(".sh")]
            stdout, stderr = base + ".out", base + ".err"
            with open(stdout, "wb") as out, open(stderr, "wb") as err:
                popen = subprocess.Popen(
                    ["/bin/bash", script],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                )
            self._jobs[job_id] = _Job(job_id, popen, script, stdout, stderr)
        logger.debug("LocalProvider %s started job %s (pid %d): %s", self.label, job_id, popen.pid, script)
        return job_id

    def _directory(self) -> str:
        if self.script_dir is None:
            self.script_dir = self._private_dir = tempfile.mkdtemp(prefix=f"hpcfutures-{self.label}-")
        else:
            os.makedirs(self.script_dir, exist_ok=True)
        return self.script_dir

    def _create_script(self, directory: str, name: str, body: str) -> tuple[str, str]:
        # O_EXCL: another provider may share the directory; never overwrite its files.
        while True:
            n = self._next_id
            self._next_id += 1
            path = os.path.join(directory, f"{name}.{n}.sh")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(body)
            return str(n), path

    def status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """Return the status of each job, with the last lines of its stdout and stderr.

        A running job is RUNNING; an ended one COMPLETED (exit 0), FAILED (nonzero exit or a
        signal) or CANCELLED (stopped by :meth:`cancel`); an unknown id MISSING.
        """
        with self._lock:
            jobs = [self._jobs.get(job_id) for job_id in job_ids]
        return [self._status_of(job_id, job) for job_id, job in zip(job_ids, jobs)]

    def _status_of(self, job_id: str, job: _Job | None) -> JobStatus:
        if job is None:
            return JobStatus(
                JobState.MISSING, message=f"no job {job_id!r} was submitted to LocalProvider {self.label!r}"
            )
        returncode = job.popen.poll()
        if returncode is None:
            state, message = JobState.RUNNING, f"running as pid {job.pid}"
        elif job.cancelled:
            # cancel() sent any SIGKILL itself: no hint about the out-of-memory killer.
            state, message = JobState.CANCELLED, f"cancelled; it {describe_exit(returncode, sigkill_hint=False)}"
        elif returncode == 0:
            state, message = JobState.COMPLETED, describe_exit(returncode)
        else:
            state, message = JobState.FAILED, _failure(returncode)
        return JobStatus(
            state,
            exit_code=returncode,
            message=message,
            stdout_tail=read_tail(job.stdout),
            stderr_tail=read_tail(job.stderr),
        )

    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        """Stop each job's processes: SIGTERM, then SIGKILL after ``cancel_grace`` seconds.

        Signals the job's process group, other processes left in its session, and its
        descendants; reaps the job script's process.  A job that already ended has its
        leftover processes stopped the same way.  All jobs are stopped together, so this
        returns within about ``cancel_grace + 5`` seconds however many there are.

        Returns:
            For each id, True when none of the job's processes is left running, False for an
            unknown id or a process that outlived SIGKILL.
        """
        with self._lock:
            found = [self._jobs.get(job_id) for job_id in job_ids]
        jobs = list({id(job): job for job in found if job is not None}.values())
        strays = self._leftovers(jobs)
        for job in jobs:
            if job.popen.poll() is None:
                job.cancelled = True
                _killpg(job.pid, signal.SIGTERM)
            for proc in strays[job.job_id]:
                _signal(proc, signal.SIGTERM)
        self._wait(jobs, strays, time.monotonic() + self.cancel_grace)

        for _ in range(_KILL_ROUNDS):
            # Look again: processes may have forked or left the group since the last look.
            again = self._leftovers(jobs)
            for job in jobs:
                strays[job.job_id] = [p for p in strays[job.job_id] + again[job.job_id] if _alive(p)]
            if self._stopped(jobs, strays):
                break
            for job in jobs:
                if job.popen.poll() is None:
                    _killpg(job.pid, signal.SIGKILL)
                for proc in strays[job.job_id]:
                    _signal(proc, signal.SIGKILL)
            self._wait(jobs, strays, time.monotonic() + _KILL_WAIT / _KILL_ROUNDS)

        results = []
        for job_id, maybe in zip(job_ids, found):
            if maybe is None:
                results.append(False)
                continue
            stopped = maybe.popen.poll() is not None and not any(_alive(p) for p in strays[job_id])
            if not stopped:
                logger.warning(
                    "LocalProvider %s: job %s outlived SIGKILL (pid %d)", self.label, job_id, maybe.pid
                )
            results.append(stopped)
        return results

    @staticmethod
    def _leftovers(jobs: list[_Job]) -> dict[str, list[psutil.Process]]:
        """Return each job's processes other than its leader: descendants and session members."""
        found: dict[str, dict[int, psutil.Process]] = {job.job_id: {} for job in jobs}
        sessions = set()
        for job in jobs:
            if job.popen.poll() is None:
                sessions.add(job.pid)
                try:
                    for child in psutil.Process(job.pid).children(recursive=True):
                        found[job.job_id][child.pid] = child
                except psutil.Error:
                    pass
            elif not psutil.pid_exists(job.pid):
                sessions.add(job.pid)
            # else the leader was reaped and its pid reused: the session id may now name a
            # stranger's session, so do not look for members by it.
        members = _session_members(sessions)
        for job in jobs:
            for proc in members.get(job.pid, []):
                found[job.job_id].setdefault(proc.pid, proc)
        return {job_id: list(procs.values()) for job_id, procs in found.items()}

    @staticmethod
    def _stopped(jobs: Iterable[_Job], strays: dict[str, list[psutil.Process]]) -> bool:
        return all(
            job.popen.poll() is not None and not any(_alive(p) for p in strays[job.job_id]) for job in jobs
        )

    def _wait(self, jobs: list[_Job], strays: dict[str, list[psutil.Process]], deadline: float) -> None:
        while not self._stopped(jobs, strays) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)

    def close(self) -> None:
        """Cancel every job's processes and remove the private script directory, if one was made.

        See :meth:`ExecutionProvider.close`.  Every job is cancelled, ended or not, so that
        processes an ended job left behind are stopped too.  When the private directory is
        removed, :attr:`script_dir` goes back to None.  Calling it again does nothing;
        :meth:`submit` fails after it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            job_ids = list(self._jobs)
        if job_ids:
            self.cancel(job_ids)
        with self._lock:
            private, self._private_dir = self._private_dir, None
            if private is not None and self.script_dir == private:
                self.script_dir = None
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
