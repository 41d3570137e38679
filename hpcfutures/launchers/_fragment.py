"""Checks and quoting shared by the launchers that render multi-node shell fragments.

Every fragment is one shell command line that a provider runs with ``exec``; the pool command
inside it is an arbitrary shell command line, so it is always handed over as one quoted word
(``/bin/bash -c '<command>'``) and never spliced into another command's arguments.
"""

from __future__ import annotations

import re
import shlex

from .._validate import check_count, check_text
from ..errors import ConfigurationError

#: The shell each copy of the command runs in.  An absolute path, because the launchers
#: (mpiexec, aprun, jsrun) exec their program directly on nodes whose PATH may differ.
BASH = "/bin/bash"

_VARIABLE = re.compile(r"^\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)$")


def check_call(command: object, max_workers: object, nodes_per_block: object) -> None:
    """Raise ConfigurationError unless the arguments of ``Launcher.__call__`` can work."""
    text = check_text("command", command, what="a non-empty shell command line")
    if "\0" in text:
        raise ConfigurationError("command must not contain NUL bytes: no shell can run it")
    check_count("max_workers", max_workers, 1)
    check_count("nodes_per_block", nodes_per_block, 1)


def check_flags(name: str, value: object) -> str:
    """Return *value*, extra command-line flags, if it is one line of balanced shell words."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{name} must be a string of extra command-line flags, got {type(value).__name__}; "
            "join a list with spaces"
        )
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfigurationError(
            f"{name} must be on one line (the launcher renders a single command line), got {value!r}"
        )
    try:
        shlex.split(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name} is not valid shell syntax ({exc}): {value!r}; balance its quotes") from None
    return value.strip()


def check_choice(name: str, value: object, choices: tuple[str, ...], *, hint: str = "") -> str:
    """Return *value* if it is one of *choices*, else raise naming the choices."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigurationError(f"{name} must be one of {allowed}{hint}, got {value!r}")
    return value


def check_program(name: str, value: object) -> str:
    """Return *value* if it names one program (a command name or a path), else raise."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value) or "\0" in value:
        raise ConfigurationError(
            f"{name} must be one program name or path without spaces, got {value!r}; "
            "put extra flags in overrides"
        )
    return value


def check_path_or_variable(name: str, value: object) -> str:
    """Return *value* if it is ``""``, a file path, or a ``$VARIABLE`` naming one, else raise."""
    if not isinstance(value, str) or "\n" in value or "\0" in value:
        raise ConfigurationError(
            f"{name} must be a file path or an environment variable such as '$PBS_NODEFILE', got {value!r}"
        )
    if value.startswith("$") and not _VARIABLE.match(value):
        raise ConfigurationError(
            f"{name} must name a single environment variable ('$NAME' or '${{NAME}}'), got {value!r}"
        )
    return value


def path_or_variable(value: str) -> str:
    """Render a path as one quoted shell word, or a ``$VARIABLE`` so that the shell expands it."""
    if _VARIABLE.match(value):
        return f'"{value}"'
    return shlex.quote(value)


def in_bash(command: str) -> str:
    """Return a command line that runs the shell command line *command* in ``/bin/bash``."""
    return f"{BASH} -c {shlex.quote(command)}"


def join(*parts: str) -> str:
    """Join the non-empty parts of a command line with single spaces."""
    return " ".join(part for part in parts if part)
