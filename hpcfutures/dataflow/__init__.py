"""Dataflow over any Executor: dependencies, retries and apps (python, bash, join)."""

from __future__ import annotations

from .deps import register_container
from .executor import DataflowExecutor, DataflowView, TaskSettings, current_executor
from .files import File
from .futures import DataflowFuture, DataFuture
from .retry import TaskRecord

__all__ = [
    "DataFuture",
    "DataflowExecutor",
    "DataflowFuture",
    "DataflowView",
    "File",
    "TaskRecord",
    "TaskSettings",
    "current_executor",
    "register_container",
]
