"""Slots: what a worker pool has, what a task needs, and where a task fits, as pure code.

A pool advertises its :class:`PoolShape` when it registers: the CPUs it may use (its
affinity set, or an override), the memory it may hand out, its accelerators by name and
its host.  A task declares :class:`~hpcfutures.Resources`; :class:`Need` is the part of it
that one pool accounts (cores, memory, GPUs).  Three parties use this module:

- the driver, to refuse at submit a task that no pool the executor can ever have could run
  (:func:`shortfall`, :func:`unsatisfiable`);
- the interchange, which keeps a :class:`Ledger` per pool and sends a task only where it
  fits now, in priority order, letting smaller tasks pass a blocked one a bounded number of
  times before the pools it could use are held for it (:func:`place`);
- the pool, whose :class:`Allocator` picks concrete CPU ids and GPU names for a task and
  takes them back when the task ends, fails or loses its worker; the worker pins the task
  to them (:func:`pinning_environment`, :func:`pinned`).

Nothing here touches a socket or a process, so it is tested alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Hashable, TypeVar

from ..._validate import check_count
from ...errors import ConfigurationError

K = TypeVar("K", bound=Hashable)

#: How many lower-priority tasks may be placed ahead of a task that does not fit, before
#: the pools that could hold it take nothing else until it does.
MAX_PASSES = 100

#: The environment variables that name a task's accelerators, one per vendor's runtime.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Read a CPU list as Linux writes them (``"0-3,8,10-11"``) into sorted, distinct ids.

    Raises:
        ConfigurationError: the text is not such a list.
    """
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ConfigurationError(f"a CPU list must look like '0-3,8', got {text!r}") from None
        if first < 0 or last < first:
            raise ConfigurationError(f"a CPU list must look like '0-3,8', got {text!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ConfigurationError(f"a CPU list must name at least one CPU, got {text!r}")
    return tuple(sorted(cpus))


def accelerator_names(accelerators: int | Sequence[str]) -> tuple[str, ...]:
    """Accelerator names from a count (``n`` means ``"0"`` .. ``"n-1"``) or a list of names.

    Raises:
        ConfigurationError: a negative count, or names that are empty, repeated or not text.
    """
    if isinstance(accelerators, int) and not isinstance(accelerators, bool):
        check_count("available_accelerators", accelerators, 0)
        return tuple(str(i) for i in range(accelerators))
    if isinstance(accelerators, str) or not isinstance(accelerators, Sequence):
        raise ConfigurationError(
            f"available_accelerators must be a count or a list of device names, got {accelerators!r}"
        )
    names = tuple(accelerators)
    if not all(isinstance(n, str) and n and "," not in n for n in names) or len(set(names)) != len(names):
        raise ConfigurationError(
            "available_accelerators must be distinct non-empty device names without commas, "
            f"got {accelerators!r}"
        )
    return names


@dataclass(frozen=True)
class PoolShape:
    """What one pool may hand out to its tasks.

    ``memory_gb`` None means memory is not accounted: tasks that ask for memory do not fit.
    ``tasks_per_gpu`` lets several tasks share one accelerator (as with CUDA MPS).
    """

    cpus: tuple[int, ...]
    memory_gb: float | None = None
    gpus: tuple[str, ...] = ()
    tasks_per_gpu: int = 1
    host: str = ""
    #: The nodes of the block, for a lead pool that hands them out to MPI tasks.
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.cpus or len(set(self.cpus)) != len(self.cpus):
            raise ConfigurationError(f"a pool needs distinct CPU ids, got {self.cpus!r}")
        check_count("tasks_per_gpu", self.tasks_per_gpu, 1)

    @property
    def cores(self) -> int:
        return len(self.cpus)

    def describe(self) -> str:
        """The shape in words, for messages: ``"4 cores, 15.5 GB, GPUs 0, 1"``."""
        parts = [f"{self.cores} core{'s' if self.cores != 1 else ''}"]
        parts.append("memory not accounted" if self.memory_gb is None else f"{self.memory_gb:g} GB")
        if self.gpus:
            shared = f" ({self.tasks_per_gpu} tasks each)" if self.tasks_per_gpu > 1 else ""
            parts.append(f"GPUs {', '.join(self.gpus)}{shared}")
        else:
            parts.append("no GPUs")
        if self.nodes:
            parts.append(f"{len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''} for MPI tasks")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": list(self.cpus),
            "memory_gb": self.memory_gb,
            "gpus": list(self.gpus),
            "tasks_per_gpu": self.tasks_per_gpu,
            "host": self.host,
            "nodes": list(self.nodes),
        }

    @classmethod
    def from_json(cls, data: Any) -> PoolShape:
        """Read a shape a pool sent; raise ValueError for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"a pool shape that is a JSON {type(data).__name__}, not an object")
        cpus, memory, gpus = data.get("cpus"), data.get("memory_gb"), data.get("gpus")
        per_gpu, host, nodes = data.get("tasks_per_gpu"), data.get("host"), data.get("nodes", [])
        if not (isinstance(nodes, list) and len(nodes) <= 1 << 16 and all(isinstance(n, str) and n for n in nodes)):
            raise ValueError("a pool shape whose nodes are not a list of names")
        if not (isinstance(cpus, list) and 0 < len(cpus) <= 1 << 16 and all(_is_count(c) for c in cpus)):
            raise ValueError("a pool shape whose cpus are not a list of CPU ids")
        if memory is not None and not (
            isinstance(memory, (int, float)) and not isinstance(memory, bool) and math.isfinite(memory) and memory > 0
        ):
            raise ValueError("a pool shape whose memory_gb is not a positive number")
        if not (isinstance(gpus, list) and len(gpus) <= 1 << 12 and all(isinstance(g, str) and g for g in gpus)):
            raise ValueError("a pool shape whose gpus are not a list of names")
        if not isinstance(per_gpu, int) or not _is_count(per_gpu) or per_gpu < 1 or not isinstance(host, str):
            raise ValueError("a pool shape with a bad tasks_per_gpu or host")
        try:
            return cls(tuple(cpus), None if memory is None else float(memory), tuple(gpus), per_gpu, host, tuple(nodes))
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31


def detect_shape(
    *,
    cpus: Sequence[int] | str | None = None,
    memory_gb: float | None = None,
    accelerators: int | Sequence[str] = (),
    tasks_per_gpu: int = 1,
    host: str = "",
    environ: Mapping[str, str] | None = None,
) -> PoolShape:
    """The shape of a pool on this machine.

    CPUs: ``cpus`` (ids, or a list such as ``"0-3"``), else ``HPCFUTURES_POOL_CPUS`` from
    the environment, else this process's affinity set.  Memory: ``memory_gb``, else 90% of the
    memory available now.  Accelerators: as given (a count or names).
    """
    env = os.environ if environ is None else environ
    if cpus is None:
        override = env.get("HPCFUTURES_POOL_CPUS")
        chosen = parse_cpu_list(override) if override else tuple(sorted(os.sched_getaffinity(0)))
    elif isinstance(cpus, str):
        chosen = parse_cpu_list(cpus)
    else:
        chosen = tuple(sorted(set(cpus)))
    if memory_gb is None:
        import psutil

        memory_gb = round(psutil.virtual_memory().available * 0.9 / 2**30, 3)
    return PoolShape(chosen, memory_gb, accelerator_names(accelerators), tasks_per_gpu, host)


@dataclass(frozen=True)
class Need:
    """What a task takes from one pool while it runs."""

    cores: int = 1
    memory_gb: float = 0.0
    gpus: int = 0
    #: Whole nodes for an MPI task (0: not one), and its ranks on each.
    nodes: int = 0
    ranks_per_node: int = 1

    @classmethod
    def of(cls, resources: Any) -> Need:
        """The need of a :class:`~hpcfutures.Resources` on one pool (not an MPI task)."""
        return cls(resources.cores, resources.memory_gb or 0.0, resources.gpus)

    @classmethod
    def mpi(cls, resources: Any) -> Need:
        """The need of an MPI task: whole nodes of a lead pool's block, no core of its own."""
        return cls(0, 0.0, 0, resources.num_nodes, resources.ranks_per_node)

    @property
    def plain(self) -> bool:
        """One core, nothing else accounted: the default, which needs no placing."""
        return self.cores == 1 and not self.memory_gb and not self.gpus and not self.nodes

    def wire(self) -> tuple[int, int, int, int, int]:
        """The need as a task's wire fields: cores, memory in whole MB (rounded up), GPUs,
        nodes, ranks per node."""
        return self.cores, math.ceil(self.memory_gb * 1024 - 1e-9), self.gpus, self.nodes, self.ranks_per_node

    @classmethod
    def from_wire(cls, cores: int, memory_mb: int, gpus: int, nodes: int = 0, ranks_per_node: int = 1) -> Need:
        return cls(cores, memory_mb / 1024, gpus, nodes, ranks_per_node)


