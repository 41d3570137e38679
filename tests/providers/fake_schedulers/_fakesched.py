"""The job database and job runner shared by the fake LSF, HTCondor and Cobalt commands.

No LSF, HTCondor or Cobalt server can be installed on the test machines, so the provider
tests run against small fake commands (``lsf/bsub``, ``condor/condor_q``, ``cobalt/qstat``,
…) that print what the real commands print (samples in ``tests/providers/recorded/``).
Each fake keeps its jobs as JSON files in the directory named by ``HPCF_FAKE_SCHED_DIR``
and really runs every submitted script: a detached runner process (``python
_fakesched.py run <id>``) plays the scheduler for one job.  It waits while the file
``paused`` exists in that directory (so a test can keep jobs queued) or the job is held
(submitted with a hold, as ``qsub -h`` does), starts the
script with bash in a session of its own, stops it at its walltime or when a cancel is
requested, and records how it ended.

Every fake command appends its argv to ``calls.log``, so a test can count scheduler calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DB_VARIABLE = "HPCF_FAKE_SCHED_DIR"
#: Seconds a scheduler "minute" lasts (``bsub -W``, ``qsub -t``), so walltimes can be tested quickly.
MINUTE_VARIABLE = "HPCF_FAKE_SECONDS_PER_MINUTE"
_POLL = 0.05
_KILL_GRACE = 2.0

Job = dict[str, Any]


def db_dir() -> Path:
    """Return the job database directory, or exit like a scheduler that cannot reach its server."""
    value = os.environ.get(DB_VARIABLE)
    if not value:
        sys.stderr.write(f"fake scheduler: {DB_VARIABLE} is not set; no server to talk to\n")
        raise SystemExit(255)
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def seconds_per_minute() -> float:
    """Return how many seconds a walltime minute lasts in this fake cluster."""
    return float(os.environ.get(MINUTE_VARIABLE, "60"))


def log_call(argv: list[str]) -> None:
    """Record one command invocation in ``calls.log``."""
    with open(db_dir() / "calls.log", "a") as f:
        f.write(json.dumps([os.path.basename(argv[0]), *argv[1:]]) + "\n")


@contextlib.contextmanager
def locked() -> Iterator[Path]:
    """Hold the database lock; every read-modify-write of a job happens under it."""
    directory = db_dir()
    with open(directory / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _job_path(directory: Path, job_id: str) -> Path:
    return directory / f"job.{job_id}.json"


def _write(directory: Path, job: Job) -> None:
    path = _job_path(directory, job["id"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def new_job(fields: Job, first_id: int = 1) -> Job:
    """Store a new pending job with the next id and return it."""
    with locked() as directory:
        counter = directory / "next_id"
        job_id = int(counter.read_text()) if counter.exists() else first_id
        counter.write_text(str(job_id + 1))
        job: Job = {
            "state": "pending",
            "submitted": time.time(),
            "started": None,
            "ended": None,
            "pid": None,
            "runner_pid": None,
            "returncode": None,
            "cancel_requested": False,
            "timed_out": False,
            "walltime": None,
            "env": {},
            "inherit_env": True,
            **fields,
            "id": str(job_id),
        }
        _write(directory, job)
        return job


def load(job_id: str) -> Job | None:
    """Return the job with *job_id*, or None."""
    try:
        return json.loads(_job_path(db_dir(), job_id).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def all_jobs() -> list[Job]:
    """Return every job, oldest first."""
    jobs = []
    for path in db_dir().glob("job.*.json"):
        with contextlib.suppress(OSError, ValueError):
            jobs.append(json.loads(path.read_text()))
    return sorted(jobs, key=lambda job: int(job["id"]))


def update(job_id: str, change: Callable[[Job], None]) -> Job | None:
    """Apply *change* to the job under the lock; return the job as saved, or None if unknown."""
    with locked() as directory:
        job = load(job_id)
        if job is None:
            return None
        change(job)
        _write(directory, job)
        return job


def start(job: Job) -> None:
    """Start the detached runner that plays the scheduler for *job*."""
    # The runner must not inherit the command's stdout/stderr: the caller waits for them to close.
    with open(db_dir() / f"runner.{job['id']}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "run", job["id"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    update(job["id"], lambda j: j.update(runner_pid=proc.pid))


def request_cancel(job_id: str) -> str | None:
    """Ask the runner to stop a job; return the state it was in (None: unknown job)."""
    before: list[str] = []

    def mark(job: Job) -> None:
        before.append(job["state"])
        if job["state"] != "finished":
            job["cancel_requested"] = True

    job = update(job_id, mark)
    if job is None:
        return None
    if before[0] == "running" and job["pid"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job["pid"], signal.SIGTERM)
    return before[0]


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run(job_id: str) -> None:
    """Play the scheduler for one job: queue, run, enforce walltime and cancel, record the end."""
    directory = db_dir()
    while True:
        job = load(job_id)
        if job is None:
            return
        if job["cancel_requested"]:
            update(job_id, lambda j: j.update(state="finished", ended=time.time()))
            return
        if not (directory / "paused").exists() and not job.get("held"):
            break
        time.sleep(_POLL)

    env = (
        dict(os.environ)
        if job["inherit_env"]
        else {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    )
    env.pop(DB_VARIABLE, None)
    env.update(job["env"])
    Path(job["stdout"]).parent.mkdir(parents=True, exist_ok=True)
    Path(job["stderr"]).parent.mkdir(parents=True, exist_ok=True)
    with open(job["stdout"], "ab") as out, open(job["stderr"], "ab") as err:
        proc = subprocess.Popen(
            job.get("argv") or ["/bin/bash", job["script"]],
            cwd=job.get("cwd") or None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    started = time.time()
    job = update(job_id, lambda j: j.update(state="running", pid=proc.pid, started=started)) or job
    if job["cancel_requested"]:  # cancelled between the wait above and the start
        _killpg(proc.pid, signal.SIGTERM)
    kill_at: float | None = None
    while proc.poll() is None:
        time.sleep(_POLL)
        now = time.time()
        job = load(job_id) or job
        if kill_at is None:
            if job["cancel_requested"]:
                kill_at = now + _KILL_GRACE
                _killpg(proc.pid, signal.SIGTERM)
            elif job["walltime"] is not None and now - started > job["walltime"]:
                update(job_id, lambda j: j.update(timed_out=True))
                kill_at = now + _KILL_GRACE
                _killpg(proc.pid, signal.SIGTERM)
        elif now > kill_at:
            _killpg(proc.pid, signal.SIGKILL)
    _killpg(proc.pid, signal.SIGKILL)  # like a scheduler, leave nothing of the job behind
    code = proc.returncode
    update(job_id, lambda j: j.update(state="finished", returncode=code, ended=time.time()))


def kill_everything(directory: str | os.PathLike[str]) -> None:
    """Stop every job and runner recorded in *directory* (test teardown)."""
    for path in Path(directory).glob("job.*.json"):
        with contextlib.suppress(OSError, ValueError):
            job = json.loads(path.read_text())
            if job.get("runner_pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(job["runner_pid"], signal.SIGKILL)
            if job.get("pid"):
                _killpg(job["pid"], signal.SIGKILL)


def user() -> str:
    """Return the name of the user running the command."""
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "run":
    run(sys.argv[2])
