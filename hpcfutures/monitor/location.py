"""Where run records live, and what an executor's ``record=`` argument means.

``record=`` (on :class:`~hpcfutures.DataflowExecutor` and
:class:`~hpcfutures.HighThroughputExecutor`) takes:

- ``None`` (the default): follow ``HPCFUTURES_RECORD``; off when it is unset, empty or ``0``;
- ``False``: off, whatever the environment says;
- ``True``: on, in the default family (the script's name) in the record directory;
- a family name (``"sweep"``): ``<record dir>/sweep.db``;
- a path (``"runs/sweep.db"`` or a :class:`~pathlib.Path`): that file, family its stem.

``HPCFUTURES_RECORD`` takes the same words (``1``/``true`` for on).  The record directory
is ``HPCFUTURES_RECORD_DIR``, else ``$XDG_STATE_HOME/hpcfutures/runs`` (by default
``~/.local/state/hpcfutures/runs``); ``hpcfutures monitor`` looks there too.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Union

RecordArg = Union[None, bool, str, "os.PathLike[str]"]

ENV_RECORD = "HPCFUTURES_RECORD"
ENV_RECORD_DIR = "HPCFUTURES_RECORD_DIR"
SUFFIX = ".db"
_FAMILY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_OFF = {"", "0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


def record_dir() -> Path:
    """The directory that holds run records by family name."""
    explicit = os.environ.get(ENV_RECORD_DIR)
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "hpcfutures" / "runs"


def default_family() -> str:
    """The family a run joins when none is named: the script's name, else ``interactive``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    stem = Path(argv0).stem if argv0 else ""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:100].lstrip("._-")
    return stem or "interactive"


def resolve_record(record: RecordArg, *, parameter: str = "record") -> tuple[Path, str] | None:
    """Turn a ``record=`` argument (and the environment) into ``(file, family)``, or None for off.

    Raises:
        TypeError: ``record`` is not None, a bool, a str or a path.
        ValueError: a family name that is not a plain name.
    """
    if record is None:
        record = os.environ.get(ENV_RECORD, "")
        parameter = f"${ENV_RECORD}"
        if record.strip().lower() in _OFF:
            return None
    if record is False:
        return None
    if record is True or (isinstance(record, str) and record.strip().lower() in _ON):
        family = default_family()
        return record_dir() / f"{family}{SUFFIX}", family
    if isinstance(record, os.PathLike):
        path = Path(record)
        return path, path.stem or default_family()
    if not isinstance(record, str):
        raise TypeError(
            f"{parameter} must be True, False, None, a family name or a path to a .db file, "
            f"not {type(record).__name__}"
        )
    text = record.strip()
    if text.lower() in _OFF:
        return None
    if "/" in text or text.endswith((".db", ".sqlite", ".sqlite3")):
        path = Path(text).expanduser()
        return path, path.stem or default_family()
    if not _FAMILY.match(text):
        raise ValueError(
            f"{parameter}={record!r} is not a family name (letters, digits, '.', '_' and '-', "
            "at most 100) nor a path; give a name such as 'sweep' or a path such as 'runs/sweep.db'"
        )
    return record_dir() / f"{text}{SUFFIX}", text
