"""Run the ``hpcfutures`` command: ``python -m hpcfutures …``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
