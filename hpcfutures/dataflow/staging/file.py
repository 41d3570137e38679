"""Staging for local files (plain paths and ``file://`` URLs): nothing to copy."""

from __future__ import annotations

from ..files import File
from .base import StagingProvider


class FileStaging(StagingProvider):
    """Hand the task the file's own path; the task reads and writes it in place.

    The path must be valid where the task runs (a shared file system for remote workers).
    """

    schemes = frozenset({"file"})

    def stage_in(self, file: File, directory: str) -> str:
        """Return the file's path; nothing is copied."""
        return file.path

    def stage_out(self, local_path: str, file: File) -> None:
        """Do nothing: the task wrote the file in place."""
