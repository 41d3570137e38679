"""Providers: where blocks (batch jobs that each run a worker pool) are started.

A provider knows nothing about tasks: it submits a command as a job, reports the states of
many jobs in one call, and cancels jobs.  Scheduler providers run their commands through a
channel: :class:`LocalChannel` on this machine or :class:`SSHChannel` on a login node.
Each name is imported on first use, so ``import hpcfutures.providers`` stays cheap (SSH
support loads paramiko only when asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports
from .base import ExecutionProvider, JobState, JobStatus, TunnelChannel
from .local import LocalProvider

_LAZY = {
    "Channel": ".channels",
    "ChannelError": ".channels",
    "CommandResult": ".channels",
    "LocalChannel": ".channels",
    "ClusterProvider": ".cluster",
    "BlockShape": ".cluster",
    "SubmitError": ".cluster",
    "SlurmProvider": ".slurm",
    "PBSProProvider": ".pbs",
    "TorqueProvider": ".pbs",
    "GridEngineProvider": ".gridengine",
    "LSFProvider": ".lsf",
    "CondorProvider": ".condor",
    "CobaltProvider": ".cobalt",
    "SSHProvider": ".ssh",
    "SSHChannel": ".ssh_channel",
    "SSHHostKeyError": ".ssh_channel",
    "SSHAuthenticationError": ".ssh_channel",
}

__all__ = ["ExecutionProvider", "JobState", "JobStatus", "LocalProvider", "TunnelChannel", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


if TYPE_CHECKING:
    from .channels import Channel, ChannelError, CommandResult, LocalChannel
    from .cluster import BlockShape, ClusterProvider, SubmitError
    from .cobalt import CobaltProvider
    from .condor import CondorProvider
    from .gridengine import GridEngineProvider
    from .lsf import LSFProvider
    from .pbs import PBSProProvider, TorqueProvider
    from .slurm import SlurmProvider
    from .ssh import SSHProvider
    from .ssh_channel import SSHAuthenticationError, SSHChannel, SSHHostKeyError
