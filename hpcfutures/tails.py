"""The end of a log file, as the text a job status or an error message quotes.

One reader for every layer: a provider's job tails (:class:`~hpcfutures.providers.JobStatus`),
the interchange's stderr when it dies, a failed bash app's stderr.  It reads a bounded number
of bytes however large the file is, never raises for a file it cannot read, and replaces
bytes that are not UTF-8, so a binary crash dump cannot break the error it is quoted in.

Imports only the standard library: worker-side code uses it.
"""

from __future__ import annotations

import os

#: How many trailing lines a tail keeps by default.
TAIL_LINES = 20

#: At most this many trailing bytes of a file are read by default to build a tail.
TAIL_BYTES = 16 * 1024


def read_tail(path: str | os.PathLike[str], lines: int | None = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """Return the last *lines* lines of the text file at *path*, reading at most *max_bytes*.

    Args:
        path: the file.
        lines: how many lines to keep at most; None: as many as the bytes read hold.
        max_bytes: how many bytes to read from the end of the file at most.

    Returns:
        The lines joined with ``"\\n"``, as :func:`last_lines` trims them, or ``""`` when the
        file is missing or unreadable.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            # One byte more, before the start, tells whether the first line read is whole.
            f.seek(max(0, start - 1))
            data = f.read(max_bytes + 1 if start else max_bytes)
    except OSError:
        return ""
    cut = start > 0 and data[:1] != b"\n"
    if start:
        data = data[1:]
    return last_lines(data.decode("utf-8", errors="replace"), lines, cut=cut)


def last_lines(text: str, lines: int | None = TAIL_LINES, *, cut: bool = False) -> str:
    """Return the last *lines* lines of *text* (all with None), joined with ``"\\n"``.

    Blank lines at either end and trailing whitespace are dropped, so the result ends with
    what was last written.  *cut* says the text is the end of something longer, cut at a byte
    limit: its first line is then a fragment and is dropped, unless it is the only line.
    For text read elsewhere, such as the output of ``tail -c`` run on another host.
    """
    parts = text.rstrip().splitlines()
    if cut and len(parts) > 1:
        parts = parts[1:]
    if lines is not None:
        parts = parts[-lines:] if lines > 0 else []
    first = 0
    while first < len(parts) and not parts[first].strip():
        first += 1
    return "\n".join(parts[first:])
