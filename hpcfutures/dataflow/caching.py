"""Memoisation for DataflowExecutor: reuse results of identical calls, now and across runs.

A cached task's key is computed once its dependencies are resolved (``memo.make_key``).
The Memoizer then answers in one of three ways: a stored result (from this run, or from
the checkpoint file of an earlier one), an identical call already in flight (the task
shares its outcome instead of running), or "run it" (the task leads, and its result is
remembered when it succeeds).  Failures are never remembered.

Memory stays bounded: the results table in memory is an LRU of at most ``memo_size``
entries.  With a checkpoint, every result also lives in the checkpoint, so an evicted one
is read back from there; without one, an evicted result is forgotten and the next
identical call runs again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from .._validate import check_count
from .keys.fingerprint import callable_identity
from .memo import CacheKey, explain, make_key

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

__all__ = ["DEFAULT_MEMO_SIZE", "Memoizer"]

logger = logging.getLogger(__name__)

#: How many results a Memoizer keeps in memory unless told otherwise.
DEFAULT_MEMO_SIZE = 10_000


class Memoizer:
    """The cache of one DataflowExecutor: recent results in memory, calls in flight, the checkpoint.

    Args:
        checkpoint: where results are also stored, and found again once evicted from
            memory or in a later run; None for a cache that lives in memory only.
        file_digest: how local Files are keyed (``"content"``, ``"stat"`` or ``"path"``).
        memo_size: how many results to keep in memory, the most recently used ones (0 keeps
            none: every hit then reads the checkpoint).  Without a checkpoint, a result
            evicted from memory is forgotten, and the next identical call runs again.

    Raises:
        ConfigurationError: ``memo_size`` is not a whole number >= 0.

    A Memoizer is thread-safe.
    """

    def __init__(
        self,
        checkpoint: Checkpoint | None,
        file_digest: str,
        *,
        memo_size: int = DEFAULT_MEMO_SIZE,
    ):
        check_count(
            "memo_size",
            memo_size,
            0,
            note=f"results kept in memory, default {DEFAULT_MEMO_SIZE}; a checkpoint keeps more without memory",
        )
        self.checkpoint = checkpoint
        self.file_digest = file_digest
        self.memo_size = memo_size
        # Must be held while using or mutating _results, _inflight, _seen and unsaved.
        self._lock = threading.Lock()
        self._results: OrderedDict[str, Any] = OrderedDict()  # key -> result, least recent first
        self._inflight: dict[str, Future[Any]] = {}  # key -> the future of the call that leads
        self._seen: dict[tuple[str, str], CacheKey] = {}  # callable_identity -> the last key made for it
        self.unsaved: list[tuple[str, str]] = []  # (task name, why) for results not checkpointed

    def __len__(self) -> int:
        """Return how many results are held in memory (at most ``memo_size``)."""
        with self._lock:
            return len(self._results)

    def key(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ignore: tuple[str, ...]
    ) -> CacheKey:
        """Make the key of a call (raises CacheKeyError for an argument that cannot be keyed)."""
        return self.key_after(fn, args, kwargs, ignore)[0]

    def key_after(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ignore: tuple[str, ...]
    ) -> tuple[CacheKey, CacheKey | None]:
        """Make the key of a call, as :meth:`key`; also return the key made before it for the
        same function (None if there was none), which :func:`~.memo.explain` compares it with."""
        key = make_key(fn, args, kwargs, ignore=ignore, file_digest=self.file_digest)
        identity = callable_identity(fn)
        with self._lock:
            previous = self._seen.get(identity)
            self._seen[identity] = key
        return key, previous

    def lookup(self, key: CacheKey) -> tuple[bool, Any]:
        """Return ``(True, result)`` for a stored result of this key, else ``(False, None)``.

        A result evicted from memory is read back from the checkpoint (a fresh unpickled
        copy).  Raises :class:`~hpcfutures.dataflow.checkpoint.CheckpointError` when the
        checkpoint cannot be read.
        """
        where, value = self.find(key)
        return where is not None, value

    def find(self, key: CacheKey) -> tuple[str | None, Any]:
        """As :meth:`lookup`, saying where the result was found: ``("hit", result)`` from
        memory, ``("checkpoint", result)`` from the checkpoint file, or ``(None, None)``."""
        with self._lock:
            if key.key in self._results:
                self._results.move_to_end(key.key)
                return "hit", self._results[key.key]
        if self.checkpoint is not None:
            found, value = self.checkpoint.get(key.key)
            if found:
                with self._lock:
                    self._remember_locked(key.key, value)
                return "checkpoint", value
        return None, None

    def lead_or_follow(self, key: CacheKey, future: Future[Any]) -> Future[Any] | None:
        """Register ``future`` as the call in flight for ``key``; return the leader if there is one.

        None means ``future`` leads: run the call, then report with :meth:`succeeded` or
        :meth:`ended`.  A future returned is the leader's: take its outcome when it is done,
        or, if it is cancelled, call :meth:`take_over`.
        """
        with self._lock:
            leader = self._inflight.setdefault(key.key, future)
        return None if leader is future else leader

    def take_over(self, key: CacheKey, future: Future[Any], leader: Future[Any]) -> Future[Any] | None:
        """Let ``future`` lead ``key`` in place of ``leader``, which ended without a result.

        A follower calls this when the leader it waited for was cancelled, so that one
        follower runs the call and the others follow it, instead of all running.  Return
        None if ``future`` now leads (the first follower to ask, or any caller once the
        call is no longer in flight); else the future of the call that leads now, to follow
        in turn.  ``leader`` is replaced whether or not it has called :meth:`ended` yet.
        """
        with self._lock:
            current = self._inflight.get(key.key)
            if current is None or current is leader:
                self._inflight[key.key] = future
                return None
        return None if current is future else current

    def succeeded(self, key: CacheKey, value: Any, task_name: str, future: Future[Any] | None = None) -> None:
        """Remember a leader's result (in memory, and in the checkpoint if there is one).

        ``future`` is the leader's; when given, the call in flight is forgotten only if it
        still leads (it may have been replaced by :meth:`take_over`).
        """
        # Stored in the checkpoint before the call stops being in flight: an identical call
        # arriving in between follows the leader instead of missing an evicted result.
        if self.checkpoint is not None:
            try:
                self.checkpoint.put(key.key, value, function=key.function, task_name=task_name)
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                logger.warning("result of task %s not checkpointed: %s", task_name, exc)
                with self._lock:
                    self.unsaved.append((task_name, str(exc)))
        with self._lock:
            self._remember_locked(key.key, value)
            self._forget_locked(key, future)

    def failed(
        self, key: CacheKey, error: BaseException, task_name: str, future: Future[Any] | None = None
    ) -> None:
        """A leader's call failed: record the failure in the checkpoint (never reused, but
        :meth:`explain` shows it) and forget the call in flight, as :meth:`ended` does."""
        if self.checkpoint is not None:
            try:
                self.checkpoint.record_failure(key.key, exception=error, function=key.function, task_name=task_name)
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                logger.warning("failure of task %s not checkpointed: %s", task_name, exc)
        self.ended(key, future)

    def ended(self, key: CacheKey, future: Future[Any] | None = None) -> None:
        """Forget the call in flight for ``key`` (it failed or was cancelled: nothing is stored).

        ``future`` is the leader's; when given, the call in flight is forgotten only if it
        still leads (it may have been replaced by :meth:`take_over`).
        """
        with self._lock:
            self._forget_locked(key, future)

    def _forget_locked(self, key: CacheKey, future: Future[Any] | None) -> None:
        if future is None or self._inflight.get(key.key) is future:
            self._inflight.pop(key.key, None)

    def _remember_locked(self, key: str, value: Any) -> None:
        results = self._results
        results[key] = value
        results.move_to_end(key)
        while len(results) > self.memo_size:
            evicted, _ = results.popitem(last=False)
            logger.debug("memo table full (%d): result of key %s leaves memory", self.memo_size, evicted)

    def explain(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ignore: tuple[str, ...]
    ) -> str:
        """Say whether this call would hit, and if not, which part of its key changed."""
        new = make_key(fn, args, kwargs, ignore=ignore, file_digest=self.file_digest)
        found, _value = self.lookup(new)
        if found:
            return "hit: a result for this call is stored"
        with self._lock:
            old = self._seen.get(callable_identity(fn))
        why = explain(old, new)
        failure = self.checkpoint.failure(new.key) if self.checkpoint is not None else None
        if failure is not None:
            why = f"{why}; the last run of this call failed with {failure}, and failures are not reused"
        return why

    def flush(self) -> int:
        """Write buffered results to the checkpoint now; return how many were written."""
        return self.checkpoint.flush() if self.checkpoint is not None else 0

    def close(self) -> None:
        """Close the checkpoint, writing what it still buffers (see Checkpoint.close)."""
        if self.checkpoint is not None:
            self.checkpoint.close()