#: Blocks of at most this many nodes have their MPI tasks' nodes chosen by the interchange
#: (a bit mask in the task), which lets small tasks share a node; larger blocks give every
#: task whole nodes that the lead pool picks.
MAX_MASKED_NODES = 64


def packs(need: Need, shape: PoolShape) -> bool:
    """Whether an MPI task shares a node: one node, fewer ranks than the node has cores."""
    return need.nodes == 1 and need.ranks_per_node < shape.cores and len(shape.nodes) <= MAX_MASKED_NODES


def choose_nodes(shape: PoolShape, used: Sequence[int], whole: Sequence[bool], need: Need) -> tuple[int, ...] | None:
    """The nodes (indices into ``shape.nodes``) an MPI task gets now, or None if none fit.

    ``used[i]`` is how many of node i's cores (``shape.cores`` each) tasks sharing it hold;
    ``whole[i]`` whether a task holds it whole.  A task that packs (:func:`packs`) goes to
    the fullest node with room for its ranks, keeping empty nodes for whole-node tasks; any
    other takes the first nodes nobody uses.
    """
    if packs(need, shape):
        room = [i for i in range(len(used)) if not whole[i] and shape.cores - used[i] >= need.ranks_per_node]
        return (max(room, key=lambda i: (used[i], -i)),) if room else None
    free = [i for i in range(len(used)) if not whole[i] and not used[i]]
    return tuple(free[: need.nodes]) if len(free) >= need.nodes else None


