"""Tools to test Executor backends: a conformance suite and cross-process test events.

``conformance_suite(factory, workers=N)`` returns a pytest class that certifies a backend;
:class:`Gate` and :class:`Recorder` let a test synchronise with tasks that run in other
processes.  Only the conformance suite imports pytest, and only when it is first used, so
worker processes can import the task helpers (:mod:`hpcfutures.testing.tasks`) cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .gate import Gate, Recorder
from .tasks import ConformanceError

__all__ = ["ConformanceError", "ExecutorConformance", "Gate", "Recorder", "conformance_suite"]

if TYPE_CHECKING:
    from .conformance import ExecutorConformance, conformance_suite

_LAZY = {"conformance_suite", "ExecutorConformance"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hpcfutures.testing' has no attribute {name!r}")
    import pytest

    # Let pytest rewrite the suite's asserts into detailed messages, as in a test module.
    pytest.register_assert_rewrite("hpcfutures.testing.conformance")
    value = getattr(importlib.import_module("hpcfutures.testing.conformance"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
