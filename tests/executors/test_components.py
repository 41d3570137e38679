"""The component argument objects: each survives its own command line, and the programs read them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hpcfutures.executors.htex.components import InterchangeArgs, PoolArgs


def test_interchange_args_survive_their_command_line():
    args = InterchangeArgs(
        keys="/k/interchange.key",
        ipc_dir="/tmp/hpcf-x",
        pool_port=5555,
        driver_fds=(7, 9),
        address="*",
        driver_pid=123,
        heartbeat_period=0.5,
        heartbeat_threshold=3.0,
        lost_task_retries=0,
        log_file="",
        cleanup=("/tmp/a b", "/dev/shm/c"),
    )
    command = args.command()
    assert command[:3] == [sys.executable, "-m", "hpcfutures.executors.htex.interchange"]
    assert InterchangeArgs.parse(command[3:]) == args


def test_pool_args_survive_their_command_line_and_defaults_apply():
    args = PoolArgs(addr="tcp://a:1,tcp://b:2", keys="/k/pool.key", max_workers=4, block_id="7", shm_dir="/dev/shm/x")
    assert PoolArgs.parse(args.to_argv()) == args
    assert PoolArgs.parse(["--addr", "unix:///p", "--keys", "k"]) == PoolArgs(addr="unix:///p", keys="k")


def test_a_missing_or_malformed_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        PoolArgs.parse(["--keys", "k"])
    assert "--addr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        PoolArgs.parse(["--addr", "a", "--keys", "k", "--max-workers", "many"])
    assert "--max-workers" in capsys.readouterr().err


def test_the_pool_program_takes_its_options_from_the_same_declaration():
    help_text = subprocess.run(
        [sys.executable, "-m", "hpcfutures.executors.htex.pool", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for spec in ("--addr", "--keys", "--max-workers", "--block-id", "--prefetch", "--start-timeout", "--shm-dir"):
        assert spec in help_text
