"""Memoisation keys: function fingerprints, argument normalisation, make_key and explain."""

from __future__ import annotations

import enum
import functools
import os
import pathlib
import time
from collections import OrderedDict, namedtuple
from dataclasses import dataclass
from typing import Any

import pytest

from hpcfutures.dataflow.apps import AUTO_LOGNAME
from hpcfutures.dataflow.files import File
from hpcfutures.dataflow.memo import (
    CacheKey,
    CacheKeyError,
    explain,
    function_fingerprint,
    make_key,
    normalise,
    register_cache_key,
)
from hpcfutures.errors import HpcFuturesError

Point = namedtuple("Point", ["x", "y"])


@dataclass
class Config:
    name: str
    sizes: list[int]
    session: Any = None


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Session:
    """A type nobody registered."""


def add(a: int, b: int = 2, *, scale: float = 1.0) -> float:
    return (a + b) * scale


def bash_like(x: Any, stdout: Any = None, stderr: Any = None, outputs: Any = ()) -> str:
    return f"echo {x}"


def _define(source: str, name: str, lines_before: int = 0, namespace: dict[str, Any] | None = None) -> Any:
    """Define function ``name`` from ``source``, as if it started ``lines_before`` lines down a file."""
    scope: dict[str, Any] = {"__name__": "user_module"} if namespace is None else namespace
    exec(compile("\n" * lines_before + source, f"<file {lines_before}>", "exec"), scope)
    return scope[name]


BODY = """
def work(x, y=3):
    total = 0
    for i in range(x):
        total += i * y + 7
    return {"total": total, "tag": "v1"}
"""


# ----------------------------------------------------------------------- function fingerprint


def test_fingerprint_is_stable_when_function_moves() -> None:
    first = _define(BODY, "work", 0)
    moved = _define(BODY, "work", 40)
    assert first.__code__.co_firstlineno != moved.__code__.co_firstlineno
    assert function_fingerprint(first) == function_fingerprint(moved)


def test_fingerprint_changes_with_body_or_constant() -> None:
    base = function_fingerprint(_define(BODY, "work"))
    constant = function_fingerprint(_define(BODY.replace("+ 7", "+ 8"), "work"))
    string = function_fingerprint(_define(BODY.replace('"v1"', '"v2"'), "work"))
    body = function_fingerprint(_define(BODY.replace("i * y", "i - y"), "work"))
    default = function_fingerprint(_define(BODY.replace("y=3", "y=4"), "work"))
    assert len({base, constant, string, body, default}) == 5


def test_fingerprint_covers_nested_code_but_not_its_lines() -> None:
    source = "def outer(n):\n    def inner(k):\n        return k + {c}\n    return inner(n)\n"
    a = _define(source.format(c=1), "outer", 0)
    moved = _define(source.format(c=1), "outer", 12)
    edited = _define(source.format(c=2), "outer", 0)
    assert function_fingerprint(a) == function_fingerprint(moved)
    assert function_fingerprint(a) != function_fingerprint(edited)


def test_fingerprint_includes_identity() -> None:
    a = _define(BODY, "work", namespace={"__name__": "mod_a"})
    b = _define(BODY, "work", namespace={"__name__": "mod_b"})
    assert function_fingerprint(a) != function_fingerprint(b)


def test_fingerprint_stable_after_many_calls() -> None:
    fn = _define(BODY, "work")
    before = function_fingerprint(_define(BODY, "work"))
    for i in range(200):  # lets the interpreter specialise the bytecode
        fn(5, i)
    assert function_fingerprint(fn) == before


def test_fingerprint_of_set_constant_is_seed_independent() -> None:
    source = "def member(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta'}\n"
    assert function_fingerprint(_define(source, "member")) == function_fingerprint(
        _define(source, "member", 3)
    )


def test_fingerprint_of_closures() -> None:
    def make(factor: Any) -> Any:
        def scaled(x: int) -> Any:
            return x * factor

        return scaled

    assert function_fingerprint(make(2)) == function_fingerprint(make(2))
    assert function_fingerprint(make(2)) != function_fingerprint(make(3))
    # A cell that cannot be normalised counts by its type, and does not raise.
    assert function_fingerprint(make(Session())) == function_fingerprint(make(Session()))
    assert function_fingerprint(make(Session())) != function_fingerprint(make(2))


