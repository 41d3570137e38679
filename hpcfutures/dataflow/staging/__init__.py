"""File staging: fetch a task's remote inputs before it runs and send its remote outputs after.

A :class:`StagingProvider` handles some URL schemes.  :data:`DEFAULT_PROVIDERS` covers
``file``, ``http``, ``https``, ``ftp`` and ``rsync`` (over ssh); an executor may be given its
own sequence.  The helpers below run inside the task, on the worker:

1. :func:`stage_inputs` copies each remote input File into the task's directory and sets
   its ``local_path``, so the task sees a local path through ``filepath`` or ``os.fspath``;
2. :func:`prepare_outputs` points each remote output File at a path in that directory;
3. the task runs; if it succeeds, :func:`stage_outputs` sends each remote output.

A failure raises :class:`StagingError`, naming the file and the cause, which fails the task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

from ..files import File
from .base import StagingError, StagingProvider, atomic_target, display_url
from .file import FileStaging
from .ftp import FTPStaging
from .http import HTTPStaging
from .rsync import RsyncStaging

__all__ = [
    "DEFAULT_PROVIDERS",
    "FTPStaging",
    "FileStaging",
    "HTTPStaging",
    "RsyncStaging",
    "StagingError",
    "StagingProvider",
    "atomic_target",
    "prepare_outputs",
    "provider_for",
    "stage_inputs",
    "stage_outputs",
]

logger = logging.getLogger(__name__)

#: The providers used when an executor is given none.
DEFAULT_PROVIDERS: tuple[StagingProvider, ...] = (FileStaging(), HTTPStaging(), FTPStaging(), RsyncStaging())


def provider_for(file: File, providers: Sequence[StagingProvider] | None = None) -> StagingProvider:
    """Return the first of ``providers`` (default: DEFAULT_PROVIDERS) that handles ``file``'s scheme.

    Raises:
        StagingError: no provider handles the scheme.
    """
    providers = DEFAULT_PROVIDERS if providers is None else providers
    for provider in providers:
        if file.scheme in provider.schemes:
            return provider
    known = sorted({scheme for provider in providers for scheme in provider.schemes})
    reason = f"no staging provider handles scheme {file.scheme!r} (known: {', '.join(known) or 'none'})"
    raise StagingError(display_url(file), reason)


def _files(items: Iterable[object]) -> list[File]:
    return [item for item in items if isinstance(item, File)]


def _unique_directory(file: File, directory: str, taken: set[str]) -> str:
    """Return ``directory``, or a numbered subdirectory if another file already took the name."""
    subdirectory, n = directory, 0
    while os.path.join(subdirectory, file.filename) in taken:
        n += 1
        subdirectory = os.path.join(directory, f"staged-{n}")
    taken.add(os.path.join(subdirectory, file.filename))
    return subdirectory


def stage_inputs(
    files: Iterable[object], directory: str, providers: Sequence[StagingProvider] | None = None
) -> None:
    """Stage every File among ``files`` into ``directory`` and set its ``local_path``.

    Items that are not Files are skipped.  Two remote files with the same name go to
    different subdirectories of ``directory``.

    Raises:
        StagingError: a file could not be staged in.
    """
    taken: set[str] = set()
    for file in _files(files):
        provider = provider_for(file, providers)
        target = _unique_directory(file, directory, taken) if file.is_remote else directory
        logger.debug("staging in %s with %r to %s", display_url(file), provider, target)
        file.local_path = provider.stage_in(file, target)


def prepare_outputs(files: Iterable[object], directory: str) -> None:
    """Give every remote File among ``files`` a ``local_path`` in ``directory`` for the task to write.

    Raises:
        StagingError: a remote output's URL names no file.
    """
    taken: set[str] = set()
    for file in _files(files):
        if file.is_remote:
            if not file.filename:
                raise StagingError(display_url(file), "the URL names no file", direction="out")
            target = _unique_directory(file, directory, taken)
            os.makedirs(target, exist_ok=True)
            file.local_path = os.path.join(target, file.filename)


def stage_outputs(files: Iterable[object], providers: Sequence[StagingProvider] | None = None) -> None:
    """Send every remote File among ``files`` from its ``local_path`` to its URL.

    Raises:
        StagingError: the task did not create a file, or a file could not be staged out.
    """
    for file in _files(files):
        if not file.is_remote:
            continue
        provider = provider_for(file, providers)
        if file.local_path is None:
            raise StagingError(
                display_url(file), "it has no local copy (prepare_outputs was not called)", direction="out"
            )
        if not os.path.isfile(file.local_path):
            reason = f"the task did not create it at {file.local_path}"
            raise StagingError(display_url(file), reason, direction="out")
        logger.debug("staging out %s with %r from %s", display_url(file), provider, file.local_path)
        provider.stage_out(file.local_path, file)
