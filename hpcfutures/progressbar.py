"""Progress bars over futures: ``for fut in hpcfutures.progress(futures): ...``.

:func:`progress` yields futures in the order they finish, as ``as_completed`` does, and
draws a bar with what is done, failed, running and left, and an estimate of the time to
go.  The bar is tqdm's or rich's when one is installed, else a plain one written to
standard error; it is off when that is not a terminal, when ``HPCFUTURES_PROGRESS`` is
``0``, ``false`` or ``off``, or with ``backend=None``.  It is redrawn at most ten times a
second, so a run of 100,000 tiny tasks does not spend its time drawing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from typing import IO, Any, Protocol

from .errors import ConfigurationError

#: Seconds between two redraws, at least.
REDRAW_INTERVAL = 0.1
BACKENDS = ("auto", "text", "tqdm", "rich")


@dataclass
class Counts:
    """Where the futures a bar follows stand."""

    total: int
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled


class ProgressSink(Protocol):
    """What draws a bar: told the counts at most ten times a second, and once at the end."""

    def update(self, counts: Counts, elapsed: float) -> None: ...

    def close(self, counts: Counts, elapsed: float) -> None: ...


def _eta(counts: Counts, elapsed: float) -> str:
    if not counts.finished or counts.finished >= counts.total:
        return "--:--"
    seconds = int(elapsed / counts.finished * (counts.total - counts.finished))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


def describe(counts: Counts, elapsed: float) -> str:
    """The counts in words: ``"12/100 done, 1 failed, 3 running, ETA 00:12"``."""
    parts = [f"{counts.finished}/{counts.total} done"]
    if counts.failed:
        parts.append(f"{counts.failed} failed")
    if counts.cancelled:
        parts.append(f"{counts.cancelled} cancelled")
    if counts.running:
        parts.append(f"{counts.running} running")
    parts.append(f"ETA {_eta(counts, elapsed)}")
    return ", ".join(parts)


class TextBar:
    """A plain bar on one terminal line, redrawn in place with a carriage return."""

    def __init__(self, stream: IO[str], desc: str | None, width: int = 30):
        self.stream = stream
        self.desc = f"{desc}: " if desc else ""
        self.width = width

    def _draw(self, counts: Counts, elapsed: float, end: str) -> None:
        filled = self.width * counts.finished // max(counts.total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.desc}|{bar}| {describe(counts, elapsed)}\x1b[K{end}")
        self.stream.flush()

    def update(self, counts: Counts, elapsed: float) -> None:
        self._draw(counts, elapsed, "")

    def close(self, counts: Counts, elapsed: float) -> None:
        self._draw(counts, elapsed, "\n")


class _TqdmBar:
    def __init__(self, stream: IO[str], desc: str | None, total: int):
        import tqdm  # type: ignore[import-not-found, import-untyped, unused-ignore]  # optional

        self.bar = tqdm.tqdm(total=total, desc=desc, file=stream, mininterval=REDRAW_INTERVAL)

    def update(self, counts: Counts, elapsed: float) -> None:
        self.bar.n = counts.finished
        self.bar.set_postfix_str(describe(counts, elapsed).split(", ", 1)[-1], refresh=True)

    def close(self, counts: Counts, elapsed: float) -> None:
        self.update(counts, elapsed)
        self.bar.close()


class _RichBar:
    def __init__(self, stream: IO[str], desc: str | None, total: int):
        from rich.console import Console  # type: ignore[import-not-found, import-untyped, unused-ignore]  # optional
        from rich.progress import Progress  # type: ignore[import-not-found, import-untyped, unused-ignore]  # optional

        self.progress = Progress(console=Console(file=stream), auto_refresh=False)
        self.progress.start()
        self.task = self.progress.add_task(desc or "tasks", total=total)

    def update(self, counts: Counts, elapsed: float) -> None:
        self.progress.update(self.task, completed=counts.finished, description=describe(counts, elapsed))
        self.progress.refresh()

    def close(self, counts: Counts, elapsed: float) -> None:
        self.update(counts, elapsed)
        self.progress.stop()


def _disabled_by_environment() -> bool:
    return os.environ.get("HPCFUTURES_PROGRESS", "").strip().lower() in ("0", "false", "off", "no")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def make_sink(backend: str | None, stream: IO[str], desc: str | None, total: int) -> ProgressSink | None:
    """The bar to draw on ``stream``, or None when progress is off (see the module docstring)."""
    if backend is None or _disabled_by_environment():
        return None
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return None
    if backend == "auto":
        backend = "tqdm" if _installed("tqdm") else "rich" if _installed("rich") else "text"
    if backend == "tqdm":
        return _TqdmBar(stream, desc, total)
    if backend == "rich":
        return _RichBar(stream, desc, total)
    return TextBar(stream, desc)


def progress(
    futures: Iterable[Future[Any]],
    *,
    total: int | None = None,
    desc: str | None = None,
    backend: str | None = "auto",
    stream: IO[str] | None = None,
) -> Iterator[Future[Any]]:
    """Yield ``futures`` as they finish, drawing a progress bar meanwhile.

    Args:
        futures: the futures to follow (any ``concurrent.futures.Future``).
        total: what the bar counts to; the number of futures by default.
        desc: a label in front of the bar.
        backend: ``"auto"`` (tqdm, else rich, else the plain bar), ``"text"``, ``"tqdm"``,
            ``"rich"``, or None for no bar.
        stream: where to draw; standard error by default.

    Raises:
        ConfigurationError: an unknown ``backend``.
    """
    pending = list(dict.fromkeys(futures))
    counts = Counts(total if total is not None else len(pending))
    sink = make_sink(backend, stream if stream is not None else sys.stderr, desc, counts.total)
    start = time.monotonic()
    next_draw = 0.0
    waiting = set(pending)
    try:
        for fut in as_completed(pending):
            waiting.discard(fut)
            if fut.cancelled():
                counts.cancelled += 1
            elif fut.exception() is not None:
                counts.failed += 1
            else:
                counts.done += 1
            now = time.monotonic()
            if sink is not None and now >= next_draw:
                counts.running = sum(1 for f in waiting if f.running())
                sink.update(counts, now - start)
                next_draw = now + REDRAW_INTERVAL
            yield fut
    finally:
        if sink is not None:
            counts.running = 0
            sink.close(counts, time.monotonic() - start)
