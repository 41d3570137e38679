"""Launchers: how a block's worker-pool command is started on the nodes a provider obtained.

Each launcher only renders a shell fragment (``srun …``, ``mpiexec …``); the provider's job
script runs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .aprun import AprunLauncher
    from .jsrun import JsrunLauncher
    from .mpi import MpiExecLauncher, MpiRunLauncher
    from .parallel import GnuParallelLauncher
    from .single_node import SingleNodeLauncher
    from .slurm import SrunLauncher, SrunMPILauncher
    from .wrapped import WrappedLauncher
