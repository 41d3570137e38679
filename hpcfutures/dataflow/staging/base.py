"""The staging provider interface, its error, and atomic writes into a task's directory."""

from __future__ import annotations

import abc
import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from ...errors import HpcFuturesError
from ..files import File


class StagingError(HpcFuturesError):
    """A file could not be staged in or out; ``url`` names the file and ``reason`` the cause.

    A task whose staging fails fails with this error.
    """

    def __init__(self, url: str, reason: str, *, direction: str = "in"):
        super().__init__(f"cannot stage {direction} {url}: {reason}")
        self.url = url
        self.reason = reason
        self.direction = direction

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_staging_error, (self.url, self.reason, self.direction)


def _rebuild_staging_error(url: str, reason: str, direction: str) -> StagingError:
    return StagingError(url, reason, direction=direction)


def display_url(file: File) -> str:
    """Return the file's URL with any password replaced by ``***``, for messages and logs."""
    if file.password is None:
        return file.url
    parts = urlsplit(file.url)
    netloc = parts.netloc.replace(f":{file.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class StagingProvider(abc.ABC):
    """Moves files named by URLs of some schemes to and from a task's working directory.

    ``stage_in`` and ``stage_out`` run inside the task, on the worker, just before and just
    after the task's function; a provider must therefore be picklable.  ``stage_in`` must be
    atomic: the file appears under its final name complete or not at all
    (:func:`atomic_target` does this).
    """

    #: The URL schemes this provider handles, e.g. ``frozenset({"http", "https"})``.
    schemes: ClassVar[frozenset[str]]

    @abc.abstractmethod
    def stage_in(self, file: File, directory: str) -> str:
        """Make ``file`` available under ``directory`` and return its local path.

        Raises:
            StagingError: the file cannot be fetched; the message names it and the cause.
        """

    @abc.abstractmethod
    def stage_out(self, local_path: str, file: File) -> None:
        """Copy the task's output at ``local_path`` to where ``file`` names.

        Raises:
            StagingError: the file cannot be sent; the message names it and the cause.
        """

    def local_name(self, file: File, directory: str) -> str:
        """Return the path under ``directory`` that ``stage_in`` gives ``file``."""
        if not file.filename:
            raise StagingError(display_url(file), "the URL names no file (its path is empty or ends in '/')")
        return os.path.join(directory, file.filename)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@contextlib.contextmanager
def atomic_target(final_path: str) -> Iterator[str]:
    """Yield a temporary path beside ``final_path`` and rename it there if the block succeeds.

    If the block raises, the temporary file is removed, so that a failed download never
    leaves a partial file under the final name.
    """
    directory, name = os.path.split(final_path)
    os.makedirs(directory or ".", exist_ok=True)
    fd, temp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory or ".")
    os.close(fd)
    try:
        yield temp_path
        os.replace(temp_path, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
