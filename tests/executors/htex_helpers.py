"""Shared helpers for the HighThroughputExecutor tests: process accounting and attackers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from hpcfutures import HighThroughputExecutor
from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex.stream import SCHEME, StreamConnection


def descendants() -> set[int]:
    """The pids of every live process below this one."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def assert_all_gone(pids: set[int], timeout: float = 15.0) -> None:
    """Wait for every process in ``pids`` to end (zombies count as ended), then check."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    still = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not still, f"processes left behind: {[(p.pid, p.cmdline()) for p in still]}"


def pool_key(ex: HighThroughputExecutor) -> dict[str, str]:
    """Read the pool key file of a started executor (what a legitimate remote pool holds)."""
    assert ex.key_dir is not None
    return json.loads((Path(ex.key_dir) / "pool.json").read_text())


class _StreamContext:
    """Stands for the ZeroMQ context of a fake pool that connected over a Unix stream socket."""

    def __init__(self, connection: StreamConnection):
        self.connection = connection

    def destroy(self, linger: int = 0) -> None:
        self.connection.close()


def fake_pool(
    endpoint: str,
    *,
    curve: dict[str, str] | None = None,
    token: str | None = None,
    send_timeout: int = 1000,
    **info: Any,
) -> tuple[Any, Any]:
    """Connect a raw socket as a would-be pool and send a registration carrying ``info``.

    The registration has the current layout, ``[REGISTER, credit, token, info JSON]``; the
    token is ``token``, else the one in ``curve`` (a pool key file), else empty.

    Returns ``(context, socket)``: a ZeroMQ pair for a ``tcp://`` endpoint, or for a local
    pools' ``unix://`` endpoint a :class:`StreamConnection` and a stand-in context.
    """
    sock: Any
    if endpoint.startswith(SCHEME):
        sock = StreamConnection.connect(endpoint, timeout=send_timeout / 1000)
        ctx: Any = _StreamContext(sock)
    else:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        # A refused peer has no connection to send on: do not block the test for long.  A
        # peer with the right keys passes a longer timeout: the interchange may still be
        # starting.
        sock.sndtimeo = send_timeout
        if curve is not None:
            sock.curve_publickey = curve["public"].encode()
            sock.curve_secretkey = curve["secret"].encode()
            sock.curve_serverkey = curve["server"].encode()
        sock.connect(endpoint)
    registration = {
        "pool_id": "intruder",
        "block_id": "x",
        "workers": 1,
        "host": "nowhere",
        "pid": os.getpid(),
        "protocol": P.PROTOCOL_VERSION,
        "python": P.python_version(),
    }
    from hpcfutures import __version__

    registration["hpcfutures"] = __version__
    registration.update(info)
    if token is None:
        token = (curve or {}).get("token", "")
    try:
        sock.send_multipart(
            [P.REGISTER, P.CREDIT.pack(100), token.encode(), json.dumps(registration).encode()]
        )
    except zmq.Again:
        pass  # the handshake was refused, so there is no connection to send on
    return ctx, sock


def fake_results(sock: Any, task_ids: list[int], value: Any) -> None:
    """Send results for ``task_ids`` as if this socket were a pool."""
    from hpcfutures.serialize import dumps

    items = []
    for task_id in task_ids:
        frames = dumps(value)
        meta = P.RESULT_META.unpack(P.result_meta(task_id, P.OK, len(frames[0]), 0))
        items.append((meta, frames[0], []))
    msg = P.join(P.RESULTS, P.RESULT_META, items)
    try:
        sock.send_multipart([msg[0], P.CREDIT.pack(100), *msg[1:]])
    except (zmq.Again, OSError):
        pass  # refused (or the interchange closed a local connection): nothing to send on


CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs for a two-core task")


def window(hold: float = 0.0) -> dict[str, Any]:
    """Hold for ``hold`` seconds; say when, where and with what the task ran."""
    start = time.monotonic()
    time.sleep(hold)
    return {
        "start": start,
        "end": time.monotonic(),
        "cpus": tuple(sorted(os.sched_getaffinity(0))),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "rocr": os.environ.get("ROCR_VISIBLE_DEVICES"),
        "cores": os.environ.get("HPCFUTURES_CORES"),
        "pid": os.getpid(),
    }


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two tasks' ``window`` results overlap in time."""
    return a["start"] < b["end"] and b["start"] < a["end"]
