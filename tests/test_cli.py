"""Tests of the ``hpcfutures`` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

import hpcfutures
from hpcfutures.cli import main


def run(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "hpcfutures", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_version():
    result = run("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hpcfutures {hpcfutures.__version__}"


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "pool", "version"):
        assert command in result.stdout


def test_no_command_is_an_error():
    result = run()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


def test_unknown_command_is_an_error():
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "0"], "--tasks: must be at least 1"),
        (["--workers", "-2"], "--workers: must be at least 1"),
        (["--samples", "many"], "--samples: expected a whole number"),
        (["--samples", "3", "--tasks", "4"], "--samples (3) must be at least --tasks (4)"),
    ],
)
def test_bad_sampling_arguments_are_refused(args, message):
    result = run("demo", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_main_returns_exit_codes_instead_of_exiting(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"hpcfutures {hpcfutures.__version__}"
    assert main(["bogus"]) == 2
    assert main(["--help"]) == 0


def test_demo_estimates_pi():
    result = run("demo", "--samples", "20000", "--tasks", "4", "--workers", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    match = re.search(r"pi estimate:\s*([0-9.]+)", result.stdout)
    assert match, result.stdout
    assert abs(float(match.group(1)) - math.pi) < 0.2
    assert re.search(r"tasks:\s*4\b", result.stdout)
    assert re.search(r"workers:\s*2\b", result.stdout)
    assert "wall time" in result.stdout
