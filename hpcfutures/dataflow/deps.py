"""Finding futures inside a call's arguments, and putting their results in their place.

Any ``concurrent.futures.Future`` in the positional arguments, keyword values, or inside
lists, tuples, sets, frozensets, dicts, named tuples and dataclasses is a dependency.  Other
container types join with :func:`register_container`.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from concurrent.futures import Future
from typing import Any, Callable, Iterable

# Types that cannot hold a future: skipped without a look inside.
ATOMIC_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None), bytearray, memoryview, range})

Walk = Callable[[Any, Callable[[Any], Any]], Any]
_walkers: dict[type, Walk] = {}


def register_container(cls: type, walk: Walk) -> None:
    """Teach dependency discovery to look inside instances of ``cls``.

    ``walk(obj, visit)`` must return ``obj`` rebuilt with ``visit(item)`` in place of each
    item that may hold a future (it may return ``obj`` itself when nothing changed).

    Raises:
        TypeError: ``cls`` is not a class or ``walk`` is not callable.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_container needs a class, got {cls!r}")
    if not callable(walk):
        raise TypeError(f"register_container needs a callable walk(obj, visit), got {walk!r}")
    _walkers[cls] = walk


def _unchanged(new: Iterable[Any], old: Iterable[Any]) -> bool:
    return all(map(operator.is_, new, old))


# Each walker returns ``obj`` itself when no item changed: an argument without futures
# reaches the task as the caller's own object, as it would through a thread pool.


def _walk_list(obj: list[Any], visit: Callable[[Any], Any]) -> list[Any]:
    items = [visit(x) for x in obj]
    if _unchanged(items, obj):
        return obj
    if type(obj) is list:
        return items
    new = copy.copy(obj)  # a subclass keeps its type
    new[:] = items
    return new


def _walk_tuple(obj: tuple[Any, ...], visit: Callable[[Any], Any]) -> tuple[Any, ...]:
    items = [visit(x) for x in obj]
    if _unchanged(items, obj):
        return obj
    if type(obj) is tuple:
        return tuple(items)
    if hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*items)
    return type(obj)(items)


def _walk_set(obj: set[Any] | frozenset[Any], visit: Callable[[Any], Any]) -> Any:
    items = [visit(x) for x in obj]
    if _unchanged(items, obj):
        return obj
    return type(obj)(items)


def _walk_dict(obj: dict[Any, Any], visit: Callable[[Any], Any]) -> dict[Any, Any]:
    keys = [visit(k) for k in obj]
    values = [visit(v) for v in obj.values()]
    if _unchanged(keys, obj) and _unchanged(values, obj.values()):
        return obj
    if type(obj) is dict:
        return dict(zip(keys, values))
    new = copy.copy(obj)
    new.clear()
    for k, v in zip(keys, values):
        new[k] = v
    return new


def _walk_dataclass(obj: Any, visit: Callable[[Any], Any]) -> Any:
    changed = {}
    for f in dataclasses.fields(obj):
        old = getattr(obj, f.name)
        new_value = visit(old)
        if new_value is not old:
            changed[f.name] = new_value
    if not changed:
        return obj
    new = copy.copy(obj)
    for name, value in changed.items():
        object.__setattr__(new, name, value)  # also for a frozen dataclass
    return new


for _cls, _walk in (
    (list, _walk_list),
    (tuple, _walk_tuple),
    (set, _walk_set),
    (frozenset, _walk_set),
    (dict, _walk_dict),
):
    register_container(_cls, _walk)


def _walker_for(obj: Any) -> Walk | None:
    kind = type(obj)
    walk = _walkers.get(kind)
    if walk is not None:
        return walk
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _walk_dataclass
    for base, base_walk in _walkers.items():
        if isinstance(obj, base):
            return base_walk
    return None


def find_futures(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Future[Any]]:
    """Return the distinct futures found in ``args`` and ``kwargs``, in order of appearance."""
    found: list[Future[Any]] = []
    seen: set[int] = set()

    def visit(obj: Any) -> Any:
        kind = type(obj)
        if kind in ATOMIC_TYPES:
            return obj
        if isinstance(obj, Future):
            if id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
            return obj
        walk = _walker_for(obj)
        if walk is not None and id(obj) not in seen:  # each container once, even in a cycle
            seen.add(id(obj))
            walk(obj, visit)
        return obj

    for a in args:
        if type(a) not in ATOMIC_TYPES:
            visit(a)
    for v in kwargs.values():
        if type(v) not in ATOMIC_TYPES:
            visit(v)
    return found


def substitute(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return ``args`` and ``kwargs`` with each (done, successful) future replaced by its result."""
    # id of a container -> what replaces it: a container met again (shared, or in a cycle) is
    # walked once, and a cycle back to a container still being walked keeps the original.
    rebuilt: dict[int, Any] = {}

    def visit(obj: Any) -> Any:
        kind = type(obj)
        if kind in ATOMIC_TYPES:
            return obj
        if isinstance(obj, Future):
            return obj.result()
        walk = _walker_for(obj)
        if walk is None:
            return obj
        key = id(obj)
        if key not in rebuilt:
            rebuilt[key] = obj
            rebuilt[key] = walk(obj, visit)
        return rebuilt[key]

    return tuple([visit(a) for a in args]), {k: visit(v) for k, v in kwargs.items()}
