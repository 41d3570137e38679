"""Tests of hpcfutures.launchers.base."""

from __future__ import annotations

import pytest

from hpcfutures.launchers import Launcher, SimpleLauncher


def test_simple_launcher_returns_the_command_unchanged():
    command = "python -m hpcfutures pool --max-workers 4 'quoted arg'"
    assert SimpleLauncher()(command, max_workers=4, nodes_per_block=1) == command


def test_the_old_keyword_tasks_per_node_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="tasks_per_node= is now called max_workers="):
        assert SimpleLauncher()("pool", tasks_per_node=4, nodes_per_block=1) == "pool"
    with pytest.raises(TypeError, match="pass only max_workers="):
        SimpleLauncher()("pool", tasks_per_node=4, max_workers=4, nodes_per_block=1)


def test_launcher_is_abstract():
    with pytest.raises(TypeError):
        Launcher()  # type: ignore[abstract]


def test_simple_launchers_are_equal():
    assert SimpleLauncher() == SimpleLauncher()