def node_mask(indices: Sequence[int]) -> int:
    """Node indices as the bit mask an MPI task carries (bit i: the block's i-th node)."""
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def gpu_mask(shape: PoolShape, names: Sequence[str]) -> int:
    """The accelerators ``names`` of a pool of ``shape`` as a bit mask (bit i: its i-th)."""
    mask = 0
    for name in names:
        mask |= 1 << shape.gpus.index(name)
    return mask


def gpus_in_mask(shape: PoolShape, mask: int) -> tuple[str, ...]:
    """The accelerators a mask made by :func:`gpu_mask` names."""
    return tuple(name for i, name in enumerate(shape.gpus) if mask >> i & 1)


def shortfall(need: Need, shape: PoolShape) -> str | None:
    """Why a task with ``need`` can never run in a pool of ``shape``, or None if it can."""
    if need.cores > shape.cores:
        return f"cores={need.cores}"
    if need.memory_gb and (shape.memory_gb is None or need.memory_gb > shape.memory_gb):
        return f"memory_gb={need.memory_gb:g}"
    if need.gpus > len(shape.gpus):
        return f"gpus={need.gpus}"
    if need.nodes > len(shape.nodes):
        return f"num_nodes={need.nodes}"
    return None


def unsatisfiable(need: Need, shapes: Sequence[PoolShape]) -> str | None:
    """A message if no pool of ``shapes`` can ever run a task with ``need``, else None.

    It names the field that does not fit the largest shape, and that shape.
    """
    if not shapes or any(shortfall(need, shape) is None for shape in shapes):
        return None
    largest = max(shapes, key=lambda s: (s.cores, len(s.gpus), s.memory_gb or 0.0))
    field_ = shortfall(need, largest)  # not None: no shape fits
    return (
        f"Resources({field_}) can never run: the largest worker pool this executor has or can "
        f"have offers {largest.describe()}"
    )


