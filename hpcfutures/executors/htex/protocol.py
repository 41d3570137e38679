"""The HighThroughputExecutor's versioned wire format.

Every message is a ZeroMQ multipart message whose first frame is one byte naming its kind.
Tasks and results travel in batches shaped alike:

    [kind, meta, blob, out-of-band frames…]

``meta`` packs one fixed-layout struct per item (TASK_META or RESULT_META).  ``blob`` is
the items' main pickles laid end to end, each as long as its struct says; the out-of-band
buffers of large arguments and results follow as frames of their own, in item order.  One
batch costs a handful of frames however many tasks it holds, and the routers (interchange,
pool manager) read only ``meta``: payloads are sliced and forwarded, never unpickled.
Messages from a pool to the interchange carry the pool's cumulative credit (how many tasks
it has ever been willing to accept) as a CREDIT struct in the frame after the kind; its
RESULTS and HEARTBEAT messages then carry the packed ids of tasks its workers began since
the last message (possibly none).  Results from the interchange to the driver carry those
ids in the frame after the kind.

A pool registers with ``[REGISTER, credit, token, registration JSON]``: the token has a frame
of its own so that the interchange checks it before it parses anything, and the JSON is
parsed only within a size limit and into typed fields (:func:`parse_registration`).  The
layout of REGISTER is kept across protocol versions, so that a pool of another version
gets a clear refusal.  Messages from pools are held to the limits below; a peer that
breaks them, or sends anything malformed, is dropped.
"""

from __future__ import annotations

import heapq
import json
import math
import platform
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import zmq

from ... import __version__
from .slots import PoolShape

PROTOCOL_VERSION = 6  # 2: the token in a REGISTER frame of its own; 3: pools report which tasks began;
# 4: tasks carry their resources, registrations the pool's shape; 5: results carry where and how
# their task ran, pools send node samples on heartbeats and worker losses as events; 6: local
# workers take lone tasks straight from the driver (the express lane), and pools tell of a
# worker lost under such a task

#: The largest message a registered pool may send (header included); a larger one drops the
#: pool.  Between the driver and local pools, buffers of 256 KiB and more travel through
#: files in /dev/shm rather than in messages.  On TCP it caps each frame.
MAX_MESSAGE = 1 << 30
#: The most frames a message from a registered pool may have.
MAX_FRAMES = 1 << 20
#: The limits on a local connection until it has presented the token: enough to register.
UNREGISTERED_MAX_MESSAGE = 64 << 10
UNREGISTERED_MAX_FRAMES = 16
#: The largest registration JSON, and the largest JSON of any other small control message.
MAX_REGISTRATION = 16 << 10
MAX_CONTROL_JSON = 64 << 10
#: The largest node sample or event JSON a pool may send.
MAX_SAMPLE = 1 << 10
MAX_POOL_EVENT = 4 << 10

# Message kinds.
TASKS = b"t"
RESULTS = b"r"
HEARTBEAT = b"h"
REGISTER = b"R"
ACCEPT = b"A"
REJECT = b"N"
EVENT = b"e"  # interchange -> driver: pools and blocks; pool -> interchange: a worker lost
CONFIG = b"i"
CANCEL = b"c"
CANCEL_QUEUED = b"X"
CANCEL_REPLY = b"C"
SHUTDOWN = b"x"
INIT_FAILED = b"F"
READY = b"w"
DRAIN = b"d"  # driver -> interchange: stop giving this block tasks, then stop its pools
STARTED = b"s"  # interchange -> driver: workers began these tasks; they can no longer be cancelled
PIN = b"p"  # pool -> worker: run the next task on these CPUs and accelerators (JSON)
HELLO = b"H"  # worker -> driver, first on an express connection: the token, then who it is (JSON)
EXPRESS_DONE = b"E"  # worker -> pool, when asked: the express task it ran has ended

#: The largest message an express connection may send before its HELLO is accepted.
HELLO_MAX_MESSAGE = 4 << 10

# Result statuses.
OK = 0  # payload: the return value
ERROR = 1  # payload: (exception, traceback text) raised by the task itself
FAILED = 2  # payload: (exception, "") raised by the machinery: worker lost, walltime, …
CANCELLED = 3  # no payload: the task was cancelled before it started

