"""``File``: a path or URL that apps take as input and declare as output."""

from __future__ import annotations

import os
from urllib.parse import urlparse


class File(os.PathLike[str]):
    """A file named by a local path or a URL (``file://``, ``http://``, ``ftp://``, …).

    It is ``os.PathLike``, so ``open(File("a.txt"))`` works; ``filepath`` is the local path
    the file has (for a URL, the path part, until staging gives it a local copy).
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
        parsed = urlparse(text)
        if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
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
        return isinstance(other, File) and (self.url, self.local_path) == (other.url, other.local_path)

    def __hash__(self) -> int:
        return hash((self.url, self.local_path))

    def __getstate__(self) -> tuple[str, str | None]:
        return self.url, self.local_path

    def __setstate__(self, state: tuple[str, str | None]) -> None:
        self.__init__(state[0])  # type: ignore[misc]
        self.local_path = state[1]
