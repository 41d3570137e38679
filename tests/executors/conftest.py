"""Fixtures the executor tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .htex_helpers import assert_all_gone, descendants


@pytest.fixture
def leak_check() -> Iterator[Callable[[], None]]:
    """Yield a function that records the processes started since; check at the end they are gone."""
    before = descendants()
    seen: set[int] = set()

    def snapshot() -> None:
        seen.update(descendants() - before)

    yield snapshot
    snapshot()
    assert_all_gone(seen)
