"""Memoisation for DataflowExecutor: reuse results of identical calls, now and across runs.

A cached task's key is computed once its dependencies are resolved (``memo.make_key``).
The Memoizer then answers in one of three ways: a stored result (from this run, or from
the checkpoint file of an earlier one), an identical call already in flight (the task
shares its outcome instead of running), or "run it" (the task leads, and its result is
remembered when it succeeds).  Failures are never remembered.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable

from .memo import CacheKey, explain, make_key

logger = logging.getLogger(__name__)


class Memoizer:
    """The cache of one DataflowExecutor: results in memory, calls in flight, the checkpoint."""

    def __init__(self, checkpoint: Any | None, file_digest: str):
        self.checkpoint = checkpoint
        self.file_digest = file_digest
        self._lock = threading.Lock()  # guards _results, _inflight, _seen
        self._results: dict[str, Any] = {}
        self._inflight: dict[str, Future[Any]] = {}
        self._seen: dict[str, CacheKey] = {}  # function identity -> the last key made for it
        self.unsaved: list[tuple[str, str]] = []  # (task name, why) for results not checkpointed

    def key(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ignore: tuple[str, ...]
    ) -> CacheKey:
        """Make the key of a call (raises CacheKeyError for an argument that cannot be keyed)."""
        key = make_key(fn, args, kwargs, ignore=ignore, file_digest=self.file_digest)
        with self._lock:
            self._seen[_identity(fn)] = key
        return key

    def lookup(self, key: CacheKey) -> tuple[bool, Any]:
        """Return ``(True, result)`` for a stored result of this key, else ``(False, None)``."""
        with self._lock:
            if key.key in self._results:
                return True, self._results[key.key]
        if self.checkpoint is not None:
            found, value = self.checkpoint.get(key.key)
            if found:
                with self._lock:
                    self._results[key.key] = value
                return True, value
        return False, None

    def lead_or_follow(self, key: CacheKey, future: Future[Any]) -> Future[Any] | None:
        """Register ``future`` as the call in flight for ``key``; return the leader if there is one."""
        with self._lock:
            leader = self._inflight.setdefault(key.key, future)
        return None if leader is future else leader

    def succeeded(self, key: CacheKey, value: Any, task_name: str) -> None:
        """Remember a leader's result (in memory, and in the checkpoint if there is one)."""
        with self._lock:
            self._results[key.key] = value
            self._inflight.pop(key.key, None)
        if self.checkpoint is not None:
            try:
                self.checkpoint.put(key.key, value, function=key.function, task_name=task_name)
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                logger.warning("result of task %s not checkpointed: %s", task_name, exc)
                with self._lock:
                    self.unsaved.append((task_name, str(exc)))

    def ended(self, key: CacheKey) -> None:
        """Forget the call in flight for ``key`` (it failed or was cancelled: nothing is stored)."""
        with self._lock:
            self._inflight.pop(key.key, None)

    def explain(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ignore: tuple[str, ...]
    ) -> str:
        """Say whether this call would hit, and if not, which part of its key changed."""
        new = make_key(fn, args, kwargs, ignore=ignore, file_digest=self.file_digest)
        found, _value = self.lookup(new)
        if found:
            return "hit: a result for this call is stored"
        with self._lock:
            old = self._seen.get(_identity(fn))
        return explain(old, new)

    def flush(self) -> int:
        """Write buffered results to the checkpoint now; return how many were written."""
        return self.checkpoint.flush() if self.checkpoint is not None else 0

    def close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()


def _identity(fn: Callable[..., Any]) -> str:
    target = getattr(fn, "func", fn)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