#: task id, priority, walltime in seconds (0 for none), times its worker or pool was lost,
#: its resources (cores, memory in MB, accelerators, nodes and MPI ranks per node for an
#: MPI task, and the mask of the pool's accelerators the interchange chose for it: bit i is
#: the pool's i-th), length of its main pickle, number of its out-of-band frames.
TASK_META = struct.Struct("<QidBHIHHHQIH")
#: Where the fields of TASK_META are.
T_ID, T_PRIORITY, T_WALLTIME, T_LOST, T_CORES, T_MEMORY_MB, T_GPUS, T_NODES, T_RANKS, T_GPU_MASK = range(10)


def has_resources(fields: Sequence[Any]) -> bool:
    """Whether a task (its TASK_META fields) asks for more than one core: it is placed, not dealt."""
    return bool(fields[T_CORES] != 1 or fields[T_MEMORY_MB] or fields[T_GPUS] or fields[T_NODES])
#: task id, status, seconds the function ran, when the worker received the task and when it
#: began it (epoch seconds, 0: unknown), the CPU seconds it used (-1: not measured), the tag
#: of its pool (:func:`pool_tag`, 0: unknown), its worker's pid (0: unknown) and peak RSS in
#: KiB (0: not measured), its worker's rank (:data:`NO_WORKER`: unknown), how often its worker
#: or pool was lost before (T_LOST), length of the main pickle, out-of-band frames.  The last
#: two stay last: :func:`split` reads them there.
RESULT_META = struct.Struct("<QBddddIIIHHIH")
#: Where the fields of RESULT_META are.
(
    R_ID, R_STATUS, R_ELAPSED, R_DISPATCHED, R_STARTED, R_CPU, R_POOL, R_PID, R_RSS_KB, R_WORKER, R_LOST,
) = range(11)  # fmt: skip
#: The worker rank of a result no worker made.
NO_WORKER = 0xFFFF
#: cumulative count of tasks a pool is willing to have received.
CREDIT = struct.Struct("<Q")


def pool_tag(pool_id: str) -> int:
    """The number a pool's results name it by (RESULT_META's pool field): a CRC-32 of its id.

    Two pools of one executor share a tag with odds of about n²/2³³ for n pools; results
    then name one of them.  Never 0, which stands for unknown.
    """
    return zlib.crc32(pool_id.encode()) or 1


def result_meta(
    task_id: int,
    status: int,
    size: int,
    count: int,
    *,
    elapsed: float = 0.0,
    dispatched: float = 0.0,
    started: float = 0.0,
    tag: int = 0,
    pid: int = 0,
    worker: int = NO_WORKER,
    lost: int = 0,
) -> bytes:
    """The RESULT_META of a result made by a pool or the interchange (a lost worker, a
    walltime, a cancel), with what it knows of the task's run; workers pack their own."""
    return RESULT_META.pack(
        task_id, status, elapsed, dispatched, started, -1.0, tag, pid, 0, worker, min(lost, 0xFFFF), size, count
    )

Item = tuple[tuple[Any, ...], Any, list[Any]]  # (meta fields, main pickle, out-of-band frames)


def split(layout: struct.Struct, meta: bytes, blob: Any, extra: Sequence[Any]) -> list[Item]:
    """Cut a batch into items: ``(meta fields, main pickle slice, out-of-band frames)``.

    ``blob`` should be a memoryview so that slicing does not copy.
    """
    items: list[Item] = []
    offset = 0
    frame = 0
    for fields in layout.iter_unpack(meta):
        size = fields[-2]
        count = fields[-1]
        items.append(
            (fields, blob[offset : offset + size], list(extra[frame : frame + count]) if count else [])
        )
        offset += size
        frame += count
    return items


def join(kind: bytes, layout: struct.Struct, items: Sequence[Item]) -> list[Any]:
    """Build a batch message from items (the inverse of :func:`split`)."""
    metas = []
    mains = []
    extra: list[Any] = []
    pack = layout.pack
    for fields, main, oob in items:
        metas.append(pack(*fields))
        mains.append(main)
        if oob:
            extra.extend(oob)
    return [kind, b"".join(metas), b"".join(mains), *extra]


def take_queued(queue: list[tuple[int, int, Item]], ids: set[int] | None) -> list[int]:
    """Remove the tasks ``ids`` (or all) from a priority queue, in place; return their ids.

    ``queue`` is a heap of ``(-priority, sequence number, task)``, as the interchange and the
    pool managers keep.
    """
    if ids is None:
        taken = [entry[2][0][0] for entry in queue]
        queue.clear()
        return taken
    taken = []
    kept = []
    for entry in queue:
        if entry[2][0][0] in ids:
            taken.append(entry[2][0][0])
        else:
            kept.append(entry)
    if taken:
        heapq.heapify(kept)
        queue[:] = kept
    return taken


