"""A worker process: runs the tasks its pool manager hands it, one after another.

Workers are forked by the pool manager.  Each takes tasks in small batches, runs them in
order and returns results in batches: at once when it has nothing else queued, otherwise
when a few milliseconds have passed, so a lone task comes back with no delay while a stream
of short tasks costs few messages.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections import deque
from typing import Any, Callable

import zmq

from ...errors import SerializationError
from ...serialize import (
    LoadedFunctions,
    SharedSpill,
    dumps_exception,
    dumps_result,
    loads,
    loads_call,
)
from . import protocol as P

#: Results wait at most this long for company before they are sent.
RESULT_FLUSH_SECONDS = 0.002
RESULT_FLUSH_COUNT = 256
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Make sure this worker does not outlive the pool manager that forked it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # for kernels without PR_SET_PDEATHSIG, and as a second line
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, name="hpcfutures-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(70)


def _run_one(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], spill: SharedSpill | None
) -> tuple[int, list[Any], float]:
    start = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the task's exception is its result
        return P.ERROR, dumps_exception(exc), time.perf_counter() - start
    elapsed = time.perf_counter() - start
    try:
        return P.OK, dumps_result(value, spill), elapsed
    except SerializationError as exc:
        return P.ERROR, dumps_exception(exc), elapsed


def worker_main(
    rank: int, endpoint: str, env: dict[str, str], parent_pid: int, shm_dir: str = "", generation: int = 0
) -> None:
    """Serve tasks from the pool manager at ``endpoint`` until told to stop; never returns."""
    os.setpgid(0, 0)  # one process group per worker, so a walltime kill takes its children too
    _die_with_parent(parent_pid)
    os.environ.update(env)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.identity = b"%d.%d" % (rank, generation)  # as the pool's _Worker.identity
    sock.reconnect_ivl = 10  # the pool binds just after forking us: do not wait 100 ms to retry
    sock.connect(endpoint)
    sock.send(P.READY)
    try:
        config = sock.recv_multipart(copy=False)
        if len(config) > 1 and len(config[1].buffer):
            initializer, initargs = loads([f.buffer for f in config[1:]])
            try:
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the driver
                sock.send_multipart([P.INIT_FAILED, *dumps_exception(exc)], copy=False)
                time.sleep(0.1)  # let the message leave before the process does
                os._exit(3)
        _serve(sock, SharedSpill(shm_dir, f"r{os.getpid()}-", unlink_on_load=True) if shm_dir else None)
    finally:
        os._exit(0)


def _serve(sock: zmq.Socket, spill: SharedSpill | None) -> None:
    functions = LoadedFunctions()
    queue: deque[P.Item] = deque()
    metas: list[bytes] = []
    mains: list[Any] = []
    extra: list[Any] = []
    first_unsent = 0.0
    pack = P.RESULT_META.pack
    while True:
        if not queue:
            if metas:
                sock.send_multipart([P.RESULTS, b"".join(metas), b"".join(mains), *extra], copy=False)
                metas, mains, extra = [], [], []
            msg = sock.recv_multipart(copy=False)
        elif P.readable(sock):
            msg = sock.recv_multipart(copy=False)
        else:
            msg = None
        if msg is not None:
            kind = msg[0].bytes
            if kind == P.TASKS:
                queue.extend(P.split(P.TASK_META, msg[1].bytes, msg[2].buffer, [f.buffer for f in msg[3:]]))
            elif kind == P.SHUTDOWN:
                return
            continue
        fields, main, oob = queue.popleft()
        try:
            fn, args, kwargs = loads_call([main, *oob], functions)
        except BaseException as exc:  # noqa: BLE001
            error = SerializationError(f"the task could not be loaded on the worker: {exc!r}")
            status, out, elapsed = P.ERROR, dumps_exception(error), 0.0
        else:
            del main, oob
            status, out, elapsed = _run_one(fn, args, kwargs, spill)
            del fn, args, kwargs
        if not metas:
            first_unsent = time.monotonic()
        metas.append(pack(fields[0], status, elapsed, len(out[0]), len(out) - 1))
        mains.append(out[0])
        if len(out) > 1:
            extra.extend(out[1:])
        if len(metas) >= RESULT_FLUSH_COUNT or time.monotonic() - first_unsent >= RESULT_FLUSH_SECONDS:
            sock.send_multipart([P.RESULTS, b"".join(metas), b"".join(mains), *extra], copy=False)
            metas, mains, extra = [], [], []
