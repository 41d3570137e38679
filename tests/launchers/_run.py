"""Helpers for the launcher tests: a command that leaves a marker file per copy, and a runner.

The runner executes a fragment exactly as a provider's job script does (``exec <fragment>``
in bash) in its own session, so a timeout can stop everything it started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: A real MPI program: every rank must see the same world and take part in one reduction.
MPI_SUM_PROGRAM = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d sum %d\n", rank, size, sum);
    MPI_Finalize();
    return 0;
}
"""

#: Written by every copy into its marker file: shell quotes, spaces, and characters that a
#: lost level of quoting would expand or split on.
PAYLOAD = "it's \"quoted\"  with  $HOME `id` ;&| and a \\ backslash"

_MARKER = (
    "import os, sys\n"
    "rank_var, directory, payload, code, failing = sys.argv[1:]\n"
    "rank = os.environ.get(rank_var, 'none')\n"
    "with open(os.path.join(directory, 'copy.%s.%d' % (rank, os.getpid())), 'w') as f:\n"
    "    f.write(payload)\n"
    "sys.exit(int(code) if failing in ('*', rank) else 0)\n"
)


def marker_command(directory: Path, rank_var: str, *, exit_code: int = 0, failing: str = "*") -> str:
    """Return a shell command line that writes ``directory/copy.<rank>.<pid>`` holding PAYLOAD.

    ``rank`` is the value of the environment variable *rank_var* (``none`` if unset).  The
    copy exits with *exit_code* if its rank is *failing* (``"*"``: every copy), else with 0.
    """
    return shlex.join([sys.executable, "-c", _MARKER, rank_var, str(directory), PAYLOAD, str(exit_code), failing])


def markers(directory: Path) -> list[tuple[str, str]]:
    """Return ``(rank, content)`` for each marker file in *directory*, sorted by rank."""
    found = []
    for path in directory.glob("copy.*"):
        rank = path.name.split(".")[1]
        found.append((rank, path.read_text()))
    return sorted(found)


# Drops ssh's options, records the host name in "<this file>.hosts", then runs the remote
# command here as sshd would: the arguments joined with spaces, given to a shell's -c, with
# SHELL set to that shell (GNU parallel's remote wrapper runs the command with $SHELL; a CI
# runner may start the tests without SHELL in the environment).
_REMOTE_SHELL = """#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -o|-l|-p|-i|-F) shift 2;; -*) shift;; *) break;; esac; done
echo "$1" >> "$0.hosts"
shift
[ "${1-}" = -- ] && shift
export SHELL=/bin/bash
exec /bin/bash -c "$*"
"""


def remote_shell(directory: Path) -> Path:
    """Write an ssh stand-in that runs "remote" commands on this machine; return its path.

    Launchers reach other nodes through ssh; this machine is one node, so tests give them
    this instead.  The hosts it was asked to reach are listed in ``<path>.hosts``.
    """
    path = directory / "remote-shell"
    path.write_text(_REMOTE_SHELL)
    path.chmod(0o755)
    return path


def reached_hosts(shell: Path) -> list[str]:
    """Return the hosts the remote shell at *shell* was asked to reach, sorted."""
    log = shell.with_name(shell.name + ".hosts")
    return sorted(log.read_text().split()) if log.exists() else []


def run_fragment(
    fragment: str, *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``exec <fragment>`` in bash, as a job script's last line; fail the test on timeout."""
    proc = subprocess.Popen(
        ["/bin/bash", "-c", f"exec {fragment}"],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the fragment did not end within {timeout:g} s\n{fragment}\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pid_command(directory: Path) -> str:
    """Return a command line that records its pid in ``directory/pid.<n>`` and sleeps."""
    return f'echo $$ > "$(mktemp {shlex.quote(str(directory))}/pid.XXXXXX)"; exec sleep 120'


def terminate_after_start(
    fragment: str, directory: Path, copies: int, *, env: dict[str, str] | None = None
) -> tuple[int, list[int]]:
    """Start *fragment*, wait until *copies* copies of :func:`pid_command` run, send it TERM.

    Returns the fragment's exit status and the copies' pids.  Fails the test if the copies
    do not start, or the fragment does not end, within 30 seconds.
    """
    proc = subprocess.Popen(["/bin/bash", "-c", f"exec {fragment}"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            written = [p.read_text().strip() for p in directory.glob("pid.*")]
            if len(written) >= copies and all(written):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{copies} copies did not start (fragment status {proc.poll()}): {fragment}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the fragment did not end within 30 s of SIGTERM: {fragment}")
        return status, [int(pid) for pid in written]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Return True once no process *pid* exists (zombies count as gone), within *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False
