"""What the interchange and pool manager processes share as programs: their log setup."""

from __future__ import annotations

import logging


def setup_logging(log_file: str) -> None:
    """Send this component's log records, at DEBUG level, to ``log_file`` (none if empty)."""
    if log_file:
        logging.basicConfig(
            filename=log_file,
            level=logging.DEBUG,
            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        )
