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
it has ever been willing to accept) as a CREDIT struct in the frame after the kind;
results from the interchange to the driver carry there instead the packed ids of tasks
handed to pools since the last message (possibly none).
"""

from __future__ import annotations

import json
import platform
import struct
from typing import Any, Sequence

import zmq

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
DRAIN = b"d"  # driver -> interchange: stop giving this block tasks, then stop its pools
STARTED = b"s"  # interchange -> driver: these tasks went to a pool and can no longer be cancelled

# Result statuses.
OK = 0  # payload: the return value
ERROR = 1  # payload: (exception, traceback text) raised by the task itself
FAILED = 2  # payload: (exception, "") raised by the machinery: worker lost, walltime, …
CANCELLED = 3  # no payload: the task was cancelled before it started

#: task id, priority, walltime in seconds (0 for none), times its worker or pool was lost,
#: length of its main pickle, number of its out-of-band frames.
TASK_META = struct.Struct("<QidBIH")
#: task id, status, seconds the function ran, length of the main pickle, out-of-band frames.
RESULT_META = struct.Struct("<QBdIH")
#: cumulative count of tasks a pool is willing to have received.
CREDIT = struct.Struct("<Q")

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
        f"worker pool {info.get('pool_id', '?')} on {host} speaks "
        + ", ".join(wrong)
        + "; install the same Python and hpcfutures version on the workers as on the driver"
    )

