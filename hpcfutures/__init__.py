"""hpcfutures: ``concurrent.futures`` Executors from a laptop to a supercomputer.

The public API is what ``__all__`` lists.  Names are imported on first use so that
``import hpcfutures`` (and every worker process that starts) stays cheap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ThreadExecutor": "hpcfutures.executors.threads",
    "HighThroughputExecutor": "hpcfutures.executors.htex.executor",
    "MPIExecutor": "hpcfutures.executors.mpi",
    "progress": "hpcfutures.progressbar",
    "as_completed": "hpcfutures.progressbar",
    "Resources": "hpcfutures.resources",
    "TaskOptions": "hpcfutures.resources",
    "ExecutorView": "hpcfutures.resources",
    "HpcFuturesError": "hpcfutures.errors",
    "ConfigurationError": "hpcfutures.errors",
    "SerializationError": "hpcfutures.errors",
    "UnsupportedOptionError": "hpcfutures.errors",
    "ResourceUnsatisfiableError": "hpcfutures.errors",
    "ExecutorError": "hpcfutures.errors",
    "ExecutorShutdownError": "hpcfutures.errors",
    "BrokenExecutorError": "hpcfutures.errors",
    "PoolStartError": "hpcfutures.errors",
    "InterchangeLostError": "hpcfutures.errors",
    "VersionMismatchError": "hpcfutures.errors",
    "TaskError": "hpcfutures.errors",
    "WorkerLostError": "hpcfutures.errors",
    "PoolLostError": "hpcfutures.errors",
    "TaskTimeoutError": "hpcfutures.errors",
    "RemoteTraceback": "hpcfutures.errors",
    "RemoteError": "hpcfutures.errors",
    "DependencyError": "hpcfutures.errors",
    "JoinError": "hpcfutures.errors",
    "WorkflowStoppedError": "hpcfutures.errors",
    "AppError": "hpcfutures.errors",
    "BashExitFailure": "hpcfutures.errors",
    "BashAppNoReturn": "hpcfutures.errors",
    "MissingOutputs": "hpcfutures.errors",
    "NoExecutorBoundError": "hpcfutures.errors",
    "DataflowExecutor": "hpcfutures.dataflow.executor",
    "DataflowView": "hpcfutures.dataflow.executor",
    "DataflowFuture": "hpcfutures.dataflow.futures",
    "DataFuture": "hpcfutures.dataflow.futures",
    "File": "hpcfutures.dataflow.files",
    "TaskRecord": "hpcfutures.dataflow.retry",
    "register_container": "hpcfutures.dataflow.deps",
    "python_app": "hpcfutures.dataflow.apps",
    "bash_app": "hpcfutures.dataflow.apps",
    "join_app": "hpcfutures.dataflow.apps",
    "AUTO_LOGNAME": "hpcfutures.dataflow.apps",
    "Checkpoint": "hpcfutures.dataflow.checkpoint",
    "CheckpointError": "hpcfutures.dataflow.checkpoint",
    "CacheKeyError": "hpcfutures.dataflow.memo",
    "register_cache_key": "hpcfutures.dataflow.memo",
    "StagingError": "hpcfutures.dataflow.staging.base",
    "StagingProvider": "hpcfutures.dataflow.staging.base",
}

__all__ = ["__version__", *_EXPORTS]

# Quiet unless the application configures logging: the library never prints.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .dataflow.apps import AUTO_LOGNAME, bash_app, join_app, python_app
    from .dataflow.checkpoint import Checkpoint, CheckpointError
    from .dataflow.deps import register_container
    from .dataflow.executor import DataflowExecutor, DataflowView
    from .dataflow.files import File
    from .dataflow.futures import DataflowFuture, DataFuture
    from .dataflow.memo import CacheKeyError, register_cache_key
    from .dataflow.retry import TaskRecord
    from .dataflow.staging.base import StagingError, StagingProvider
    from .errors import (
        AppError,
        BashAppNoReturn,
        BashExitFailure,
        BrokenExecutorError,
        ConfigurationError,
        DependencyError,
        ExecutorError,
        ExecutorShutdownError,
        HpcFuturesError,
        InterchangeLostError,
        JoinError,
        MissingOutputs,
        NoExecutorBoundError,
        PoolLostError,
        PoolStartError,
        RemoteError,
        RemoteTraceback,
        ResourceUnsatisfiableError,
        SerializationError,
        TaskError,
        TaskTimeoutError,
        UnsupportedOptionError,
        VersionMismatchError,
        WorkerLostError,
        WorkflowStoppedError,
    )
    from .executors.htex.executor import HighThroughputExecutor
    from .executors.mpi import MPIExecutor
    from .executors.threads import ThreadExecutor
    from .progressbar import as_completed, progress
    from .resources import ExecutorView, Resources, TaskOptions


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
