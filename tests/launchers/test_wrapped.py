"""Tests of hpcfutures.launchers.wrapped: the fragments run in bash, as a job script runs them.

No container runtime is installed here, so the prefixes are ordinary wrapper commands
(``env``, ``timeout``) that, like ``apptainer exec``, run the rest of their arguments.
"""

from __future__ import annotations

import shlex

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.base import SimpleLauncher
from hpcfutures.launchers.single_node import SingleNodeLauncher
from hpcfutures.launchers.wrapped import WrappedLauncher

from ._run import PAYLOAD, marker_command, markers, run_fragment


def test_the_command_runs_inside_the_prefix_with_quoting_intact(tmp_path):
    launcher = WrappedLauncher("env HPCF_INSIDE='wrapped here'")
    proc = run_fragment(launcher(marker_command(tmp_path, "HPCF_INSIDE"), 4, 1))
    assert proc.returncode == 0, proc.stderr
    assert markers(tmp_path) == [("wrapped here", PAYLOAD)]


def test_by_default_it_runs_once_whatever_the_block_size(tmp_path):
    proc = run_fragment(WrappedLauncher("timeout 60")(marker_command(tmp_path, "NONE"), 4, 3))
    assert proc.returncode == 0, proc.stderr
    assert len(markers(tmp_path)) == 1


def test_another_launcher_runs_the_wrapped_command_on_every_node(tmp_path):
    launcher = WrappedLauncher("env HPCF_INSIDE=yes", launcher=SingleNodeLauncher())
    command = f'echo "$HPCF_INSIDE $HPCFUTURES_LAUNCH_RANK" > {tmp_path}/copy.$HPCFUTURES_LAUNCH_RANK'
    # The rank variable is set outside the prefix, so the command must see both.
    proc = run_fragment(launcher(f"/bin/bash -c {shlex.quote(command)}", 1, 2))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.read_text() for p in tmp_path.glob("copy.*")) == ["yes 0\n", "yes 1\n"]


def test_with_a_shell_a_compound_command_runs_whole_inside_the_prefix(tmp_path):
    launcher = WrappedLauncher("env HPCF_INSIDE=1", shell="/bin/sh")
    proc = run_fragment(launcher(f'cd {tmp_path} && echo "a $HPCF_INSIDE" > one; echo "b $HPCF_INSIDE" > two', 1, 1))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "one").read_text() == "a 1\n" and (tmp_path / "two").read_text() == "b 1\n"


def test_a_failing_command_fails_the_fragment_with_its_status(tmp_path):
    proc = run_fragment(WrappedLauncher("env")(marker_command(tmp_path, "NONE", exit_code=11), 1, 1))
    assert proc.returncode == 11


def test_a_failing_prefix_fails_the_fragment(tmp_path):
    proc = run_fragment(WrappedLauncher("timeout --no-such-option 5")("true", 1, 1))
    assert proc.returncode != 0


def test_rendered_command_lines():
    assert WrappedLauncher("apptainer exec 'my image.sif'")("python -m pool 'a b'", 1, 1) == (
        "apptainer exec 'my image.sif' python -m pool 'a b'"
    )
    assert WrappedLauncher("apptainer exec img.sif", shell="/bin/sh")("a && b", 1, 1) == (
        "apptainer exec img.sif /bin/sh -c 'a && b'"
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"prepend": ""}, "prepend"),
        ({"prepend": "  "}, "prepend"),
        ({"prepend": ["apptainer", "exec"]}, "prepend"),
        ({"prepend": "apptainer exec 'img"}, "prepend"),
        ({"prepend": "apptainer\nexec"}, "prepend"),
        ({"prepend": "env", "shell": "/bin/sh -e"}, "shell"),
        ({"prepend": "env", "launcher": "srun"}, "launcher"),
    ],
)
def test_options_are_validated(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        WrappedLauncher(**kwargs)


def test_call_arguments_are_validated():
    with pytest.raises(ConfigurationError, match="command"):
        WrappedLauncher("env")("", 1, 1)


def test_the_default_inner_launcher_is_simple():
    assert WrappedLauncher("env").launcher == SimpleLauncher()
