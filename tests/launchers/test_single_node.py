"""Tests of hpcfutures.launchers.single_node: the fragments run in bash, as a job script runs them."""

from __future__ import annotations

import signal

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.single_node import SingleNodeLauncher

from ._run import PAYLOAD, gone, marker_command, markers, pid_command, run_fragment, terminate_after_start

RANK = "HPCFUTURES_LAUNCH_RANK"


def test_one_copy_per_node_with_ranks_and_quoting_intact(tmp_path):
    fragment = SingleNodeLauncher()(marker_command(tmp_path, RANK), max_workers=4, nodes_per_block=3)
    proc = run_fragment(fragment)
    assert proc.returncode == 0, proc.stderr
    assert markers(tmp_path) == [("0", PAYLOAD), ("1", PAYLOAD), ("2", PAYLOAD)]


def test_per_task_starts_a_copy_per_worker(tmp_path):
    fragment = SingleNodeLauncher(per_task=True)(marker_command(tmp_path, RANK), max_workers=2, nodes_per_block=2)
    assert run_fragment(fragment).returncode == 0
    assert [rank for rank, _ in markers(tmp_path)] == ["0", "1", "2", "3"]


def test_copies_see_the_number_of_copies(tmp_path):
    out = tmp_path / "size"
    fragment = SingleNodeLauncher()(f'echo "$HPCFUTURES_LAUNCH_SIZE" >> {out}', 1, 2)
    assert run_fragment(fragment).returncode == 0
    assert out.read_text().split() == ["2", "2"]


def test_a_compound_command_runs_whole(tmp_path):
    fragment = SingleNodeLauncher()(f"cd {tmp_path} && echo one > a; echo two > b", 1, 1)
    assert run_fragment(fragment).returncode == 0
    assert (tmp_path / "a").read_text() == "one\n" and (tmp_path / "b").read_text() == "two\n"


def test_one_failing_copy_fails_the_fragment_with_its_status_after_all_ran(tmp_path):
    command = marker_command(tmp_path, RANK, exit_code=7, failing="1")
    proc = run_fragment(SingleNodeLauncher()(command, 1, 3))
    assert proc.returncode == 7
    assert len(markers(tmp_path)) == 3


def test_the_lowest_ranked_failure_gives_the_status(tmp_path):
    proc = run_fragment(SingleNodeLauncher()("exit $((HPCFUTURES_LAUNCH_RANK + 3))", 1, 3))
    assert proc.returncode == 3


def test_without_fail_on_any_only_a_total_failure_fails(tmp_path):
    launcher = SingleNodeLauncher(fail_on_any=False)
    assert run_fragment(launcher(marker_command(tmp_path, RANK, exit_code=5, failing="0"), 1, 2)).returncode == 0
    assert run_fragment(launcher(marker_command(tmp_path, RANK, exit_code=5), 1, 2)).returncode == 5


def test_terminating_the_fragment_stops_every_copy(tmp_path):
    status, pids = terminate_after_start(SingleNodeLauncher()(pid_command(tmp_path), 1, 2), tmp_path, 2)
    assert status == 128 + signal.SIGTERM  # the copies died of the TERM passed on to them
    assert all(gone(pid) for pid in pids)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"fail_on_any": 1}, "fail_on_any"), ({"per_task": "yes"}, "per_task")],
)
def test_options_are_validated(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        SingleNodeLauncher(**kwargs)


@pytest.mark.parametrize(
    "args, name",
    [(("", 1, 1), "command"), (("x", 0, 1), "max_workers must be an integer >= 1"), (("x", 1, True), "nodes_per_block")],
)
def test_call_arguments_are_validated(args, name):
    with pytest.raises(ConfigurationError, match=name):
        SingleNodeLauncher()(*args)


def test_launchers_are_frozen_values():
    assert SingleNodeLauncher() == SingleNodeLauncher()
    with pytest.raises(AttributeError):
        SingleNodeLauncher().per_task = True  # type: ignore[misc]
