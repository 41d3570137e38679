"""The interchange as the driver's child process: started with its pipes, stopped, and its end told.

The driver starts the interchange before anything else and talks to it over two pipes it
inherits (see :mod:`.pipes`): fewer wake-ups per message than a socket with I/O threads, and
the interchange sees end-of-file when the driver goes.  When the interchange dies, the
evidence (exit code or signal, the tail of its stderr) goes into the
:class:`~hpcfutures.InterchangeLostError` that every pending future then fails with.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from pathlib import Path

from ...errors import InterchangeLostError
from ...exits import describe_exit
from ...tails import read_tail
from .components import InterchangeArgs
from .pipes import Receiver, Sender, pipe_pair

#: How much of the interchange's stderr file its InterchangeLostError quotes.
STDERR_TAIL_BYTES = 4000


def free_port(address: str) -> int:
    """Return a TCP port that is free on ``address`` now (the interchange binds it next)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    host = {"*": "0.0.0.0", "::": "::"}.get(address, address)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_interchange(args: InterchangeArgs, stderr: Path) -> tuple[subprocess.Popen[bytes], Sender, Receiver]:
    """Start the interchange in a session of its own, its output going to ``stderr``.

    ``args.driver_fds`` is filled in here with the child's ends of two new pipes; the parent's
    ends come back as a Sender (to the interchange) and a Receiver (from it).

    Raises:
        OSError: the process could not be started (nothing is left open then).
    """
    down_read, down_write = pipe_pair()
    up_read, up_write = pipe_pair()
    command = dataclasses.replace(args, driver_fds=(down_read, up_write)).command()
    try:
        with open(stderr, "wb") as err:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                pass_fds=(down_read, up_write),
            )
    except BaseException:
        for fd in (down_write, up_read):
            os.close(fd)
        raise
    finally:
        os.close(down_read)
        os.close(up_write)
    return process, Sender(down_write), Receiver(up_read)


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """Wait up to ``grace`` seconds for the process to end, then kill it and reap it."""
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def lost_error(process: subprocess.Popen[bytes], stderr: Path) -> InterchangeLostError | None:
    """The error to fail every pending task with if the interchange has ended, else None."""
    code = process.poll()
    if code is None:
        return None
    tail = read_tail(stderr, lines=None, max_bytes=STDERR_TAIL_BYTES)
    return InterchangeLostError(
        f"the interchange process {describe_exit(code)}; every task it held is lost. "
        f"Its stderr ends with:\n{tail}",
        exit_code=code,
        stderr_tail=tail,
    )
