"""The "current executor": where apps called without an executor of their own send tasks.

``with dfx:`` makes a DataflowExecutor current for the code inside (and for join-app bodies
it runs); apps bound to no executor look it up at each call.  A context variable, so each
thread and each asyncio task sees its own.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .executor import DataflowExecutor

#: The innermost DataflowExecutor entered with ``with``: where bare apps go.
current_executor: contextvars.ContextVar[DataflowExecutor | None] = contextvars.ContextVar(
    "hpcfutures_dataflow_executor", default=None
)