def test_fingerprint_of_closure_over_function_and_recursion() -> None:
    def deco(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    f1 = deco(_define(BODY, "work"))
    f2 = deco(_define(BODY.replace("+ 7", "+ 9"), "work"))
    assert function_fingerprint(f1) != function_fingerprint(f2)

    def outer() -> Any:
        def countdown(n: int) -> int:
            return 0 if n == 0 else countdown(n - 1)

        return countdown

    assert function_fingerprint(outer()) == function_fingerprint(outer())


def test_fingerprint_of_partial_and_builtins() -> None:
    p2 = functools.partial(add, 1, scale=2.0)
    assert function_fingerprint(p2) == function_fingerprint(functools.partial(add, 1, scale=2.0))
    assert function_fingerprint(p2) != function_fingerprint(functools.partial(add, 1, scale=3.0))
    assert function_fingerprint(p2) != function_fingerprint(add)
    assert function_fingerprint(len) == function_fingerprint(len)
    assert function_fingerprint(len) != function_fingerprint(abs)
    assert function_fingerprint(str.upper) != function_fingerprint(str.lower)
    with pytest.raises(CacheKeyError, match="partial"):
        function_fingerprint(functools.partial(bash_like, Session()))


def test_fingerprint_follows_reassigned_defaults() -> None:
    fn = _define(BODY, "work")
    before = function_fingerprint(fn)
    fn.__defaults__ = (4,)
    assert function_fingerprint(fn) != before


# ---------------------------------------------------------------------------- normalisation


def test_normalise_builtins_distinguishes_types() -> None:
    values = [
        1,
        1.0,
        True,
        "1",
        b"1",
        None,
        (1,),
        [1],
        {1},
        frozenset({1}),
        {1: 1},
        {"1": 1},
        bytearray(b"1"),
    ]
    normal = [repr(normalise(v)) for v in values]
    assert len(set(normal)) == len(values)


def test_normalise_dicts_and_sets_are_order_independent() -> None:
    assert normalise({"b": 1, "a": [2, 3]}) == normalise({"a": [2, 3], "b": 1})
    assert normalise(OrderedDict([("x", 1), ("y", 2)])) == normalise({"y": 2, "x": 1})
    assert normalise({"c", "a", "b"}) == normalise({"b", "c", "a"})
    assert normalise({(1, "a"), (0, "b")}) == normalise({(0, "b"), (1, "a")})


def test_normalise_structured_types() -> None:
    assert normalise(Point(1, 2)) == normalise(Point(1, 2))
    assert normalise(Point(1, 2)) != normalise((1, 2))
    assert normalise(Config("a", [1])) == normalise(Config("a", [1]))
    assert normalise(Config("a", [1])) != normalise(Config("a", [2]))
    assert normalise(Colour.RED) != normalise(Colour.GREEN)
    assert normalise(Level.LOW) != normalise(1)  # an IntEnum is an enum first
    assert normalise(pathlib.Path("/a/b")) == normalise(pathlib.PurePosixPath("/a/b"))
    assert normalise(pathlib.Path("/a/b")) != normalise("/a/b")
    assert normalise(1 + 2j) != normalise(1 + 3j)
    assert normalise(add) == normalise(add)


def test_normalise_numpy() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype="f8").reshape(3, 4)
    assert normalise(a) == normalise(a.copy())
    assert normalise(a) != normalise(a.reshape(4, 3))
    assert normalise(a) != normalise(a.astype("f4"))
    b = a.copy()
    b[1, 1] = -1
    assert normalise(a) != normalise(b)
    assert normalise(a.T) == normalise(np.ascontiguousarray(a.T))  # layout does not matter
    assert normalise(np.float32(1.5)) != normalise(np.float64(1.5))
    assert normalise(np.array([{"a": 1}], dtype=object)) == normalise(np.array([{"a": 1}], dtype=object))


def test_unregistered_type_error_names_argument_and_fix() -> None:
    with pytest.raises(CacheKeyError) as caught:
        make_key(add, (Config("c", [1], session=Session()),), {})
    message = str(caught.value)
    assert "argument 'a' → field 'session'" in message
    assert "hpcfutures.dataflow.memo.register_cache_key(tests.dataflow.test_memo.Session" in message
    assert "ignore_for_cache=['a']" in message
    assert isinstance(caught.value, HpcFuturesError) and isinstance(caught.value, TypeError)

    with pytest.raises(CacheKeyError, match=r"argument 'b' → key 'k' → item 1: type .*Session"):
        make_key(add, (1,), {"b": {"k": [0, Session()]}})
    with pytest.raises(CacheKeyError, match="register_cache_key"):
        normalise([object()])


