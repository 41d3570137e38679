"""Argument checks shared by every layer: counts, numbers, seconds, flags and text.

Each check returns the value it was given when it is acceptable, and otherwise raises the
exception class its caller names (:class:`~hpcfutures.ConfigurationError` unless told
otherwise) with a message of one shape: ``"<name> must be <what it must be>, got <value>"``.
``name`` is whatever the caller wants the reader to see: a parameter (``"max_workers"``) or
a qualified one (``"Resources.cores"``, ``"app option retries"``).

A ``bool`` is never accepted as a number: ``True`` is an ``int`` to Python but not a count
to anyone who writes it.  NaN fails every numeric check, because every comparison with it is
false.  :func:`keyword_renamed` keeps a renamed keyword argument working for a while.

This module imports only the standard library and :mod:`hpcfutures.errors`, so worker-side
code may use it.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Literal, TypeVar, cast, overload

from .errors import ConfigurationError

_F = TypeVar("_F", bound=Callable[..., Any])


def _or_none(optional: bool | str) -> str:
    if optional is False:
        return ""
    return f" or None ({optional})" if isinstance(optional, str) and optional else " or None"


def _fail(
    error: type[Exception], name: str, requirement: str, note: str, optional: bool | str, value: object
) -> Exception:
    note_text = f" ({note})" if note else ""
    return error(f"{name} must be {requirement}{note_text}{_or_none(optional)}, got {value!r}")


@overload
def check_count(
    name: str,
    value: object,
    minimum: int | None = ...,
    *,
    maximum: int | None = ...,
    what: str = ...,
    note: str = ...,
    optional: Literal[False] = ...,
    error: type[Exception] = ...,
) -> int: ...


@overload
def check_count(
    name: str,
    value: object,
    minimum: int | None = ...,
    *,
    maximum: int | None = ...,
    what: str = ...,
    note: str = ...,
    optional: Literal[True] | str,
    error: type[Exception] = ...,
) -> int | None: ...


def check_count(
    name: str,
    value: object,
    minimum: int | None = 0,
    *,
    maximum: int | None = None,
    what: str = "an integer",
    note: str = "",
    optional: bool | str = False,
    error: type[Exception] = ConfigurationError,
) -> int | None:
    """Return *value* if it is an ``int`` (not a ``bool``) from *minimum* to *maximum*.

    Args:
        name: how the message names the value.
        value: what the caller was given.
        minimum: the smallest value accepted; None: no limit.
        maximum: the largest value accepted; None: no limit.
        what: what the value is, in the message (``"a TCP port number"``).
        note: what the number counts, shown in parentheses after the bounds.
        optional: True to accept None as well; a string also says what None means
            (``optional="for the default"``).
        error: the exception class to raise.

    Raises:
        error: *value* is not such an integer, e.g. ``"workers must be an integer >= 1, got 0"``.
    """
    if value is None and optional is not False:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise _fail(error, name, what + _count_bounds(minimum, maximum), note, optional, value)
    return value


def _count_bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is None:
        return "" if maximum is None else f" <= {maximum}"
    return f" >= {minimum}" if maximum is None else f" from {minimum} to {maximum}"


@overload
def check_number(
    name: str,
    value: object,
    *,
    at_least: float | None = ...,
    at_most: float | None = ...,
    finite: bool = ...,
    unit: str = ...,
    note: str = ...,
    optional: Literal[False] = ...,
    error: type[Exception] = ...,
) -> float: ...


@overload
def check_number(
    name: str,
    value: object,
    *,
    at_least: float | None = ...,
    at_most: float | None = ...,
    finite: bool = ...,
    unit: str = ...,
    note: str = ...,
    optional: Literal[True] | str,
    error: type[Exception] = ...,
) -> float | None: ...


def check_number(
    name: str,
    value: object,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    finite: bool = False,
    unit: str = "",
    note: str = "",
    optional: bool | str = False,
    error: type[Exception] = ConfigurationError,
) -> float | None:
    """Return *value*, unchanged, if it is an ``int`` or ``float`` (not a ``bool``) in range.

    The value must be positive, or at least *at_least* when that is given, and at most
    *at_most* when that is given.  Infinity passes unless *finite* is set (or *at_most*).

    Args:
        name: how the message names the value.
        value: what the caller was given.
        at_least: the smallest value accepted; None: any value above zero.
        at_most: the largest value accepted; None: no limit.
        finite: refuse infinity.
        unit: what the number measures, in the message (``"seconds"``, ``"GB"``).
        note: what the number means, shown in parentheses after the requirement.
        optional: True to accept None as well; a string also says what None means.
        error: the exception class to raise.

    Raises:
        error: *value* is not such a number, e.g. ``"timeout must be a positive number of
            seconds, got 0"``.
    """
    return _check_number(
        name,
        value,
        at_least=at_least,
        at_most=at_most,
        finite=finite,
        unit=unit,
        note=note,
        optional=optional,
        error=error,
    )


def _check_number(
    name: str,
    value: object,
    *,
    at_least: float | None,
    at_most: float | None,
    finite: bool,
    unit: str,
    note: str,
    optional: bool | str,
    error: type[Exception],
) -> float | None:
    if value is None and optional is not False:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (finite and not math.isfinite(value))
        or not (value > 0 if at_least is None else value >= at_least)
        or (at_most is not None and not value <= at_most)
    ):
        raise _fail(error, name, _number_requirement(at_least, at_most, finite, unit), note, optional, value)
    return value


def _number_requirement(at_least: float | None, at_most: float | None, finite: bool, unit: str) -> str:
    of_unit = f" of {unit}" if unit else ""
    if at_least is not None and at_most is not None:
        return f"a number{of_unit} from {at_least:g} to {at_most:g}"
    kind = "a finite " if finite else "a "
    if at_least is None:
        upper = f" <= {at_most:g}" if at_most is not None else ""
        return f"{kind}positive number{of_unit}{upper}"
    return f"{kind}number{of_unit} >= {at_least:g}"


@overload
def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = ...,
    finite: bool = ...,
    optional: Literal[False] = ...,
    error: type[Exception] = ...,
) -> float: ...


@overload
def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = ...,
    finite: bool = ...,
    optional: Literal[True] | str,
    error: type[Exception] = ...,
) -> float | None: ...


def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    finite: bool = False,
    optional: bool | str = False,
    error: type[Exception] = ConfigurationError,
) -> float | None:
    """Return *value*, unchanged, if it is a positive number of seconds (or zero, if allowed).

    A shorthand for :func:`check_number` with ``unit="seconds"``: the message says
    ``"a positive number of seconds"``, or ``"a number of seconds >= 0"`` with *allow_zero*,
    either preceded by ``finite`` when infinity is refused.

    Raises:
        error: *value* is not such a number.
    """
    return _check_number(
        name,
        value,
        at_least=0.0 if allow_zero else None,
        at_most=None,
        finite=finite,
        unit="seconds",
        note="",
        optional=optional,
        error=error,
    )


def check_bool(name: str, value: object, *, error: type[Exception] = ConfigurationError) -> bool:
    """Return *value* if it is ``True`` or ``False``; 0, 1, ``"yes"`` and None are refused.

    Raises:
        error: *value* is not a ``bool``: ``"<name> must be True or False, got <value>"``.
    """
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False, got {value!r}")
    return value


@overload
def check_text(
    name: str,
    value: object,
    *,
    what: str = ...,
    optional: Literal[False] = ...,
    error: type[Exception] = ...,
) -> str: ...


@overload
def check_text(
    name: str,
    value: object,
    *,
    what: str = ...,
    optional: Literal[True] | str,
    error: type[Exception] = ...,
) -> str | None: ...


def check_text(
    name: str,
    value: object,
    *,
    what: str = "a non-empty string",
    optional: bool | str = False,
    error: type[Exception] = ConfigurationError,
) -> str | None:
    """Return *value* if it is a string with something besides whitespace in it.

    Args:
        name: how the message names the value.
        value: what the caller was given.
        what: what the string must be, in the message (``"a directory path"``).
        optional: True to accept None as well; a string also says what None means.
        error: the exception class to raise.

    Raises:
        error: *value* is not a string, or is empty or blank.
    """
    if value is None and optional is not False:
        return None
    if not isinstance(value, str) or not value.strip():
        raise error(f"{name} must be {what}{_or_none(optional)}, got {value!r}")
    return value


def keyword_renamed(old: str, new: str) -> Callable[[_F], _F]:
    """Make a function that took keyword *old* accept it still, as *new*, with a warning.

    For a public parameter that was renamed: calls that pass it by position are unaffected,
    and a call passing *old* by keyword gets a :class:`DeprecationWarning` naming *new*.

    Raises (from the decorated function):
        TypeError: both *old* and *new* were passed.
    """

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def accept_old_name(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got both {old}= and {new}=; pass only {new}=")
                warnings.warn(
                    f"{fn.__qualname__}(): the keyword {old}= is now called {new}=",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return cast(_F, accept_old_name)  # the same signature, plus the old name

    return decorate
