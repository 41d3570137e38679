"""Progress for executors: ``map(..., progress=...)`` and ``with executor.progress() as bar:``.

:func:`map_bar` and :func:`ordered_map` give an executor's ``map`` a bar that counts tasks as
they finish while the results keep map's order.  :class:`ExecutorProgress`, a base class of
every executor, gives ``progress()``: a block that counts every task submitted to the
executor while it is open, by shadowing the executor's submit path with instance
attributes that exist only while a block is open.  The bars are
:class:`~hpcfutures.progressbar.ProgressBar`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import IO, Any, ClassVar

from ..progressbar import ProgressBar, ProgressSink, backend_of
from .chunks import ordered_results

__all__ = ["ExecutorProgress", "map_bar", "ordered_map"]

_ABSENT = object()


def map_bar(progress: object, fn: Callable[..., Any]) -> ProgressBar | None:
    """The bar ``map(fn, ..., progress=progress)`` draws, labelled with ``fn``'s name, or None.

    None means a plain map: ``progress`` is off, or the bar would draw nothing (not on a
    terminal, ``HPCFUTURES_PROGRESS=0``).

    Raises:
        ConfigurationError: ``progress`` is none of True, False, a backend name or a ProgressSink.
    """
    backend = backend_of(progress)
    if backend is None:
        return None
    bar = ProgressBar(desc=getattr(fn, "__name__", None), backend=backend)
    return bar if bar.draws else None


def ordered_map(
    submit: Callable[..., Future[Any]],
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    bar: ProgressBar,
) -> Iterator[Any]:
    """``Executor.map`` through ``submit``, each future counted in ``bar`` as it finishes.

    The results come in map's order; the bar draws while they are taken and closes when
    they end or the caller stops, and the futures left are cancelled then, as in the stdlib.
    """
    end_time = None if timeout is None else time.monotonic() + timeout
    futures = []
    for args in zip(*iterables):
        future = submit(fn, *args)
        bar.add(future)
        futures.append(future)
    return bar.follow(ordered_results(futures, end_time, False, _cancel_all))


def _cancel_all(futures: list[Future[Any]]) -> None:
    for fut in futures:
        fut.cancel()


# Must be held while changing an executor's open blocks (_progress_bars) or its wrapped entries.
_BLOCKS_LOCK = threading.Lock()


class ExecutorProgress:
    """Gives an executor ``progress()``: a block that counts every task submitted to it.

    While a block is open, the methods named by ``_progress_entries`` (those every submit
    of the executor goes through: ``submit``, ``map``, options views, apps) are shadowed by
    instance attributes that add each future they return to the open blocks' bars.  When
    the last block closes the attributes go, so an executor with no open block runs its
    class's methods untouched and pays nothing.
    """

    #: The methods every submit of this executor goes through; each executor names its own,
    #: such that no submit passes through two of them.
    _progress_entries: ClassVar[tuple[str, ...]] = ("submit",)
    #: The bars of the open blocks (replaced, never changed in place, under _BLOCKS_LOCK).
    _progress_bars: tuple[ProgressBar, ...] = ()
    #: While a block is open: what each entry's instance attribute was before (_ABSENT: none).
    _progress_shadowed: dict[str, Any] = {}  # noqa: RUF012 - replaced, never changed in place

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool | str | ProgressSink | None = False,
    ) -> Iterator[Any]:
        """Return an iterator of ``fn(*args)`` over ``zip(*iterables)``, as ``Executor.map`` does.

        ``progress=True`` (or a backend name, or a ProgressSink) draws a bar that counts
        the calls as they finish, in any order, while the results keep map's order (see
        :func:`hpcfutures.progress`).

        Raises:
            ConfigurationError: ``progress`` is none of True, False, a backend name or a ProgressSink.
        """
        bar = map_bar(progress, fn)
        if bar is None:
            mapped: Iterator[Any] = super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)  # type: ignore[misc]
            return mapped
        return ordered_map(self.submit, fn, iterables, timeout, bar)  # type: ignore[attr-defined]

    def progress(
        self,
        *,
        desc: str | None = None,
        backend: str | ProgressSink | None = "auto",
        stream: IO[str] | None = None,
    ) -> ProgressBar:
        """Return a block that counts the tasks submitted to this executor while it is open.

        ``with executor.progress() as bar:`` counts every ``submit``, every task of a
        ``map``, and every submit through an ``options()`` view (and, on a
        DataflowExecutor, every app call), from any thread, and draws the bar until the
        block ends.  It does not wait for the tasks: at the end of the block it draws the
        counts as they are then, and stops drawing; ``bar.counts`` goes on counting the
        tasks it counted as they finish.  ``desc``, ``backend`` and ``stream`` are as for
        :func:`~hpcfutures.progress`.  A map with ``chunksize`` > 1 counts its chunks.

        Raises:
            ConfigurationError: an unknown ``backend``.
        """
        return _Block(self, desc=desc, backend=backend, stream=stream)


class _Block(ProgressBar):
    """The bar of one ``with executor.progress():`` block."""

    def __init__(self, executor: ExecutorProgress, **kwargs: Any):
        super().__init__(**kwargs)
        self._executor = executor

    def __enter__(self) -> ProgressBar:
        _open(self._executor, self)
        try:
            self.start()
        except BaseException:  # e.g. tqdm failed: leave the executor as it was
            _close(self._executor, self)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        _close(self._executor, self)
        self.close()


def _open(executor: ExecutorProgress, bar: ProgressBar) -> None:
    with _BLOCKS_LOCK:
        bars = executor._progress_bars
        if not bars:
            own = vars(executor)
            executor._progress_shadowed = {
                name: own.get(name, _ABSENT) for name in executor._progress_entries
            }
            for name in executor._progress_entries:
                setattr(executor, name, _counting(executor, getattr(executor, name)))
        executor._progress_bars = (*bars, bar)


def _close(executor: ExecutorProgress, bar: ProgressBar) -> None:
    with _BLOCKS_LOCK:
        bars = tuple(b for b in executor._progress_bars if b is not bar)
        executor._progress_bars = bars
        if not bars:
            for name, shadowed in executor._progress_shadowed.items():
                if shadowed is _ABSENT:
                    delattr(executor, name)  # the class's method shows through again
                else:
                    setattr(executor, name, shadowed)
            executor._progress_shadowed = {}


def _counting(executor: ExecutorProgress, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def counted(*args: Any, **kwargs: Any) -> Any:
        future = method(*args, **kwargs)
        for bar in executor._progress_bars:
            bar.add(future)
        return future

    return counted
