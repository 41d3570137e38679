"""MPIExecutor: a HighThroughputExecutor whose tasks are MPI jobs on whole nodes of a block.

Each block runs one *lead* pool (the provider's launcher must start the pool once, as
``SimpleLauncher`` does), which learns the block's nodes from the batch system
(:func:`hpcfutures.launchers.nodes.block_nodes`) and advertises them when it registers.
A task declares ``Resources(num_nodes=, ranks_per_node=)`` (or ``num_ranks``); the default,
``Resources()``, is one node and one rank, so an empty request cannot wait for ever.  The
interchange sends a task only to a lead pool with that many nodes free, and the pool gives
it nodes no other running task holds.  The task runs in a worker on the lead node with its
launch prefix and counts in its environment (:func:`~hpcfutures.launchers.mpi_prefix.mpi_environment`):
a command task starts its program as ``$HPCFUTURES_MPI_PREFIX ./app``.  With
``function_ranks="all"`` (or ``"gather"``) a Python function runs on every rank instead
(:func:`run_on_ranks`), and the future gets rank 0's return value (or every rank's).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from .._validate import check_bool
from ..errors import ConfigurationError, ResourceUnsatisfiableError, UnsupportedOptionError
from ..launchers.base import SimpleLauncher
from ..launchers.mpi_prefix import FLAVOURS
from ..providers.base import ExecutionProvider
from ..resources import Resources, TaskOptions, reject_unsupported
from .htex.executor import HighThroughputExecutor
from .htex.slots import Need

__all__ = ["MPIExecutor", "run_on_ranks"]

#: What ``function_ranks`` may be: run a function once on the lead node, or on every rank.
FUNCTION_RANKS = ("lead", "all", "gather")


def run_on_ranks(fn: Callable[..., Any], gather: bool, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on every rank of this MPI task; return rank 0's value.

    Runs in the task's worker: it writes the call to a file, starts
    ``python -m hpcfutures.mpi_runner`` under ``$HPCFUTURES_MPI_PREFIX`` and reads the
    outcome back.  ``fn`` uses ``mpi4py`` (``MPI.COMM_WORLD``) as any MPI program would.
    With ``gather`` the value is the list of every rank's, in rank order.  If a rank raises,
    the job is aborted and its exception is raised here, with a note naming the rank.  The
    files go in a directory under ``$HPCFUTURES_MPI_DIR`` or else the worker's working
    directory, which ranks on other nodes must see (a shared file system).

    Raises:
        ImportError: mpi4py is not installed where the task runs.
        RuntimeError: the launcher failed before any rank reported (its exit code and
            standard error are in the message).
    """
    try:
        importlib.import_module("mpi4py")
    except ImportError as exc:
        raise ImportError(
            "function_ranks='all' runs functions on every MPI rank with mpi4py, which is not "
            "installed where the task runs: pip install 'hpcfutures[mpi]'"
        ) from exc
    prefix = shlex.split(os.environ["HPCFUTURES_MPI_PREFIX"])
    where = os.environ.get("HPCFUTURES_MPI_DIR") or os.getcwd()
    with tempfile.TemporaryDirectory(prefix=".hpcfutures-mpi-", dir=where) as directory:
        call, out = Path(directory) / "call.pkl", Path(directory) / "out.pkl"
        call.write_bytes(cloudpickle.dumps((fn, args, kwargs, gather)))
        argv = [*prefix, sys.executable, "-m", "hpcfutures.mpi_runner", str(call), str(out)]
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        errors = sorted(Path(directory).glob("out.pkl.rank*.error"), key=lambda p: int(p.name.split("rank")[1].split(".")[0]))
        if errors:
            rank, size, error, text = cloudpickle.loads(errors[0].read_bytes())
            note = f"raised on MPI rank {rank} of {size}; the job was aborted. On that rank:\n{text}"
            if hasattr(error, "add_note"):  # Python 3.11 and later
                error.add_note(note)
            raise error
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"the MPI launcher {shlex.join(prefix)!r} exited with code {proc.returncode} before every "
                f"rank reported; its stderr ends with:\n{proc.stderr[-2000:]}"
            )
        return cloudpickle.loads(out.read_bytes())


