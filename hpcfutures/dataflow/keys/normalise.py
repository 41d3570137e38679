"""Arguments in canonical form: the registry of conversions that turns a value into a key part.

:func:`normalise` turns a value into a canonical, JSON-serialisable form: builtins and
containers by value, :class:`~hpcfutures.dataflow.files.File` by path plus a digest of its
content (or its size and mtime), and other types through a registry that
:func:`register_cache_key` extends.  Functions are converted by :mod:`.fingerprint`, which
registers itself here with :func:`builtin_converter`.

:func:`canonical`, :class:`Unkeyable`, :func:`key_error` and :func:`check_file_digest` are
the keys package's own plumbing, shared with :mod:`.fingerprint` and
:mod:`hpcfutures.dataflow.memo`.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import fractions
import functools
import hashlib
import json
import os
import stat
import sys
import types
import uuid
from enum import Enum
from pathlib import PurePath
from typing import Any, Callable, Iterable, Mapping, TypeVar, overload

from ...errors import HpcFuturesError
from ..files import File

__all__ = [
    "FILE_DIGESTS",
    "CacheKeyError",
    "Unkeyable",
    "builtin_converter",
    "canonical",
    "check_file_digest",
    "key_error",
    "normalise",
    "qualified",
    "register_cache_key",
]

T = TypeVar("T")
_Converter = Callable[[Any, str], Any]

#: How a local File enters a key: "content" (sha256 of its bytes), "stat" (its size and
#: mtime) or "path" (its path alone).
FILE_DIGESTS = ("content", "stat", "path")
_CHUNK = 1 << 20


class CacheKeyError(HpcFuturesError, TypeError):
    """An argument (or a part of one) has a type that cannot be turned into a cache key."""


class Unkeyable(Exception):
    """Raised inside :func:`canonical`; each container on the way up adds where it was found."""

    def __init__(self, cls: type, reason: str = ""):
        super().__init__(cls)
        self.cls = cls
        self.reason = reason
        self.path: list[str] = []  # innermost first


def qualified(cls: type) -> str:
    """Return ``module.QualifiedName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _base_converter(value: Any, mode: str) -> Any:
    raise Unkeyable(type(value))


# The registry: built-in converters take (value, mode); user ones are _UserConverter objects.
_converter = functools.singledispatch(_base_converter)


def builtin_converter(*classes: type) -> Callable[[_Converter], _Converter]:
    """Return a decorator that registers ``fn(value, mode)`` as the conversion of ``classes``.

    For hpcfutures' own conversions; users register theirs with :func:`register_cache_key`.
    """

    def register(fn: _Converter) -> _Converter:
        for cls in classes:
            _converter.register(cls, fn)
        return fn

    return register


