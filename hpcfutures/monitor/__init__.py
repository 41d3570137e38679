"""Monitoring: a record of every run in SQLite, and what reads it (CLI, dashboard, metrics).

An executor made with ``record=`` (or with ``HPCFUTURES_RECORD`` set) writes its run to a
:class:`Recorder`; ``hpcfutures monitor`` reads the file.  See docs/monitoring.md.
"""

from __future__ import annotations

from .location import record_dir, resolve_record
from .recorder import Recorder, open_recorder
from .schema import SCHEMA_VERSION, RecordError, connect_for_reading

__all__ = [
    "Recorder",
    "RecordError",
    "SCHEMA_VERSION",
    "connect_for_reading",
    "open_recorder",
    "record_dir",
    "resolve_record",
]
