"""The real single-node Slurm cluster that Slurm, PBS/Torque and HTEX-on-Slurm tests share.

Import the fixture into a test module (``from tests.providers.slurm_cluster import
slurm_cluster``) and mark its tests ``@pytest.mark.xdist_group("slurm")``.  The session
fixture starts the cluster with ``tests/infra/slurm.sh start`` (idempotent) and stops it at
the end of the session, unless another live test session registered as a user meanwhile:
developers run test files side by side, and stopping the daemons under another session
would fail its tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import missing, need_root, run_infra

#: Where tests/infra/slurm.sh unpacks slurm-wlm-torque's qsub/qstat/qdel wrappers.
TORQUE_BIN = "/opt/hpcfutures-torque/bin"

#: One file per test session using the cluster, named after the session's pid.
_USERS = Path("/run/hpcfutures-slurm-users")

_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun")


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the running cluster."""

    partition: str = "debug"
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpus: int = 2
    torque_bin: str = TORQUE_BIN

    def torque_env(self) -> dict[str, str]:
        """Environment for a channel whose ``qsub``/``qstat``/``qdel`` are the Torque wrappers."""
        return {"PATH": f"{self.torque_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def queued_ids(self) -> list[str]:
        """Ids of every job the cluster still queues or runs."""
        out = subprocess.run(
            ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout.split()

    def wait_empty(self, ids: list[str], timeout: float = 60.0) -> None:
        """Wait until none of *ids* is queued or running; fail the test if that takes too long."""
        deadline = time.monotonic() + timeout
        while set(ids) & set(self.queued_ids()):
            if time.monotonic() > deadline:
                pytest.fail(f"Slurm jobs {ids} still queued after {timeout:g} s: {self.queued_ids()}")
            time.sleep(0.2)


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, timeout=30)
    text = out.stdout.strip().split()
    return int(text[0]) if text and text[0].isdigit() else 1


def _other_users() -> list[int]:
    alive = []
    for entry in _USERS.glob("*"):
        try:
            pid = int(entry.name)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            entry.unlink(missing_ok=True)  # a session that died without cleaning up
            continue
        except PermissionError:
            pass
        if pid != os.getpid():
            alive.append(pid)
    return alive


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the real Slurm cluster (munged, slurmctld, slurmd) and yield once it takes jobs."""
    need_root("the Slurm cluster")
    absent = [c for c in _COMMANDS if shutil.which(c) is None and not os.path.exists(f"/usr/sbin/{c}")]
    if absent:
        missing(f"the Slurm cluster needs {', '.join(absent)} (installed by .ci/setup-slurm.sh)")
    _USERS.mkdir(parents=True, exist_ok=True)
    mine = _USERS / str(os.getpid())
    mine.touch()
    try:
        run_infra("slurm.sh", "start")
        yield SlurmCluster(cpus=_node_cpus())
    finally:
        mine.unlink(missing_ok=True)
        if not _other_users():
            run_infra("slurm.sh", "stop")
