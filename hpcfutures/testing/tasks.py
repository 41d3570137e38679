"""Task functions for the conformance suite, importable by name in any worker process.

This module imports nothing beyond the standard library, so a worker that unpickles one of
these functions (or :class:`ConformanceError`) by reference pays almost nothing for it.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "ConformanceError",
    "add",
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
