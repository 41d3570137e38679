"""Memoisation keys: the key of one call, and why two keys differ.

A :class:`CacheKey` (made by :func:`make_key`) is a digest of an app's function, from its
fingerprint (:mod:`.keys.fingerprint`), and of its resolved arguments, each normalised by
:mod:`.keys.normalise`: builtins and containers by value,
:class:`~hpcfutures.dataflow.files.File` by path plus a digest of its content (or its size
and mtime), and other types through a registry that :func:`register_cache_key` extends.
:func:`explain` says why two keys differ.

``normalise``, ``register_cache_key``, ``function_fingerprint`` and ``CacheKeyError`` live in
the keys package and are importable from here as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from typing import Any, Callable, Iterable, Mapping

from .files import AUTO_LOGNAME
from .keys.fingerprint import function_fingerprint, function_info
from .keys.normalise import (
    CacheKeyError,
    Unkeyable,
    canonical,
    check_file_digest,
    key_error,
    normalise,
    register_cache_key,
)

__all__ = [
    "CacheKey",
    "CacheKeyError",
    "explain",
    "function_fingerprint",
    "make_key",
    "normalise",
    "register_cache_key",
]

# Arguments whose Files are keyed by path alone: an app's outputs do not exist before its
# first run, and keying them by content would make every later call a miss.
_PATH_ONLY_ARGUMENTS = frozenset({"outputs"})
_STREAMS = ("stdout", "stderr")


# --------------------------------------------------------------------------------- the key


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """The memoisation key of one call.

    Attributes:
        key: hex sha256 of the whole key; equal keys mean the call may reuse a result.
        function: the function's fingerprint (:func:`function_fingerprint`).
        arguments: per argument (its parameter name, or its position ``"0"``, ``"1"``, …
            when it could not be matched to one), the hex digest of its normalised value.
    """

    key: str
    function: str
    arguments: dict[str, str]

    def __hash__(self) -> int:
        return hash(self.key)


def _digest(normal: Any) -> str:
    return hashlib.sha256(json.dumps(normal, separators=(",", ":")).encode()).hexdigest()


def _named_arguments(
    fn: Any, signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> list[tuple[str, Any]]:
    if signature is not None:
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:
            pass  # the call itself will fail; key it as given
        else:
            named: list[tuple[str, Any]] = []
            parameters = signature.parameters
            for name, value in bound.arguments.items():
                if parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    named.extend(value.items())
                else:
                    named.append((name, value))
            return named
    return [*((str(index), value) for index, value in enumerate(args)), *kwargs.items()]


def make_key(
    fn: Callable[..., Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    ignore: Iterable[str] = (),
    file_digest: str = "content",
) -> CacheKey:
    """Return the :class:`CacheKey` of calling ``fn(*args, **kwargs)``.

    Call it with the arguments' futures already resolved.  Positional arguments are matched
    to parameter names, so ``f(1, b=2)`` and ``f(1, 2)`` have the same key (parameters left
    to their defaults are not matched: the defaults are part of the fingerprint).  Arguments
    named in ``ignore`` are left out, and so are ``stdout``/``stderr`` when they are
    ``AUTO_LOGNAME`` (their paths are made per task).  Files in ``outputs`` are keyed by
    path alone, since they are what the call creates; other Files per ``file_digest``.

    Raises:
        CacheKeyError: an argument cannot be keyed; the message names it (and the part of
            it at fault) and how to register its type with :func:`register_cache_key`.
        ValueError: ``file_digest`` is not ``"content"``, ``"stat"`` or ``"path"``.
    """
    check_file_digest(file_digest)
    entry = function_info(fn)
    ignored = (
        ignore
        if isinstance(ignore, (frozenset, set))
        else frozenset((ignore,) if isinstance(ignore, str) else ignore)
    )
    arguments: dict[str, str] = {}
    for name, value in _named_arguments(fn, entry.signature, tuple(args), kwargs or {}):
        if name in ignored or (value is AUTO_LOGNAME and name in _STREAMS):
            continue
        mode = "path" if name in _PATH_ONLY_ARGUMENTS else file_digest
        try:
            arguments[name] = _digest(canonical(value, mode))
        except (Unkeyable, RecursionError) as error:
            raise key_error(error, f"argument {name!r}", name) from None
    whole = json.dumps([entry.fingerprint, sorted(arguments.items())], separators=(",", ":"))
    return CacheKey(hashlib.sha256(whole.encode()).hexdigest(), entry.fingerprint, arguments)


def explain(old: CacheKey | None, new: CacheKey) -> str:
    """Say whether ``new`` matches the stored key ``old``, and if not, what changed.

    Returns ``"hit"`` when the keys are equal, ``"no stored result for this call"`` when
    ``old`` is None, else the differences joined by ``"; "``: ``"the function's code
    changed"``, ``"argument 'x' changed"``, ``"argument 'y' is new"``, ``"argument 'z' was
    dropped"``.
    """
    if old is None:
        return "no stored result for this call"
    if old.key == new.key:
        return "hit"
    reasons = []
    if old.function != new.function:
        reasons.append("the function's code changed")
    for name, digest in new.arguments.items():
        if name not in old.arguments:
            reasons.append(f"argument {name!r} is new")
        elif old.arguments[name] != digest:
            reasons.append(f"argument {name!r} changed")
    reasons.extend(f"argument {name!r} was dropped" for name in old.arguments if name not in new.arguments)
    return "; ".join(reasons) or "the key changed"