def test_self_referential_value_is_a_clear_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CacheKeyError, match="argument 'a'.*refers to itself"):
        make_key(add, (loop,), {})


def test_register_cache_key() -> None:
    class Token:
        def __init__(self, value: str, noise: int):
            self.value = value
            self.noise = noise

    class OtherToken(Token):
        pass

    class Unrelated:
        def __init__(self, value: str):
            self.value = value

    register_cache_key(Token, lambda t: {"value": t.value})

    @register_cache_key(Unrelated)
    def _key(u: Unrelated) -> Any:
        return {"value": u.value}

    assert normalise(Token("a", 1)) == normalise(Token("a", 2))
    assert normalise(Token("a", 1)) != normalise(Token("b", 1))
    assert normalise(OtherToken("a", 1)) != normalise(Token("a", 1))  # the type is in the key
    assert normalise(Unrelated("a")) != normalise(Token("a", 1))
    key = make_key(add, (Token("x", 1),), {})
    assert key == make_key(add, (Token("x", 99),), {})

    with pytest.raises(TypeError, match="builtin"):
        register_cache_key(int, str)


def test_register_cache_key_converter_output_must_be_keyable() -> None:
    class Wrapper:
        pass

    register_cache_key(Wrapper, lambda w: [Session()])
    with pytest.raises(
        CacheKeyError, match=r"argument 'a' → the value register_cache_key\(.*Wrapper\) returned"
    ):
        make_key(add, (Wrapper(),), {})


# ----------------------------------------------------------------------------------- files