def choose_gpus(shape: PoolShape, load: Mapping[str, int], count: int) -> tuple[str, ...] | None:
    """``count`` distinct accelerators with room, the least loaded first; None if too few.

    The interchange chooses (its :class:`Ledger` calls this) and the pool obeys, so that
    both keep the same load per device even when several tasks share one.
    """
    if not count:
        return ()
    open_ = [name for name in shape.gpus if load[name] < shape.tasks_per_gpu]
    if len(open_) < count:
        return None
    open_.sort(key=lambda name: load[name])  # stable: declaration order among equals
    return tuple(open_[:count])


@dataclass
class Ledger:
    """The interchange's account of one pool: what its placed tasks hold, and what is free."""

    shape: PoolShape
    held: dict[int, tuple[Need, tuple[str, ...], tuple[int, ...]]] = field(default_factory=dict)
    free_cores: int = 0
    free_memory_gb: float = 0.0
    gpu_load: dict[str, int] = field(default_factory=dict)
    #: Cores that default tasks (not accounted here) may be using now: set before placing.
    plain: int = 0
    node_used: list[int] = field(default_factory=list)  # cores of each node that packed tasks hold
    node_whole: list[bool] = field(default_factory=list)  # each node held whole by a task

    def __post_init__(self) -> None:
        self.free_cores = self.shape.cores
        self.free_memory_gb = self.shape.memory_gb or 0.0
        self.gpu_load = {name: 0 for name in self.shape.gpus}
        self.node_used = [0] * len(self.shape.nodes)
        self.node_whole = [False] * len(self.shape.nodes)

    def fits(self, need: Need) -> bool:
        """Whether a task with ``need`` fits in what is free now."""
        return (
            (not need.nodes or choose_nodes(self.shape, self.node_used, self.node_whole, need) is not None)
            and need.cores <= self.free_cores - self.plain
            and (not need.memory_gb or (self.shape.memory_gb is not None and need.memory_gb <= self.free_memory_gb + 1e-9))
            and choose_gpus(self.shape, self.gpu_load, need.gpus) is not None
        )

    def could_ever_fit(self, need: Need) -> bool:
        return shortfall(need, self.shape) is None

    def reserve(self, task_id: int, need: Need) -> tuple[str, ...]:
        """Account ``need`` (which must fit) to the task; return the accelerators chosen."""
        gpus = choose_gpus(self.shape, self.gpu_load, need.gpus)
        nodes = choose_nodes(self.shape, self.node_used, self.node_whole, need) if need.nodes else ()
        if gpus is None or nodes is None or need.cores > self.free_cores:
            raise ValueError(f"task {task_id} does not fit: {need}")
        self.held[task_id] = (need, gpus, nodes)
        self._mark(need, nodes, 1)
        self.free_cores -= need.cores
        self.free_memory_gb -= need.memory_gb
        for name in gpus:
            self.gpu_load[name] += 1
        return gpus

    def _mark(self, need: Need, nodes: tuple[int, ...], sign: int) -> None:
        for i in nodes:
            if packs(need, self.shape):
                self.node_used[i] += sign * need.ranks_per_node
            else:
                self.node_whole[i] = sign > 0

    def nodes_of(self, task_id: int) -> tuple[int, ...]:
        """The node indices task ``task_id`` holds here."""
        return self.held[task_id][2]

    def release(self, task_id: int) -> bool:
        """Give back what task ``task_id`` held; return whether it held anything here."""
        entry = self.held.pop(task_id, None)
        if entry is None:
            return False
        need, gpus, nodes = entry
        self._mark(need, nodes, -1)
        self.free_cores += need.cores
        self.free_memory_gb += need.memory_gb
        for name in gpus:
            self.gpu_load[name] -= 1
        return True


