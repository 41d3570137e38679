"""Serialization of calls, results and exceptions, as a worker on the other side sees them.

Frames are turned into plain ``bytes`` before loading, as they arrive off a socket, and
functions defined in throw-away modules are loaded after the module is gone, as in a worker
that never had it.
"""

from __future__ import annotations

import array
import functools
import pickle
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from hpcfutures import RemoteError, RemoteTraceback, SerializationError
from hpcfutures import serialize as s
from hpcfutures.testing.tasks import ConformanceError, square


def wire(frames: list[Any]) -> list[bytes]:
    """Return the frames as the receiving side gets them."""
    return [bytes(f) for f in frames]


def call_remotely(fn: Any, *args: Any, **kwargs: Any) -> Any:
    loaded_fn, loaded_args, loaded_kwargs = s.loads_call(
        wire(s.dumps_call(fn, args, kwargs)), s.LoadedFunctions()
    )
    return loaded_fn(*loaded_args, **loaded_kwargs)


@pytest.fixture
def dynamic_module() -> Iterator[types.ModuleType]:
    """A module made at run time, with no file a worker could import it from."""
    module = types.ModuleType("hpcfutures_test_dynamic")
    exec(  # noqa: S102 - the point is a module with no source file
        "FACTOR = 3\n"
        "def triple(x):\n    return x * FACTOR\n"
        "class Multiplier:\n    def __init__(self, k):\n        self.k = k\n"
        "    def __call__(self, x):\n        return x * self.k\n",
        module.__dict__,
    )
    yield module
    sys.modules.pop(module.__name__, None)


# -- functions ---------------------------------------------------------------------------


def test_module_level_function_round_trips() -> None:
    assert call_remotely(square, 9) == 81
    assert call_remotely(divmod, 7, 2) == (3, 1)


def test_lambda_round_trips() -> None:
    assert call_remotely(lambda x, y=1: x + y, 1, y=5) == 6


def test_closure_round_trips_with_its_captured_values() -> None:
    captured: dict[str, Any] = {"offset": 10, "items": [1, 2]}

    def closure(x: int) -> int:
        return x + captured["offset"] + sum(captured["items"])

    assert call_remotely(closure, 1) == 14


def test_function_of_a_dynamic_module_loads_without_the_module(dynamic_module: types.ModuleType) -> None:
    frames = wire(s.dumps_call(dynamic_module.triple, (5,), {}))
    instance_frames = wire(s.dumps_call(dynamic_module.Multiplier(4), (5,), {}))
    fn, args, _ = s.loads_call(frames, s.LoadedFunctions())
    assert fn(*args) == 15
    fn, args, _ = s.loads_call(instance_frames, s.LoadedFunctions())
    assert fn(*args) == 20


def test_registered_dynamic_module_is_sent_by_value_once_cloudpickle_is_told(
    dynamic_module: types.ModuleType,
) -> None:
    # A module in sys.modules counts as importable (for cloudpickle too); a worker without it
    # needs it sent by value, which cloudpickle.register_pickle_by_value asks for.
    import cloudpickle

    sys.modules[dynamic_module.__name__] = dynamic_module
    cloudpickle.register_pickle_by_value(dynamic_module)
    try:
        frames = wire(s.dumps_call(dynamic_module.triple, (5,), {}))
    finally:
        cloudpickle.unregister_pickle_by_value(dynamic_module)
    del sys.modules[dynamic_module.__name__]  # the worker never had it
    fn, args, _ = s.loads_call(frames, s.LoadedFunctions())
    assert fn(*args) == 15


def test_names_in_main_are_sent_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain pickle would send these by reference to __main__, which in a worker is another
    # program; the fallback to cloudpickle must send them by value.
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def in_main(x):\n    return x - 1\nclass InMain:\n    value = 41\n", namespace)  # noqa: S102
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "in_main", namespace["in_main"], raising=False)
    monkeypatch.setattr(main, "InMain", namespace["InMain"], raising=False)
    call = wire(s.dumps_call(functools.partial(namespace["in_main"], 10), (), {}))
    arg = wire(s.dumps_call(square, (namespace["InMain"],), {}))
    monkeypatch.delattr(main, "in_main")
    monkeypatch.delattr(main, "InMain")
    fn, args, kwargs = s.loads_call(call, s.LoadedFunctions())
    assert fn(*args, **kwargs) == 9
    _, args, _ = s.loads_call(arg, s.LoadedFunctions())
    assert args[0].value == 41


