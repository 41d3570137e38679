"""HtexConfig: a HighThroughputExecutor's settings, checked once when the executor is made.

Every check names the parameter and the fix, and runs before anything starts, so a wrong
setting fails in the constructor rather than at the first submit or inside a batch job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from ..._validate import check_bool, check_count, check_number, check_seconds
from ...errors import ConfigurationError

if TYPE_CHECKING:
    from ...monitor.location import RecordArg
    from ...providers.base import ExecutionProvider

AtExit = Literal["wait", "terminate"]


@dataclass(frozen=True)
class HtexConfig:
    """The settings of one HighThroughputExecutor; see its docstring for what each means.

    Built from the constructor's arguments: ``address`` may be one address or a list of
    candidates, ``provider`` None means one local pool, and numbers are normalised to
    floats.  Raises :class:`~hpcfutures.ConfigurationError` naming the bad parameter.
    """

    max_workers: int | None = None
    provider: ExecutionProvider = None  # type: ignore[assignment]  # None: one local pool
    label: str = "htex"
    address: str | Sequence[str] = "127.0.0.1"
    tunnel: bool = False
    run_dir: Path | str | os.PathLike[str] | None = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    prefetch: int = 0
    heartbeat_period: float = 1.0
    heartbeat_threshold: float = 10.0
    lost_task_retries: int = 2
    start_timeout: float = 30.0
    max_idletime: float = 120.0
    block_poll_period: float = 1.0
    at_exit: AtExit = "wait"
    cores_per_worker: float | None = None
    mem_per_worker: float | None = None
    available_accelerators: int | Sequence[str] = ()
    tasks_per_accelerator: int = 1
    cpu_affinity: str = "none"
    enforce_memory: bool = False
    unsatisfiable_after: float = 60.0
    #: Whether and where to record the run (see :mod:`hpcfutures.monitor.location`).
    record: RecordArg = None
    #: Seconds between two node samples of each pool while the run is recorded (0: none).
    sample_interval: float = 10.0
    #: Whether lone tasks may take the express lane to workers on the driver's node.
    express: bool = True
    #: Set by MPIExecutor: its blocks' MPI launcher ("auto": the lead pool asks mpiexec).
    mpi_flavour: str = ""
    mpi_oversubscribe: bool = False
    mpi_executable: str = ""
    #: The addresses pools may try, in order (``address`` as a tuple).
    address_candidates: tuple[str, ...] = field(init=False)
    #: What the interchange binds: the one address, or every interface ("*") for several.
    bind_address: str = field(init=False)
    #: Where ``record`` (or ``HPCFUTURES_RECORD``, when it is None) says to record: the
    #: record file and the run family; None when recording is off.
    record_to: tuple[Path, str] | None = field(init=False)

    def __post_init__(self) -> None:
        def normalise(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        check_count("max_workers", self.max_workers, 1, optional="one per CPU")
        provider = self.provider
        from ...providers.base import ExecutionProvider

        if provider is None:
            from ...providers.local import LocalProvider

            normalise("provider", LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
        elif not isinstance(provider, ExecutionProvider):
            raise ConfigurationError(
                f"provider must be an hpcfutures ExecutionProvider (for example LocalProvider()), got {provider!r}"
            )
        if not isinstance(self.label, str) or not self.label or "/" in self.label:
            raise ConfigurationError(f"label must be a non-empty string without '/', got {self.label!r}")
        candidates = self._candidates()
        normalise("address_candidates", candidates)
        normalise("bind_address", candidates[0] if len(candidates) == 1 else "*")
        if self.tunnel:
            self._check_tunnel(candidates)
        if self.run_dir is not None:
            normalise("run_dir", Path(self.run_dir))
        if self.initializer is not None and not callable(self.initializer):
            raise ConfigurationError(f"initializer must be callable or None, got {self.initializer!r}")
        if not isinstance(self.initargs, tuple):
            raise ConfigurationError(f"initargs must be a tuple, got {type(self.initargs).__name__}")
        check_count("prefetch", self.prefetch, 0)
        check_count("lost_task_retries", self.lost_task_retries, 0)
        for name in (
            "heartbeat_period",
            "heartbeat_threshold",
            "start_timeout",
            "max_idletime",
            "block_poll_period",
            "unsatisfiable_after",
        ):
            normalise(name, float(check_seconds(name, getattr(self, name))))
        if self.at_exit not in ("wait", "terminate"):
            raise ConfigurationError(
                "at_exit must be 'wait' (unfinished tasks run to the end when the program ends, as "
                f"with the standard library) or 'terminate' (they are killed), got {self.at_exit!r}"
            )
        if self.heartbeat_threshold <= self.heartbeat_period:
            raise ConfigurationError(
                f"heartbeat_threshold ({self.heartbeat_threshold:g}) must exceed heartbeat_period "
                f"({self.heartbeat_period:g})"
            )
        self._check_worker_shape(normalise)
        from ...monitor.location import resolve_record

        try:
            normalise("record_to", resolve_record(self.record))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        normalise("sample_interval", float(check_seconds("sample_interval", self.sample_interval, allow_zero=True)))
        max_blocks = self.provider.max_blocks
        if max_blocks < 1:
            raise ConfigurationError(
                f"the provider's max_blocks is {max_blocks}: no block could ever run a task; "
                "give it max_blocks >= 1"
            )

    def _check_worker_shape(self, normalise: Callable[[str, Any], None]) -> None:
        from .slots import AFFINITY_MODES, accelerator_names

        if self.cores_per_worker is not None:
            normalise("cores_per_worker", float(check_number("cores_per_worker", self.cores_per_worker, finite=True)))
        if self.mem_per_worker is not None:
            normalise("mem_per_worker", float(check_number("mem_per_worker", self.mem_per_worker, finite=True, unit="GB")))
        normalise("available_accelerators", accelerator_names(self.available_accelerators))
        check_count("tasks_per_accelerator", self.tasks_per_accelerator, 1)
        check_bool("enforce_memory", self.enforce_memory)
        check_bool("express", self.express)
        if self.cpu_affinity not in AFFINITY_MODES:
            raise ConfigurationError(
                f"cpu_affinity must be one of {', '.join(repr(m) for m in AFFINITY_MODES)}, got {self.cpu_affinity!r}"
            )
        cores = self.provider.cores_per_node
        if self.cores_per_worker is not None and cores and self.cores_per_worker > cores:
            raise ConfigurationError(
                f"cores_per_worker={self.cores_per_worker:g} is more than the provider's "
                f"cores_per_node={cores}: no worker could start"
            )

    def _candidates(self) -> tuple[str, ...]:
        address = self.address
        if isinstance(address, str):
            candidates: list[Any] = [address]
        elif isinstance(address, (list, tuple)):
            candidates = list(address)
        else:
            candidates = []
        if not candidates or not all(isinstance(a, str) and a for a in candidates):
            raise ConfigurationError(
                "address must be an address pools can reach, such as '10.1.2.3' or "
                f"hpcfutures.addresses.address_by_hostname(), or a list of candidates; got {address!r}"
            )
        return tuple(candidates)

    def _check_tunnel(self, candidates: tuple[str, ...]) -> None:
        provider = self.provider
        if not provider.tunnel_channels():
            raise ConfigurationError(
                "tunnel=True needs a provider whose commands run over SSH (channel=SSHChannel(...) "
                f"or SSHProvider); {provider!r} has none"
            )
        if len(candidates) > 1 or candidates[0] not in ("127.0.0.1", "localhost"):
            raise ConfigurationError(
                "with tunnel=True pools reach the interchange through SSH, which binds loopback; "
                f"leave address at its default instead of {self.address!r}"
            )
