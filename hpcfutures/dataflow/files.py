"""``File``, a path or URL that apps take as input and declare as output, and ``AUTO_LOGNAME``.

Both are plain values that the apps, the cache keys and the staging code share; this
module imports nothing else of the dataflow layer, so that any of them may import it.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any
from urllib.parse import SplitResult, urlparse, urlsplit

__all__ = ["AUTO_LOGNAME", "File"]

# scp's "user@host:path": no "/" before the ":" (so "./a@b:c" stays a local path), and an
# IPv6 host in brackets.
_SCP_LIKE = re.compile(r"^(?P<user>[^@/:\s]+)@(?P<host>\[[^\]/]+\]|[^:/\s\[\]]+):(?P<path>.*)$")


class _AutoLogname:
    """The type of :data:`AUTO_LOGNAME`; one instance, which unpickles as itself."""

    def __repr__(self) -> str:
        return "AUTO_LOGNAME"

    def __reduce__(self) -> str:
        return "AUTO_LOGNAME"


#: ``stdout=AUTO_LOGNAME`` (or ``stderr=``) sends the stream to a file of its own under the
#: executor's ``run_dir``: ``task_logs/<app name>-<task id>.stdout`` (or ``.stderr``).
#: Cache keys leave such streams out, since their paths are made per task.
AUTO_LOGNAME: Any = _AutoLogname()


@functools.total_ordering
class File(os.PathLike[str]):
    """A file named by a local path or a URL.

    Accepted forms: a path (``"data/a.txt"``), ``file:///abs/path``, ``http://…``,
    ``https://…``, ``ftp://[user[:password]@]host[:port]/path``, ``rsync://[user@]host[:port]/abs/path``
    and scp's ``user@host:path``.  Both rsync forms mean rsync over ssh (no rsync daemon): the
    port of an ``rsync://`` URL is the ssh port, its path is absolute on the host, and the path
    of ``user@host:path`` is relative to the user's home unless it starts with ``/``.  A local
    name that looks like ``user@host:path`` must be written ``./user@host:path``.

    It is ``os.PathLike``, so ``open(File("a.txt"))`` works; ``filepath`` is the local path
    the file has: for a URL, the path part until staging sets ``local_path`` to a local copy.
    Two Files are equal, and hash and sort alike, when their URLs are equal: ``local_path``
    is where a copy is, not what the file is, and staging sets it on Files that may already
    be in sets or dict keys.
    """

    __slots__ = ("url", "scheme", "netloc", "path", "local_path")

    def __init__(self, url: str | os.PathLike[str]):
        if isinstance(url, File):
            url = url.__getstate__()[0]
        if not isinstance(url, (str, os.PathLike)):
            raise TypeError(f"File needs a path or URL string, got {type(url).__name__}")
        text = os.fspath(url)
        if not text:
            raise ValueError("File needs a non-empty path or URL")
        self.url = text
        scp = _SCP_LIKE.match(text) if "://" not in text else None
        parsed = urlparse(text)
        if scp is not None:
            if not scp["path"]:
                raise ValueError(f"File {text!r} names a host but no path; write user@host:path")
            self.scheme = "rsync"
            self.netloc = f"{scp['user']}@{scp['host']}"
            self.path = scp["path"]
        elif parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
            self.scheme = parsed.scheme
            self.netloc = parsed.netloc
            self.path = parsed.path
        else:
            self.scheme = "file"
            self.netloc = ""
            self.path = text
        self.local_path: str | None = None

    @property
    def filepath(self) -> str:
        """The path to use on this machine."""
        if self.local_path is not None:
            return self.local_path
        return self.path

    @property
    def is_remote(self) -> bool:
        """Whether the file must be staged to be used here (any scheme but ``file``)."""
        return self.scheme != "file"

    def _netloc_parts(self) -> SplitResult:
        return urlsplit("//" + self.netloc)

    @property
    def host(self) -> str | None:
        """The host part of the URL, or None for a local file."""
        return self._netloc_parts().hostname

    @property
    def port(self) -> int | None:
        """The port given in the URL, or None."""
        return self._netloc_parts().port

    @property
    def username(self) -> str | None:
        """The user given in the URL, or None."""
        return self._netloc_parts().username

    @property
    def password(self) -> str | None:
        """The password given in the URL, or None."""
        return self._netloc_parts().password

    @property
    def filename(self) -> str:
        """The last component of the path."""
        return os.path.basename(self.path)

    def __fspath__(self) -> str:
        return self.filepath

    def __str__(self) -> str:
        return self.filepath

    def __repr__(self) -> str:
        return f"File({self.url!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, File):
            return NotImplemented
        return self.url == other.url

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, File):
            return NotImplemented
        return self.url < other.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __getstate__(self) -> tuple[str, str | None]:
        return self.url, self.local_path

    def __setstate__(self, state: tuple[str, str | None]) -> None:
        self.__init__(state[0])  # type: ignore[misc]
        self.local_path = state[1]