def test_function_cache_returns_the_same_bytes_for_the_same_function() -> None:
    cache = s.FunctionCache()

    def fn(x: int) -> int:
        return x

    first = cache.get(fn)
    second = cache.get(fn)
    assert first is not None and second is not None
    assert second[2] is first[2]  # the very same bytes object, pickled once
    assert second[1] == first[1]
    assert cache.get(functools.partial(fn, 1)) is None  # not cacheable: pickled per call


def test_function_cache_distinguishes_functions() -> None:
    cache = s.FunctionCache()
    a, b = (lambda: 1), (lambda: 2)
    entry_a, entry_b = cache.get(a), cache.get(b)
    assert entry_a is not None and entry_b is not None
    assert entry_a[1] != entry_b[1]


def test_function_cache_is_bounded() -> None:
    cache = s.FunctionCache(size=4)
    functions = [(lambda i=i: i) for i in range(10)]
    for fn in functions:
        cache.get(fn)
    assert len(cache._entries) == 4


def test_same_call_sends_function_bytes_identical_each_time() -> None:
    def fn(x: int) -> int:
        return x * 2

    one = s.loads(s.dumps_call(fn, (1,), {}))
    two = s.loads(s.dumps_call(fn, (2,), {}))
    assert one[0] == two[0] and one[1] == two[1]  # same key, same function bytes


def test_loaded_functions_unpickles_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def fn(x: int) -> int:
        return x + 1

    loaded = s.LoadedFunctions()
    calls = []
    real_loads = pickle.loads

    def counting_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(data)
        return real_loads(data, *args, **kwargs)

    frames = [wire(s.dumps_call(fn, (i,), {})) for i in range(3)]
    monkeypatch.setattr(s.pickle, "loads", counting_loads)
    results = []
    for f in frames:
        loaded_fn, args, kwargs = s.loads_call(f, loaded)
        results.append(loaded_fn(*args, **kwargs))
    assert results == [1, 2, 3]
    # One load of each call's frames, plus one load of the function: three calls -> four loads.
    assert len(calls) == 4


def test_loaded_functions_returns_the_same_object_for_a_key() -> None:
    loaded = s.LoadedFunctions()
    entry = s.FunctionCache().get(square)
    assert entry is not None
    _, key, pickled, _ = entry
    assert loaded.load(key, pickled) is loaded.load(key, pickled) is square


# -- arguments and out-of-band buffers --------------------------------------------------


def test_large_bytes_argument_travels_out_of_band() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    frames = s.dumps_call(square, (data,), {})
    assert len(frames) > 1
    assert max(len(memoryview(f)) for f in frames[1:]) == len(data)
    assert len(frames[0]) < 64 * 1024, "the payload was copied into the main pickle"
    _, args, _ = s.loads_call(wire(frames), s.LoadedFunctions())
    assert type(args[0]) is bytes and args[0] == data


def test_large_bytes_keyword_argument_and_result_travel_out_of_band() -> None:
    data = b"x" * (1 << 20)
    frames = s.dumps_call(square, (), {"payload": data})
    assert len(frames) > 1
    assert s.loads_call(wire(frames), s.LoadedFunctions())[2] == {"payload": data}
    result = s.dumps_result(data)
    assert len(result) > 1 and s.loads(wire(result)) == data


def test_small_bytes_stay_in_band() -> None:
    assert len(s.dumps_call(square, (b"small",), {})) == 1


def test_bytearray_travels_out_of_band() -> None:
    data = bytearray(b"y" * (1 << 20))
    frames = s.dumps_call(square, (data,), {})
    assert len(frames) > 1
    assert len(frames[0]) < 64 * 1024, "the payload was copied into the main pickle"
    _, args, _ = s.loads_call(wire(frames), s.LoadedFunctions())
    assert type(args[0]) is bytearray and args[0] == data
    result = s.dumps_result(data)
    assert len(result) > 1 and s.loads(wire(result)) == data


