"""Unit tests of hpcfutures.exits: the wording of exit codes and signals."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from hpcfutures.exits import describe_exit, exit_signal, signal_name

#: Beyond every platform's highest signal number (64 on Linux), so never defined.
UNKNOWN = 200


@pytest.mark.parametrize("signum, name", [(signal.SIGKILL, "SIGKILL"), (signal.SIGTERM, "SIGTERM"), (2, "SIGINT")])
def test_signal_name_names_known_signals(signum, name):
    assert signal_name(signum) == name


def test_signal_name_numbers_an_unknown_signal():
    assert signal_name(UNKNOWN) == f"signal {UNKNOWN}"
    assert signal_name(0) == "signal 0"


@pytest.mark.parametrize("exitcode", [None, 0, 1, 9, 137, 255])
def test_exit_signal_is_none_unless_a_signal_ended_the_process(exitcode):
    # 9 and 137 are exit codes here, not signals: only a negative code means a signal.
    assert exit_signal(exitcode) is None


def test_exit_signal_reads_negative_codes_as_signals():
    assert exit_signal(-signal.SIGKILL) == "SIGKILL"
    assert exit_signal(-signal.SIGSEGV) == "SIGSEGV"
    assert exit_signal(-UNKNOWN) == f"signal {UNKNOWN}"


@pytest.mark.parametrize("exitcode", [0, 3, 137])
def test_describe_exit_of_a_normal_exit_gives_the_code(exitcode):
    assert describe_exit(exitcode) == f"exited with code {exitcode}"


def test_describe_exit_names_the_signal():
    assert describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"
    assert describe_exit(-UNKNOWN) == f"was killed by signal {UNKNOWN}"


def test_describe_exit_of_sigkill_names_its_usual_causes():
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL (the out-of-memory killer, or another process)"


def test_describe_exit_drops_the_sigkill_hint_when_asked():
    assert describe_exit(-signal.SIGKILL, sigkill_hint=False) == "was killed by SIGKILL"
    assert describe_exit(-signal.SIGTERM, sigkill_hint=False) == "was killed by SIGTERM"


def test_describe_exit_of_a_process_still_running():
    assert describe_exit(None) == "has not exited"


def test_describe_exit_agrees_with_popen():
    # The convention the module assumes: Popen reports death by signal N as -N.
    proc = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert describe_exit(proc.returncode) == "was killed by SIGTERM"


def test_exits_imports_nothing_heavy():
    # The point of the module: the driver words exits without the pool's imports.
    code = (
        "import sys, hpcfutures.exits; "
        "print(sorted(m for m in sys.modules if m.startswith(('multiprocessing', 'zmq', 'hpcfutures.executors'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_driver_does_not_import_the_pool():
    code = (
        "import sys, hpcfutures.executors.htex.executor; "
        "print(sorted(m for m in sys.modules if m.endswith(('htex.pool', 'htex.worker'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
