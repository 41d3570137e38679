"""The ``sge_cluster`` session fixture: a real single-node Son of Grid Engine cluster.

It runs ``tests/infra/sge.sh start`` (idempotent: qmaster and execd on this machine, queue
``all.q`` with one slot per CPU, parallel environment ``smp``) and, when it was not running
before the session, ``tests/infra/sge.sh stop`` at the end.  Without root, without the
gridengine packages (``.ci/setup-sge.sh`` installs them) or when ``qsub`` on PATH is not Grid
Engine's, the tests skip (fail under ``HPCF_REQUIRE_SERVICES=1``).

Test modules import the fixture by name and mark their tests
``@pytest.mark.xdist_group("sge")``, so one pytest-xdist worker owns the cluster.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.services import INFRA, missing, need_commands, need_root, run_infra

#: The queue and parallel environment tests/infra/sge.sh creates.
QUEUE = "all.q"
PARALLEL_ENVIRONMENT = "smp"


@dataclass(frozen=True)
class SgeCluster:
    """What tests need to know about the running cluster."""

    queue: str
    parallel_environment: str
    slots: int


def _qsub_is_grid_engine() -> bool:
    # Debian's slurm-wlm-torque also ships a /usr/bin/qsub (Torque's syntax on top of Slurm).
    proc = subprocess.run(["qsub", "-help"], capture_output=True, text=True, timeout=30, check=False)
    first = (proc.stdout or proc.stderr).splitlines()[:1]
    return bool(first) and first[0].split()[0] in {"SGE", "GE", "OGS/GE", "UGE", "AGE"}


def _running() -> bool:
    proc = subprocess.run(["bash", str(INFRA / "sge.sh"), "status"], capture_output=True, timeout=60, check=False)
    return proc.returncode == 0


@pytest.fixture(scope="session")
def sge_cluster() -> Iterator[SgeCluster]:
    """Start the Grid Engine cluster for the session (or use the running one)."""
    need_root("a Grid Engine cluster")
    need_commands("a Grid Engine cluster", "qsub", "qstat", "qdel", "qacct", "sge_qmaster", "sge_execd")
    if not _qsub_is_grid_engine():
        missing("qsub on PATH is not Grid Engine's (is slurm-wlm-torque installed?); run .ci/setup-sge.sh")
    was_running = _running()
    run_infra("sge.sh", "start", timeout=120)
    proc = subprocess.run(
        ["qconf", "-sq", QUEUE], capture_output=True, text=True, timeout=30, check=True
    )
    slots = next(int(line.split()[-1]) for line in proc.stdout.splitlines() if line.startswith("slots"))
    try:
        yield SgeCluster(QUEUE, PARALLEL_ENVIRONMENT, slots)
    finally:
        if not was_running:
            run_infra("sge.sh", "stop", timeout=120)
