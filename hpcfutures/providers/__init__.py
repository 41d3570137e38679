"""Providers: where blocks (batch jobs that each run a worker pool) are started.

A provider knows nothing about tasks: it submits a command as a job, reports the states of
many jobs in one call, and cancels jobs.
"""

from __future__ import annotations

from .base import ExecutionProvider, JobState, JobStatus
from .local import LocalProvider

__all__ = ["ExecutionProvider", "JobState", "JobStatus", "LocalProvider"]
