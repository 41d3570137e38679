"""Staging over FTP with ftplib: download with RETR, upload with STOR then rename."""

from __future__ import annotations

import contextlib
import ftplib
import os
import posixpath
from collections.abc import Iterator
from urllib.parse import unquote

from ..files import File
from .base import StagingError, StagingProvider, atomic_target, display_url


class FTPStaging(StagingProvider):
    """Download ``ftp://`` inputs and upload outputs, in binary passive mode.

    The user and password come from the URL (``ftp://user:password@host/path``); without
    them the login is anonymous.  As in RFC 1738, the path is relative to the login
    directory (``ftp://host/%2Fabs/path`` names ``/abs/path``).  An upload goes to a
    temporary name and is renamed, so readers never see a partial file.

    Args:
        timeout: seconds to wait for the server on each operation.
    """

    schemes = frozenset({"ftp"})

    def __init__(self, timeout: float = 60.0):
        if timeout <= 0:
            raise ValueError(f"FTPStaging timeout must be positive, got {timeout!r}")
        self.timeout = timeout

    @contextlib.contextmanager
    def _session(self, file: File) -> Iterator[ftplib.FTP]:
        ftp = ftplib.FTP(timeout=self.timeout)
        try:
            ftp.connect(file.host or "localhost", file.port or 21)
            if file.username is None:
                ftp.login()
            else:
                ftp.login(unquote(file.username), unquote(file.password or ""))
            yield ftp
        finally:
            with contextlib.suppress(OSError, EOFError, ftplib.Error):
                ftp.quit()
            ftp.close()

    @staticmethod
    def _remote_path(file: File) -> str:
        return unquote(file.path.lstrip("/"))

    def stage_in(self, file: File, directory: str) -> str:
        """Download the file into ``directory`` and return its path."""
        final_path = self.local_name(file, directory)
        try:
            with atomic_target(final_path) as temp_path, self._session(file) as ftp:
                with open(temp_path, "wb") as out:
                    ftp.retrbinary(f"RETR {self._remote_path(file)}", out.write)
        except (ftplib.Error, OSError, EOFError) as e:
            raise StagingError(display_url(file), _reason(e)) from e
        return final_path

    def stage_out(self, local_path: str, file: File) -> None:
        """Upload the file at ``local_path`` to the server."""
        remote = self._remote_path(file)
        folder, name = posixpath.split(remote)
        temp = posixpath.join(folder, f".{name}.{os.getpid()}.part")
        try:
            with open(local_path, "rb") as f, self._session(file) as ftp:
                try:
                    ftp.storbinary(f"STOR {temp}", f)
                    try:
                        ftp.rename(temp, remote)
                    except ftplib.error_perm:
                        # Some servers refuse to rename over an existing file.
                        with contextlib.suppress(ftplib.error_perm):
                            ftp.delete(remote)
                        ftp.rename(temp, remote)
                except BaseException:
                    with contextlib.suppress(OSError, EOFError, ftplib.Error):
                        ftp.delete(temp)
                    raise
        except (ftplib.Error, OSError, EOFError) as e:
            raise StagingError(display_url(file), _reason(e), direction="out") from e

    def __repr__(self) -> str:
        return f"FTPStaging(timeout={self.timeout!r})"


def _reason(error: BaseException) -> str:
    if isinstance(error, ftplib.Error):
        return f"FTP server replied {str(error).strip()}"
    if isinstance(error, EOFError):
        return "the FTP server closed the connection"
    return f"{type(error).__name__}: {error}"
