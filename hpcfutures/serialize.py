"""Serialization of calls and results: pickle first, cloudpickle as the fallback.

A call travels as one main pickle frame plus out-of-band buffer frames (pickle protocol 5),
so large ``bytes``, ``bytearray``, ``memoryview`` and NumPy buffers are handed to the socket
without being copied into the pickle.  Functions are pickled once per process and unpickled
once per worker: the driver caches their bytes by function object, the worker caches the
loaded function by a digest of those bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import threading
import traceback
import types
from collections import OrderedDict
from typing import Any, Callable, Sequence

import cloudpickle

from .errors import RemoteError, RemoteTraceback, SerializationError

#: Top-level ``bytes`` and ``bytearray`` arguments at least this large travel out of band.
OUT_OF_BAND_THRESHOLD = 64 * 1024

_FUNCTION_CACHE_SIZE = 2048
_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)

Buffer = Any  # a bytes-like object: bytes, memoryview, pickle.PickleBuffer, zmq.Frame


def _rebuild_bytes(buffer: Any) -> bytes:
    return bytes(buffer)


def _rebuild_bytearray(buffer: Any) -> bytearray:
    return bytearray(buffer)


def _rebuild_memoryview(buffer: Any, fmt: str = "B", shape: tuple[int, ...] | None = None) -> memoryview:
    view = memoryview(buffer)
    if view.format == fmt and (shape is None or view.shape == shape):
        return view
    # Off the wire the buffer is plain bytes: give the view back its item format and shape.
    try:
        flat: Any = view.cast("B")  # Any: typeshed wants the format as a literal
        return flat.cast(fmt) if shape is None else flat.cast(fmt, shape)
    except (TypeError, ValueError):
        return view  # a format cast() cannot make (non-native): the raw bytes are all we have


class SharedSpill:
    """Puts large top-level buffers in files of a shared-memory directory instead of frames.

    Used between processes of one node: a buffer written once to ``/dev/shm`` and read once
    by the receiver costs less than carrying it through every socket hop.  The pickle holds
    the file's path; the receiver reads it, and removes it when ``unlink`` says it owns it.
    """

    def __init__(self, directory: str, prefix: str, *, unlink_on_load: bool, threshold: int = 256 * 1024):
        self.directory = directory
        self.prefix = prefix
        self.unlink_on_load = unlink_on_load
        self.threshold = threshold
        self._names = itertools.count()

    def write(self, data: Any) -> str:
        """Write ``data`` to a new private file and return its path."""
        path = f"{self.directory}/{self.prefix}{next(self._names)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data).cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        finally:
            os.close(fd)
        return path


def _load_shared(path: str, rebuild: Callable[..., Any], extra: tuple[Any, ...], unlink: bool) -> Any:
    with open(path, "rb") as f:
        data: Any = f.read() if rebuild is not _rebuild_bytearray else bytearray(f.read())
    if unlink:
        os.unlink(path)
    if rebuild is _rebuild_bytes or rebuild is _rebuild_bytearray:
        return data
    return rebuild(data, *extra)


class _OutOfBand:
    """Wraps a top-level ``bytes``, ``bytearray`` or ``memoryview`` so that pickle sends it out of band.

    With a :class:`SharedSpill`, a large buffer goes to a shared-memory file instead, and its
    path is added to ``spilled``.
    """

    __slots__ = ("data", "rebuild", "spill", "spilled")

    def __init__(
        self,
        data: Any,
        rebuild: Callable[..., Any],
        spill: SharedSpill | None = None,
        spilled: list[str] | None = None,
    ):
        self.data = data
        self.rebuild = rebuild
        self.spill = spill
        self.spilled = spilled

    def __reduce_ex__(self, protocol: Any) -> Any:
        extra = (self.data.format, self.data.shape) if self.rebuild is _rebuild_memoryview else ()
        spill = self.spill
        if spill is not None and memoryview(self.data).nbytes >= spill.threshold:
            path = spill.write(self.data)
            if self.spilled is not None:
                self.spilled.append(path)
            return _load_shared, (path, self.rebuild, extra, spill.unlink_on_load)
        return self.rebuild, (pickle.PickleBuffer(self.data), *extra)


_WRAPPED_TYPES = frozenset({bytes, bytearray, memoryview})


def _wrap(value: Any, spill: SharedSpill | None = None, spilled: list[str] | None = None) -> Any:
    kind = type(value)
    if kind is bytes and len(value) >= OUT_OF_BAND_THRESHOLD:
        return _OutOfBand(value, _rebuild_bytes, spill, spilled)
    if kind is bytearray and len(value) >= OUT_OF_BAND_THRESHOLD:  # pickle 5 keeps these in band
        return _OutOfBand(value, _rebuild_bytearray, spill, spilled)
    if kind is memoryview:
        if not value.c_contiguous:
            flat = memoryview(value.tobytes())
            try:
                value = flat.cast(value.format, value.shape)
            except (TypeError, ValueError):
                value = flat
        return _OutOfBand(value, _rebuild_memoryview, spill, spilled)
    return value


def dumps(obj: Any, known_main_refs: int = 0) -> list[Buffer]:
    """Serialize ``obj`` into frames: the main pickle first, then out-of-band buffers.

    Plain pickle is tried first because it is several times faster; cloudpickle takes over
    for what plain pickle refuses or would pickle by a reference the worker cannot resolve
    (anything defined in ``__main__``).  ``known_main_refs`` counts the ``__main__`` names
    already inside ``obj`` as cloudpickled bytes, which need no fallback.
    """
    buffers: list[Buffer] = []
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        if data.count(b"__main__") <= known_main_refs:
            return [data, *buffers]
    except Exception:
        pass
    buffers = []
    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [data, *buffers]


def loads(frames: Sequence[Buffer]) -> Any:
    """Rebuild an object from the frames :func:`dumps` made."""
    return pickle.loads(frames[0], buffers=frames[1:])


class FunctionCache:
    """Driver side: the pickled bytes of each function, made once per function object."""

    def __init__(self, size: int = _FUNCTION_CACHE_SIZE):
        self._size = size
        self._lock = threading.Lock()  # guards _entries
        # id(fn) -> (fn, key, pickled, count of b"__main__" in pickled); holding fn keeps
        # its id from being reused while the entry lives.
        self._entries: OrderedDict[int, tuple[Any, bytes, bytes, int]] = OrderedDict()

    def get(self, fn: Callable[..., Any]) -> tuple[Any, bytes, bytes, int] | None:
        """Return ``(fn, key, pickled, main_refs)`` for a cacheable function, else None."""
        entry = self._entries.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry
        if not isinstance(fn, _CACHEABLE):
            return None
        pickled = cloudpickle.dumps(fn, protocol=5)
        key = hashlib.blake2b(pickled, digest_size=16).digest()
        entry = (fn, key, pickled, pickled.count(b"__main__"))
        with self._lock:
            self._entries[id(fn)] = entry
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return entry


class LoadedFunctions:
    """Worker side: functions unpickled once, found again by the digest of their bytes."""

    def __init__(self, size: int = _FUNCTION_CACHE_SIZE):
        self._size = size
        self._functions: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()

    def load(self, key: bytes, pickled: bytes) -> Callable[..., Any]:
        """Return the function for ``key``, unpickling ``pickled`` only the first time."""
        fn = self._functions.get(key)
        if fn is None:
            fn = pickle.loads(pickled)
            self._functions[key] = fn
            if len(self._functions) > self._size:
                self._functions.popitem(last=False)
        return fn


_driver_functions = FunctionCache()


def _describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _diagnose(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], error: Exception
) -> SerializationError:
    """Find which part of a call cannot be pickled and say so."""
    name = _describe(fn)
    parts: list[tuple[str, Any]] = [("the function", fn)]
    parts += [(f"positional argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in parts:
        try:
            cloudpickle.dumps(value, protocol=5)
        except Exception as exc:  # noqa: BLE001 - any failure is the answer we look for
            return SerializationError(
                f"{label} of {name}() cannot be serialized ({type(value).__name__}): {exc}. "
                "Pass something picklable instead (plain data, or an object with __reduce__)."
            )
    return SerializationError(f"the call {name}(...) cannot be serialized: {error}")


def dumps_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    spill: SharedSpill | None = None,
    spilled: list[str] | None = None,
) -> list[Buffer]:
    """Serialize a call for a worker; raise :class:`SerializationError` naming the culprit.

    With ``spill``, large top-level buffers go to shared-memory files whose paths are added
    to ``spilled`` (the caller removes them once the task is over).
    """
    try:
        cached = _driver_functions.get(fn)
        wrapped_args = args
        for a in args:
            if type(a) in _WRAPPED_TYPES:
                wrapped_args = tuple([_wrap(a, spill, spilled) for a in args])
                break
        wrapped_kwargs = kwargs
        for v in kwargs.values():
            if type(v) in _WRAPPED_TYPES:
                wrapped_kwargs = {k: _wrap(v, spill, spilled) for k, v in kwargs.items()}
                break
        if cached is None:
            return dumps((None, fn, wrapped_args, wrapped_kwargs))
        return dumps((cached[1], cached[2], wrapped_args, wrapped_kwargs), cached[3])
    except Exception as exc:
        for path in spilled or ():
            os.unlink(path)
        raise _diagnose(fn, args, kwargs, exc) from exc


def loads_call(
    frames: Sequence[Buffer], functions: LoadedFunctions
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Rebuild a call made by :func:`dumps_call`, loading its function through ``functions``."""
    key, fn, args, kwargs = loads(frames)
    if key is not None:
        fn = functions.load(key, fn)
    return fn, args, kwargs


