"""Progress bars over futures: ``progress``, ``as_completed``, ``map(..., progress=True)`` and
``with executor.progress():``.

:func:`progress` yields futures in the order they finish, as ``as_completed`` does, and
draws a bar with what is done, cached, failed, running and left, and an estimate of the
time to go; :func:`as_completed` is the stdlib's with an optional bar.  An executor's
``map(..., progress=True)`` keeps map's order while its bar counts results as they arrive,
and ``with executor.progress() as bar:`` counts every task submitted to that executor
inside the block (:mod:`hpcfutures.executors.progress`).

The bar is tqdm's or rich's when one is installed, else a plain one written to standard
error; it is off when that is not a terminal, when ``HPCFUTURES_PROGRESS`` is ``0``,
``false``, ``off`` or ``no``, or with ``backend=None``.  A :class:`ProgressSink` of your own
draws wherever it likes (a notebook, a log) and is switched off by the variable only.  A
thread redraws it at most ten times a second, so a run of 100,000 tiny tasks does not
spend its time drawing.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from .errors import ConfigurationError

__all__ = ["Counts", "ProgressBar", "ProgressSink", "as_completed", "backend_of", "progress"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two redraws, at least.
REDRAW_INTERVAL = 0.1
#: Seconds after which the bar is redrawn even though no count changed (the ETA moves).
IDLE_REDRAW = 1.0
#: How many unfinished futures, the oldest first, a redraw asks whether they run.
RUNNING_SCAN = 10_000
BACKENDS = ("auto", "text", "tqdm", "rich")

_ABSENT = object()


@dataclass
class Counts:
    """Where the futures a bar follows stand.  ``cached`` counts the ``done`` futures whose
    result came from a cache or a checkpoint (a DataflowFuture's ``cached``) without running."""

    total: int
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    cached: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled


class ProgressSink(Protocol):
    """What draws a bar: told the counts at most ten times a second, and once at the end.

    Both methods are called from one thread at a time (the bar's drawing thread, then the
    thread that closes the bar), never concurrently.
    """

    def update(self, counts: Counts, elapsed: float) -> None: ...

    def close(self, counts: Counts, elapsed: float) -> None: ...


def _eta(counts: Counts, elapsed: float) -> str:
    ran = counts.finished - counts.cached  # cached results come at once: they say nothing of the rate
    if ran <= 0 or counts.finished >= counts.total:
        return "--:--"
    seconds = int(elapsed / ran * (counts.total - counts.finished))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60:02d}:{seconds % 60:02d}"
    )


def describe(counts: Counts, elapsed: float) -> str:
    """The counts in words: ``"12/100 done, 4 cached, 1 failed, 3 running, ETA 00:12"``."""
    parts = [f"{counts.finished}/{counts.total} done"]
    if counts.cached:
        parts.append(f"{counts.cached} cached")
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
        self.bar.total = counts.total  # it grows in an executor's progress() block
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
        self.progress.update(
            self.task, total=counts.total, completed=counts.finished, description=describe(counts, elapsed)
        )
        self.progress.refresh()

    def close(self, counts: Counts, elapsed: float) -> None:
        self.update(counts, elapsed)
        self.progress.stop()


def _disabled_by_environment() -> bool:
    return os.environ.get("HPCFUTURES_PROGRESS", "").strip().lower() in ("0", "false", "off", "no")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _is_sink(obj: object) -> bool:
    return callable(getattr(obj, "update", None)) and callable(getattr(obj, "close", None))


def _choose(backend: str | ProgressSink | None, stream: IO[str]) -> str | ProgressSink | None:
    """Check ``backend``; return what will draw (a backend name, ``"auto"`` resolved, or the
    sink given), or None when nothing will (see the module docstring)."""
    if backend is None:
        return None
    if (
        isinstance(backend, str)
        and backend not in BACKENDS
        or not isinstance(backend, str)
        and not _is_sink(backend)
    ):
        raise ConfigurationError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, a ProgressSink (an object with "
            f"update and close methods) or None, got {backend!r}"
        )
    if _disabled_by_environment():
        return None
    if not isinstance(backend, str):
        return backend
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return None
    if backend == "auto":
        return "tqdm" if _installed("tqdm") else "rich" if _installed("rich") else "text"
    return backend


