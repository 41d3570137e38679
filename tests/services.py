"""Helpers shared by the fixtures that start real services (Slurm, GridEngine, sshd, …).

A service that cannot run here (not installed, not root) skips its tests with the reason;
with ``HPCF_REQUIRE_SERVICES=1`` (set by CI) it fails them instead, so CI never passes by
skipping.  Tests that share one system-wide service (the Slurm cluster) carry
``@pytest.mark.xdist_group(name)``: ``--dist loadgroup`` (set in pyproject.toml) runs them
in one pytest-xdist worker, whose session fixture starts the service and stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INFRA = Path(__file__).parent / "infra"


def missing(reason: str) -> None:
    """Skip the calling test, or fail it when CI requires every service."""
    if os.environ.get("HPCF_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (HPCF_REQUIRE_SERVICES=1; run .ci/setup-services.sh)", pytrace=False)
    pytest.skip(reason)


def need_root(what: str) -> None:
    """Skip (or fail under CI) unless running as root, which system daemons need."""
    if os.geteuid() != 0:
        missing(f"{what} needs root to start system daemons")


def need_commands(what: str, *commands: str) -> None:
    """Skip (or fail under CI) unless every command is on PATH."""
    absent = [c for c in commands if shutil.which(c) is None]
    if absent:
        missing(f"{what} needs {', '.join(absent)} (installed by .ci/setup-services.sh)")


def run_infra(script: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``tests/infra/<script>`` with bash; fail the test with its output if it fails."""
    proc = subprocess.run(
        ["bash", str(INFRA / script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"tests/infra/{script} {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    return proc