def test_file_content_and_stat_digests(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("one")
    f = File(str(path))

    content = make_key(add, (f,), {})
    stat = make_key(add, (f,), {}, file_digest="stat")
    assert content == make_key(add, (f,), {})
    assert stat == make_key(add, (f,), {}, file_digest="stat")
    assert content != stat

    # Touch only: the content key stays, the stat key changes.
    later = time.time_ns() + 5_000_000_000
    os.utime(path, ns=(later, later))
    assert make_key(add, (f,), {}) == content
    touched = make_key(add, (f,), {}, file_digest="stat")
    assert touched != stat
    assert explain(stat, touched) == "argument 'a' changed"

    # New content: both change.
    path.write_text("two")
    changed = make_key(add, (f,), {})
    assert changed != content
    assert explain(content, changed) == "argument 'a' changed"
    assert make_key(add, (f,), {}, file_digest="path") == make_key(
        add, (File(str(path)),), {}, file_digest="path"
    )


def test_missing_file_and_url(tmp_path: pathlib.Path) -> None:
    missing = File(str(tmp_path / "nope.txt"))
    normal = normalise(missing)
    assert normal == normalise(File(str(tmp_path / "nope.txt")))
    assert "missing" in normal
    (tmp_path / "nope.txt").write_text("now here")
    assert normalise(missing) != normal
    assert normalise(File("https://example.org/x.csv")) == ["File", "https://example.org/x.csv"]
    with pytest.raises(ValueError, match="file_digest"):
        normalise(missing, file_digest="mtime")


def test_outputs_keyed_by_path_only(tmp_path: pathlib.Path) -> None:
    out = File(str(tmp_path / "out.txt"))
    before = make_key(bash_like, (1,), {"outputs": [out]})
    out_path = tmp_path / "out.txt"
    out_path.write_text("produced by the first run")
    assert make_key(bash_like, (1,), {"outputs": [out]}) == before


# ------------------------------------------------------------------------ make_key, explain


def test_same_call_same_key_and_different_argument_named() -> None:
    k1 = make_key(add, (1, 2), {})
    assert k1 == make_key(add, (1, 2), {})
    assert isinstance(k1, CacheKey) and len(k1.key) == 64
    assert set(k1.arguments) == {"a", "b"}
    assert {k1} == {make_key(add, (1, 2), {})}  # hashable

    k2 = make_key(add, (1, 3), {})
    assert k2.key != k1.key
    assert explain(k1, k2) == "argument 'b' changed"
    assert explain(k1, k1) == "hit"
    assert explain(None, k1) == "no stored result for this call"


def test_positional_and_keyword_are_equivalent() -> None:
    assert make_key(add, (1, 2), {}) == make_key(add, (1,), {"b": 2}) == make_key(add, (), {"b": 2, "a": 1})
    assert make_key(add, (1,), {"scale": 2.0}) == make_key(add, [1], {"scale": 2.0})


def test_explain_new_dropped_and_function() -> None:
    old = make_key(add, (1, 2), {})
    new = make_key(add, (1,), {"scale": 3.0})
    assert explain(old, new) == "argument 'scale' is new; argument 'b' was dropped"
    other = make_key(_define(BODY, "work"), (), {"x": 1})
    edited = make_key(_define(BODY.replace("+ 7", "+ 8"), "work"), (), {"x": 2})
    assert explain(other, edited) == "the function's code changed; argument 'x' changed"


def test_ignore_and_auto_logname() -> None:
    base = make_key(add, (1, 2), {"scale": 1.0}, ignore=["scale"])
    assert "scale" not in base.arguments
    assert base == make_key(add, (1, 2), {"scale": 5.0}, ignore=("scale",))
    # An ignored argument may even be unkeyable.
    assert make_key(add, (1, Session()), {}, ignore={"b"}) == make_key(add, (1, 7), {}, ignore={"b"})

    auto = make_key(bash_like, (1,), {"stdout": AUTO_LOGNAME, "stderr": AUTO_LOGNAME})
    assert auto.arguments.keys() == {"x"}
    assert auto == make_key(bash_like, (1,), {})
    named = make_key(bash_like, (1,), {"stdout": "log.txt"})
    assert "stdout" in named.arguments
    assert make_key(bash_like, (1,), {"stdout": "log.txt"}, ignore=["stdout"]) == auto


def test_var_keyword_and_unbindable_calls() -> None:
    def flexible(a: int, *rest: int, **options: Any) -> None:
        pass

    key = make_key(flexible, (1, 2, 3), {"mode": "fast", "stdout": AUTO_LOGNAME})
    assert set(key.arguments) == {"a", "rest", "mode"}
    assert make_key(flexible, (1, 2, 3), {"mode": "fast"}, ignore=["mode"]).arguments.keys() == {"a", "rest"}
    # A call that does not fit the signature is keyed as given (it will fail when run).
    bad = make_key(add, (1, 2, 3), {})
    assert set(bad.arguments) == {"0", "1", "2"}
    # Builtins without a signature are keyed by position.
    assert set(make_key(max, (1, 2), {}).arguments) <= {"0", "1", "args"}


def test_make_key_is_fast_for_small_builtin_arguments() -> None:
    make_key(add, (1, 2), {"scale": 0.5})
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        make_key(add, (i, "label"), {"scale": 0.5})
    per_call = (time.perf_counter() - start) / n
    assert per_call < 200e-6, f"make_key took {per_call * 1e6:.1f} µs per call"


def test_fingerprint_of_methods_and_callable_instances() -> None:
    class Model:
        def __init__(self, depth: int):
            self.depth = depth

        def run(self, x: int) -> int:
            return x * self.depth

        def __call__(self, x: int) -> int:
            return x

    @dataclass
    class Settings:
        depth: int

        def run(self, x: int) -> int:
            return x * self.depth

    assert function_fingerprint(Model(1)) == function_fingerprint(Model(2))  # by its class
    assert function_fingerprint(Model(1)) != function_fingerprint(Model(1).run)
    # An instance that cannot be keyed counts by its type; one that can, by value.
    assert function_fingerprint(Model(1).run) == function_fingerprint(Model(2).run)
    assert function_fingerprint(Settings(1).run) != function_fingerprint(Settings(2).run)
    assert make_key(Settings(1).run, (3,), {}).arguments.keys() == {"x"}


def test_registration_overrides_dataclass_handling() -> None:
    @dataclass
    class Job:
        name: str
        handle: Any

    register_cache_key(Job, lambda job: job.name)
    assert normalise(Job("a", Session())) == normalise(Job("a", object()))
    assert make_key(add, (Job("a", 1),), {}, ignore="b") == make_key(add, (Job("a", 2),), {})