def _build(choice: str | ProgressSink, stream: IO[str], desc: str | None, total: int) -> ProgressSink:
    if not isinstance(choice, str):
        return choice
    if choice == "tqdm":
        return _TqdmBar(stream, desc, total)
    if choice == "rich":
        return _RichBar(stream, desc, total)
    return TextBar(stream, desc)


class ProgressBar:
    """Counts futures as they are added and as they finish, from any thread, and draws the counts.

    :meth:`add` counts a future (in the total too, unless ``total`` was given); its outcome
    is counted by a done-callback.  Between :meth:`start` and :meth:`close` (or inside
    ``with bar:``) a thread redraws the bar at most ten times a second, if it draws at all;
    :meth:`close` draws the final counts and stops counting new futures.  ``counts`` may be
    read at any time, whether or not anything is drawn.

    Args:
        total: what the bar counts to; None counts the futures added.
        desc: a label in front of the bar.
        backend: ``"auto"`` (tqdm, else rich, else the plain bar), ``"text"``, ``"tqdm"``,
            ``"rich"``, a :class:`ProgressSink`, or None for no bar.
        stream: where to draw; standard error by default.

    Raises:
        ConfigurationError: an unknown ``backend``.
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        desc: str | None = None,
        backend: str | ProgressSink | None = "auto",
        stream: IO[str] | None = None,
    ):
        self._stream = stream if stream is not None else sys.stderr
        self._choice = _choose(backend, self._stream)
        self._desc = desc
        self._fixed_total = total is not None
        # Must be held while changing _counts, _pending or _closed.
        self._lock = threading.Lock()
        self._counts = Counts(total or 0)
        self._pending: dict[Future[Any], None] = {}  # unfinished futures, oldest first
        self._closed = False
        self._began = time.monotonic()
        self._sink: ProgressSink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def draws(self) -> bool:
        """Whether this bar draws anything (not off a terminal, with ``backend=None``, ...)."""
        return self._choice is not None

    @property
    def counts(self) -> Counts:
        """A copy of the counts now; ``running`` is asked of the oldest unfinished futures
        (at most ``RUNNING_SCAN`` of them)."""
        with self._lock:
            counts = dataclasses.replace(self._counts)
            oldest = list(itertools.islice(self._pending, RUNNING_SCAN))
        counts.running = sum(1 for fut in oldest if fut.running())
        return counts

    def add(self, future: Future[Any]) -> None:
        """Count ``future`` (once, however often it is added) until it finishes; nothing once closed."""
        with self._lock:
            if self._closed or future in self._pending:
                return
            self._pending[future] = None
            if not self._fixed_total:
                self._counts.total += 1
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[Any]) -> None:
        # A done-callback, so it may run on an executor's own thread: it only counts.
        if future.cancelled():
            outcome = "cancelled"
        elif future.exception() is not None:
            outcome = "failed"
        else:
            outcome = "cached" if getattr(future, "cached", False) is True else "done"
        with self._lock:
            if self._pending.pop(future, _ABSENT) is _ABSENT:
                return  # counted already, by close()
            counts = self._counts
            if outcome == "cancelled":
                counts.cancelled += 1
            elif outcome == "failed":
                counts.failed += 1
            else:
                counts.done += 1
                if outcome == "cached":
                    counts.cached += 1

    def start(self) -> None:
        """Begin drawing, on a thread of its own, unless the bar draws nothing or has closed."""
        with self._lock:
            if self._choice is None or self._sink is not None or self._closed:
                return
            total = self._counts.total
        self._sink = _build(self._choice, self._stream, self._desc, total)
        self._thread = threading.Thread(target=self._draw_loop, name="hpcfutures-progress", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop drawing after drawing the final counts; count no future added from now on.

        Futures counted already go on being counted when they finish.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # A waiter (as_completed, result()) wakes before a future's done-callbacks run:
            # count the futures that are done but whose callback has not run yet.
            done = [fut for fut in self._pending if fut.done()]
        for fut in done:
            self._finished(fut)
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self._sink is not None:
            self._draw(self._sink.close, self.counts)

    def __enter__(self) -> ProgressBar:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def follow(self, results: Iterator[T]) -> Iterator[T]:
        """Yield from ``results``, drawing meanwhile; close the bar when they end or the caller stops."""
        self.start()
        try:
            yield from results
        finally:
            self.close()

    def _draw_loop(self) -> None:
        sink = self._sink
        assert sink is not None
        last: Counts | None = None
        idle_redraw = 0.0
        while True:
            counts = self.counts
            now = time.monotonic()
            if counts.total and (counts != last or now >= idle_redraw):  # a block's empty start: not yet
                if not self._draw(sink.update, counts):
                    return
                last, idle_redraw = counts, now + IDLE_REDRAW
            if self._stop.wait(REDRAW_INTERVAL):
                return

    def _draw(self, draw: Callable[[Counts, float], None], counts: Counts) -> bool:
        try:
            draw(counts, time.monotonic() - self._began)
        except Exception:
            logger.warning("the progress bar %r failed and draws no more", self._sink, exc_info=True)
            self._choice = None
            self._sink = None
            return False
        return True


def progress(
    futures: Iterable[Future[Any]],
    *,
    total: int | None = None,
    desc: str | None = None,
    backend: str | ProgressSink | None = "auto",
    stream: IO[str] | None = None,
) -> Iterator[Future[Any]]:
    """Yield ``futures`` as they finish, drawing a progress bar meanwhile.

    Args:
        futures: the futures to follow (any ``concurrent.futures.Future``); duplicates count once.
        total: what the bar counts to; the number of futures by default.
        desc: a label in front of the bar.
        backend: ``"auto"`` (tqdm, else rich, else the plain bar), ``"text"``, ``"tqdm"``,
            ``"rich"``, a :class:`ProgressSink`, or None for no bar.
        stream: where to draw; standard error by default.

    Raises:
        ConfigurationError: an unknown ``backend``.
    """
    pending = list(dict.fromkeys(futures))
    bar = ProgressBar(
        total=total if total is not None else len(pending), desc=desc, backend=backend, stream=stream
    )
    yield from _completed(bar, pending, None)


def _completed(bar: ProgressBar, futures: list[Future[T]], timeout: float | None) -> Iterator[Future[T]]:
    if not bar.draws:  # nothing to draw: no counting either
        yield from cf.as_completed(futures, timeout)
        return
    for fut in futures:
        bar.add(fut)
    yield from bar.follow(cf.as_completed(futures, timeout))


def backend_of(progress: object) -> str | ProgressSink | None:
    """The backend that a ``progress=`` argument asks for (None: no bar).

    Raises:
        ConfigurationError: ``progress`` is none of True, False, None, a backend name or a ProgressSink.
    """
    if progress is False or progress is None:
        return None
    if progress is True:
        return "auto"
    if isinstance(progress, str) and progress in BACKENDS:
        return progress
    if not isinstance(progress, str) and _is_sink(progress):
        return progress  # type: ignore[return-value]  # it has update and close
    raise ConfigurationError(
        f"progress must be True, False, a backend name ({', '.join(map(repr, BACKENDS))}) or a "
        f"ProgressSink (an object with update and close methods), got {progress!r}"
    )


def as_completed(
    fs: Iterable[Future[T]],
    timeout: float | None = None,
    *,
    progress: bool | str | ProgressSink | None = False,
) -> Iterator[Future[T]]:
    """Yield the futures ``fs`` as they finish, as ``concurrent.futures.as_completed`` does.

    Args:
        fs: the futures; duplicates are yielded once.
        timeout: seconds from the first ``next()`` after which ``TimeoutError`` is raised if
            some future has not finished; None waits for ever.
        progress: True (or a backend name, or a :class:`ProgressSink`) draws a bar meanwhile,
            as :func:`progress` does.

    Raises:
        ConfigurationError: ``progress`` is none of True, False, a backend name or a ProgressSink.
    """
    backend = backend_of(progress)
    if backend is None:
        return cf.as_completed(fs, timeout)
    futures = list(dict.fromkeys(fs))
    bar = ProgressBar(total=len(futures), backend=backend)
    return _completed(bar, futures, timeout)
