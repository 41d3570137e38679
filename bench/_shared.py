"""What the benchmark scripts share: result collection, table formatting and provenance."""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import subprocess
import sys
import traceback
from typing import Any

MIB = 1024 * 1024
TIMEOUT = 120.0  # seconds any one wait may take before the run reports it as failed
WARMUP_BURST = 300
WARMUP_SEQUENTIAL = 20
HERE = os.path.dirname(os.path.abspath(__file__))


class Results:
    """Collects each measurement's repeats, and the errors that stopped any of them."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.errors: dict[str, str] = {}
        self.notes: dict[str, Any] = {}
        self.memory: dict[str, Any] | None = None

    def add(self, key: str, who: str, value: float) -> None:
        self.samples.setdefault(key, {}).setdefault(who, []).append(value)

    def median(self, key: str, who: str) -> float | None:
        values = self.samples.get(key, {}).get(who)
        return statistics.median(values) if values else None

    def spread(self, key: str, who: str) -> float | None:
        """(max - min) / median of the repeats, or None with fewer than two."""
        values = self.samples.get(key, {}).get(who)
        if not values or len(values) < 2:
            return None
        return (max(values) - min(values)) / statistics.median(values)

    def fail(self, where: str, exc: BaseException | str) -> None:
        if isinstance(exc, BaseException):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            text = exc
        self.errors[where] = text
        print(f"\n!! {where} failed:\n{text}", file=sys.stderr, flush=True)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_spread(value: float | None) -> str:
    return "" if value is None else f"±{value * 50:.0f}%"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]])


def compile_package() -> None:
    """Byte-compile hpcfutures, as ``pip install`` does: a checkout run under
    PYTHONDONTWRITEBYTECODE=1 (the project's test machines set it) never writes .pyc files, so
    every process an executor starts would compile the package again, 50-70 ms of start-up
    that an installed package does not cost."""
    import compileall

    import hpcfutures

    compileall.compile_dir(os.path.dirname(hpcfutures.__file__), quiet=1)


def provenance() -> dict[str, Any]:
    """The package version, git revision and a digest of the package sources, and the machine.

    The working tree may change between runs while git HEAD does not: the digest tells.
    """
    import hpcfutures

    try:
        rev = subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        git = f"git {rev}{'+dirty' if dirty else ''}" if rev else "no git"
    except (OSError, subprocess.SubprocessError):
        git = "no git"
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(hpcfutures.__file__))
    for root, dirs, files in sorted(os.walk(package)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, package).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return {
        "hpcfutures": hpcfutures.__version__,
        "git": f"{git}, sources {digest.hexdigest()[:12]}",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
