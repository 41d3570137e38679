"""Function fingerprints: a digest of what a function is and does, cached per function object.

:func:`function_fingerprint` digests a function's identity, code, defaults and closure
(not its file or line numbers); :func:`function_info` also gives its signature, from a
per-function cache that notices a reassigned ``__code__`` or ``__defaults__``.
:func:`callable_identity` names a callable by module and qualified name.  Importing this
module registers the conversion of functions passed as arguments (they are keyed by their
fingerprint) with :mod:`.normalise`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import threading
import types
import weakref
from typing import Any, Callable

from .normalise import Unkeyable, builtin_converter, canonical, key_error, qualified

__all__ = ["FunctionInfo", "callable_identity", "function_fingerprint", "function_info"]


def callable_identity(fn: Any) -> tuple[str, str]:
    """Return ``(module, qualified name)`` naming the callable ``fn``.

    A ``functools.partial`` is named by the function it wraps; a method of a builtin type
    (``str.join``) by its class's module; a callable instance by its class.  This names
    what is called, for fingerprints and for finding the previous key of "the same
    function"; it says nothing of the code, which :func:`function_fingerprint` digests.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    module: str = (
        getattr(fn, "__module__", None) or getattr(getattr(fn, "__objclass__", None), "__module__", None) or ""
    )
    qualname: str | None = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if qualname is None:  # a callable instance
        qualname = type(fn).__qualname__
        module = type(fn).__module__
    return module, qualname


def _const(value: Any) -> Any:
    if isinstance(value, types.CodeType):
        return ["code", _code_digest(value)]
    if type(value) is tuple:
        return ["tuple", *map(_const, value)]
    if type(value) is frozenset:  # its repr's order depends on the hash seed
        return ["frozenset", *sorted(map(_const, value))]
    return [type(value).__name__, repr(value)]


