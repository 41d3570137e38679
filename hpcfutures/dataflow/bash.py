"""Runs bash apps on the worker: build the command, run it under ``/bin/bash``, check the result.

This module is imported by worker processes, so it imports only the standard library,
``hpcfutures.errors``, ``hpcfutures.exits`` and ``hpcfutures.tails``.  The command runs in
a session of its own, so that a walltime kill takes the whole process tree it started, not
only the shell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import IO, Any, Callable

from ..errors import BashAppNoReturn, BashExitFailure, MissingOutputs, TaskTimeoutError
from ..exits import describe_exit
from ..tails import read_tail

#: How much of a failed command's stderr file its BashExitFailure quotes.
STDERR_TAIL_BYTES = 2000

#: A stream target: a path and the mode to open it with ("w" or "a").
Target = tuple[str, str]


@dataclass(frozen=True)
class BashSpec:
    """What the worker needs besides the call: the app's name, streams, walltime, outputs."""

    name: str
    stdout: Target | None = None
    stderr: Target | None = None
    walltime: float | None = None
    outputs: tuple[str, ...] = ()  # local paths the command must create


def bind(fn: Callable[..., Any]) -> Callable[..., int]:
    """Return ``task(spec, *args, **kwargs)`` that runs ``fn``'s command.

    One such function is made per app, so a backend that serializes functions does it once
    per app rather than once per call; it is defined here, not at module level, so that it
    travels by value and carries ``fn`` with it.
    """

    def bash_app_task(spec: BashSpec, /, *args: Any, **kwargs: Any) -> int:
        return run_bash_app(fn, spec, *args, **kwargs)

    bash_app_task.__qualname__ = bash_app_task.__name__ = f"bash_app_task[{getattr(fn, '__name__', fn)}]"
    return bash_app_task


def run_bash_app(fn: Callable[..., Any], spec: BashSpec, /, *args: Any, **kwargs: Any) -> int:
    """Run the command ``fn(*args, **kwargs)`` returns; return its exit code, 0.

    Raises:
        BashAppNoReturn: ``fn`` returned something other than a string.
        BashExitFailure: the command exited with a non-zero code (``exit_code``).
        TaskTimeoutError: the command ran past ``spec.walltime``; its process group was killed.
        MissingOutputs: the command succeeded but did not create every declared output.
    """
    command = fn(*args, **kwargs)
    if not isinstance(command, str):
        raise BashAppNoReturn(
            f"bash app {spec.name} must return the command to run as a str, "
            f"but it returned {type(command).__name__}"
            + (" (did it forget to return?)" if command is None else f": {command!r}")
        )
    with contextlib.ExitStack() as stack:
        out = _open(stack, spec.stdout)
        if spec.stdout is not None and spec.stderr is not None and _same(spec.stdout[0], spec.stderr[0]):
            err = out  # one handle, so that the two streams interleave as they were written
        else:
            err = _open(stack, spec.stderr)
        proc = subprocess.Popen(
            ["/bin/bash", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: a walltime kill reaches its children
        )
        try:
            code = proc.wait(timeout=spec.walltime)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TaskTimeoutError(
                f"bash app {spec.name} ran past its walltime of {spec.walltime:g} s; "
                f"its process group was killed (command: {_short(command)})"
            ) from None
        except BaseException:
            _kill_group(proc)  # e.g. KeyboardInterrupt in a thread-based backend's caller
            raise
    if code != 0:
        raise BashExitFailure(_exit_message(spec, command, code), code)
    missing = [path for path in spec.outputs if not os.path.exists(path)]
    if missing:
        raise MissingOutputs(
            f"bash app {spec.name} exited with code 0 but did not create its declared "
            f"output(s) {', '.join(missing)}",
            missing,
        )
    return 0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group has ended already
    proc.wait()


def _open(stack: contextlib.ExitStack, target: Target | None) -> IO[bytes] | None:
    if target is None:
        return None  # the stream goes where the worker's goes
    path, mode = target
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return stack.enter_context(open(path, mode.replace("b", "") + "b"))


def _same(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _short(command: str, limit: int = 200) -> str:
    return repr(command if len(command) <= limit else command[: limit - 3] + "...")


def _exit_message(spec: BashSpec, command: str, code: int) -> str:
    message = f"bash app {spec.name} {describe_exit(code)} (command: {_short(command)})"
    if spec.stderr is not None:
        tail = read_tail(spec.stderr[0], lines=None, max_bytes=STDERR_TAIL_BYTES)
        message += (
            f"; end of its stderr ({spec.stderr[0]}):\n{tail}"
            if tail
            else f"; its stderr ({spec.stderr[0]}) is empty"
        )
    return message