def place(
    waiting: Sequence[tuple[int, Need]],
    ledgers: Mapping[K, Ledger],
    passes: dict[int, int],
    max_passes: int = MAX_PASSES,
) -> tuple[list[tuple[int, K]], set[K]]:
    """Place waiting tasks, taken in priority order, where each fits now.

    Returns the placements ``(task id, pool key)`` (already reserved in the ledgers) and the
    pools *held*: a task that fits nowhere now may be passed by ``max_passes`` later tasks
    (counted in ``passes``, which the caller keeps between calls); after that, every pool
    that could ever hold it takes nothing else until it fits, so small tasks cannot starve
    a large one for ever.  Among pools where a task fits, the one left with the fewest free
    cores wins, so that large holes stay open for large tasks.
    """
    placed: list[tuple[int, K]] = []
    held: set[K] = set()
    blocked: list[int] = []
    for task_id, need in waiting:
        best: K | None = None
        best_free = 0
        for key, ledger in ledgers.items():
            if key in held or not ledger.fits(need):
                continue
            if best is None or ledger.free_cores < best_free:
                best, best_free = key, ledger.free_cores
        if best is not None:
            ledgers[best].reserve(task_id, need)
            placed.append((task_id, best))
            passes.pop(task_id, None)
            for earlier in blocked:
                passes[earlier] = passes.get(earlier, 0) + 1
            continue
        blocked.append(task_id)
        if passes.get(task_id, 0) >= max_passes:
            held.update(key for key, ledger in ledgers.items() if ledger.could_ever_fit(need))
    return placed, held


@dataclass(frozen=True)
class Allocation:
    """The concrete CPUs and accelerators a pool gave one task."""

    cpus: tuple[int, ...]
    gpus: tuple[str, ...] = ()
    memory_gb: float = 0.0
    nodes: tuple[str, ...] = ()
    node_ranks: int = 0  # ranks on a node it shares (0: its nodes are whole)