def dumps_result(value: Any, spill: SharedSpill | None = None) -> list[Buffer]:
    """Serialize a task's return value (large top-level buffers travel out of band or spill)."""
    try:
        return dumps(_wrap(value, spill))
    except Exception as exc:
        raise SerializationError(
            f"the task's return value ({type(value).__name__}) cannot be serialized: {exc}"
        ) from exc


def dumps_exception(exc: BaseException) -> list[Buffer]:
    """Serialize a task's exception with its traceback text; fall back to :class:`RemoteError`."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        frames = dumps((exc, tb))
        pickle.loads(frames[0], buffers=frames[1:])  # an exception may pickle yet fail to load
        return frames
    except Exception:
        stand_in = _RemoteErrorStandIn(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))
        return dumps((stand_in, tb))


class _RemoteErrorStandIn:
    """Pickles as a call that makes a :class:`RemoteError`.

    A RemoteError's own pickle cannot be loaded: Exception pickles ``self.args`` (one
    string), but ``RemoteError.__init__`` takes two arguments.
    """

    __slots__ = ("message", "type_name")

    def __init__(self, type_name: str, message: str):
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> Any:
        return RemoteError, (self.type_name, self.message)


def loads_exception(frames: Sequence[Buffer]) -> BaseException:
    """Rebuild a task's exception with the remote traceback attached as its ``__cause__``."""
    exc, tb = loads(frames)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc
