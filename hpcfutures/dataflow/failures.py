"""How a dataflow task's failure is read from a future and worded for the user.

A task whose dependency failed fails with :class:`~hpcfutures.DependencyError` naming the
chain back to the first failure; a join app whose inner tasks failed, with
:class:`~hpcfutures.JoinError`.  Only public ``Future`` methods are used here.
"""

from __future__ import annotations

from concurrent.futures import CancelledError, Future
from typing import Any

from ..errors import DependencyError, JoinError
from .futures import DataflowFuture

#: A failed future and what it failed with.
Failed = tuple[Future[Any], BaseException]


def describe(fut: Future[Any]) -> tuple[int | None, str]:
    """``(task id, name)`` of a dataflow future; ``(None, "an external future")`` of any other."""
    if isinstance(fut, DataflowFuture):
        return fut.task_id, fut.name
    return None, "an external future"


def failure(fut: Future[Any]) -> BaseException | None:
    """What the finished future ``fut`` failed with (a CancelledError if cancelled), or None."""
    if fut.cancelled():
        return CancelledError(f"{describe(fut)[1]} was cancelled")
    return fut.exception()


def failures(futures: list[Future[Any]]) -> list[Failed]:
    """The finished ``futures`` that failed, each with its error, in order."""
    return [(fut, err) for fut in futures if (err := failure(fut)) is not None]


def _names(entries: list[tuple[int | None, str, BaseException]]) -> str:
    return ", ".join(f"task {i} ({n})" if i is not None else n for i, n, _ in entries)


def dependency_error(fut: DataflowFuture, failed: list[Failed]) -> DependencyError:
    """The error of task ``fut``, which did not run because the dependencies ``failed`` did.

    The chain goes through the first failed dependency and links to that dependency's own
    DependencyError rather than copying its chain, which would make a long chain quadratic.
    """
    entries = [(*describe(dep), err) for dep, err in failed]
    me = f"task {fut.task_id} ({fut.name})"
    first_id, first_name, first_error = entries[0]
    upstream = first_error if isinstance(first_error, DependencyError) else None
    if upstream is None:
        links = [f"task {first_id} ({first_name})" if first_id is not None else first_name, me]
        path = " -> ".join(links)
    elif upstream.chain_length < 6:
        links = [me]
        path = " -> ".join([*upstream.chain, me])
    else:  # a long chain: its ends say enough, and writing it all out would be quadratic
        links = [me]
        middle = upstream.chain_length - 2
        path = f"{upstream._root} -> ... ({middle} more) -> {upstream._links[-1]} -> {me}"
    root = failed[0][1]
    while isinstance(root, DependencyError) and root.__cause__ is not None:
        root = root.__cause__
    error = DependencyError(
        f"task {fut.task_id} ({fut.name}) did not run: its dependency {_names(entries)} failed "
        f"({type(root).__name__}: {root}); failing chain: {path}",
        entries,
        links,
        upstream=upstream,
    )
    error.__cause__ = root
    return error


def join_error(fut: DataflowFuture, failed: list[Failed]) -> JoinError:
    """The error of join app ``fut``, whose inner tasks ``failed``."""
    entries = [(*describe(f), err) for f, err in failed]
    error = JoinError(f"join app task {fut.task_id} ({fut.name}): inner {_names(entries)} failed", entries)
    error.__cause__ = failed[0][1]
    return error
