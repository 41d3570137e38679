"""JsrunLauncher: one copy of the command per node through IBM's ``jsrun`` (LSF, Summit-like)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._validate import check_count, keyword_renamed
from ..errors import ConfigurationError
from ._fragment import check_call, check_flags, in_bash, join
from .base import Launcher

_BINDING = re.compile(r"^(none|rs|packed:[0-9]+|packed:smt:[0-9]+)$")


def _check_per_set(name: str, value: object, everything: str, minimum: int) -> str:
    if isinstance(value, str) and value == everything:
        return value
    return str(check_count(name, value, minimum, note=f"or {everything!r}"))


@dataclass(frozen=True)
class JsrunLauncher(Launcher):
    """Start the command once per node with ``jsrun -n NODES -r 1 -a 1``.

    For IBM Spectrum LSF clusters with the ``jsrun`` launcher (Summit, Sierra, Lassen).  Each
    node gets one resource set holding one copy, which runs ``/bin/bash -c '<command>'``
    with ``JSM_NAMESPACE_RANK`` (its rank) set.  ``jsrun`` exits non-zero when a copy fails.

    Attributes:
        cpus_per_set: CPUs in each node's resource set (``-c``): ``"ALL_CPUS"`` by default,
            so a pool's workers can use the whole node; jsrun's own default is one.
        gpus_per_set: GPUs in each resource set (``-g``): ``"ALL_GPUS"`` by default.
        binding: ``-b``: ``"none"`` (the default), ``"rs"``, ``"packed:N"`` or ``"packed:smt:N"``.
        overrides: extra flags placed before the command, e.g. ``"-E OMP_NUM_THREADS=1"``.
    """

    cpus_per_set: int | str = "ALL_CPUS"
    gpus_per_set: int | str = "ALL_GPUS"
    binding: str = "none"
    overrides: str = ""

    def __post_init__(self) -> None:
        _check_per_set("cpus_per_set", self.cpus_per_set, "ALL_CPUS", 1)
        _check_per_set("gpus_per_set", self.gpus_per_set, "ALL_GPUS", 0)
        if not isinstance(self.binding, str) or not _BINDING.match(self.binding):
            raise ConfigurationError(
                f"binding must be 'none', 'rs', 'packed:N' or 'packed:smt:N', got {self.binding!r}"
            )
        check_flags("overrides", self.overrides)

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return the ``jsrun`` command line that runs *command* once on each node.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        return join(
            f"jsrun -n {nodes_per_block} -r 1 -a 1 -c {self.cpus_per_set} -g {self.gpus_per_set} -b {self.binding}",
            self.overrides.strip(),
            in_bash(command),
        )
