"""AprunLauncher: one copy of the command per node through Cray ALPS's ``aprun``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._validate import check_count, keyword_renamed
from ..errors import ConfigurationError
from ._fragment import check_call, check_flags, in_bash, join
from .base import Launcher

# -cc takes a keyword or a CPU list such as 0-3,8:4-7.
_CPU_BINDING = re.compile(r"^(cpu|depth|numa_node|none|[0-9][0-9,:-]*)$")


@dataclass(frozen=True)
class AprunLauncher(Launcher):
    """Start the command once per node with ``aprun -n NODES -N 1``.

    For Cray systems whose batch system (PBS Pro, Torque/Moab) places jobs through ALPS.
    Each copy runs ``/bin/bash -c '<command>'`` with ALPS's ``ALPS_APP_PE`` (its rank) set;
    ``aprun`` forwards TERM and INT to the copies and exits non-zero when one fails.

    Attributes:
        depth: CPUs reserved for each copy (``-d``); None leaves ALPS's default of one,
            which with ``cpu_binding="none"`` still lets a pool's workers use every CPU.
        cpu_binding: ``-cc``: ``"none"`` (the default, so a pool's workers are not squeezed
            onto the CPUs reserved for one PE), ``"cpu"``, ``"depth"``, ``"numa_node"`` or a
            CPU list; ``""`` leaves ALPS's default (``cpu``).
        overrides: extra flags placed before the command, e.g. ``"-e OMP_NUM_THREADS=1"``.
    """

    depth: int | None = None
    cpu_binding: str = "none"
    overrides: str = ""

    def __post_init__(self) -> None:
        check_count("depth", self.depth, 1, note="CPUs per copy", optional=True)
        if not isinstance(self.cpu_binding, str) or not (
            self.cpu_binding == "" or _CPU_BINDING.match(self.cpu_binding)
        ):
            raise ConfigurationError(
                "cpu_binding must be 'none', 'cpu', 'depth', 'numa_node', a CPU list such as '0-3' "
                f"or '' (ALPS's default), got {self.cpu_binding!r}"
            )
        check_flags("overrides", self.overrides)

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return the ``aprun`` command line that runs *command* once on each node.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        return join(
            f"aprun -n {nodes_per_block} -N 1",
            f"-d {self.depth}" if self.depth is not None else "",
            f"-cc {self.cpu_binding}" if self.cpu_binding else "",
            self.overrides.strip(),
            in_bash(command),
        )
