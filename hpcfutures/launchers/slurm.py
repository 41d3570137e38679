"""SrunLauncher and SrunMPILauncher: start a block's pools inside a Slurm allocation.

:class:`SrunLauncher` runs one pool on every node of the block as one ``srun`` job step.
:class:`SrunMPILauncher` runs a single pool on the block's first node, outside any step, and
leaves the whole allocation to the MPI applications its tasks start with their own ``srun``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from .._validate import keyword_renamed
from ..errors import ConfigurationError
from ._fragment import check_call, check_flags, check_program, in_bash, join
from .base import Launcher

#: Variables sbatch sets from the block's shape that a task's ``srun`` would otherwise take
#: as its own request (``--cpus-per-task``, ``--ntasks-per-node``), whatever ranks it asks for.
_SHAPE_VARIABLES = ("SLURM_CPUS_PER_TASK", "SLURM_NTASKS_PER_NODE", "SLURM_TRES_PER_TASK")

_MPI_TYPE = re.compile(r"^[A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SrunLauncher(Launcher):
    """Start the pool command once on every node of the block: ``srun --ntasks-per-node=1``.

    The rendered fragment is ``srun --nodes=N --ntasks=N --ntasks-per-node=1
    --kill-on-bad-exit=1 <overrides> /bin/bash -c '<command>'``: one job step whose N copies
    each see ``SLURM_PROCID`` (0 … N-1) and ``SLURM_NODEID``.  A step that asks for no CPUs
    per task gets every CPU the job holds on its node, so the pool may use them all.  When a
    copy fails, ``srun`` stops the others and exits with its status, so the block ends and
    its job reports the failure.

    Use it inside a Slurm job (:class:`~hpcfutures.providers.SlurmProvider`, or a PBS/Torque
    job on a Slurm cluster).

    Attributes:
        executable: the ``srun`` to run, a command name or full path.
        overrides: extra ``srun`` flags, e.g. ``"--cpu-bind=none --mpi=none"``.
    """

    executable: str = "srun"
    overrides: str = ""

    def __post_init__(self) -> None:
        check_program("executable", self.executable)
        check_flags("overrides", self.overrides)

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return the ``srun`` line that runs *command* once per node.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        return join(
            shlex.quote(self.executable),
            f"--nodes={nodes_per_block}",
            f"--ntasks={nodes_per_block}",
            "--ntasks-per-node=1",
            "--kill-on-bad-exit=1",
            self.overrides.strip(),
            in_bash(command),
        )


@dataclass(frozen=True)
class SrunMPILauncher(Launcher):
    """Run one pool per block whose tasks launch MPI applications with ``srun`` in the block.

    For tasks that are themselves parallel programs (``bash_app`` lines such as
    ``srun -n 8 ./simulate``).  The pool runs once, on the block's first node, directly in
    the job script, so it holds no job step and no CPUs: every node and core of the block
    stays free for the tasks' MPI job steps.  For those steps the fragment sets:

    - ``SLURM_EXACT=1`` (``srun --exact``): a step gets only the CPUs its ranks ask for, so
      several tasks' MPI runs share the block at once; a step that does not fit waits until
      an earlier one ends (Slurm queues it), instead of claiming whole nodes.
    - ``SLURM_MPI_TYPE`` to ``mpi`` when given (``srun --mpi``): ``"pmi2"`` for MPICH,
      ``"pmix"`` for Open MPI built with PMIx.
    - and removes ``SLURM_CPUS_PER_TASK``, ``SLURM_NTASKS_PER_NODE`` and
      ``SLURM_TRES_PER_TASK``, which describe the block's request, not a task's: left set,
      ``srun -n 8`` would inherit them.

    Give the pool as many workers as MPI runs should go at once; each task names its ranks
    (``srun -n R``, or ``-N nodes``).

    Attributes:
        mpi: the MPI plugin for the tasks' ``srun`` (``"pmi2"``, ``"pmix"``), or ``""`` to
            keep the cluster's ``MpiDefault``.
    """

    mpi: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.mpi, str) or not _MPI_TYPE.match(self.mpi):
            raise ConfigurationError(
                f"mpi must be the name of a Slurm MPI plugin such as 'pmi2' or 'pmix' ('' for the "
                f"cluster's default; `srun --mpi=list` shows them), got {self.mpi!r}"
            )

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return the line that runs *command* once, with the environment for MPI steps.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        return join(
            "/usr/bin/env",
            *(f"-u {name}" for name in _SHAPE_VARIABLES),
            "SLURM_EXACT=1",
            f"SLURM_MPI_TYPE={self.mpi}" if self.mpi else "",
            in_bash(command),
        )
