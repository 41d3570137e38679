"""Staging over HTTP and HTTPS with urllib: download with GET, upload with PUT."""

from __future__ import annotations

import base64
import shutil
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from ..files import File
from .base import StagingError, StagingProvider, atomic_target, display_url


class HTTPStaging(StagingProvider):
    """Download ``http://`` and ``https://`` inputs; upload outputs with PUT.

    ``user:password@`` in a URL is sent as basic authentication.  Outputs need a server that
    accepts PUT; most plain web servers (``python -m http.server`` among them) do not, and
    staging out to them fails with a StagingError that says so.

    Args:
        timeout: seconds to wait for the server to connect or send data.
    """

    schemes = frozenset({"http", "https"})

    def __init__(self, timeout: float = 60.0):
        if timeout <= 0:
            raise ValueError(f"HTTPStaging timeout must be positive, got {timeout!r}")
        self.timeout = timeout

    def _request(self, file: File, method: str, data: bytes | None = None) -> urllib.request.Request:
        parts = urlsplit(file.url)
        # urllib does not take credentials from the URL: strip them and send a header.
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        request = urllib.request.Request(url, data=data, method=method)
        if file.username is not None:
            token = f"{file.username}:{file.password or ''}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
        return request

    def stage_in(self, file: File, directory: str) -> str:
        """Download the file into ``directory`` and return its path."""
        final_path = self.local_name(file, directory)
        try:
            with atomic_target(final_path) as temp_path:
                with urllib.request.urlopen(self._request(file, "GET"), timeout=self.timeout) as response:
                    with open(temp_path, "wb") as out:
                        shutil.copyfileobj(response, out)
                        received = out.tell()
                    # Reading in chunks, http.client ends quietly at a closed connection
                    # instead of raising IncompleteRead; compare with Content-Length.
                    expected = response.headers.get("Content-Length")
                    if expected is not None and expected.isdigit() and int(expected) != received:
                        raise StagingError(
                            display_url(file),
                            f"the server closed the connection after {received} of {expected} bytes",
                        )
        except StagingError:
            raise
        except urllib.error.HTTPError as e:
            raise StagingError(display_url(file), f"HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            raise StagingError(display_url(file), f"cannot reach the server: {e.reason}") from e
        except OSError as e:
            raise StagingError(display_url(file), f"{type(e).__name__}: {e}") from e
        return final_path

    def stage_out(self, local_path: str, file: File) -> None:
        """Upload the file at ``local_path`` with PUT."""
        url = display_url(file)
        try:
            with open(local_path, "rb") as f:
                data = f.read()
            request = self._request(file, "PUT", data)
            request.add_header("Content-Type", "application/octet-stream")
            with urllib.request.urlopen(request, timeout=self.timeout):
                pass
        except urllib.error.HTTPError as e:
            if e.code in (405, 501):
                reason = f"the server does not accept uploads (HTTP {e.code} {e.reason} to PUT)"
                raise StagingError(url, reason, direction="out") from e
            raise StagingError(url, f"HTTP {e.code} {e.reason}", direction="out") from e
        except urllib.error.URLError as e:
            raise StagingError(url, f"cannot reach the server: {e.reason}", direction="out") from e
        except OSError as e:
            raise StagingError(url, f"{type(e).__name__}: {e}", direction="out") from e

    def __repr__(self) -> str:
        return f"HTTPStaging(timeout={self.timeout!r})"
