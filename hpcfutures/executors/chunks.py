"""Runs a chunk of ``map`` calls as one task, so ``chunksize`` > 1 costs one message."""

from __future__ import annotations

from typing import Any, Callable, Sequence


def run_chunk(fn: Callable[..., Any], chunk: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Call ``fn(*args)`` for each argument tuple of ``chunk`` and return the results in order."""
    return [fn(*args) for args in chunk]
