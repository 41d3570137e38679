"""The command prefix that starts an MPI program on given nodes, one builder per MPI launcher.

An MPI task of an MPIExecutor runs on the block's lead node and starts its program with a
prefix such as ``mpiexec -n 8 --ppn 4 --hosts n1,n2``, which this module builds from an
:class:`MPISpec` (the nodes the task was given and its ranks per node).  The task finds the
prefix and the numbers behind it in its environment (:func:`mpi_environment`), under
hpcfutures' names and under Parsl's, so that ``$PARSL_MPI_PREFIX ./app`` keeps working.

Counts are always whole numbers: unlike Parsl, no ``"2.0"`` ranks per node.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._validate import check_bool, check_count
from ..errors import ConfigurationError

#: Characters a node name cannot hold: they separate names or ranks in the launchers' lists.
_NODE_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")

#: A Cray compute node's host name, whose number is its node id (NID): ``nid00032``.
_CRAY_NID = re.compile(r"^nid(\d+)(?:\..*)?$")


@dataclass(frozen=True)
class MPISpec:
    """Where one MPI run goes: the nodes it was given and how many ranks run on each.

    Attributes:
        nodes: the node names, in order, each once (a list is accepted and stored as a
            tuple).  Names are host names as the batch system gives them
            (:func:`hpcfutures.launchers.nodes.block_nodes`).
        ranks_per_node: MPI ranks started on every node, at least 1.

    Raises:
        ConfigurationError: no node, a name that is empty or holds a space, comma, colon
            or bracket, a name listed twice, or *ranks_per_node* not an integer >= 1.
    """

    nodes: tuple[str, ...]
    ranks_per_node: int

    def __post_init__(self) -> None:
        nodes = self.nodes
        if isinstance(nodes, str) or not isinstance(nodes, (tuple, list)):
            raise ConfigurationError(
                f"MPISpec.nodes must be a tuple of node names such as ('n1', 'n2'), got {nodes!r}"
            )
        if not nodes:
            raise ConfigurationError("MPISpec.nodes must name at least one node, got ()")
        for name in nodes:
            if not isinstance(name, str) or not _NODE_NAME.match(name):
                raise ConfigurationError(
                    "MPISpec.nodes must hold host names (letters, digits, '.', '_', '-'; no spaces, "
                    f"commas, colons or brackets), got {name!r}"
                )
        if len(set(nodes)) != len(nodes):
            twice = sorted({name for name in nodes if nodes.count(name) > 1})
            raise ConfigurationError(f"MPISpec.nodes must list each node once, got {', '.join(twice)} twice")
        check_count("MPISpec.ranks_per_node", self.ranks_per_node, 1)
        object.__setattr__(self, "nodes", tuple(nodes))

    @property
    def num_nodes(self) -> int:
        """The number of nodes."""
        return len(self.nodes)

    @property
    def num_ranks(self) -> int:
        """The number of MPI ranks in all: nodes times ranks per node."""
        return len(self.nodes) * self.ranks_per_node


def _hosts(spec: MPISpec) -> str:
    return ",".join(spec.nodes)


def _mpiexec(spec: MPISpec) -> list[str]:
    # Hydra accepts these spellings as well as -ppn/-hosts; PALS accepts only --ppn and --hosts.
    return ["-n", str(spec.num_ranks), "--ppn", str(spec.ranks_per_node), "--hosts", _hosts(spec)]


def _openmpi(spec: MPISpec) -> list[str]:
    # "host:P" gives each node P slots, so P ranks fit without --oversubscribe; ppr places
    # exactly P on each node instead of filling the first node's slots first.
    p = spec.ranks_per_node
    return [
        "-n",
        str(spec.num_ranks),
        "--host",
        ",".join(f"{node}:{p}" for node in spec.nodes),
        "--map-by",
        f"ppr:{p}:node",
    ]


def _srun(spec: MPISpec) -> list[str]:
    return [
        f"--nodes={spec.num_nodes}",
        f"--ntasks={spec.num_ranks}",
        f"--ntasks-per-node={spec.ranks_per_node}",
        f"--nodelist={_hosts(spec)}",
    ]


def _node_id(name: str) -> str:
    """Return the Cray node id (NID) that ``aprun -L`` takes for the node called *name*."""
    match = _CRAY_NID.match(name)
    digits = match.group(1) if match else name if name.isdigit() else None
    if digits is None:
        raise ConfigurationError(
            f"the aprun flavour needs Cray node ids: aprun -L takes numbers, and {name!r} is neither "
            "a number nor a Cray host name such as 'nid00032'"
        )
    # aprun reads a number with a leading 0 as octal: nid00032 is node 32, not 032 (26).
    return str(int(digits))


def _aprun(spec: MPISpec) -> list[str]:
    nids = ",".join(_node_id(node) for node in spec.nodes)
    return ["-n", str(spec.num_ranks), "-N", str(spec.ranks_per_node), "-L", nids]


def _jsrun(spec: MPISpec) -> list[str]:
    # One resource set per node holding the node's ranks; -r 1 puts the sets on distinct hosts.
    return [
        "-n",
        str(spec.num_nodes),
        "-r",
        "1",
        "-a",
        str(spec.ranks_per_node),
        "-c",
        "ALL_CPUS",
        "-g",
        "ALL_GPUS",
    ]


#: For each flavour: the program it runs unless told otherwise, and its placement flags.
_FLAVOURS: dict[str, tuple[str, Callable[[MPISpec], list[str]]]] = {
    "aprun": ("aprun", _aprun),
    "hydra": ("mpiexec", _mpiexec),
    "jsrun": ("jsrun", _jsrun),
    "mpich": ("mpiexec", _mpiexec),
    "openmpi": ("mpirun", _openmpi),
    "pals": ("mpiexec", _mpiexec),
    "srun": ("srun", _srun),
}

#: The flavours :func:`mpi_prefix` knows.
FLAVOURS = tuple(_FLAVOURS)


def _check_flavour(flavour: object) -> str:
    if not isinstance(flavour, str) or flavour not in _FLAVOURS:
        raise ConfigurationError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    return flavour


def mpi_prefix(
    flavour: str,
    spec: MPISpec,
    *,
    executable: str | None = None,
    oversubscribe: bool = False,
    options: Sequence[str] = (),
) -> list[str]:
    """Return the arguments that start an MPI program with *spec*'s ranks on *spec*'s nodes.

    Append the program and its arguments to the list and run it.  Each flavour places
    ``spec.ranks_per_node`` ranks on every node of ``spec.nodes``:

    - ``"hydra"``, ``"mpich"`` (MPICH, Intel MPI) and ``"pals"`` (HPE Cray PALS):
      ``mpiexec -n R --ppn P --hosts h1,h2``.
    - ``"openmpi"``: ``mpirun -n R --host h1:P,h2:P --map-by ppr:P:node``, plus
      ``--oversubscribe`` when asked (for more ranks than a node has cores).
    - ``"srun"``: ``srun --nodes=N --ntasks=R --ntasks-per-node=P --nodelist=h1,h2``, for a
      job step inside the block's Slurm job.
    - ``"aprun"``: ``aprun -n R -N P -L 12,13``.  ``-L`` takes Cray node ids, so node names
      must be numbers or Cray host names (``nid00012`` becomes ``12``).
    - ``"jsrun"``: ``jsrun -n N -r 1 -a P -c ALL_CPUS -g ALL_GPUS``, one resource set per
      node.  jsrun takes no host names on its command line (only an explicit resource
      file), so **the nodes are not named**: jsrun picks N free hosts of the LSF job itself,
      which may not be ``spec.nodes``; only their number is honoured.

    Args:
        flavour: one of :data:`FLAVOURS`.
        spec: the nodes and ranks per node.
        executable: the launcher program (a name or a path) instead of the flavour's
            default, e.g. ``"mpiexec.mpich"`` where ``mpiexec`` is another MPI's.
        oversubscribe: add ``--oversubscribe`` (``"openmpi"`` only).
        options: extra launcher arguments placed after the placement flags, one per item,
            e.g. ``["--cpu-bind", "depth"]``.

    Raises:
        ConfigurationError: an unknown flavour (the message lists the known ones), a bad
            *executable*, *oversubscribe* or *options*, *oversubscribe* with a flavour
            other than ``"openmpi"``, or an ``"aprun"`` node name that is not a node id.
    """
    default_executable, placement = _FLAVOURS[_check_flavour(flavour)]
    if not isinstance(spec, MPISpec):
        raise ConfigurationError(f"spec must be an MPISpec, got {type(spec).__name__}")
    if executable is None:
        executable = default_executable
    elif (
        not isinstance(executable, str) or not executable or any(c.isspace() or c == "\0" for c in executable)
    ):
        raise ConfigurationError(
            f"executable must be one program name or path without spaces, got {executable!r}; "
            "put extra arguments in options"
        )
    if check_bool("oversubscribe", oversubscribe) and flavour != "openmpi":
        raise ConfigurationError(
            f"oversubscribe is an Open MPI option; the {flavour} flavour has no such flag (pass "
            "its own way in options, if it has one)"
        )
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ConfigurationError(
            f"options must be a list of arguments such as ['--cpu-bind', 'depth'], got {options!r}"
        )
    for option in options:
        if not isinstance(option, str) or "\0" in option:
            raise ConfigurationError(f"options must hold strings without NUL bytes, got {option!r}")
    return [
        executable,
        *placement(spec),
        *(["--oversubscribe"] if oversubscribe else []),
        *options,
    ]


def mpi_environment(
    flavour: str,
    spec: MPISpec,
    *,
    executable: str | None = None,
    oversubscribe: bool = False,
    options: Sequence[str] = (),
) -> dict[str, str]:
    """Return the environment variables that tell an MPI task where and how to start.

    ``HPCFUTURES_MPI_PREFIX`` is :func:`mpi_prefix` (same arguments) joined into one shell
    line, so a command task runs ``$HPCFUTURES_MPI_PREFIX ./app``.  With it come
    ``HPCFUTURES_MPI_NODELIST`` (the nodes, separated by commas), ``HPCFUTURES_NUM_NODES``,
    ``HPCFUTURES_RANKS_PER_NODE`` and ``HPCFUTURES_NUM_RANKS``, and each of the five again
    under Parsl's name (``PARSL_MPI_PREFIX``, ``PARSL_MPI_NODELIST``, ``PARSL_NUM_NODES``,
    ``PARSL_RANKS_PER_NODE``, ``PARSL_NUM_RANKS``) for applications written for Parsl's
    MPIExecutor.

    Raises:
        ConfigurationError: as :func:`mpi_prefix`.
    """
    prefix = mpi_prefix(flavour, spec, executable=executable, oversubscribe=oversubscribe, options=options)
    values = {
        "MPI_PREFIX": shlex.join(prefix),
        "MPI_NODELIST": ",".join(spec.nodes),
        "NUM_NODES": str(spec.num_nodes),
        "RANKS_PER_NODE": str(spec.ranks_per_node),
        "NUM_RANKS": str(spec.num_ranks),
    }
    return {
        f"{namespace}_{key}": value for namespace in ("HPCFUTURES", "PARSL") for key, value in values.items()
    }


def detect_flavour(executable: str = "mpiexec", *, timeout: float = 10.0) -> str:
    """Return which MPI launcher *executable* is: ``"openmpi"``, ``"hydra"`` or ``"pals"``.

    Asks it (``<executable> --version``), because the name alone says nothing: ``mpiexec``
    is Open MPI's on one machine and MPICH's on the next, chosen by the system's
    alternatives or the modules loaded.  Open MPI prints ``Open MPI`` or ``OpenRTE``; MPICH,
    MVAPICH and Intel MPI print ``HYDRA`` or ``Intel(R) MPI``; HPE's PALS is recognised by
    ``PALS`` in its output or ``/pals/`` in its path.  ``srun``, ``aprun`` and ``jsrun`` are
    never guessed: one on PATH does not mean it manages this allocation.

    Raises:
        ConfigurationError: *executable* is not on PATH, does not answer within *timeout*
            seconds, or prints something none of these rules recognise.
    """
    path = shutil.which(executable)
    if path is None:
        raise ConfigurationError(f"cannot detect the MPI flavour: {executable!r} is not on PATH")
    try:
        proc = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(
            f"cannot detect the MPI flavour: `{path} --version` failed ({exc})"
        ) from None
    output = proc.stdout + proc.stderr
    if "Open MPI" in output or "OpenRTE" in output:
        return "openmpi"
    if "HYDRA" in output or "Intel(R) MPI" in output:
        return "hydra"
    if "PALS" in output.upper() or "/pals/" in os.path.realpath(path).lower():
        return "pals"
    first = output.strip().splitlines()[0] if output.strip() else "nothing"
    raise ConfigurationError(
        f"cannot tell which MPI {path} is: `--version` printed {first!r}; pass the flavour "
        f"({', '.join(FLAVOURS)}) explicitly"
    )
