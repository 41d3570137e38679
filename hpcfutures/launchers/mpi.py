"""MpiExecLauncher and MpiRunLauncher: one copy of the command per node through an MPI launcher.

Neither needs the command to use MPI: ``mpiexec`` is used as a portable way to start one
process on each node of an allocation, which it learns from the batch system or a hostfile.
"""

from __future__ import annotations

import abc
import re
import shlex
from dataclasses import dataclass

from .._validate import keyword_renamed
from ..errors import ConfigurationError
from ._fragment import (
    check_call,
    check_flags,
    check_path_or_variable,
    check_program,
    in_bash,
    join,
    path_or_variable,
)
from .base import Launcher

# Binding targets differ between implementations (none, core, socket, numa, list:0-3, …).
_BINDING = re.compile(r"^[A-Za-z0-9_.:,=-]*$")


@dataclass(frozen=True)
class _MpiLauncher(Launcher):
    executable: str = "mpiexec"
    hostfile: str = ""
    bind_to: str = "none"
    bind_flag: str = "--bind-to"
    overrides: str = ""

    def __post_init__(self) -> None:
        check_program("executable", self.executable)
        check_path_or_variable("hostfile", self.hostfile)
        if not isinstance(self.bind_to, str) or not _BINDING.match(self.bind_to):
            raise ConfigurationError(
                f"bind_to must be one binding word such as 'none', 'core' or 'socket' ('' to leave "
                f"the implementation's default), got {self.bind_to!r}"
            )
        if not isinstance(self.bind_flag, str) or not re.match(r"^--?[A-Za-z][A-Za-z0-9_-]*$", self.bind_flag):
            raise ConfigurationError(
                f"bind_flag must be one command-line option such as '--bind-to' or '--cpu-bind', "
                f"got {self.bind_flag!r}"
            )
        check_flags("overrides", self.overrides)

    @abc.abstractmethod
    def _placement(self, nodes_per_block: int) -> str:
        """Return the flags that start one copy on each of *nodes_per_block* nodes."""

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return the launcher command line that runs *command* once on each node.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        return join(
            shlex.quote(self.executable),
            self._placement(nodes_per_block),
            f"--hostfile {path_or_variable(self.hostfile)}" if self.hostfile else "",
            f"{self.bind_flag} {self.bind_to}" if self.bind_to else "",
            self.overrides.strip(),
            in_bash(command),
        )


@dataclass(frozen=True)
class MpiExecLauncher(_MpiLauncher):
    """Start the command once per node with ``mpiexec -n NODES --ppn 1``.

    For MPICH's Hydra (``mpiexec.hydra``, Intel MPI) and Cray PALS, whose ``mpiexec`` takes
    ``--ppn``.  For Open MPI use :class:`MpiRunLauncher`.  Inside a batch job the launcher
    finds the nodes itself; outside one, or to choose nodes, give a ``hostfile``.

    Each copy runs ``/bin/bash -c '<command>'``; the implementation puts the copy's rank in
    its environment (``PMI_RANK`` under Hydra, ``PALS_RANKID`` under PALS).  ``mpiexec`` exits
    non-zero when a copy fails, and stops the other copies.

    Attributes:
        executable: the program to run, e.g. ``mpiexec.hydra`` or a full path.
        hostfile: a file listing the nodes, one per line, or an environment variable that
            names one, such as ``"$PBS_NODEFILE"`` (expanded when the job runs).  ``""``: let
            ``mpiexec`` find the nodes.
        bind_to: where each copy is bound (``bind_flag bind_to``).  ``"none"`` by default,
            because a pool runs many workers and binding it to one core would squeeze them
            all onto that core.  ``""`` leaves the implementation's default.
        bind_flag: the option that sets the binding: ``--bind-to`` (Hydra) or
            ``--cpu-bind`` (PALS).
        overrides: extra flags placed before the command, e.g. ``"--env OMP_NUM_THREADS 1"``.
    """

    def _placement(self, nodes_per_block: int) -> str:
        return f"-n {nodes_per_block} --ppn 1"


@dataclass(frozen=True)
class MpiRunLauncher(_MpiLauncher):
    """Start the command once per node with Open MPI's ``mpirun -np NODES -npernode 1``.

    Each copy runs ``/bin/bash -c '<command>'`` with ``OMPI_COMM_WORLD_RANK`` set.  Open MPI
    refuses to run as root unless ``--allow-run-as-root`` is among the ``overrides`` or both
    ``OMPI_ALLOW_RUN_AS_ROOT=1`` and ``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`` are set, and passes
    only its own variables to other nodes: add ``-x NAME`` to the ``overrides`` for each
    variable the command needs there (``-x PATH -x PYTHONPATH``).  ``mpirun`` exits with a
    failing copy's status, and stops the other copies.

    Attributes:
        executable: the program to run, e.g. ``mpirun.openmpi`` or a full path.
        hostfile: as for :class:`MpiExecLauncher`.
        bind_to: ``"none"`` by default: Open MPI binds each process to a core when it starts
            two or fewer, which would put all of a pool's workers on one core.
        bind_flag: the option that sets the binding, ``--bind-to``.
        overrides: extra flags placed before the command.
    """

    executable: str = "mpirun"

    def _placement(self, nodes_per_block: int) -> str:
        return f"-np {nodes_per_block} -npernode 1"
