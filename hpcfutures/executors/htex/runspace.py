"""RunSpace: what one start of a HighThroughputExecutor makes outside the driver's memory.

The run directory with its key files, the interchange's socket directory and TCP port, the
``/dev/shm`` directory large buffers spill to, and the interchange process with the two pipes
the driver talks to it through.  :func:`open_run_space` makes them in that order, under the
executor's start lock, registering how to undo each step on the caller's rollback stack; after
the start they are only read.  :meth:`RunSpace.remove` takes the directories away once the
executor has stopped.  Thread ownership: made and removed by whichever thread starts or
releases the executor, never changed in between, so readers need no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import InterchangeLostError
from ...serialize import SharedSpill, dumps
from . import launch, security
from . import protocol as P
from .components import InterchangeArgs, PoolArgs
from .config import HtexConfig
from .pipes import Receiver, Sender


@dataclass(frozen=True)
class RunSpace:
    """The directories, keys, port and interchange process of one started executor."""

    #: The run directory: key files, block scripts and (with ``run_dir``) component logs.
    directory: Path
    #: Whether :attr:`directory` is a private temporary one, removed at the end (no ``run_dir``).
    temporary: bool
    keys: security.KeyFiles
    #: A short private directory for the local pools' Unix socket.
    ipc_dir: str
    #: The TCP port the interchange binds for remote pools.
    pool_port: int
    #: Where large buffers to and from pools on this node go, or None (remote pools, no /dev/shm).
    spill: SharedSpill | None
    interchange: subprocess.Popen[bytes]
    #: The interchange's stdout and stderr, read to explain its death.
    interchange_err: Path
    to_interchange: Sender
    from_interchange: Receiver

    def log_file(self, name: str) -> str:
        """Where a component logs: in the run directory given by the user, else nowhere."""
        return "" if self.temporary else str(self.directory / name)

    @property
    def express_path(self) -> str:
        """Where the driver listens for its local workers' express connections."""
        return f"{self.ipc_dir}/express"

    def pool_command(self, config: HtexConfig, block_id: str, address: str, *, express: bool = False) -> list[str]:
        """The command line of a pool of block ``block_id`` connecting to ``address`` (and, if
        ``express``, its workers to the driver's express socket)."""
        return PoolArgs(
            addr=address,
            keys=str(self.keys.pool),
            max_workers=config.max_workers or 0,
            block_id=block_id,
            prefetch=config.prefetch,
            heartbeat_period=config.heartbeat_period,
            heartbeat_threshold=config.heartbeat_threshold,
            start_timeout=config.start_timeout,
            log_file=self.log_file(f"pool-{block_id}.log"),
            shm_dir=self.spill.directory if self.spill is not None else "",
            express=self.express_path if express else "",
            accelerators=tuple(config.available_accelerators),  # type: ignore[arg-type]  # names, once checked
            tasks_per_accelerator=config.tasks_per_accelerator,
            cores_per_worker=config.cores_per_worker or 0.0,
            mem_per_worker=config.mem_per_worker or 0.0,
            cpu_affinity=config.cpu_affinity,
            enforce_memory=int(config.enforce_memory),
            mpi_flavour=config.mpi_flavour,
            mpi_oversubscribe=int(config.mpi_oversubscribe),
            mpi_executable=config.mpi_executable,
        ).command()

    def interchange_lost(self) -> InterchangeLostError | None:
        """The error that tells how the interchange ended, or None while it runs."""
        return launch.lost_error(self.interchange, self.interchange_err)

    def remove(self) -> None:
        """Remove what this start made on disk (a ``run_dir``'s run directory stays, with its logs)."""
        if self.temporary:
            shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
        if self.spill is not None:
            shutil.rmtree(self.spill.directory, ignore_errors=True)


def open_run_space(
    config: HtexConfig, local_pools: bool, rollback: contextlib.ExitStack, recording: bool = False
) -> RunSpace:
    """Make the directories and keys, start the interchange and send it its settings.

    ``local_pools`` says whether every pool runs on this node (then large buffers may spill
    through ``/dev/shm``).  ``recording`` says whether the run is recorded: workers then
    measure each task's CPU time and memory, and pools send node samples every
    ``config.sample_interval`` seconds.  Each step pushes its undoing onto ``rollback``, so
    that a start failing later leaves nothing of this behind.

    Raises:
        OSError: a directory could not be made or the interchange could not be started.
    """
    directory, temporary = _make_run_dir(config, rollback)
    keys = security.create_keys(directory / "keys")
    spill = _make_spill(local_pools)
    if spill is not None:
        rollback.callback(shutil.rmtree, spill.directory, ignore_errors=True)
    ipc_dir = tempfile.mkdtemp(prefix="hpcf-")  # short: Unix socket paths are limited
    rollback.callback(shutil.rmtree, ipc_dir, ignore_errors=True)
    address = config.bind_address
    pool_port = launch.free_port("0.0.0.0" if address == "*" else address)
    cleanup = (ipc_dir, spill.directory if spill else None, directory if temporary else None)
    args = InterchangeArgs(
        keys=str(keys.interchange),
        ipc_dir=ipc_dir,
        pool_port=pool_port,
        driver_fds=(),  # filled in by start_interchange
        address=address,
        driver_pid=os.getpid(),
        heartbeat_period=config.heartbeat_period,
        heartbeat_threshold=config.heartbeat_threshold,
        lost_task_retries=config.lost_task_retries,
        unsatisfiable_after=config.unsatisfiable_after,
        log_file="" if temporary else str(directory / "interchange.log"),
        cleanup=tuple(str(d) for d in cleanup if d is not None),
    )
    interchange_err = directory / "interchange.err"
    interchange, to_interchange, from_interchange = launch.start_interchange(args, interchange_err)
    rollback.callback(launch.stop, interchange, 0.0)
    rollback.callback(os.close, to_interchange.fd)
    rollback.callback(os.close, from_interchange.fd)
    settings = {
        "lost_task_retries": config.lost_task_retries,
        "heartbeat_period": config.heartbeat_period,
        "heartbeat_threshold": config.heartbeat_threshold,
        "measure": recording,
        "sample_interval": config.sample_interval if recording else 0.0,
    }
    init_frames = dumps((config.initializer, config.initargs)) if config.initializer is not None else []
    to_interchange.send([P.CONFIG, json.dumps(settings).encode(), *init_frames])
    return RunSpace(
        directory=directory,
        temporary=temporary,
        keys=keys,
        ipc_dir=ipc_dir,
        pool_port=pool_port,
        spill=spill,
        interchange=interchange,
        interchange_err=interchange_err,
        to_interchange=to_interchange,
        from_interchange=from_interchange,
    )


def _make_run_dir(config: HtexConfig, rollback: contextlib.ExitStack) -> tuple[Path, bool]:
    """A fresh run directory under ``run_dir``, or a private temporary one; and which it is."""
    if config.run_dir is None:
        directory = Path(tempfile.mkdtemp(prefix=f"hpcfutures-{config.label}-"))
        rollback.callback(shutil.rmtree, directory, ignore_errors=True)
        return directory, True
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{config.label}-", dir=run_dir))
    rollback.callback(shutil.rmtree, directory / "keys", ignore_errors=True)  # the logs stay
    return directory, False


def _make_spill(local_pools: bool) -> SharedSpill | None:
    """Large buffers to and from pools on this node go through /dev/shm when it exists."""
    if not local_pools or not os.access("/dev/shm", os.W_OK):
        return None
    directory = tempfile.mkdtemp(prefix="hpcf-", dir="/dev/shm")
    return SharedSpill(directory, "a", unlink_on_load=False)
