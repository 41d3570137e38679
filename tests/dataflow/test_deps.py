"""Dependency discovery: futures anywhere in a task's arguments, from any executor."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict, namedtuple
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from hpcfutures import DataflowExecutor, DependencyError, ThreadExecutor, register_container
from hpcfutures.dataflow.deps import find_futures, substitute
from hpcfutures.testing.tasks import add, identity

TIMEOUT = 30

Point = namedtuple("Point", ["x", "y"])


@dataclass
class Box:
    value: Any
    label: str = "box"
    extra: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class FrozenBox:
    value: Any


@dataclass(eq=False)
class Node:
    """A tree node that points back at its parent: a cyclic argument."""

    name: str
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    payload: Any = None


class Bag:
    """A container the library does not know until ``register_container``."""

    def __init__(self, *items: Any):
        self.items = list(items)


def _walk_bag(bag: Bag, visit: Any) -> Bag:
    return Bag(*[visit(x) for x in bag.items])


register_container(Bag, _walk_bag)


class MyList(list):
    pass


def done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


@pytest.fixture
def dfx():
    ex = DataflowExecutor(ThreadExecutor(max_workers=4), shutdown_executors=True)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


# -- find_futures and substitute on their own ---------------------------------------------------------


def test_find_futures_in_every_container_kind_in_order_without_duplicates():
    fs = [done(i) for i in range(12)]
    args = (
        fs[0],
        [fs[1], (fs[2],)],
        {fs[3]},
        frozenset({fs[4]}),
        {fs[5]: "key", "value": fs[6]},
        Point(fs[7], 1),
        Box(fs[8]),
        FrozenBox(fs[9]),
        Bag(fs[10]),
        fs[0],  # the same future again
    )
    assert find_futures(args, {"kw": fs[11]}) == fs


def test_find_futures_ignores_atomic_values_and_unknown_objects():
    class Opaque:
        def __init__(self) -> None:
            self.hidden = done(1)

    assert find_futures((1, 2.5, "s", b"b", None, True, range(3), Opaque()), {"x": 3}) == []


def test_substitute_rebuilds_each_container_with_results():
    args = (
        [done(1), (done(2), 3)],
        {done("k"): done("v")},
        Point(done(4), done(5)),
        Box(done(6), extra=[done(7)]),
        FrozenBox(done(8)),
        {done(9)},
        frozenset({done(10)}),
        Bag(done(11), 12),
    )
    new_args, new_kwargs = substitute(args, {"kw": done(13)})
    lst, dct, point, box, frozen, st, fst, bag = new_args
    assert lst == [1, (2, 3)]
    assert dct == {"k": "v"}
    assert type(point) is Point and point == Point(4, 5)
    assert box == Box(6, extra=[7])
    assert frozen == FrozenBox(8)
    assert type(st) is set and st == {9}
    assert type(fst) is frozenset and fst == frozenset({10})
    assert type(bag) is Bag and bag.items == [11, 12]
    assert new_kwargs == {"kw": 13}
    # The originals are left alone: a task's arguments are the caller's objects.
    assert isinstance(args[0][0], Future) and isinstance(args[4].value, Future)


def test_substitute_keeps_subclasses_of_containers():
    ordered = OrderedDict([("a", done(1)), ("b", 2)])
    counts: defaultdict[str, Any] = defaultdict(int, {"a": done(3)})
    mine = MyList([done(4), 5])
    (new_ordered, new_counts, new_mine), _ = substitute((ordered, counts, mine), {})
    assert type(new_ordered) is OrderedDict and list(new_ordered.items()) == [("a", 1), ("b", 2)]
    assert type(new_counts) is defaultdict and new_counts == {"a": 3} and new_counts["missing"] == 0
    assert type(new_mine) is MyList and new_mine == [4, 5]


def test_substitute_passes_containers_without_futures_as_the_same_object():
    plain = [1, [2, 3], {"a": 4}]
    box = Box(5)
    (new_plain, new_box, with_future), _ = substitute((plain, box, [done(6)]), {})
    assert new_plain is plain
    assert new_box is box
    assert with_future == [6]


def test_register_container_rejects_bad_arguments():
    with pytest.raises(TypeError, match="class"):
        register_container("Bag", _walk_bag)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        register_container(Bag, None)  # type: ignore[arg-type]


# -- through a DataflowExecutor --------------------------------------------------------------------


def test_task_receives_results_in_place_of_nested_futures(dfx):
    a = dfx.submit(identity, 1)
    b = dfx.submit(add, 2, 3)
    c = dfx.submit(identity, "c")
    arg = {
        "list": [a, b],
        "tuple": (a, (b,)),
        "set": {a, b},
        "frozenset": frozenset({c}),
        c: "future as a key",
        "named": Point(a, b),
        "dataclass": Box(a, extra=[b, c]),
        "frozen": FrozenBox(b),
        "custom": Bag(a, [c]),
    }
    got = dfx.submit(identity, arg).result(timeout=TIMEOUT)
    assert got == {
        "list": [1, 5],
        "tuple": (1, (5,)),
        "set": {1, 5},
        "frozenset": frozenset({"c"}),
        "c": "future as a key",
        "named": Point(1, 5),
        "dataclass": Box(1, extra=[5, "c"]),
        "frozen": FrozenBox(5),
        "custom": got["custom"],
    }
    assert type(got["custom"]) is Bag and got["custom"].items == [1, ["c"]]


def test_keyword_values_are_dependencies(dfx):
    a = dfx.submit(identity, 40)
    assert dfx.submit(add, a=a, b=dfx.submit(identity, 2)).result(timeout=TIMEOUT) == 42


def test_deep_nesting(dfx):
    leaf = dfx.submit(identity, "leaf")
    nested: Any = leaf
    for depth in range(100):
        nested = [nested] if depth % 2 else (nested,)
    got = dfx.submit(identity, {"deep": Box(nested)}).result(timeout=TIMEOUT)
    inner = got["deep"].value
    for _ in range(100):
        (inner,) = inner
    assert inner == "leaf"


def test_cyclic_arguments_are_walked_once(dfx):
    root = Node("root")
    child = Node("child", parent=root, payload=dfx.submit(identity, 7))
    root.children.append(child)
    looped: list[Any] = [1]
    looped.append(looped)

    def describe(node: Node, lst: list[Any]) -> tuple[Any, ...]:
        kid = node.children[0]
        return node.name, kid.name, kid.payload, len(lst)

    assert dfx.submit(describe, root, looped).result(timeout=TIMEOUT) == ("root", "child", 7, 2)


def test_unregistered_objects_are_passed_as_they_are(dfx):
    class Opaque:
        def __init__(self, fut: Future[Any]) -> None:
            self.fut = fut

    inner = dfx.submit(identity, 1)
    opaque = Opaque(inner)
    got = dfx.submit(identity, opaque).result(timeout=TIMEOUT)
    assert got is opaque and got.fut is inner


def test_a_container_argument_without_futures_is_shared_as_in_a_thread_pool(dfx):
    out: list[int] = []

    def collect(value: int, sink: list[int]) -> int:
        sink.append(value)
        return len(sink)

    assert dfx.submit(collect, dfx.submit(identity, 3), out).result(timeout=TIMEOUT) == 1
    assert out == [3]


def test_a_walker_that_raises_fails_the_submit_and_leaves_nothing_pending(dfx):
    class Broken:
        pass

    def refuse(obj: Any, visit: Any) -> Any:
        raise ValueError("cannot look inside Broken")

    register_container(Broken, refuse)
    with pytest.raises(ValueError, match="cannot look inside"):
        dfx.submit(identity, Broken())
    assert dfx.pending == 0
    assert dfx.submit(add, 1, 1).result(timeout=TIMEOUT) == 2


# -- foreign futures --------------------------------------------------------------------------------


def test_a_plain_future_set_by_the_test_is_a_dependency(dfx):
    plain: Future[Any] = Future()
    ran: list[Any] = []

    def record(x: Any) -> Any:
        ran.append(x)
        return x * 2

    fut = dfx.submit(record, plain)
    # The task is driven by the dependency's done-callback: nothing can have run yet.
    assert ran == [] and not fut.done() and dfx.pending == 1
    plain.set_result(21)
    assert fut.result(timeout=TIMEOUT) == 42
    assert ran == [21]


def test_a_failed_plain_future_fails_the_task_with_dependency_error(dfx):
    plain: Future[Any] = Future()
    fut = dfx.submit(identity, [plain])
    plain.set_exception(KeyError("upstream"))
    error = fut.exception(timeout=TIMEOUT)
    assert isinstance(error, DependencyError)
    assert error.failed[0][0] is None and error.failed[0][1] == "an external future"
    assert isinstance(error.failed[0][2], KeyError)
    assert isinstance(error.__cause__, KeyError)
    assert error.chain == ["an external future", f"task {fut.task_id} (identity)"]


def test_a_future_of_a_stdlib_thread_pool_is_a_dependency(dfx):
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        foreign = pool.submit(lambda: release.wait(TIMEOUT) and "foreign")
        fut = dfx.submit(add, Point(foreign, 0).x, "+dfx")
        assert not fut.done()
        release.set()
        assert fut.result(timeout=TIMEOUT) == "foreign+dfx"


def test_a_future_of_another_dataflow_executor_is_a_dependency(dfx):
    with DataflowExecutor() as other:
        upstream = other.submit(identity, 5)
        assert dfx.submit(add, upstream, 1).result(timeout=TIMEOUT) == 6
