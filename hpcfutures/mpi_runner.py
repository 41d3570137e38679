"""Run one pickled call on every MPI rank: ``python -m hpcfutures.mpi_runner CALL OUT``.

:func:`hpcfutures.executors.mpi.run_on_ranks` starts this under the task's launch prefix.
Every rank loads ``(fn, args, kwargs, gather)`` from the file CALL and runs the call; rank 0
gathers the return values and writes rank 0's (or, with ``gather``, every rank's, in rank
order) to OUT.  A rank whose call raises writes ``(rank, size, exception, traceback text)``
to ``OUT.rank<N>.error`` and aborts the whole job, so that no other rank waits for it in a
collective call for ever.  Files, not pipes, carry the outcome: ranks on other nodes share
the file system, not the launcher's standard output.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import cloudpickle


def _write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a reader never sees half of it)."""
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def _error_payload(rank: int, size: int, exc: BaseException) -> bytes:
    text = traceback.format_exc()
    try:
        return cloudpickle.dumps((rank, size, exc, text))
    except Exception:  # noqa: BLE001 - an exception that does not pickle still tells its story
        return cloudpickle.dumps((rank, size, RuntimeError(repr(exc)), text))


def main(argv: list[str]) -> int:
    call_path, out_path = argv
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    with open(call_path, "rb") as f:
        fn, args, kwargs, gather = cloudpickle.load(f)
    try:
        value: Any = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the task, then the job ends
        _write(f"{out_path}.rank{rank}.error", _error_payload(rank, size, exc))
        sys.stderr.flush()
        comm.Abort(1)
        return 1
    values = comm.gather(value, root=0)
    if rank == 0:
        assert values is not None  # the root gets the list
        _write(out_path, cloudpickle.dumps(values if gather else values[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