def test_memoryview_argument_round_trips() -> None:
    view = memoryview(b"abcdef")
    _, args, _ = s.loads_call(wire(s.dumps_call(square, (view,), {})), s.LoadedFunctions())
    assert type(args[0]) is memoryview and args[0].tobytes() == b"abcdef"


def test_memoryview_keeps_its_format_and_shape_off_the_wire() -> None:
    doubles = memoryview(array.array("d", [1.5, 2.5, 3.5]))
    _, args, _ = s.loads_call(wire(s.dumps_call(square, (doubles,), {})), s.LoadedFunctions())
    assert args[0].format == "d" and args[0].tolist() == [1.5, 2.5, 3.5]


def test_non_contiguous_memoryview_round_trips() -> None:
    strided = memoryview(array.array("i", range(10)))[::3]
    assert not strided.c_contiguous
    _, args, _ = s.loads_call(wire(s.dumps_call(square, (strided,), {})), s.LoadedFunctions())
    assert args[0].tolist() == [0, 3, 6, 9]


def test_numpy_arrays_travel_out_of_band() -> None:
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    a = np.arange(1 << 18, dtype=np.float64).reshape(512, 512)
    frames = s.dumps_call(square, (a,), {"b": a[::2, ::2]})
    assert len(frames) > 1
    _, args, kwargs = s.loads_call(wire(frames), s.LoadedFunctions())
    np.testing.assert_array_equal(args[0], a)
    np.testing.assert_array_equal(kwargs["b"], a[::2, ::2])
    result = s.loads(wire(s.dumps_result(a)))
    np.testing.assert_array_equal(result, a)


# -- what cannot be serialized -----------------------------------------------------------


def test_unpicklable_positional_argument_is_named() -> None:
    with pytest.raises(SerializationError, match="positional argument 1 of square") as info:
        s.dumps_call(square, (1, threading.Lock()), {})
    assert "lock" in str(info.value)


def test_unpicklable_keyword_argument_is_named() -> None:
    with pytest.raises(SerializationError, match="keyword argument 'x' of square"):
        s.dumps_call(square, (), {"ok": 1, "x": threading.Lock()})


def test_unpicklable_function_is_named() -> None:
    lock = threading.Lock()

    def uses_lock() -> None:
        with lock:
            pass

    with pytest.raises(SerializationError, match="the function"):
        s.dumps_call(uses_lock, (), {})


def test_unpicklable_result_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="return value"):
        s.dumps_result(threading.Lock())


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        s.dumps_call(square, (threading.Lock(),), {})


# -- exceptions --------------------------------------------------------------------------


def _raised(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:  # noqa: BLE001 - any exception, as a worker would catch it
        return caught


def test_exception_keeps_type_and_args_with_remote_traceback_as_cause() -> None:
    exc = s.loads_exception(wire(s.dumps_exception(_raised(ConformanceError("boom", 42)))))
    assert type(exc) is ConformanceError and exc.args == ("boom", 42)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "_raised" in str(exc.__cause__) and "ConformanceError: ('boom', 42)" in str(exc.__cause__)


def test_builtin_exception_round_trips() -> None:
    exc = s.loads_exception(wire(s.dumps_exception(_raised(KeyError("missing")))))
    assert type(exc) is KeyError and exc.args == ("missing",)


class _NeedsTwoArgs(Exception):
    def __init__(self, a: Any, b: Any):
        super().__init__(a)
        self.b = b


class _Unpicklable(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()


@pytest.mark.parametrize(
    ("exc", "type_name"),
    [
        (_Unpicklable("has a lock"), f"{__name__}._Unpicklable"),
        (_NeedsTwoArgs("pickles but does not load", 2), f"{__name__}._NeedsTwoArgs"),
    ],
)
def test_exception_that_cannot_travel_becomes_remote_error(exc: Exception, type_name: str) -> None:
    loaded = s.loads_exception(wire(s.dumps_exception(_raised(exc))))
    assert type(loaded) is RemoteError
    assert loaded.type_name == type_name
    assert str(exc) in str(loaded)
    assert isinstance(loaded.__cause__, RemoteTraceback)
    assert type(exc).__name__ in str(loaded.__cause__)
