"""What each HighThroughputExecutor process is started with: one argument object per program.

Also the one thing those programs share besides: how they log (:func:`setup_logging`).

The driver fills an :class:`InterchangeArgs` or a :class:`PoolArgs` and turns it into a
command line with :meth:`~_ComponentArgs.command`; the program reads it back with
:meth:`~_ComponentArgs.parse`.  Each option is declared once, as a dataclass field, so the
two sides cannot drift apart.  A field ``pool_port`` is the option ``--pool-port``; a tuple of
ints is written comma-separated, a tuple of strings as the option repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

_Args = TypeVar("_Args", bound="_ComponentArgs")


def setup_logging(log_file: str) -> None:
    """Send this program's log records, at DEBUG level, to ``log_file`` (none if empty)."""
    if log_file:
        logging.basicConfig(
            filename=log_file,
            level=logging.DEBUG,
            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        )


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


class _ComponentArgs:
    """What the two argument classes share: the command line, both ways."""

    #: The module run with ``python -m``.
    MODULE: ClassVar[str]
    #: The program's name in usage and error messages.
    PROG: ClassVar[str]

    def to_argv(self) -> list[str]:
        """The options that carry this object (without the program)."""
        argv: list[str] = []
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            option = "--" + spec.name.replace("_", "-")
            if spec.type == "tuple[str, ...]":
                for item in value:
                    argv += [option, item]
            elif spec.type == "tuple[int, ...]":
                argv += [option, ",".join(str(item) for item in value)]
            else:
                argv += [option, str(value)]
        return argv

    def command(self) -> list[str]:
        """The whole command line that starts the program with this object's settings."""
        return [sys.executable, "-m", self.MODULE, *self.to_argv()]

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """An argument parser for the options of :meth:`to_argv`."""
        parser = argparse.ArgumentParser(prog=cls.PROG, description=(cls.__doc__ or "").split("\n")[0])
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            option = "--" + spec.name.replace("_", "-")
            required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            kwargs: dict[str, Any] = {"help": spec.metadata.get("help"), "dest": spec.name}
            if spec.type == "tuple[str, ...]":
                kwargs.update(action="append", default=[])
            else:
                kwargs["type"] = {"int": int, "float": float, "tuple[int, ...]": _ints}.get(str(spec.type), str)
                if required:
                    kwargs["required"] = True
                else:
                    kwargs["default"] = spec.default
            parser.add_argument(option, **kwargs)
        return parser

    @classmethod
    def parse(cls: type[_Args], argv: list[str]) -> _Args:
        """Read an object back from its command line (exits with a usage message if wrong)."""
        values = vars(cls.parser().parse_args(argv))
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            if spec.type == "tuple[str, ...]":
                values[spec.name] = tuple(values[spec.name])
        return cls(**values)


@dataclass(frozen=True)
class InterchangeArgs(_ComponentArgs):
    """Run the interchange of one HighThroughputExecutor."""

    MODULE: ClassVar[str] = "hpcfutures.executors.htex.interchange"
    PROG: ClassVar[str] = "hpcfutures-interchange"

    keys: str = field(metadata=_help("the interchange's key file"))
    ipc_dir: str = field(metadata=_help("a private directory for the local pools' socket"))
    pool_port: int = field(metadata=_help("the TCP port remote pools connect to"))
    driver_fds: tuple[int, ...] = field(
        metadata=_help("READ,WRITE: the inherited pipe ends the driver talks to this process through")
    )
    address: str = field(default="127.0.0.1", metadata=_help("the address pools connect to"))
    driver_pid: int = field(default=0, metadata=_help("the driver's pid, watched so that its death is seen"))
    heartbeat_period: float = 1.0
    heartbeat_threshold: float = 10.0
    lost_task_retries: int = 2
    unsatisfiable_after: float = field(
        default=60.0,
        metadata=_help("seconds a task with resources no registered pool could ever run waits before it fails"),
    )
    log_file: str = field(default="", metadata=_help("where to log; nowhere if empty"))
    cleanup: tuple[str, ...] = field(
        default=(), metadata=_help("a directory of the driver's to remove if the driver dies")
    )


@dataclass(frozen=True)
class PoolArgs(_ComponentArgs):
    """Run one worker pool for an interchange."""

    MODULE: ClassVar[str] = "hpcfutures.executors.htex.pool"
    PROG: ClassVar[str] = "hpcfutures pool"

    addr: str = field(
        metadata=_help(
            "the interchange's pool endpoint: tcp://HOST:PORT (CurveZMQ; several comma-separated "
            "to try in turn), or unix://PATH on its own node"
        )
    )
    keys: str = field(metadata=_help("the pool's CurveZMQ key file"))
    max_workers: int = field(
        default=0, metadata=_help("worker processes, as the executor's max_workers (0: one per available CPU)")
    )
    block_id: str = "0"
    pool_id: str = ""
    prefetch: int = field(default=0, metadata=_help("tasks held beyond what the workers take"))
    heartbeat_period: float = 1.0
    heartbeat_threshold: float = 10.0
    start_timeout: float = field(
        default=60.0, metadata=_help("seconds to wait for the interchange to accept this pool")
    )
    log_file: str = field(default="", metadata=_help("where to log; nowhere if empty"))
    shm_dir: str = field(
        default="", metadata=_help("the driver's shared-memory directory, when the pool is on the driver's node")
    )
    express: str = field(
        default="", metadata=_help("the driver's express socket, when the pool is on the driver's node")
    )
    cpus: str = field(
        default="", metadata=_help("the CPUs the pool may use, e.g. 0-3,8 (default: HPCFUTURES_POOL_CPUS, else its affinity set)")
    )
    memory_gb: float = field(default=0.0, metadata=_help("the memory it may hand out (0: 90%% of what is available)"))
    accelerators: tuple[str, ...] = field(default=(), metadata=_help("an accelerator's name (repeat for each)"))
    tasks_per_accelerator: int = field(default=1, metadata=_help("tasks that may share one accelerator"))
    cores_per_worker: float = field(default=0.0, metadata=_help("cores each worker takes (0: not set)"))
    mem_per_worker: float = field(default=0.0, metadata=_help("GB each worker takes (0: not set)"))
    cpu_affinity: str = field(default="none", metadata=_help("none, block, alternating or block-reverse"))
    enforce_memory: int = field(default=0, metadata=_help("1: hold each task to its memory_gb with a memory cgroup"))
    mpi_flavour: str = field(
        default="", metadata=_help("the MPI launcher of the block (mpich, openmpi, srun, ...): a lead pool")
    )
    mpi_oversubscribe: int = field(default=0, metadata=_help("1: let Open MPI place more ranks than cores"))
    mpi_executable: str = field(default="", metadata=_help("the launcher program, if not the flavour's usual name"))
