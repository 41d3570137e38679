"""Memory cages: a Linux memory cgroup per worker, so a task cannot use more than it asked for.

With ``enforce_memory=True`` each worker of a pool lives in a child of the pool's own memory
cgroup.  While it runs a task with ``Resources(memory_gb=...)`` the cage's limit is that
much; the kernel's out-of-memory killer then ends the worker if the task uses more, and the
pool fails the task (it is not retried: it would fail again) saying so.  Between tasks the
cage has no limit.  Only cgroup v1's memory controller, mounted read-write, is used: where
it is missing :func:`unavailable` says why, and the pool refuses to start.
"""

from __future__ import annotations

import os
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/memory")
UNLIMITED = -1


def _own_cgroup() -> Path | None:
    """This process's memory cgroup directory (cgroup v1), if there is one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return V1_ROOT / path.lstrip("/")
    return None


def unavailable() -> str | None:
    """Why memory cages cannot be made here, or None if they can."""
    own = _own_cgroup()
    if own is None or not (own / "memory.limit_in_bytes").exists():
        return "enforce_memory needs Linux's cgroup v1 memory controller, which this node does not mount"
    if not os.access(own, os.W_OK):
        return f"enforce_memory needs to create memory cgroups under {own}, which this user may not write"
    return None


class MemoryCage:
    """One worker's memory cgroup (see the module docstring); owned by the pool's thread."""

    def __init__(self, name: str):
        own = _own_cgroup()
        assert own is not None, "check unavailable() first"
        self.path = own / name
        self.path.mkdir(exist_ok=True)
        self._write("memory.swappiness", "0")  # a limited task must not swap its way past the limit
        self._kills_at_limit = 0

    def _write(self, name: str, value: str) -> None:
        try:
            (self.path / name).write_text(value)
        except OSError:
            pass  # swappiness cannot be set under every hierarchy; the limit still holds

    def add(self, pid: int) -> None:
        """Move process ``pid`` (a worker) into the cage."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def limit(self, gigabytes: float | None) -> None:
        """Cap the cage at ``gigabytes`` (None: no cap); remember the OOM kills so far."""
        value = str(UNLIMITED) if gigabytes is None else str(int(gigabytes * 2**30))
        if gigabytes is not None:
            self._kills_at_limit = self.oom_kills()
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # lowering: the plain limit first (memsw must stay >= it)
                (self.path / "memory.limit_in_bytes").write_text(value)
                memsw.write_text(value)
                return
        elif (self.path / "memory.memsw.limit_in_bytes").exists():  # raising: memsw first
            (self.path / "memory.memsw.limit_in_bytes").write_text(value)
        (self.path / "memory.limit_in_bytes").write_text(value)

    def oom_kills(self) -> int:
        """How many processes the out-of-memory killer has ended in this cage."""
        try:
            for line in (self.path / "memory.oom_control").read_text().splitlines():
                key, _, count = line.partition(" ")
                if key == "oom_kill":
                    return int(count)
        except (OSError, ValueError):
            pass
        return 0

    def killed_since_limit(self) -> bool:
        """Whether the out-of-memory killer struck since the last :meth:`limit`."""
        return self.oom_kills() > self._kills_at_limit

    def remove(self) -> None:
        """Remove the cage once its processes are gone (nothing if some remain)."""
        try:
            self.path.rmdir()
        except OSError:
            pass