class MPIExecutor(HighThroughputExecutor):
    """Run MPI tasks on whole nodes of pilot blocks; see the module docstring.

    Args:
        max_workers_per_block: MPI tasks a block runs at once (default: its nodes, since
            every task takes at least one).
        provider: where blocks run; its ``nodes_per_block`` is how many nodes a task may
            take at most.  Its launcher must start one pool per block (``SimpleLauncher``,
            the default).
        mpi_launcher: how tasks start their ranks: ``"mpich"`` / ``"hydra"`` (``mpiexec``),
            ``"pals"``, ``"openmpi"`` (``mpirun``), ``"srun"``, ``"aprun"``, ``"jsrun"``, or
            ``"auto"`` (default): the lead pool asks ``mpiexec --version``.
        function_ranks: ``"lead"`` (default): a task's function runs once, on the lead node,
            and starts its program itself with ``$HPCFUTURES_MPI_PREFIX``; ``"all"``: it runs
            on every rank (with ``mpi4py``) and the future gets rank 0's value; ``"gather"``:
            the same, and the future gets every rank's value, in rank order.
        mpi_executable: the launcher program when it is not the flavour's usual name (for
            example ``"mpiexec.mpich"`` where ``mpiexec`` is Open MPI's).
        oversubscribe: let Open MPI place more ranks on a node than it has cores.
        **kwargs: the other :class:`HighThroughputExecutor` settings (``label``, ``address``,
            ``run_dir``, ``heartbeat_period``, ``unsatisfiable_after``, ...).
    """

    _plain_default = False

    def __init__(
        self,
        max_workers_per_block: int | None = None,
        provider: ExecutionProvider | None = None,
        *,
        mpi_launcher: str = "auto",
        function_ranks: str = "lead",
        mpi_executable: str = "",
        oversubscribe: bool = False,
        **kwargs: Any,
    ):
        if mpi_launcher != "auto" and mpi_launcher not in FLAVOURS:
            raise ConfigurationError(
                f"mpi_launcher must be 'auto' or one of {', '.join(FLAVOURS)}, got {mpi_launcher!r}"
            )
        if function_ranks not in FUNCTION_RANKS:
            raise ConfigurationError(
                f"function_ranks must be one of {', '.join(repr(r) for r in FUNCTION_RANKS)}, got {function_ranks!r}"
            )
        if not isinstance(mpi_executable, str):
            raise ConfigurationError(f"mpi_executable must be a program name or path, got {mpi_executable!r}")
        check_bool("oversubscribe", oversubscribe)
        for name in ("cores_per_worker", "mem_per_worker", "available_accelerators", "tasks_per_accelerator",
                     "cpu_affinity", "enforce_memory"):  # fmt: skip
            if name in kwargs:
                raise ConfigurationError(
                    f"MPIExecutor hands out whole nodes, so {name} does not apply; use HighThroughputExecutor for it"
                )
        super().__init__(max_workers_per_block, provider, **kwargs)
        if not isinstance(self.provider.launcher, SimpleLauncher):
            raise ConfigurationError(
                "MPIExecutor needs one lead pool per block: give the provider launcher=SimpleLauncher() "
                f"(it has {type(self.provider.launcher).__name__})"
            )
        if self.config.max_workers is None:
            self.max_workers = self.provider.nodes_per_block  # every task takes a node at least
        self.config = dataclasses.replace(
            self.config,
            max_workers=self.max_workers,
            mpi_flavour=mpi_launcher,
            mpi_oversubscribe=oversubscribe,
            mpi_executable=mpi_executable,
        )
        self.mpi_launcher = mpi_launcher
        self.function_ranks = function_ranks

    def check_options(self, options: TaskOptions) -> None:
        """Refuse what an MPI task cannot have, and what no block could ever give it."""
        reject_unsupported("MPIExecutor", options, resources=True, walltime=True, priority=True)
        resources = options.resources
        extra = {k: v for k, v in resources.non_default_fields().items() if k in ("cores", "memory_gb", "gpus")}
        if extra:
            shown = ", ".join(f"{k}={v!r}" for k, v in extra.items())
            raise UnsupportedOptionError(
                f"MPIExecutor gives tasks whole nodes: Resources({shown}) is not taken; ask for "
                "num_nodes and ranks_per_node (or num_ranks)"
            )
        nodes = self.provider.nodes_per_block
        if resources.num_nodes > nodes:
            raise ResourceUnsatisfiableError(
                f"Resources(num_nodes={resources.num_nodes}) can never run: this executor's blocks "
                f"have nodes_per_block={nodes}"
            )
        cores = self.provider.cores_per_node
        if cores and resources.ranks_per_node > cores and not self.config.mpi_oversubscribe:
            raise ResourceUnsatisfiableError(
                f"Resources(ranks_per_node={resources.ranks_per_node}) is more than the provider's "
                f"cores_per_node={cores}; lower it, or pass oversubscribe=True"
            )
        super().check_options(dataclasses.replace(options, resources=Resources()))  # the walltime checks

    def submit_with_options(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Submit one MPI task; with ``function_ranks`` other than "lead", ``fn`` runs on every rank."""
        if self.function_ranks != "lead" and callable(fn):
            fn = functools.partial(run_on_ranks, fn, self.function_ranks == "gather")
        return super().submit_with_options(options, fn, args, kwargs)

    def _need(self, resources: Resources) -> tuple[int, ...]:
        return Need.mpi(resources).wire()

    def options(
        self,
        *,
        resources: Resources | None = None,
        walltime: float | None = None,
        priority: int | None = None,
    ) -> Any:
        """A view whose tasks get ``resources.num_nodes`` whole nodes and that many ranks per node.

        Raises:
            ResourceUnsatisfiableError: more nodes than a block has, or more ranks per node
                than its cores without ``oversubscribe``.
            UnsupportedOptionError: cores, memory or GPUs per task.
        """
        return super().options(resources=resources, walltime=walltime, priority=priority)

