"""Task functions for the conformance suite, importable by name in any worker process.

This module imports nothing beyond the standard library, so a worker that unpickles one of
these functions (or :class:`ConformanceError`) by reference pays almost nothing for it.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "Box",
    "ConformanceError",
    "add",
    "box",
    "digest",
    "identity",
    "raise_error",
    "return_none",
    "square",
]


class ConformanceError(Exception):
    """The exception :func:`raise_error` raises; it must come back with its type and args."""


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def add(a: Any, b: Any = 0) -> Any:
    """Return ``a + b``."""
    return a + b


def identity(x: Any) -> Any:
    """Return ``x`` unchanged."""
    return x


def digest(data: bytes) -> tuple[int, str]:
    """Return the length and SHA-256 hex digest of ``data``."""
    return len(data), hashlib.sha256(data).hexdigest()


def return_none(*args: Any, **kwargs: Any) -> None:
    """Return None whatever the arguments."""


def raise_error(*args: Any) -> None:
    """Raise :class:`ConformanceError` with ``args`` as its args."""
    raise ConformanceError(*args)


class Box:
    """A result that weak references can follow (ints and tuples cannot), to see who keeps it alive."""

    __slots__ = ("value", "__weakref__")

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Box({self.value!r})"


def box(x: Any) -> Box:
    """Return ``x`` in a :class:`Box`."""
    return Box(x)
