"""What ``map`` needs besides submitting: chunks of calls as one task, and results in order.

A chunk (``chunksize`` > 1) runs as one task, so it costs one message; :func:`ordered_results`
yields the results of map's futures in submission order without keeping any of them alive.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any, Callable, Iterator, Sequence


def run_chunk(fn: Callable[..., Any], chunk: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Call ``fn(*args)`` for each argument tuple of ``chunk`` and return the results in order."""
    return [fn(*args) for args in chunk]


def _pop_result(futures: list[Future[Any]], timeout: float | None) -> Any:
    """Take the last of ``futures`` out of the list and return its result.

    The future leaves the list first and this frame lets go of it before returning or
    raising, so that neither its result nor its exception (whose traceback holds this frame)
    is kept alive from here; one that did not finish (a timeout) goes back, to be cancelled
    with the rest.
    """
    future = futures.pop()
    try:
        return future.result(timeout)
    finally:
        if not future.done():
            futures.append(future)
        del future


def ordered_results(
    futures: list[Any],
    end_time: float | None,
    chunked: bool,
    cancel: Callable[[list[Any]], Any],
) -> Iterator[Any]:
    """Yield the results of ``futures`` in order; ``cancel`` those left when the caller stops.

    ``end_time`` is a ``time.monotonic()`` deadline for the whole map (None: none); with
    ``chunked`` each future's result is a list of results, yielded one by one.  Nothing here
    holds a result once it is yielded (nor a future once its result is taken), so each result
    is freed as soon as the caller drops it, as in the stdlib.
    """
    futures.reverse()
    try:
        while futures:
            remaining = None if end_time is None else end_time - time.monotonic()
            if not chunked:
                yield _pop_result(futures, remaining)
                continue
            chunk = _pop_result(futures, remaining)
            chunk.reverse()
            while chunk:
                yield chunk.pop()
    finally:
        if futures:
            cancel(futures)
