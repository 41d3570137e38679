"""Running a task with its remote files staged: the part that runs on the worker.

The driver hands the backend :func:`run_staged` instead of the task's function whenever a
remote ``File`` is among the task's arguments.  On the worker it stages the inputs into
the task's staging directory, points remote ``outputs`` there, calls the function, and
stages the outputs out once it has succeeded.  Because it runs where the task runs, it
works whether or not workers share the driver's file system.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Sequence

from ..deps import ATOMIC_TYPES, _walker_for
from ..files import File
from . import prepare_outputs, stage_inputs, stage_outputs
from .base import StagingProvider


def remote_files(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[File]:
    """Return the remote Files in a call's arguments (inside containers too), in order."""
    found: list[File] = []
    seen: set[int] = set()

    def visit(obj: Any) -> Any:
        if type(obj) in ATOMIC_TYPES:
            return obj
        if isinstance(obj, File):
            if obj.is_remote and id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
            return obj
        walk = _walker_for(obj)
        if walk is not None and id(obj) not in seen:
            seen.add(id(obj))
            walk(obj, visit)
        return obj

    for value in (*args, *kwargs.values()):
        visit(value)
    return found


def private_copies(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copy every File in a call, so that staging one task never changes another's File."""

    def visit(obj: Any) -> Any:
        if type(obj) in ATOMIC_TYPES:
            return obj
        if isinstance(obj, File):
            return File(obj.url)
        walk = _walker_for(obj)
        return walk(obj, visit) if walk is not None else obj

    return tuple(visit(a) for a in args), {k: visit(v) for k, v in kwargs.items()}


def run_staged(
    fn: Callable[..., Any],
    providers: Sequence[StagingProvider] | None,
    directory: str,
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Stage remote inputs into ``directory``, run ``fn``, then stage remote ``outputs`` out.

    Remote Files in the ``outputs`` keyword are outputs; every other remote File in the
    arguments is an input.

    ``directory`` and the copies in it are removed when the call ends, whether it succeeded
    or not: a task returns data or remote Files, never paths into its staging directory.

    Raises:
        StagingError: an input could not be fetched or an output could not be sent (the
            message names the file); the function's own exceptions pass through.
    """
    outputs = [f for f in kwargs.get("outputs") or () if isinstance(f, File) and f.is_remote]
    output_ids = {id(f) for f in outputs}
    inputs = [f for f in remote_files(args, kwargs) if id(f) not in output_ids]
    os.makedirs(directory, exist_ok=True)
    try:
        stage_inputs(inputs, directory, providers)
        prepare_outputs(outputs, directory)
        result = fn(*args, **kwargs)
        stage_outputs(outputs, providers)
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # the staged copies end with the task