def readable(sock: Any) -> bool:
    """Whether a message waits on ZeroMQ socket ``sock`` (cheaper than a poll for one socket)."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def pack_ids(ids: Sequence[int]) -> bytes:
    """Pack task ids into one frame."""
    return struct.pack(f"<{len(ids)}Q", *ids)


def unpack_ids(data: bytes) -> list[int]:
    """Unpack a frame made by :func:`pack_ids`."""
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def python_version() -> str:
    """The major.minor Python version, which must match between driver and pools."""
    return ".".join(platform.python_version_tuple()[:2])


class ProtocolError(ValueError):
    """A peer's message does not follow the wire format."""


class RegistrationError(ProtocolError):
    """A registration that cannot be read: too large, not JSON, or fields of the wrong type."""


class VersionMismatch(RegistrationError):
    """A well-formed registration from a pool that speaks other versions than this process.

    ``str()`` says which versions differ, in words for the user; ``block_id`` is the pool's
    block as far as it could be read (None if not).
    """

    def __init__(self, reason: str, block_id: str | int | None):
        super().__init__(reason)
        self.block_id = block_id


@dataclass(frozen=True)
class Registration:
    """A pool's identity, as checked by :func:`parse_registration`."""

    pool_id: str
    block_id: str | int
    workers: int
    host: str
    pid: int
    block_end_in: float | None  # seconds left in the pool's block when it registered
    protocol: int
    python: str
    hpcfutures: str
    #: What the pool may hand out (:class:`~.slots.PoolShape`), if it said.
    shape: PoolShape | None = None

    @property
    def block(self) -> str:
        return str(self.block_id)


def registration(**info: Any) -> bytes:
    """Encode a pool's registration: its identity plus the versions it speaks."""
    info.update(protocol=PROTOCOL_VERSION, python=python_version(), hpcfutures=__version__)
    return json.dumps(info).encode()


def load_json(data: Any, limit: int, what: str = "a JSON frame") -> Any:
    """Parse a JSON frame of at most ``limit`` bytes; ``what`` names it in errors.

    Raises:
        ProtocolError: too large, not UTF-8 JSON, or nested too deeply to parse.
    """
    view = memoryview(data)
    if view.nbytes > limit:
        raise ProtocolError(f"{what} of {view.nbytes} bytes (the limit is {limit})")
    try:
        return json.loads(view.tobytes())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"{what} that is not valid JSON ({type(exc).__name__})") from None


def _shown(value: Any) -> str:
    """A peer's value, shortened for a message."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def version_mismatch(info: Mapping[str, Any]) -> str | None:
    """Return why a pool's registration cannot be accepted, or None if its versions match."""
    wanted = {"protocol": PROTOCOL_VERSION, "python": python_version(), "hpcfutures": __version__}
    wrong = [
        f"{k} {_shown(info.get(k))} (the driver has {v!r})"
        for k, v in wanted.items()
        if type(info.get(k)) is not type(v) or info.get(k) != v
    ]
    if not wrong:
        return None
    return (
        f"worker pool {_shown(info.get('pool_id', '?'))} on {_shown(info.get('host', '?'))} speaks "
        + ", ".join(wrong)
        + "; install the same Python and hpcfutures version on the workers as on the driver"
    )


def _field(info: Mapping[str, Any], name: str, types: tuple[type, ...]) -> Any:
    value = info.get(name)
    # bool is an int to isinstance, but never a valid count, id or pid here
    if not isinstance(value, types) or isinstance(value, bool):
        raise RegistrationError(f"a registration whose {name} is {_shown(value)}")
    return value


