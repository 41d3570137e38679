"""Memoisation keys: a digest of an app's function and of its (resolved) arguments.

A :class:`CacheKey` is computed from the function's identity and a fingerprint of its code
(:func:`function_fingerprint`) and from each argument normalised by :func:`normalise`:
builtins and containers by value, :class:`~hpcfutures.dataflow.files.File` by path plus a
digest of its content (or its size and mtime), and other types through a registry that
:func:`register_cache_key` extends.  :func:`explain` says why two keys differ.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import fractions
import functools
import hashlib
import inspect
import json
import os
import stat
import sys
import threading
import types
import uuid
import weakref
from enum import Enum
from pathlib import PurePath
from typing import Any, Callable, Iterable, Mapping, TypeVar, overload

from ..errors import HpcFuturesError
from .files import File

__all__ = [
    "CacheKey",
    "CacheKeyError",
    "explain",
    "function_fingerprint",
    "make_key",
    "normalise",
    "register_cache_key",
]

T = TypeVar("T")

# How a local File enters a key: "content" (sha256 of its bytes), "stat" (its size and
# mtime) or "path" (its path alone).
_FILE_DIGESTS = ("content", "stat", "path")

# Arguments whose Files are keyed by path alone: an app's outputs do not exist before its
# first run, and keying them by content would make every later call a miss.
_PATH_ONLY_ARGUMENTS = frozenset({"outputs"})
_STREAMS = ("stdout", "stderr")
_CHUNK = 1 << 20


class CacheKeyError(HpcFuturesError, TypeError):
    """An argument (or a part of one) has a type that cannot be turned into a cache key."""


class _Unkeyable(Exception):
    """Raised inside normalisation; each container on the way up adds where it was found."""

    def __init__(self, cls: type, reason: str = ""):
        super().__init__(cls)
        self.cls = cls
        self.reason = reason
        self.path: list[str] = []  # innermost first


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- normalisation


def _base_converter(value: Any, mode: str) -> Any:
    raise _Unkeyable(type(value))


# The registry: built-in converters take (value, mode); user ones are _UserConverter objects.
_converter = functools.singledispatch(_base_converter)


class _UserConverter:
    """A conversion given to :func:`register_cache_key`: ``fn(value)`` returns builtins."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def __call__(self, value: Any, mode: str) -> Any:
        return self.fn(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _norm(value: Any, mode: str) -> Any:
    cls = type(value)
    if cls in _SCALARS:
        return value
    exact = _EXACT.get(cls)
    if exact is not None:
        return exact(value, mode)
    return _norm_other(value, cls, mode)


def _items(tag: str, values: Iterable[Any], mode: str) -> list[Any]:
    out: list[Any] = [tag]
    for index, item in enumerate(values):
        try:
            out.append(_norm(item, mode))
        except _Unkeyable as error:
            error.path.append(f"item {index}")
            raise
    return out


def _norm_list(value: list[Any], mode: str) -> Any:
    return _items("list", value, mode)


def _norm_tuple(value: tuple[Any, ...], mode: str) -> Any:
    return _items("tuple", value, mode)


def _sort_key(item: Any) -> str:
    return json.dumps(item, separators=(",", ":"))


def _norm_set(value: set[Any] | frozenset[Any], mode: str) -> Any:
    try:
        members = [_norm(item, mode) for item in value]
    except _Unkeyable as error:
        error.path.append("an element")
        raise
    members.sort(key=_sort_key)
    return [type(value).__name__ if type(value) in (set, frozenset) else "set", *members]


def _norm_dict(value: Mapping[Any, Any], mode: str) -> Any:
    pairs = []
    for key, item in value.items():
        try:
            normal_key = _norm(key, mode)
        except _Unkeyable as error:
            error.path.append(f"key {key!r}")
            raise
        try:
            pairs.append((_sort_key(normal_key), normal_key, _norm(item, mode)))
        except _Unkeyable as error:
            error.path.append(f"key {key!r}")
            raise
    pairs.sort(key=lambda pair: pair[0])
    return ["dict", *([k, v] for _, k, v in pairs)]


def _norm_bytes(value: bytes | bytearray, mode: str) -> Any:
    return [type(value).__name__, value.hex()]


_EXACT: dict[type, Callable[[Any, str], Any]] = {
    list: _norm_list,
    tuple: _norm_tuple,
    dict: _norm_dict,
    set: _norm_set,
    frozenset: _norm_set,
    bytes: _norm_bytes,
    bytearray: _norm_bytes,
}


def _fields(tag: str, cls: type, named: Iterable[tuple[str, Any]], mode: str) -> list[Any]:
    out: list[Any] = [tag, _qualified(cls)]
    for name, item in named:
        try:
            out.append([name, _norm(item, mode)])
        except _Unkeyable as error:
            error.path.append(f"field {name!r}")
            raise
    return out


def _norm_numpy(value: Any, np: Any, mode: str) -> Any:
    dtype = value.dtype
    described = str(dtype.descr) if dtype.fields else dtype.str
    if isinstance(value, np.generic):
        if dtype.hasobject:
            return ["numpy", described, _norm(value.item(), mode)]
        return ["numpy", described, value.tobytes().hex()]
    if dtype.hasobject:  # the bytes would be pointers: key the objects themselves
        return ["ndarray", described, list(value.shape), _norm(value.tolist(), mode)]
    data = np.ascontiguousarray(value)
    return ["ndarray", described, list(value.shape), hashlib.sha256(data.view(np.uint8)).hexdigest()]


def _norm_other(value: Any, cls: type, mode: str) -> Any:
    converter = _converter.dispatch(cls)
    if isinstance(converter, _UserConverter):
        try:
            return ["custom", _qualified(cls), _norm(converter.fn(value), mode)]
        except _Unkeyable as error:
            error.path.append(f"the value register_cache_key({cls.__qualname__}) returned")
            raise
    np = sys.modules.get("numpy")  # if numpy is not imported, the value is no numpy array
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return _norm_numpy(value, np, mode)
    if isinstance(value, Enum):
        name = value.name
        return ["enum", _qualified(cls), name if name is not None else _norm(value.value, mode)]
    if isinstance(value, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return _fields("namedtuple", cls, zip(cls._fields, value), mode)  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        named = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return _fields("dataclass", cls, named, mode)
    return converter(value, mode)


@_converter.register(int)
def _(value: int, mode: str) -> Any:
    return int(value)


@_converter.register(float)
def _(value: float, mode: str) -> Any:
    return float(value)


@_converter.register(str)
def _(value: str, mode: str) -> Any:
    return str(value)


@_converter.register(complex)
def _(value: complex, mode: str) -> Any:
    return ["complex", value.real, value.imag]


@_converter.register(bytes)
@_converter.register(bytearray)
@_converter.register(memoryview)
def _(value: Any, mode: str) -> Any:
    return ["bytes", bytes(value).hex()]


@_converter.register(list)
def _(value: list[Any], mode: str) -> Any:
    return _items("list", value, mode)


@_converter.register(tuple)
def _(value: tuple[Any, ...], mode: str) -> Any:
    return _items("tuple", value, mode)


@_converter.register(dict)
@_converter.register(types.MappingProxyType)
def _(value: Mapping[Any, Any], mode: str) -> Any:
    return _norm_dict(value, mode)


@_converter.register(set)
@_converter.register(frozenset)
def _(value: Any, mode: str) -> Any:
    return _norm_set(value, mode)


@_converter.register(range)
def _(value: range, mode: str) -> Any:
    return ["range", value.start, value.stop, value.step]


@_converter.register(decimal.Decimal)
def _(value: decimal.Decimal, mode: str) -> Any:
    return ["Decimal", str(value)]


@_converter.register(fractions.Fraction)
def _(value: fractions.Fraction, mode: str) -> Any:
    return ["Fraction", value.numerator, value.denominator]


@_converter.register(datetime.date)  # also datetime.datetime
@_converter.register(datetime.time)
def _(value: Any, mode: str) -> Any:
    return [type(value).__name__, value.isoformat()]


@_converter.register(datetime.timedelta)
def _(value: datetime.timedelta, mode: str) -> Any:
    return ["timedelta", value.days, value.seconds, value.microseconds]


@_converter.register(uuid.UUID)
def _(value: uuid.UUID, mode: str) -> Any:
    return ["UUID", str(value)]


@_converter.register(PurePath)
def _(value: PurePath, mode: str) -> Any:
    return ["path", str(value)]


@_converter.register(type)
def _(value: type, mode: str) -> Any:
    return ["type", _qualified(value)]


@_converter.register(types.ModuleType)
def _(value: types.ModuleType, mode: str) -> Any:
    return ["module", value.__name__]


@_converter.register(types.FunctionType)
@_converter.register(types.BuiltinFunctionType)
@_converter.register(types.MethodType)
@_converter.register(functools.partial)
def _(value: Any, mode: str) -> Any:
    return ["function", function_fingerprint(value)]


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@_converter.register(File)
def _(value: File, mode: str) -> Any:
    if value.scheme != "file" or mode == "path":
        return ["File", value.url]
    path = value.filepath
    try:
        info = os.stat(path)
    except OSError:
        return ["File", value.url, "missing"]
    if stat.S_ISDIR(info.st_mode):  # a directory has no content to digest: key its stat
        return ["File", value.url, "directory", info.st_mtime_ns]
    if mode == "stat":
        return ["File", value.url, "stat", info.st_size, info.st_mtime_ns]
    try:
        return ["File", value.url, "sha256", _file_sha256(path)]
    except OSError as error:
        raise _Unkeyable(File, f"its content cannot be read ({error})") from error


def _check_mode(file_digest: str) -> None:
    if file_digest not in _FILE_DIGESTS:
        raise ValueError(
            f"file_digest must be one of {', '.join(map(repr, _FILE_DIGESTS))}, got {file_digest!r}"
        )


def _error(error: _Unkeyable | RecursionError, where: str, name: str | None) -> CacheKeyError:
    if isinstance(error, RecursionError):
        return CacheKeyError(
            f"cannot compute a cache key for {where}: it is nested too deeply or refers to itself"
        )
    place = " → ".join([where, *reversed(error.path)])
    if error.reason:
        return CacheKeyError(f"cannot compute a cache key for {place}: {error.reason}")
    typename = _qualified(error.cls)
    fix = (
        f"register a conversion to builtins with "
        f"hpcfutures.dataflow.memo.register_cache_key({typename}, lambda v: ...)"
    )
    if name is not None:
        fix += f", or leave the argument out of the key with ignore_for_cache=[{name!r}]"
    return CacheKeyError(f"cannot compute a cache key for {place}: type {typename} is not supported; {fix}")


def normalise(value: Any, *, file_digest: str = "content") -> Any:
    """Return a canonical, JSON-serialisable form of ``value`` for a cache key.

    Builtins are kept; containers become lists tagged with their kind (dicts and sets are
    sorted); named tuples, dataclasses, enums, paths, functions, NumPy arrays and
    :class:`File` objects are tagged with their type.  A local ``File`` is keyed by its URL
    plus, per ``file_digest``, the sha256 of its content (``"content"``), its size and
    mtime (``"stat"``) or nothing more (``"path"``); a missing one by its URL and a marker.

    Raises:
        CacheKeyError: a part of ``value`` has a type with no conversion; the message says
            where it is and how to register one with :func:`register_cache_key`.
        ValueError: ``file_digest`` is not one of the three modes.
    """
    _check_mode(file_digest)
    try:
        return _norm(value, file_digest)
    except (_Unkeyable, RecursionError) as error:
        raise _error(error, "the value", None) from None


@overload
def register_cache_key(cls: type[T], fn: Callable[[T], Any]) -> Callable[[T], Any]: ...


@overload
def register_cache_key(
    cls: type[T], fn: None = None
) -> Callable[[Callable[[T], Any]], Callable[[T], Any]]: ...


def register_cache_key(cls: type[T], fn: Callable[[T], Any] | None = None) -> Any:
    """Key instances of ``cls`` (and its subclasses) by ``fn(value)``.

    ``fn`` returns something :func:`normalise` accepts (builtins, containers, or other
    registered types); the key also records ``cls``'s qualified name, so two types that
    convert to equal values do not collide.  Without ``fn``, return a decorator.  The exact
    builtin types (``int``, ``str``, ``list``, ``dict``, …) cannot be re-registered.

    Raises:
        TypeError: ``cls`` is not a class, is an exact builtin type, or ``fn`` is not callable.
    """
    if fn is None:
        return lambda given: register_cache_key(cls, given)
    if not isinstance(cls, type):
        raise TypeError(f"register_cache_key needs a class, got {cls!r}")
    if cls in _SCALARS or cls in _EXACT:
        raise TypeError(f"register_cache_key cannot change how the builtin type {cls.__name__} is keyed")
    if not callable(fn):
        raise TypeError(f"register_cache_key needs a function for {cls.__qualname__}, got {fn!r}")
    _converter.register(cls, _UserConverter(fn))
    return fn


# ------------------------------------------------------------------------ function fingerprint


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
        return _norm(value, "path")
    except (_Unkeyable, RecursionError):
        return ["unkeyable", _qualified(type(value))]


# Functions whose fingerprint is being computed, per thread: a closure that refers to its own
# function (a recursive inner function) must not recurse forever.
_active = threading.local()


def _identity(fn: Any) -> list[Any]:
    module = getattr(fn, "__module__", None) or getattr(getattr(fn, "__objclass__", None), "__module__", "")
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if qualname is None:  # a callable instance
        qualname = type(fn).__qualname__
        module = type(fn).__module__
    return [module, qualname]


def _compute_fingerprint(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        try:
            bound = [_norm(list(fn.args), "content"), _norm(dict(fn.keywords), "content")]
        except (_Unkeyable, RecursionError) as error:
            raise _error(
                error, f"the arguments bound by functools.partial({_identity(fn.func)[1]})", None
            ) from None
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
            *_identity(fn),
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
        parts = ["callable", *_identity(fn), function_fingerprint(call) if inspect.isfunction(call) else ""]
    else:
        parts = ["builtin", *_identity(fn)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class _Entry:
    """What is cached per function: its fingerprint and signature, and what they came from."""

    __slots__ = ("fingerprint", "signature", "source")

    def __init__(self, fingerprint: str, signature: inspect.Signature | None, source: tuple[Any, ...]):
        self.fingerprint = fingerprint
        self.signature = signature
        self.source = source


def _source(fn: Any) -> tuple[Any, ...]:
    # Reassigning __code__ or the defaults must invalidate the cached entry; mutating a
    # default or a closure cell in place is not seen (that would cost a walk per call).
    return (
        getattr(fn, "__code__", None),
        getattr(fn, "__defaults__", None),
        getattr(fn, "__kwdefaults__", None),
    )


_cache_lock = threading.Lock()  # Must be held while mutating _by_ref or _by_id.
_by_ref: weakref.WeakKeyDictionary[Any, _Entry] = weakref.WeakKeyDictionary()
_by_id: dict[int, tuple[Any, _Entry]] = {}  # for callables without weak references; keeps them alive
_BY_ID_LIMIT = 1024


def _entry(fn: Any) -> _Entry:
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
    entry = _Entry(fingerprint, signature, source)
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


class _Recursive(Exception):
    """A function's fingerprint was asked for while it is being computed."""


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
        return hashlib.sha256(repr(["recursive", *_identity(fn)]).encode()).hexdigest()


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
    _check_mode(file_digest)
    from .apps import AUTO_LOGNAME  # apps imports the executor, which will import this module

    try:
        entry = _entry(fn)
    except _Recursive:  # cannot happen at top level; keep mypy and readers sure of it
        raise AssertionError("recursive fingerprint at top level") from None
    except (_Unkeyable, RecursionError) as error:
        raise _error(error, "a function argument", None) from None
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
            arguments[name] = _digest(_norm(value, mode))
        except (_Unkeyable, RecursionError) as error:
            raise _error(error, f"argument {name!r}", name) from None
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
