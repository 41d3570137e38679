"""The Launcher interface, and SimpleLauncher, which runs the command as it is.

A provider obtains a block (one or more nodes); its launcher wraps the worker-pool command so
that one pool runs on each node of the block (``srun``, ``mpiexec``, ``aprun``, …).  A launcher
only rewrites a command string: it starts nothing itself and knows nothing about tasks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


class Launcher(abc.ABC):
    """Wraps a block's worker-pool command so that it runs on every node of the block."""

    @abc.abstractmethod
    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        """Return the shell command that starts *command* across the block.

        Args:
            command: the worker-pool command, one shell command line.
            tasks_per_node: how many tasks (workers) each node's pool should run.
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

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        """Return *command* unchanged."""
        return command
