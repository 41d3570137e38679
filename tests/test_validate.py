"""Tests of hpcfutures._validate: the argument checks every layer shares."""

from __future__ import annotations

import math
import re
import warnings

import pytest

from hpcfutures._validate import (
    check_bool,
    check_count,
    check_number,
    check_seconds,
    check_text,
    keyword_renamed,
)
from hpcfutures.errors import ConfigurationError

# -- check_count ------------------------------------------------------------------------------


@pytest.mark.parametrize("good, minimum", [(0, 0), (1, 1), (7, 1), (-3, -5), (10**30, 1)])
def test_a_count_in_range_comes_back_unchanged(good, minimum):
    assert check_count("n", good, minimum) == good


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.0, 2.5, "2", None, [1]])
def test_a_count_below_the_minimum_or_not_an_int_is_refused(bad):
    with pytest.raises(ConfigurationError) as info:
        check_count("max_workers", bad, 1)
    assert str(info.value) == f"max_workers must be an integer >= 1, got {bad!r}"


def test_a_count_has_an_upper_bound_and_a_name_for_what_it_is():
    assert check_count("port", 65535, 1, maximum=65535, what="a TCP port number") == 65535
    with pytest.raises(ConfigurationError, match=r"^port must be a TCP port number from 1 to 65535, got 65536$"):
        check_count("port", 65536, 1, maximum=65535, what="a TCP port number")


def test_a_count_may_have_no_lower_bound():
    assert check_count("priority", -(10**9), None) == -(10**9)
    with pytest.raises(ConfigurationError, match=r"^priority must be an integer \(higher runs first\), got 1.5$"):
        check_count("priority", 1.5, None, note="higher runs first")
    with pytest.raises(ConfigurationError, match=r"^n must be an integer <= 3, got 4$"):
        check_count("n", 4, None, maximum=3)


def test_an_optional_count_accepts_none_and_says_so():
    assert check_count("depth", None, 1, optional=True) is None
    with pytest.raises(ConfigurationError, match=r"^depth must be an integer >= 1 \(CPUs per copy\) or None, got 0$"):
        check_count("depth", 0, 1, note="CPUs per copy", optional=True)
    with pytest.raises(ConfigurationError, match=r"or None \(for the default\), got 0$"):
        check_count("max_workers", 0, 1, optional="for the default")
    with pytest.raises(ConfigurationError, match="got None"):
        check_count("n", None, 0)  # not optional: None is refused


@pytest.mark.parametrize("error", [ValueError, TypeError, ConfigurationError])
def test_the_caller_chooses_the_exception(error):
    with pytest.raises(error, match="chunksize") as info:
        check_count("chunksize", 0, 1, error=error)
    assert type(info.value) is error


def test_configuration_error_is_a_value_error_as_the_stdlib_raises():
    with pytest.raises(ValueError):
        check_count("max_workers", -1, 1)


# -- check_number and check_seconds --------------------------------------------------------------


@pytest.mark.parametrize("good", [1, 0.001, 2.5, math.inf, 10**20])
def test_a_positive_number_comes_back_unchanged_with_its_type(good):
    result = check_number("x", good)
    assert result == good and type(result) is type(good)


@pytest.mark.parametrize("bad", [0, 0.0, -1, math.nan, -math.inf, True, "1", None, 1j])
def test_a_number_that_is_not_positive_is_refused(bad):
    with pytest.raises(ConfigurationError, match=r"^mem must be a positive number of GB, got "):
        check_number("mem", bad, unit="GB")


def test_a_finite_number_refuses_infinity_and_says_so():
    with pytest.raises(ConfigurationError, match=r"^walltime must be a finite positive number of seconds, got inf$"):
        check_number("walltime", math.inf, finite=True, unit="seconds")


def test_a_range_is_inclusive_and_refuses_nan():
    for good in (0, 0.5, 1):
        assert check_number("parallelism", good, at_least=0, at_most=1) == good
    for bad in (-0.01, 1.01, math.nan, math.inf):
        with pytest.raises(ConfigurationError, match=r"^parallelism must be a number from 0 to 1 \(the share\)"):
            check_number("parallelism", bad, at_least=0, at_most=1, note="the share")


