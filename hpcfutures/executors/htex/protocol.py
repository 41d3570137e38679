"""The HighThroughputExecutor's versioned wire format.

Every message is a ZeroMQ multipart message whose first frame is one byte naming its kind.
Routers (the interchange and the pool manager) read only the kind and a small fixed-layout
header of packed structs; task and result payloads travel in later frames that routers
forward untouched, never unpickled.

Tasks:   [TASKS, meta, payload frames…]   meta = TASK_META × n, each saying how many frames follow
Results: [RESULTS, meta, payload frames…] meta = RESULT_META × n
Messages from a pool to the interchange carry the pool's cumulative credit (how many tasks
it has ever been willing to accept) as a CREDIT struct in the frame after the kind.
"""

from __future__ import annotations

import json
import platform
import struct
from typing import Any, Iterator, Sequence

from ... import __version__

PROTOCOL_VERSION = 1

# Message kinds.
TASKS = b"t"
RESULTS = b"r"
HEARTBEAT = b"h"
REGISTER = b"R"
ACCEPT = b"A"
REJECT = b"N"
EVENT = b"e"
CONFIG = b"i"
CANCEL = b"c"
CANCEL_QUEUED = b"X"
CANCEL_REPLY = b"C"
SHUTDOWN = b"x"
INIT_FAILED = b"F"
READY = b"w"

# Result statuses.
OK = 0  # payload: the return value
ERROR = 1  # payload: (exception, traceback text) raised by the task itself
FAILED = 2  # payload: (exception, "") raised by the machinery: worker lost, walltime, …
CANCELLED = 3  # no payload: the task was cancelled before it started

#: task id, priority, walltime in seconds (0 for none), times its worker or pool was lost,
#: number of payload frames.
TASK_META = struct.Struct("<QidBH")
#: task id, status, seconds the function ran, number of payload frames.
RESULT_META = struct.Struct("<QBdH")
#: cumulative count of tasks a pool is willing to have received.
CREDIT = struct.Struct("<Q")
#: one task id (cancel requests and replies are arrays of these, after a request id).
TASK_ID = struct.Struct("<Q")


def iter_tasks(meta: bytes, frames: Sequence[Any], first: int) -> Iterator[tuple[tuple[int, int, float, int, int], list[Any]]]:
    """Yield ``(meta tuple, payload frames)`` for each task of a TASKS-shaped message."""
    pos = first
    for fields in TASK_META.iter_unpack(meta):
        count = fields[4]
        yield fields, list(frames[pos : pos + count])
        pos += count


def iter_results(meta: bytes, frames: Sequence[Any], first: int) -> Iterator[tuple[tuple[int, int, float, int], list[Any]]]:
    """Yield ``(meta tuple, payload frames)`` for each result of a RESULTS-shaped message."""
    pos = first
    for fields in RESULT_META.iter_unpack(meta):
        count = fields[3]
        yield fields, list(frames[pos : pos + count])
        pos += count


def pack_ids(ids: Sequence[int]) -> bytes:
    """Pack task ids into one frame."""
    return struct.pack(f"<{len(ids)}Q", *ids)


def unpack_ids(data: bytes) -> list[int]:
    """Unpack a frame made by :func:`pack_ids`."""
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def python_version() -> str:
    """The major.minor Python version, which must match between driver and pools."""
    return ".".join(platform.python_version_tuple()[:2])


def registration(**info: Any) -> bytes:
    """Encode a pool's registration: its identity plus the versions it speaks."""
    info.update(protocol=PROTOCOL_VERSION, python=python_version(), hpcfutures=__version__)
    return json.dumps(info).encode()


def version_mismatch(info: dict[str, Any]) -> str | None:
    """Return why a pool's registration cannot be accepted, or None if its versions match."""
    wanted = {"protocol": PROTOCOL_VERSION, "python": python_version(), "hpcfutures": __version__}
    wrong = [f"{k} {info.get(k)!r} (the driver has {v!r})" for k, v in wanted.items() if info.get(k) != v]
    if not wrong:
        return None
    host = info.get("host", "?")
    return (
        f"worker pool {info.get('pool_id', '?')} on {host} speaks " + ", ".join(wrong)
        + "; install the same Python and hpcfutures version on the workers as on the driver"
    )
