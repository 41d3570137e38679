"""WrappedLauncher: put a prefix such as a container command in front of the pool command."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .._validate import keyword_renamed
from ..errors import ConfigurationError
from ._fragment import check_call, check_flags, check_program, join
from .base import Launcher, SimpleLauncher


@dataclass(frozen=True)
class WrappedLauncher(Launcher):
    """Run the command under a prefix (``apptainer exec image.sif``, ``numactl -i all``, …).

    The wrapped command (``<prepend> <command>``) is then started across the block by
    ``launcher``: :class:`SimpleLauncher` (the default) runs it once, as it is; another
    launcher runs it on every node, so ``WrappedLauncher("apptainer exec pool.sif",
    launcher=SrunLauncher())`` starts a containerized pool per node.

    The prefix applies to the command's first simple command.  The pool command a provider
    passes is one simple command, so that is enough for it; for a compound command (``a &&
    b``, ``A=1 b``), set ``shell`` and the whole command runs in that shell, inside the
    prefix: ``<prepend> /bin/sh -c '<command>'``.

    Attributes:
        prepend: the prefix, shell words on one line.
        shell: ``""`` (the default) to put the command right after the prefix, or the path
            of a shell that exists inside the prefix's environment (``/bin/sh``).
        launcher: starts the wrapped command across the block.
    """

    prepend: str
    shell: str = ""
    launcher: Launcher = field(default_factory=SimpleLauncher)

    def __post_init__(self) -> None:
        if not isinstance(self.prepend, str) or not self.prepend.strip():
            raise ConfigurationError(
                f"prepend must be a non-empty command prefix such as 'apptainer exec image.sif', "
                f"got {self.prepend!r}"
            )
        check_flags("prepend", self.prepend)
        if self.shell != "":
            check_program("shell", self.shell)
        if not isinstance(self.launcher, Launcher):
            raise ConfigurationError(
                f"launcher must be a hpcfutures.launchers.Launcher (for example SrunLauncher()), "
                f"got {self.launcher!r}"
            )

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return ``launcher(<prepend> <command>)``.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        inner = f"{shlex.quote(self.shell)} -c {shlex.quote(command)}" if self.shell else command
        return self.launcher(join(self.prepend.strip(), inner), max_workers, nodes_per_block)