def test_a_lower_bound_alone_is_inclusive():
    assert check_number("x", 0.5, at_least=0.5) == 0.5
    with pytest.raises(ConfigurationError, match=r"^x must be a number >= 0.5, got 0.4$"):
        check_number("x", 0.4, at_least=0.5)


def test_an_optional_number_accepts_none():
    assert check_number("mem_per_node", None, unit="GB", optional=True) is None
    with pytest.raises(ConfigurationError, match=r"positive number of GB or None, got -1$"):
        check_number("mem_per_node", -1, unit="GB", optional=True)


def test_seconds_keep_the_messages_tests_and_users_rely_on():
    assert check_seconds("timeout", 0.5) == 0.5
    assert check_seconds("timeout", math.inf) == math.inf
    with pytest.raises(ConfigurationError, match=r"^walltime must be a positive number of seconds, got 0$"):
        check_seconds("walltime", 0)
    assert check_seconds("cancel_grace", 0, allow_zero=True, finite=True) == 0
    with pytest.raises(ConfigurationError, match=r"^cancel_grace must be a finite number of seconds >= 0, got inf$"):
        check_seconds("cancel_grace", math.inf, allow_zero=True, finite=True)
    with pytest.raises(ConfigurationError, match="got -1"):
        check_seconds("cancel_grace", -1, allow_zero=True)
    assert check_seconds("walltime", None, optional=True) is None
    with pytest.raises(ValueError, match="app option walltime must be a positive number of seconds or None"):
        check_seconds("app option walltime", "1h", optional=True, error=ValueError)


# -- check_bool and check_text ---------------------------------------------------------------------


@pytest.mark.parametrize("good", [True, False])
def test_a_bool_comes_back(good):
    assert check_bool("exclusive", good) is good


@pytest.mark.parametrize("bad", [0, 1, "yes", "False", None])
def test_anything_else_is_not_a_bool(bad):
    with pytest.raises(ConfigurationError, match=rf"^exclusive must be True or False, got {re.escape(repr(bad))}$"):
        check_bool("exclusive", bad)
    with pytest.raises(TypeError):
        check_bool("exclusive", bad, error=TypeError)


def test_text_must_have_something_besides_whitespace():
    assert check_text("label", "htex") == "htex"
    assert check_text("label", " a b ") == " a b "
    for bad in ("", "  \n", None, b"htex", 3):
        with pytest.raises(ConfigurationError, match=rf"^label must be a non-empty string, got {re.escape(repr(bad))}$"):
            check_text("label", bad)


def test_optional_text_and_its_own_words():
    assert check_text("cwd", None, what="a directory path", optional=True) is None
    with pytest.raises(ConfigurationError, match=r"^cwd must be a directory path or None, got ''$"):
        check_text("cwd", "", what="a directory path", optional=True)


# -- keyword_renamed -------------------------------------------------------------------------------


@keyword_renamed("tasks_per_node", "max_workers")
def _render(command: str, max_workers: int, nodes: int = 1) -> str:
    return f"{command} x{max_workers} on {nodes}"


def test_a_renamed_keyword_still_works_and_warns_with_the_new_name():
    with pytest.warns(DeprecationWarning, match=r"_render\(\): the keyword tasks_per_node= is now called max_workers="):
        assert _render("pool", tasks_per_node=4) == "pool x4 on 1"


def test_the_new_name_and_positions_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _render("pool", 4, 2) == "pool x4 on 2"
        assert _render("pool", max_workers=4, nodes=2) == "pool x4 on 2"


def test_both_names_at_once_are_refused():
    with pytest.raises(TypeError, match="got both tasks_per_node= and max_workers="):
        _render("pool", tasks_per_node=4, max_workers=4)


def test_the_warning_points_at_the_caller():
    with pytest.warns(DeprecationWarning) as record:
        _render("pool", tasks_per_node=1)
    assert record[0].filename == __file__


def test_the_renamed_function_keeps_its_name_and_docs():
    assert _render.__name__ == "_render"
    assert _render.__wrapped__.__name__ == "_render"  # type: ignore[attr-defined]
