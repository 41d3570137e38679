"""Tests of hpcfutures.launchers.nodes: host lists and the variables each batch system sets.

Slurm's host list syntax is checked against the real ``scontrol show hostnames`` (which
needs no running cluster), and :func:`block_nodes` is run inside a real job step of the test
Slurm cluster.  The PBS, LSF, SGE and Cobalt sources are given the files and values those
systems write, as documented by them (one host per CPU in ``PBS_NODEFILE``, ``host slots
queue processors`` lines in ``PE_HOSTFILE``, ``host count`` pairs in ``LSB_MCPU_HOSTS``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.launchers.nodes import (
    MAX_HOSTLIST_NAMES,
    NODE_VARIABLES,
    block_nodes,
    expand_hostlist,
    node_source,
)
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

from ..services import need_commands

ROOT = Path(__file__).resolve().parents[2]

#: Expressions that scontrol 22.05 accepts, and so must expand exactly as it does.
SCONTROL_CASES = [
    "n1",
    "n[1-3,7],gpu[01-02]",
    "a1,b[2-3]",
    "rack[1-2]-n[1-2]",
    "n[1-2]-[3-4]",
    "n[08-11]",
    "n[9-11]",
    "n[1-010]",
    "n[001-3]",
    "n[00-02]",
    "n[0-0]",
    "n[5,1-2]",
    "n[1-2,2]",
    "n1,n1",
    "n[1-2],,x",
    " n1 , n2 ",
    "n1 n2",
    "c[1-2]n[01-02]s[1-2]",
    "a[1-3]b[1-2]c[1-2]",
    "a[1-2]b[1-2]c[1-2]d[1-2]",
    "nid[00012-00015]",
    "node-a.example.org,node-b[1-2]",
]


@pytest.mark.parametrize("expression", SCONTROL_CASES)
def test_expansion_matches_scontrol(expression):
    need_commands("comparing with Slurm's own host list expansion", "scontrol")
    proc = subprocess.run(
        ["scontrol", "show", "hostnames", expression], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0 and "Invalid" not in proc.stdout + proc.stderr, proc.stderr
    assert expand_hostlist(expression) == proc.stdout.split()


def random_expression(rng: random.Random) -> str:
    """A host list of the kind Slurm accepts: 1-3 names, each with 0-3 bracket groups."""
    items = []
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(["n", "gpu", "rack", "c-", "x.y"])
        for group in range(rng.randint(0, 3)):
            if group:
                text += rng.choice(["", "-", "s", "n"])
            pieces = []
            for _ in range(rng.randint(1, 3)):
                low = rng.randint(0, 12)
                width = rng.choice([1, 2, 3])
                if rng.random() < 0.5:
                    pieces.append(str(low).zfill(width))
                else:
                    pieces.append(f"{str(low).zfill(width)}-{low + rng.randint(0, 3)}")
            text += "[" + ",".join(pieces) + "]"
        items.append(text)
    return ",".join(items)


def test_random_expressions_expand_as_scontrol_does():
    need_commands("comparing with Slurm's own host list expansion", "scontrol")
    rng = random.Random(13)
    for _ in range(60):
        expression = random_expression(rng)
        proc = subprocess.run(
            ["scontrol", "show", "hostnames", expression],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0 and "Invalid" not in proc.stdout + proc.stderr, (expression, proc.stderr)
        assert expand_hostlist(expression) == proc.stdout.split(), expression


@pytest.mark.parametrize(
    "expression, names",
    [
        ("n[1-3,7],gpu[01-02]", ["n1", "n2", "n3", "n7", "gpu01", "gpu02"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        # Text after the last group: Slurm 22.05 refuses it, later sites write it.
        ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
        ("x[1-2]y[3-4]z", ["x1y3z", "x1y4z", "x2y3z", "x2y4z"]),
        # Slurm's order with three groups: the last fastest, then the first, the middle slowest.
        (
            "a[1-2]b[1-2]c[1-2]",
            ["a1b1c1", "a1b1c2", "a2b1c1", "a2b1c2", "a1b2c1", "a1b2c2", "a2b2c1", "a2b2c2"],
        ),
        ("[1-2]", ["1", "2"]),
        ("n[ 1-2 ]", ["n1", "n2"]),
        ("", []),
        (" , ", []),
    ],
)
def test_expansion(expression, names):
    assert expand_hostlist(expression) == names


@pytest.mark.parametrize(
    "expression, words",
    [
        ("n[3-1]", "descending"),
        ("n[]", "range ''"),
        ("n[a-c]", "range 'a-c'"),
        ("n[1-]", "range '1-'"),
        ("n[-1]", "range '-1'"),
        ("n[1--3]", "range '1--3'"),
        ("n[1-2", "without its ']'"),
        ("n1]", "without its '\\['"),
        ("n[[1]]", "inside brackets"),
        ("n[1-99999999]", "more than"),
        ("a[1-2000]b[1-2000]", "more than"),
        (None, "string"),
    ],
)
def test_bad_expressions_raise_configuration_error(expression, words):
    with pytest.raises(ConfigurationError, match=words):
        expand_hostlist(expression)


def test_a_big_product_stops_at_the_limit_without_building_it():
    # 10^6 x 10^6 names would exhaust memory if the product were built before counting.
    with pytest.raises(ConfigurationError, match=str(MAX_HOSTLIST_NAMES)):
        expand_hostlist("a[1-999999]b[1-999999]")


# --- block_nodes and node_source ------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_override_is_a_comma_list_and_wins_over_the_batch_system():
    env = {"HPCFUTURES_NODELIST": "b,a,b", "SLURM_JOB_NODELIST": "n[1-2]"}
    assert block_nodes(env) == ["b", "a"]
    assert node_source(env) == "HPCFUTURES_NODELIST"


def test_slurm_job_nodelist_is_expanded_and_preferred_to_the_step_list():
    env = {"SLURM_JOB_NODELIST": "n[1-3,7],gpu[01-02]", "SLURM_NODELIST": "n1"}
    assert block_nodes(env) == ["n1", "n2", "n3", "n7", "gpu01", "gpu02"]
    assert node_source(env) == "SLURM_JOB_NODELIST"
    assert block_nodes({"SLURM_NODELIST": "n[2-3]"}) == ["n2", "n3"]


def test_pbs_nodefile_lists_a_host_per_cpu(tmp_path):
    nodefile = write(tmp_path / "nodes", "n2.cluster\nn2.cluster\n\nn1.cluster\nn1.cluster\nn2.cluster\n")
    env = {"PBS_NODEFILE": nodefile, "LSB_HOSTS": "x"}
    assert block_nodes(env) == ["n2.cluster", "n1.cluster"]  # order of first appearance
    assert node_source(env) == "PBS_NODEFILE"


def test_lsf_slot_pairs_and_hosts():
    assert block_nodes({"LSB_MCPU_HOSTS": "h1 42 h2 42 h3 1"}) == ["h1", "h2", "h3"]
    assert block_nodes({"LSB_MCPU_HOSTS": "h1 2", "LSB_HOSTS": "x y"}) == ["h1"]
    assert block_nodes({"LSB_HOSTS": "h1 h1 h2 h2 h1"}) == ["h1", "h2"]


def test_sge_pe_hostfile(tmp_path):
    hostfile = write(tmp_path / "pe", "n3 4 all.q@n3 UNDEFINED\nn1 4 all.q@n1 UNDEFINED\n")
    assert block_nodes({"PE_HOSTFILE": hostfile}) == ["n3", "n1"]


def test_cobalt_nodefile(tmp_path):
    assert block_nodes({"COBALT_NODEFILE": write(tmp_path / "c", "x1\nx2\nx1\n")}) == ["x1", "x2"]


def test_each_variable_is_read_in_the_documented_order(tmp_path):
    env = {
        "HPCFUTURES_NODELIST": "a",
        "SLURM_JOB_NODELIST": "b",
        "SLURM_NODELIST": "c",
        "PBS_NODEFILE": write(tmp_path / "pbs", "d\n"),
        "LSB_MCPU_HOSTS": "e 1",
        "LSB_HOSTS": "f",
        "PE_HOSTFILE": write(tmp_path / "sge", "g 1 q UNDEFINED\n"),
        "COBALT_NODEFILE": write(tmp_path / "cobalt", "h\n"),
    }
    assert list(env) == list(NODE_VARIABLES)
    for variable, expected in zip(NODE_VARIABLES, "abcdefgh"):
        assert node_source(env) == variable
        assert block_nodes(env) == [expected]
        del env[variable]
    assert node_source(env) is None


def test_blank_variables_are_ignored():
    env = {"HPCFUTURES_NODELIST": "  ", "SLURM_JOB_NODELIST": "", "LSB_HOSTS": "h9"}
    assert node_source(env) == "LSB_HOSTS"
    assert block_nodes(env) == ["h9"]


def test_no_source_raises_naming_every_variable():
    with pytest.raises(ConfigurationError) as info:
        block_nodes({"PATH": "/usr/bin"})
    message = str(info.value)
    assert all(variable in message for variable in NODE_VARIABLES)
    assert "HPCFUTURES_NODELIST" in message.split(";")[-1]  # and says how to fix it


def test_unreadable_or_empty_files_raise_naming_the_variable(tmp_path):
    with pytest.raises(ConfigurationError, match=r"PBS_NODEFILE names the file .*missing"):
        block_nodes({"PBS_NODEFILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigurationError, match="COBALT_NODEFILE .* lists no host"):
        block_nodes({"COBALT_NODEFILE": write(tmp_path / "empty", "\n\n")})


@pytest.mark.parametrize("value", ["h1 4 h2", "h1 four", "4 h1"])
def test_malformed_lsf_pairs_raise(value):
    with pytest.raises(ConfigurationError, match="LSB_MCPU_HOSTS"):
        block_nodes({"LSB_MCPU_HOSTS": value})


def test_a_bad_slurm_list_raises():
    with pytest.raises(ConfigurationError, match="descending"):
        block_nodes({"SLURM_JOB_NODELIST": "n[3-1]"})


def test_the_default_environment_is_this_process(monkeypatch):
    for variable in NODE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert node_source() is None
    with pytest.raises(ConfigurationError):
        block_nodes()
    monkeypatch.setenv("HPCFUTURES_NODELIST", "localhost")
    assert (node_source(), block_nodes()) == ("HPCFUTURES_NODELIST", ["localhost"])


# --- a real Slurm job -------------------------------------------------------------------------

_IN_JOB = (
    "import os\n"
    "from hpcfutures.launchers.nodes import block_nodes, node_source\n"
    "print(node_source(), ','.join(block_nodes()), os.environ['SLURMD_NODENAME'])\n"
)


@pytest.mark.xdist_group("slurm")
def test_block_nodes_inside_a_real_slurm_job(slurm_cluster: SlurmCluster):  # noqa: F811
    need_commands("reading the nodes of a real Slurm job", "srun", "sinfo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in NODE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        ["srun", "--nodes=1", "--ntasks=1", sys.executable, "-c", _IN_JOB],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    source, nodes, node_running_the_step = proc.stdout.split()
    assert (source, nodes) == ("SLURM_JOB_NODELIST", node_running_the_step)
    sinfo = subprocess.run(
        ["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, timeout=30, check=True
    )
    assert node_running_the_step in expand_hostlist(sinfo.stdout.strip())