class _UserConverter:
    """A conversion given to :func:`register_cache_key`: ``fn(value)`` returns builtins."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def __call__(self, value: Any, mode: str) -> Any:
        return self.fn(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def canonical(value: Any, mode: str) -> Any:
    """Return the canonical form of ``value``, Files keyed per ``mode`` (one of :data:`FILE_DIGESTS`).

    Raises:
        Unkeyable: a part of ``value`` has no conversion; turn it into a CacheKeyError
            with :func:`key_error`.
        RecursionError: ``value`` is nested too deeply or refers to itself.
    """
    cls = type(value)
    if cls in _SCALARS:
        return value
    exact = _EXACT.get(cls)
    if exact is not None:
        return exact(value, mode)
    return _canonical_other(value, cls, mode)


def _items(tag: str, values: Iterable[Any], mode: str) -> list[Any]:
    out: list[Any] = [tag]
    for index, item in enumerate(values):
        try:
            out.append(canonical(item, mode))
        except Unkeyable as error:
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
        members = [canonical(item, mode) for item in value]
    except Unkeyable as error:
        error.path.append("an element")
        raise
    members.sort(key=_sort_key)
    return [type(value).__name__ if type(value) in (set, frozenset) else "set", *members]


def _norm_dict(value: Mapping[Any, Any], mode: str) -> Any:
    pairs = []
    for key, item in value.items():
        try:
            normal_key = canonical(key, mode)
        except Unkeyable as error:
            error.path.append(f"key {key!r}")
            raise
        try:
            pairs.append((_sort_key(normal_key), normal_key, canonical(item, mode)))
        except Unkeyable as error:
            error.path.append(f"key {key!r}")
            raise
    pairs.sort(key=lambda pair: pair[0])
    return ["dict", *([k, v] for _, k, v in pairs)]


def _norm_bytes(value: bytes | bytearray, mode: str) -> Any:
    return [type(value).__name__, value.hex()]


# The exact types looked up before the registry (the common case, kept fast); they cannot be
# re-registered.
_EXACT: dict[type, _Converter] = {
    list: _norm_list,
    tuple: _norm_tuple,
    dict: _norm_dict,
    set: _norm_set,
    frozenset: _norm_set,
    bytes: _norm_bytes,
    bytearray: _norm_bytes,
}


def _fields(tag: str, cls: type, named: Iterable[tuple[str, Any]], mode: str) -> list[Any]:
    out: list[Any] = [tag, qualified(cls)]
    for name, item in named:
        try:
            out.append([name, canonical(item, mode)])
        except Unkeyable as error:
            error.path.append(f"field {name!r}")
            raise
    return out


def _norm_numpy(value: Any, np: Any, mode: str) -> Any:
    dtype = value.dtype
    described = str(dtype.descr) if dtype.fields else dtype.str
    if isinstance(value, np.generic):
        if dtype.hasobject:
            return ["numpy", described, canonical(value.item(), mode)]
        return ["numpy", described, value.tobytes().hex()]
    if dtype.hasobject:  # the bytes would be pointers: key the objects themselves
        return ["ndarray", described, list(value.shape), canonical(value.tolist(), mode)]
    data = np.ascontiguousarray(value)
    return ["ndarray", described, list(value.shape), hashlib.sha256(data.view(np.uint8)).hexdigest()]


def _canonical_other(value: Any, cls: type, mode: str) -> Any:
    converter = _converter.dispatch(cls)
    if isinstance(converter, _UserConverter):
        try:
            return ["custom", qualified(cls), canonical(converter.fn(value), mode)]
        except Unkeyable as error:
            error.path.append(f"the value register_cache_key({cls.__qualname__}) returned")
            raise
    np = sys.modules.get("numpy")  # if numpy is not imported, the value is no numpy array
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return _norm_numpy(value, np, mode)
    if isinstance(value, Enum):
        name = value.name
        return ["enum", qualified(cls), name if name is not None else canonical(value.value, mode)]
    if isinstance(value, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return _fields("namedtuple", cls, zip(cls._fields, value), mode)  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        named = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return _fields("dataclass", cls, named, mode)
    return converter(value, mode)


# Subclasses of the exact types (an int subclass, an OrderedDict, ...) reach the registry.


@builtin_converter(int)
def _(value: int, mode: str) -> Any:
    return int(value)


@builtin_converter(float)
def _(value: float, mode: str) -> Any:
    return float(value)


@builtin_converter(str)
def _(value: str, mode: str) -> Any:
    return str(value)


@builtin_converter(complex)
def _(value: complex, mode: str) -> Any:
    return ["complex", value.real, value.imag]


@builtin_converter(bytes, bytearray, memoryview)
def _(value: Any, mode: str) -> Any:
    return ["bytes", bytes(value).hex()]


@builtin_converter(list)
def _(value: list[Any], mode: str) -> Any:
    return _items("list", value, mode)


@builtin_converter(tuple)
def _(value: tuple[Any, ...], mode: str) -> Any:
    return _items("tuple", value, mode)


@builtin_converter(dict, types.MappingProxyType)
def _(value: Mapping[Any, Any], mode: str) -> Any:
    return _norm_dict(value, mode)


@builtin_converter(set, frozenset)
def _(value: Any, mode: str) -> Any:
    return _norm_set(value, mode)


@builtin_converter(range)
def _(value: range, mode: str) -> Any:
    return ["range", value.start, value.stop, value.step]


@builtin_converter(decimal.Decimal)
def _(value: decimal.Decimal, mode: str) -> Any:
    return ["Decimal", str(value)]


@builtin_converter(fractions.Fraction)
def _(value: fractions.Fraction, mode: str) -> Any:
    return ["Fraction", value.numerator, value.denominator]


@builtin_converter(datetime.date, datetime.time)  # datetime.date covers datetime.datetime
def _(value: Any, mode: str) -> Any:
    return [type(value).__name__, value.isoformat()]


@builtin_converter(datetime.timedelta)
def _(value: datetime.timedelta, mode: str) -> Any:
    return ["timedelta", value.days, value.seconds, value.microseconds]


@builtin_converter(uuid.UUID)
def _(value: uuid.UUID, mode: str) -> Any:
    return ["UUID", str(value)]


@builtin_converter(PurePath)
def _(value: PurePath, mode: str) -> Any:
    return ["path", str(value)]


@builtin_converter(type)
def _(value: type, mode: str) -> Any:
    return ["type", qualified(value)]


@builtin_converter(types.ModuleType)
def _(value: types.ModuleType, mode: str) -> Any:
    return ["module", value.__name__]


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@builtin_converter(File)
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
        raise Unkeyable(File, f"its content cannot be read ({error})") from error


def check_file_digest(file_digest: str) -> None:
    """Raise ValueError unless ``file_digest`` is one of :data:`FILE_DIGESTS`."""
    if file_digest not in FILE_DIGESTS:
        raise ValueError(
            f"file_digest must be one of {', '.join(map(repr, FILE_DIGESTS))}, got {file_digest!r}"
        )


def key_error(error: Unkeyable | RecursionError, where: str, name: str | None) -> CacheKeyError:
    """Turn a failure of :func:`canonical` on ``where`` into the CacheKeyError a user reads.

    ``name`` is the argument's name, when ``ignore_for_cache`` can leave it out.
    """
    if isinstance(error, RecursionError):
        return CacheKeyError(
            f"cannot compute a cache key for {where}: it is nested too deeply or refers to itself"
        )
    place = " → ".join([where, *reversed(error.path)])
    if error.reason:
        return CacheKeyError(f"cannot compute a cache key for {place}: {error.reason}")
    typename = qualified(error.cls)
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
    check_file_digest(file_digest)
    try:
        return canonical(value, file_digest)
    except (Unkeyable, RecursionError) as error:
        raise key_error(error, "the value", None) from None


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
