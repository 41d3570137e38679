"""Tests of hpcfutures.launchers.aprun and .jsrun, run against FAKE ``aprun`` and ``jsrun``.

Neither Cray ALPS nor IBM's Job Step Manager can be installed here, so ``fake_bin/aprun`` and
``fake_bin/jsrun`` stand in for them.  They follow the real commands' argument conventions
(and refuse options the real ones lack), check that the requested placement fits an
allocation of ``FAKE_NODES`` nodes, and run the copies on this machine with the real
commands' rank variables (``ALPS_APP_PE``, ``JSM_NAMESPACE_RANK``) and ``FAKE_NODE``, the
index of the node a copy would have landed on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.aprun import AprunLauncher
from hpcfutures.launchers.jsrun import JsrunLauncher

from ._run import PAYLOAD, gone, marker_command, markers, pid_command, run_fragment, terminate_after_start

FAKE_BIN = Path(__file__).parent / "fake_bin"
RANK = {AprunLauncher: "ALPS_APP_PE", JsrunLauncher: "JSM_NAMESPACE_RANK"}


def fake_env(nodes: int) -> dict[str, str]:
    return {**os.environ, "PATH": f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}", "FAKE_NODES": str(nodes)}


@pytest.fixture(params=[AprunLauncher, JsrunLauncher], ids=["aprun", "jsrun"])
def launcher_class(request):
    return request.param


def test_one_copy_on_each_node_with_quoting_intact(tmp_path, launcher_class):
    fragment = launcher_class()(marker_command(tmp_path, RANK[launcher_class]), 8, 3)
    proc = run_fragment(fragment, env=fake_env(3))
    assert proc.returncode == 0, proc.stderr
    assert markers(tmp_path) == [("0", PAYLOAD), ("1", PAYLOAD), ("2", PAYLOAD)]


def test_the_copies_land_on_distinct_nodes(tmp_path, launcher_class):
    # On 2-CPU nodes, leaving out "one per node" would pack two copies onto node 0.
    fragment = launcher_class()(f'echo "$FAKE_NODE" > {tmp_path}/node.$$', 1, 2)
    proc = run_fragment(fragment, env=fake_env(2))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.read_text() for p in tmp_path.glob("node.*")) == ["0\n", "1\n"]


def test_a_failing_copy_fails_the_fragment(tmp_path, launcher_class):
    command = marker_command(tmp_path, RANK[launcher_class], exit_code=4, failing="1")
    proc = run_fragment(launcher_class()(command, 1, 2), env=fake_env(2))
    assert proc.returncode != 0
    assert len(markers(tmp_path)) == 2


def test_terminating_the_fragment_stops_every_copy(tmp_path, launcher_class):
    status, pids = terminate_after_start(launcher_class()(pid_command(tmp_path), 1, 2), tmp_path, 2, env=fake_env(2))
    assert status != 0
    assert all(gone(pid) for pid in pids)


def test_a_compound_command_runs_whole(tmp_path, launcher_class):
    fragment = launcher_class()(f"cd {tmp_path} && echo 'a b' > one; echo two > two", 1, 1)
    assert run_fragment(fragment, env=fake_env(1)).returncode == 0
    assert (tmp_path / "one").read_text() == "a b\n" and (tmp_path / "two").read_text() == "two\n"


@pytest.mark.parametrize(
    "launcher",
    [AprunLauncher(overrides="-e HPCF_GREETING='hello there'"), JsrunLauncher(overrides="-E HPCF_GREETING='hello there'")],
    ids=["aprun", "jsrun"],
)
def test_overrides_are_passed_to_the_launcher(tmp_path, launcher):
    out = tmp_path / "greeting"
    assert run_fragment(launcher(f'echo "$HPCF_GREETING" > {out}', 1, 1), env=fake_env(1)).returncode == 0
    assert out.read_text() == "hello there\n"


def test_rendered_command_lines():
    assert AprunLauncher()("pool 'a b'", 4, 2) == (
        "aprun -n 2 -N 1 -cc none /bin/bash -c 'pool '\"'\"'a b'\"'\"''"
    )
    assert AprunLauncher(depth=16, cpu_binding="depth", overrides="-b")("pool", 4, 2) == (
        "aprun -n 2 -N 1 -d 16 -cc depth -b /bin/bash -c pool"
    )
    assert AprunLauncher(cpu_binding="")("pool", 4, 1) == "aprun -n 1 -N 1 /bin/bash -c pool"
    assert JsrunLauncher()("pool", 4, 2) == "jsrun -n 2 -r 1 -a 1 -c ALL_CPUS -g ALL_GPUS -b none /bin/bash -c pool"
    assert JsrunLauncher(cpus_per_set=42, gpus_per_set=0, binding="packed:7")("pool", 4, 3) == (
        "jsrun -n 3 -r 1 -a 1 -c 42 -g 0 -b packed:7 /bin/bash -c pool"
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"depth": 0}, "depth"),
        ({"depth": True}, "depth"),
        ({"cpu_binding": "all"}, "cpu_binding"),
        ({"cpu_binding": "none; id"}, "cpu_binding"),
        ({"overrides": "-e 'A"}, "overrides"),
    ],
)
def test_aprun_options_are_validated(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        AprunLauncher(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"cpus_per_set": 0}, "cpus_per_set"),
        ({"cpus_per_set": "ALL"}, "cpus_per_set"),
        ({"gpus_per_set": -1}, "gpus_per_set"),
        ({"gpus_per_set": "all"}, "gpus_per_set"),
        ({"binding": "packed"}, "binding"),
        ({"overrides": 7}, "overrides"),
    ],
)
def test_jsrun_options_are_validated(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        JsrunLauncher(**kwargs)


def test_call_arguments_are_validated(launcher_class):
    with pytest.raises(ConfigurationError, match="max_workers"):
        launcher_class()("pool", 0, 1)
    with pytest.raises(ConfigurationError, match="command"):
        launcher_class()(None, 1, 1)
