"""Launchers: how a block's worker-pool command is started on the nodes a provider obtained."""

from __future__ import annotations

from .base import Launcher, SimpleLauncher

__all__ = ["Launcher", "SimpleLauncher"]
