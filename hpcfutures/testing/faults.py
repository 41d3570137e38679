"""Task functions that misbehave on purpose, for testing how an executor copes.

They live in the package (not in a test module) so that worker processes can import them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable


def worker_identity() -> dict[str, Any]:
    """Return the worker's pid and the ``HPCFUTURES_*`` variables it sees."""
    env = {k: v for k, v in os.environ.items() if k.startswith("HPCFUTURES_") or k == "SLURM_JOB_ID"}
    return {"pid": os.getpid(), "env": env}


def report_pid_then(wait: Callable[[], Any], path: str) -> int:
    """Append this worker's pid to ``path``, call ``wait()`` (a gate), then return the pid."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    wait()
    return os.getpid()


def kill_self(signum: int = signal.SIGKILL) -> None:
    """Kill the worker running this task with ``signum``."""
    os.kill(os.getpid(), signum)


def exit_now(code: int = 7) -> None:
    """Leave the worker process at once, without cleanup, with ``code``."""
    os._exit(code)


def spawn_child_then(wait: Callable[[], Any], path: str) -> None:
    """Start a long ``sleep`` child, write its pid to ``path``, then call ``wait()``."""
    child = subprocess.Popen(["sleep", "1000"])
    with open(path, "w") as f:
        f.write(str(child.pid))
    wait()


def stuck_in_c(seconds: float = 1000.0) -> None:
    """Block in C code (``sleep(3)`` from libc), out of reach of Python signal handlers."""
    with open(os.devnull, "w"):
        pass
    ctypes.CDLL(None).sleep(int(seconds))


def sleep_then(seconds: float, value: Any = None) -> Any:
    """Sleep ``seconds`` (the task's own work, not synchronisation), then return ``value``."""
    time.sleep(seconds)
    return value


def failing_initializer() -> None:
    """An initializer that fails, as a broken environment would."""
    raise RuntimeError("initializer refused to start: missing license file")


def python_version() -> str:
    """The Python version the worker runs."""
    return sys.version


def set_env(name: str, value: str) -> None:
    """An initializer that sets an environment variable in the worker."""
    os.environ[name] = value


def get_env(name: str) -> str | None:
    """Return an environment variable as the worker sees it."""
    return os.environ.get(name)


def record_then_stuck(record: Callable[[Any], Any]) -> None:
    """Report this worker's pid through ``record``, then block in C code."""
    record(os.getpid())
    stuck_in_c()


def kill_self_once(marker: str, value: Any = None) -> Any:
    """Kill this worker unless ``marker`` exists (creating it first); then return ``value``.

    The first attempt dies and any later one succeeds: a transient loss of a worker.
    """
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return value
    os.kill(os.getpid(), signal.SIGKILL)
    return None  # not reached


def record_then_kill(record: Callable[[Any], Any]) -> None:
    """Report this worker's pid through ``record``, then kill the worker with SIGKILL."""
    record(os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def fail_until(path: str, failures: int, value: Any = None) -> Any:
    """Count this attempt in the file ``path``; raise for the first ``failures`` attempts.

    Return ``value`` from attempt ``failures + 1`` on.  A file rather than a global, so that
    the attempts are counted across worker processes.
    """
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        attempt = len(f.read())
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} of {path} fails on purpose")
    return value


def identity_after(wait: Callable[[], Any]) -> dict[str, Any]:
    """Call ``wait()`` (a Gate's wait), then return :func:`worker_identity`."""
    wait()
    return worker_identity()


def append_line(path: str, value: Any) -> Any:
    """Append ``value`` as a line to ``path`` (one write, so lines from many workers never mix)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)
    return value