def parse_registration(data: Any) -> Registration:
    """Read a pool's registration JSON (a bytes-like frame) into a :class:`Registration`.

    The versions are checked first, so that a pool of another version, whose other fields
    may differ too, still gets a clear answer.

    Raises:
        VersionMismatch: the pool speaks another protocol, Python or hpcfutures version.
        RegistrationError: anything else wrong: too large, not JSON, not an object, or a
            field missing or of the wrong type.
    """
    try:
        info = load_json(data, MAX_REGISTRATION, "a registration")
    except ProtocolError as exc:
        raise RegistrationError(str(exc)) from None
    if not isinstance(info, dict):
        raise RegistrationError(f"a registration that is a JSON {type(info).__name__}, not an object")
    problem = version_mismatch(info)
    if problem is not None:
        block = info.get("block_id")
        raise VersionMismatch(problem, block if isinstance(block, (str, int)) else None)
    block_end_in: float | None = None
    if info.get("block_end_in") is not None:
        raw = _field(info, "block_end_in", (int, float))
        block_end_in = float(raw) if isinstance(raw, float) or abs(raw) < 1 << 53 else math.inf
        if not math.isfinite(block_end_in):
            raise RegistrationError(f"a registration whose block_end_in is {_shown(raw)}")
    shape = None
    if info.get("shape") is not None:
        try:
            shape = PoolShape.from_json(info["shape"])
        except ValueError as exc:
            raise RegistrationError(f"a registration whose shape is malformed: {exc}") from None
    workers = _field(info, "workers", (int,))
    pid = _field(info, "pid", (int,))
    if not (0 < workers < 1 << 31 and 0 <= pid < 1 << 31):
        raise RegistrationError(f"a registration of {_shown(workers)} workers from pid {_shown(pid)}")
    return Registration(
        pool_id=_field(info, "pool_id", (str,)),
        block_id=_field(info, "block_id", (str, int)),
        workers=workers,
        host=_field(info, "host", (str,)),
        pid=pid,
        block_end_in=block_end_in,
        protocol=info["protocol"],
        python=info["python"],
        hpcfutures=info["hpcfutures"],
        shape=shape,
    )


#: What a pool's node sample may hold, and each field's type: floats are finite and not
#: negative, counts whole and below 2**31.
SAMPLE_FIELDS: dict[str, type] = {
    "load1": float,
    "cpu_percent": float,
    "mem_percent": float,
    "rss_mb": float,
    "busy": int,
    "workers": int,
}


def _number(info: Mapping[str, Any], name: str, kind: type, what: str, optional: bool = False) -> Any:
    """A JSON number field of ``info``, checked: finite, not negative, a whole count if ``kind`` is int."""
    value = info.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{what} whose {name} is {_shown(value)}")
    if kind is int:
        if not isinstance(value, int) or not 0 <= value < 1 << 31:
            raise ProtocolError(f"{what} whose {name} is {_shown(value)}")
        return value
    number = float(value) if isinstance(value, float) or abs(value) < 1 << 53 else math.inf
    if not (math.isfinite(number) and number >= 0):
        raise ProtocolError(f"{what} whose {name} is {_shown(value)}")
    return number


def parse_sample(data: Any) -> dict[str, float | int]:
    """Read a pool's node sample (the JSON frame of its HEARTBEAT) into checked fields.

    Raises:
        ProtocolError: too large, not a JSON object, an unknown field, or a field that is
            not a finite number of its kind (see :data:`SAMPLE_FIELDS`).
    """
    info = load_json(data, MAX_SAMPLE, "a node sample")
    if not isinstance(info, dict):
        raise ProtocolError(f"a node sample that is a JSON {type(info).__name__}, not an object")
    unknown = set(info) - SAMPLE_FIELDS.keys()
    if unknown:
        raise ProtocolError(f"a node sample with unknown fields {_shown(sorted(unknown))}")
    return {name: _number(info, name, kind, "a node sample") for name, kind in SAMPLE_FIELDS.items() if name in info}


def parse_pool_event(data: Any) -> dict[str, Any]:
    """Read an EVENT a pool sent (a worker lost under a task it requeued) into checked fields.

    Returns ``{"event": "worker_lost", "task": id, "worker": rank, "pid": pid, "exit_code":
    code or None, "reason": text}``, with ``"express": True`` for a task the driver sent the
    worker directly (which the pool did not requeue: the driver does).

    Raises:
        ProtocolError: too large, not a JSON object, an unknown event, or a field missing
            or of the wrong type.
    """
    info = load_json(data, MAX_POOL_EVENT, "a pool event")
    if not isinstance(info, dict) or info.get("event") != "worker_lost":
        raise ProtocolError(f"a pool event that is not a worker_lost object: {_shown(info)}")
    task = info.get("task")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < 1 << 64:
        raise ProtocolError(f"a pool event whose task is {_shown(task)}")
    worker = _number(info, "worker", int, "a pool event")
    pid = _number(info, "pid", int, "a pool event")
    code = info.get("exit_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int) or not -(1 << 31) < code < 1 << 31):
        raise ProtocolError(f"a pool event whose exit_code is {_shown(code)}")
    reason = info.get("reason")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise ProtocolError(f"a pool event whose reason is {_shown(reason)}")
    express = info.get("express", False)
    if not isinstance(express, bool):
        raise ProtocolError(f"a pool event whose express flag is {_shown(express)}")
    news = {"event": "worker_lost", "task": task, "worker": worker, "pid": pid, "exit_code": code, "reason": reason}
    if express:
        news["express"] = True
    return news
