"""The Launcher interface, and SimpleLauncher, which runs the command as it is.

A provider obtains a block (one or more nodes); its launcher wraps the worker-pool command so
that one pool runs on each node of the block (``srun``, ``mpiexec``, ``aprun``, …).  A launcher
only rewrites a command string: it starts nothing itself and knows nothing about tasks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from .._validate import keyword_renamed


class Launcher(abc.ABC):
    """Wraps a block's worker-pool command so that it runs on every node of the block."""

    @abc.abstractmethod
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return the shell command that starts *command* across the block.

        Args:
            command: the worker-pool command, one shell command line.
            max_workers: how many workers the pool on each node runs: the executor's
                ``max_workers``, or 1 when the executor leaves that to the pool (one worker
                per CPU).  A pool is one process that starts its workers itself, so a
                launcher starts one copy of *command* per node whatever this number is; it
                is passed for launchers whose copies run one worker each
                (``SingleNodeLauncher(per_task=True)``).  It was called ``tasks_per_node``;
                the built-in launchers still take that keyword, with a DeprecationWarning.
            nodes_per_block: how many nodes the block holds.

        The result is one shell command line: a provider runs it as the last command of its
        job script, after the user's ``worker_init`` lines (``LocalProvider`` with ``exec``;
        batch-scheduler providers in a subshell, and then record its exit status).
        """


@dataclass(frozen=True)
class SimpleLauncher(Launcher):
    """Return the command unchanged: one pool per block, on the node the job script runs on.

    The default launcher.  Right for single-node blocks and for schedulers that start the job
    script once per node themselves.
    """

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return *command* unchanged."""
        return command
