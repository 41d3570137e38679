"""How a process ended, in words: the one place that words exit codes and signals.

Exit codes follow the convention of :class:`subprocess.Popen` and
:class:`multiprocessing.Process`: 0 or more is the code the process exited with, ``-N``
means it was killed by signal N, and None means it has not ended yet.

This module imports nothing but :mod:`signal`, so the driver can say how the interchange
died without importing the pool manager (and with it multiprocessing, ZeroMQ and the
worker).
"""

from __future__ import annotations

import signal

#: The usual causes of a SIGKILL nobody in this process asked for.
SIGKILL_HINT = "the out-of-memory killer, or another process"


def signal_name(signum: int) -> str:
    """Return the name of signal *signum* (9 gives ``"SIGKILL"``).

    A number this platform does not define gives ``"signal N"`` rather than an error: the
    number may come from another host or from a scheduler's records.
    """
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_signal(exitcode: int | None) -> str | None:
    """Return the name of the signal that killed a process, from its exit code (-9 gives ``"SIGKILL"``).

    None when the process exited on its own (*exitcode* 0 or more) or has not ended (None).
    This is the value errors carry as ``signal_name``.
    """
    if exitcode is None or exitcode >= 0:
        return None
    return signal_name(-exitcode)


def describe_exit(exitcode: int | None, *, sigkill_hint: bool = True) -> str:
    """Say how a process ended, as a phrase that follows its name.

    ``"exited with code 3"``, ``"was killed by SIGTERM"``, ``"was killed by signal 77"``
    (an unknown signal) or ``"has not exited"`` (None).  A SIGKILL names its usual causes,
    since the out-of-memory killer leaves no other trace for the user to see; a caller that
    sent the SIGKILL itself (a cancel) passes ``sigkill_hint=False``.
    """
    if exitcode is None:
        return "has not exited"
    name = exit_signal(exitcode)
    if name is None:
        return f"exited with code {exitcode}"
    if name == "SIGKILL" and sigkill_hint:
        return f"was killed by SIGKILL ({SIGKILL_HINT})"
    return f"was killed by {name}"