def _code_digest(code: types.CodeType) -> str:
    """Digest what a code object does, but not where it is (file, line numbers)."""
    parts = [
        code.co_name,
        getattr(code, "co_qualname", code.co_name),
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_code.hex(),
        [_const(value) for value in code.co_consts],
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        # Exception-table entries are bytecode offsets, not line numbers (Python 3.11+).
        getattr(code, "co_exceptiontable", b"").hex(),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _soft(value: Any) -> Any:
    """Normalise a default or a closure cell; what cannot be keyed counts by its type.

    Files count by path: the fingerprint is cached, so their content would be read once only.
    """
    try:
        return canonical(value, "path")
    except (Unkeyable, RecursionError):
        return ["unkeyable", qualified(type(value))]


def _compute_fingerprint(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        try:
            bound = [canonical(list(fn.args), "content"), canonical(dict(fn.keywords), "content")]
        except (Unkeyable, RecursionError) as error:
            where = f"the arguments bound by functools.partial({callable_identity(fn.func)[1]})"
            raise key_error(error, where, None) from None
        parts: list[Any] = ["partial", function_fingerprint(fn.func), bound]
    elif isinstance(fn, types.MethodType):
        # The instance's state is keyed when it can be, like a closure's cells.
        parts = ["method", function_fingerprint(fn.__func__), _soft(fn.__self__)]
    elif isinstance(getattr(fn, "__code__", None), types.CodeType):
        closure = getattr(fn, "__closure__", None) or ()
        cells = []
        for cell in closure:
            try:
                contents = cell.cell_contents
            except ValueError:  # not yet assigned
                cells.append(["empty"])
                continue
            cells.append(_soft(contents))
        parts = [
            "function",
            *callable_identity(fn),
            _code_digest(fn.__code__),
            [_soft(value) for value in (getattr(fn, "__defaults__", None) or ())],
            _soft(dict(getattr(fn, "__kwdefaults__", None) or {})),
            cells,
        ]
    elif (
        not isinstance(fn, (types.BuiltinFunctionType, type))
        and callable(fn)
        and not hasattr(fn, "__qualname__")
    ):
        call = type(fn).__call__
        parts = [
            "callable",
            *callable_identity(fn),
            function_fingerprint(call) if inspect.isfunction(call) else "",
        ]
    else:
        parts = ["builtin", *callable_identity(fn)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class FunctionInfo:
    """What is cached per function: its fingerprint and signature, and what they came from."""

    __slots__ = ("fingerprint", "signature", "source")

    def __init__(self, fingerprint: str, signature: inspect.Signature | None, source: tuple[Any, ...]):
        self.fingerprint = fingerprint
        self.signature = signature  # None when inspect cannot tell (some builtins)
        self.source = source


def _source(fn: Any) -> tuple[Any, ...]:
    # Reassigning __code__ or the defaults must invalidate the cached entry; mutating a
    # default or a closure cell in place is not seen (that would cost a walk per call).
    return (
        getattr(fn, "__code__", None),
        getattr(fn, "__defaults__", None),
        getattr(fn, "__kwdefaults__", None),
    )


class _Recursive(Exception):
    """A function's fingerprint was asked for while it is being computed."""


# Functions whose fingerprint is being computed, per thread: a closure that refers to its own
# function (a recursive inner function) must not recurse forever.
_active = threading.local()

_cache_lock = threading.Lock()  # Must be held while mutating _by_ref or _by_id.
_by_ref: weakref.WeakKeyDictionary[Any, FunctionInfo] = weakref.WeakKeyDictionary()
_by_id: dict[int, tuple[Any, FunctionInfo]] = {}  # for callables without weak references; keeps them alive
_BY_ID_LIMIT = 1024


def _entry(fn: Any) -> FunctionInfo:
    source = _source(fn)
    try:
        entry = _by_ref.get(fn)
        weak = True
    except TypeError:  # not weakly referenceable, or not hashable
        held = _by_id.get(id(fn))
        entry = held[1] if held is not None and held[0] is fn else None
        weak = False
    if entry is not None and all(a is b for a, b in zip(entry.source, source)):
        return entry
    active: set[int] = _active.__dict__.setdefault("ids", set())
    if id(fn) in active:
        raise _Recursive
    active.add(id(fn))
    try:
        fingerprint = _compute_fingerprint(fn)
    finally:
        active.discard(id(fn))
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    entry = FunctionInfo(fingerprint, signature, source)
    if isinstance(fn, types.MethodType):  # a new object at each attribute access: not worth keeping
        return entry
    with _cache_lock:
        if weak:
            _by_ref[fn] = entry
        else:
            if len(_by_id) >= _BY_ID_LIMIT:
                _by_id.clear()
            _by_id[id(fn)] = (fn, entry)
    return entry


def function_info(fn: Callable[..., Any]) -> FunctionInfo:
    """Return the fingerprint and signature of ``fn``, computed once per function object.

    Raises:
        CacheKeyError: ``fn`` is a ``functools.partial`` that binds an argument that cannot
            be keyed, or is nested too deeply.
    """
    try:
        return _entry(fn)
    except _Recursive:  # cannot happen at top level; keep mypy and readers sure of it
        raise AssertionError("recursive fingerprint at top level") from None
    except (Unkeyable, RecursionError) as error:
        raise key_error(error, "a function argument", None) from None


def function_fingerprint(fn: Callable[..., Any]) -> str:
    """Return a hex digest of what ``fn`` is and does, but not of where it is defined.

    The digest covers the module and qualified name and the code object (bytecode,
    constants, names, flags, argument counts; nested code objects recursively) but not the
    file name or line numbers, so moving a function keeps its fingerprint and editing its
    body or a constant changes it.  It also covers the default argument values and the
    closure's cells (normalised, or by type name when they cannot be; Files by path alone).  A
    ``functools.partial`` is the fingerprint of its function plus its bound arguments; a
    callable without code (a builtin) is its module and qualified name; a bound method is
    its function plus its instance (normalised, or by type name).  Functions it calls
    through globals are not covered, and a docstring is a constant like any other.  The
    result is cached per function object: reassigning ``__code__`` or ``__defaults__`` is
    seen, mutating a default or a closure cell in place is not.

    Raises:
        CacheKeyError: a ``functools.partial`` binds an argument that cannot be keyed.
    """
    try:
        return _entry(fn).fingerprint
    except _Recursive:
        return hashlib.sha256(repr(["recursive", *callable_identity(fn)]).encode()).hexdigest()


# A function passed as an argument is keyed by its fingerprint.
@builtin_converter(types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)
def _convert_function(value: Any, mode: str) -> Any:
    return ["function", function_fingerprint(value)]