class Allocator:
    """A pool's free CPUs, memory and accelerator slots; owned by the pool's one thread."""

    def __init__(self, shape: PoolShape):
        self.shape = shape
        self.free_cpus: list[int] = sorted(shape.cpus)
        self.free_memory_gb = shape.memory_gb or 0.0
        self.gpu_load: dict[str, int] = {name: 0 for name in shape.gpus}
        self.node_used = [0] * len(shape.nodes)
        self.node_whole = [False] * len(shape.nodes)

    def take(self, need: Need, gpus: Sequence[str] = (), nodes: int = 0) -> Allocation | None:
        """Take what ``need`` asks for, on the accelerators ``gpus`` the interchange chose,
        or None (taking nothing) if it does not fit now.

        CPUs come as one run of consecutive ids when there is one, so that a task's threads
        share caches.
        """
        if need.cores > len(self.free_cpus) or len(gpus) != need.gpus or len(set(gpus)) != len(gpus):
            return None
        chosen: tuple[int, ...] = ()
        if need.nodes:
            # The interchange's choice (a mask), or, for a block too large for one, any free nodes.
            wanted = tuple(i for i in range(len(self.shape.nodes)) if nodes >> i & 1)
            chosen = wanted if nodes else (choose_nodes(self.shape, self.node_used, self.node_whole, need) or ())
            if len(chosen) != need.nodes or not self._nodes_free(need, chosen):
                return None
        if any(self.gpu_load.get(name, self.shape.tasks_per_gpu) >= self.shape.tasks_per_gpu for name in gpus):
            return None
        if need.memory_gb and (self.shape.memory_gb is None or need.memory_gb > self.free_memory_gb + 1e-9):
            return None
        cpus = _consecutive(self.free_cpus, need.cores) or tuple(self.free_cpus[: need.cores])
        gpus = tuple(gpus)
        taken = set(cpus)
        self.free_cpus = [c for c in self.free_cpus if c not in taken]
        self.free_memory_gb -= need.memory_gb
        for name in gpus:
            self.gpu_load[name] += 1
        packed = packs(need, self.shape)
        for i in chosen:
            if packed:
                self.node_used[i] += need.ranks_per_node
            else:
                self.node_whole[i] = True
        names = tuple(self.shape.nodes[i] for i in chosen)
        return Allocation(cpus if need.cores else (), gpus, need.memory_gb, names, need.ranks_per_node if packed else 0)

    def _nodes_free(self, need: Need, chosen: tuple[int, ...]) -> bool:
        if packs(need, self.shape):
            return all(not self.node_whole[i] and self.shape.cores - self.node_used[i] >= need.ranks_per_node for i in chosen)
        return all(not self.node_whole[i] and not self.node_used[i] for i in chosen)

    def give_back(self, allocation: Allocation) -> None:
        """Return what a task held (it ended, failed, or its worker died)."""
        self.free_cpus = sorted(set(self.free_cpus).union(allocation.cpus))
        self.free_memory_gb += allocation.memory_gb
        for name in allocation.gpus:
            self.gpu_load[name] -= 1
        index = {name: i for i, name in enumerate(self.shape.nodes)}
        for name in allocation.nodes:
            if allocation.node_ranks:
                self.node_used[index[name]] -= allocation.node_ranks
            else:
                self.node_whole[index[name]] = False


def _consecutive(free: list[int], count: int) -> tuple[int, ...] | None:
    """The first run of ``count`` consecutive ids in sorted ``free``, if there is one."""
    run: list[int] = []
    for cpu in free:
        run = run + [cpu] if run and cpu == run[-1] + 1 else [cpu]
        if len(run) == count:
            return tuple(run)
    return None


def pinning_environment(allocation: Allocation) -> dict[str, str]:
    """The environment a task runs with: its thread count, its accelerators, what it got."""
    cpus = ",".join(map(str, allocation.cpus))
    gpus = ",".join(allocation.gpus)
    env = {
        "OMP_NUM_THREADS": str(len(allocation.cpus)),
        "HPCFUTURES_CORES": str(len(allocation.cpus)),
        "HPCFUTURES_CPUS": cpus,
        "HPCFUTURES_GPUS": gpus,
    }
    if allocation.gpus:
        for name in GPU_VARIABLES:
            env[name] = gpus
        env["ZE_ENABLE_PCI_ID_DEVICE_ORDER"] = "1"
    return env


@contextmanager
def pinned(allocation: Allocation, extra_env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run the body on the allocation's CPUs with its environment (and ``extra_env``, such as
    an MPI task's launch variables); restore both afterwards."""
    before_cpus = os.sched_getaffinity(0)
    env = pinning_environment(allocation) if allocation.cpus else worker_environment(allocation)
    env.update(extra_env or {})
    names = set(env) | set(GPU_VARIABLES) | {"ZE_ENABLE_PCI_ID_DEVICE_ORDER"}
    before_env = {name: os.environ.get(name) for name in names}
    if allocation.cpus:
        os.sched_setaffinity(0, allocation.cpus)
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(env)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before_cpus)
        for name, value in before_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: How workers' CPUs are chosen when ``cpu_affinity`` pins them (Parsl's names).
AFFINITY_MODES = ("none", "block", "alternating", "block-reverse")


