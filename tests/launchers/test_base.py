"""Tests of hpcfutures.launchers.base."""

from __future__ import annotations

import pytest

from hpcfutures.launchers import Launcher, SimpleLauncher


def test_simple_launcher_returns_the_command_unchanged():
    command = "python -m hpcfutures pool --workers 4 'quoted arg'"
    assert SimpleLauncher()(command, tasks_per_node=4, nodes_per_block=1) == command


def test_launcher_is_abstract():
    with pytest.raises(TypeError):
        Launcher()  # type: ignore[abstract]


def test_simple_launchers_are_equal():
    assert SimpleLauncher() == SimpleLauncher()
