"""Session-wide checks for the test suite."""

from __future__ import annotations

import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test when pytest-xdist's loadgroup could not keep its group together.

    Tests that share one system-wide cluster (``xdist_group("slurm")``, ``("sge")``) must run
    in one worker, whose session fixture starts and stops that cluster.  Some pytest and
    pytest-xdist combinations silently stop grouping (pytest-xdist issue #1386); failing here
    says so, instead of letting two workers start and stop one cluster under each other.
    """
    if getattr(item.config.option, "loadgroup", False) and "@" not in item.nodeid:
        if item.get_closest_marker("xdist_group") is not None:
            pytest.fail(
                f"pytest {pytest.__version__} with this pytest-xdist does not keep xdist_group tests "
                "in one worker; install the test extra's pytest (pip install -e '.[test]')",
                pytrace=False,
            )