def plan_workers(
    shape: PoolShape,
    *,
    max_workers: int | None = None,
    cores_per_worker: float | None = None,
    mem_per_worker: float | None = None,
    cpu_affinity: str = "none",
) -> list[Allocation]:
    """What each worker of a pool of ``shape`` holds for its whole life, by rank.

    As Parsl counts them, a pool runs the fewest of: ``max_workers``; its cores divided by
    ``cores_per_worker``; its memory divided by ``mem_per_worker``; its accelerators (one
    each, or ``tasks_per_gpu`` each when they are shared, dealt round the devices).  Without ``max_workers`` it runs one worker per core per ``cores_per_worker``
    (default 1); with it and no ``cores_per_worker``, that many workers even if they
    outnumber the cores (tasks that wait on I/O), as long as they are not pinned.  A worker's allocation names its accelerator and, unless ``cpu_affinity`` is
    ``"none"``, the CPUs it is pinned to: a contiguous block each (``"block"``, or from the
    last CPU down for ``"block-reverse"``), or every n-th CPU (``"alternating"``).  An
    unpinned worker's allocation has no CPUs.

    Raises:
        ConfigurationError: the settings leave no worker, or ask to pin more workers than
            there are CPUs; the message names the setting.
    """
    if cpu_affinity not in AFFINITY_MODES:
        raise ConfigurationError(f"cpu_affinity must be one of {', '.join(AFFINITY_MODES)}, got {cpu_affinity!r}")
    limits: dict[str, int] = {}
    if max_workers:
        limits["max_workers"] = max_workers
    if cores_per_worker is not None or not max_workers:
        limits["the CPUs"] = int(shape.cores / (cores_per_worker or 1.0) + 1e-9)
    if mem_per_worker:
        if shape.memory_gb is None:
            raise ConfigurationError("mem_per_worker needs the pool's memory, which is not known")
        limits["mem_per_worker"] = int(shape.memory_gb / mem_per_worker + 1e-9)
    if shape.gpus:
        limits["available_accelerators"] = len(shape.gpus) * shape.tasks_per_gpu
    count = min(limits.values())
    if count < 1:
        cause = min(limits, key=lambda name: limits[name])
        if cause == "the CPUs":
            what = f"cores_per_worker={cores_per_worker or 1.0:g} is more than the pool's {shape.cores} CPUs"
        elif cause == "mem_per_worker":
            what = f"mem_per_worker={mem_per_worker:g} GB is more than the pool's {shape.memory_gb:g} GB"
        else:
            what = f"{cause} leaves no worker"
        raise ConfigurationError(f"this pool can run no worker: {what} ({shape.describe()})")
    if cpu_affinity != "none" and count > shape.cores:
        raise ConfigurationError(
            f"cpu_affinity={cpu_affinity!r} cannot pin {count} workers to {shape.cores} CPUs; "
            "lower max_workers or use cpu_affinity='none'"
        )
    per = shape.cores // count
    cpus = list(shape.cpus)
    plans = []
    for rank in range(count):
        if cpu_affinity == "block":
            mine = tuple(cpus[rank * per : (rank + 1) * per])
        elif cpu_affinity == "block-reverse":
            end = len(cpus) - rank * per
            mine = tuple(cpus[end - per : end])
        elif cpu_affinity == "alternating":
            mine = tuple(cpus[rank::count][:per])
        else:
            mine = ()
        gpu = (shape.gpus[rank % len(shape.gpus)],) if shape.gpus else ()
        plans.append(Allocation(mine, gpu, mem_per_worker or 0.0))
    return plans


def worker_environment(allocation: Allocation) -> dict[str, str]:
    """The environment a worker with a lifelong ``allocation`` starts with (empty if none)."""
    if not allocation.cpus and not allocation.gpus:
        return {}
    env = pinning_environment(allocation)
    if not allocation.cpus:  # not pinned: say nothing about CPUs
        for name in ("OMP_NUM_THREADS", "HPCFUTURES_CORES", "HPCFUTURES_CPUS"):
            del env[name]
    return env
