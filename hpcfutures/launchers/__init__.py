"""Launchers: how a block's worker-pool command is started on the nodes a provider obtained.

Each launcher only renders a shell fragment (``srun …``, ``mpiexec …``); the provider's job
script runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports
from .base import Launcher, SimpleLauncher

_LAZY = {
    "SingleNodeLauncher": ".single_node",
    "SrunLauncher": ".slurm",
    "SrunMPILauncher": ".slurm",
    "AprunLauncher": ".aprun",
    "JsrunLauncher": ".jsrun",
    "MpiExecLauncher": ".mpi",
    "MpiRunLauncher": ".mpi",
    "GnuParallelLauncher": ".parallel",
    "WrappedLauncher": ".wrapped",
}

__all__ = ["Launcher", "SimpleLauncher", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


if TYPE_CHECKING:
    from .aprun import AprunLauncher
    from .jsrun import JsrunLauncher
    from .mpi import MpiExecLauncher, MpiRunLauncher
    from .parallel import GnuParallelLauncher
    from .single_node import SingleNodeLauncher
    from .slurm import SrunLauncher, SrunMPILauncher
    from .wrapped import WrappedLauncher
