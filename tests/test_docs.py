"""Run every Python example of README.md and docs/*.md, as a reader would paste it.

Each ```python block runs alone in a fresh interpreter (``python -c``) in an empty directory
and must exit with status 0.  A block whose first line is ``# not run`` is skipped: it needs
something a test machine does not have (a remote node, a test module of the reader's own).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 120.0
SKIP_MARK = "# not run"

_OPENING = re.compile(r"^\s*```\s*(\S*)\s*$")
_CLOSING = re.compile(r"^\s*```\s*$")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """Return ``(line number, code)`` for each ```python block of ``path``."""
    blocks: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _OPENING.match(lines[i])
        i += 1
        if opening is None:
            continue
        start = i
        while i < len(lines) and not _CLOSING.match(lines[i]):
            i += 1
        if opening.group(1) == "python":
            blocks.append((start + 1, textwrap.dedent("\n".join(lines[start:i])) + "\n"))
        i += 1  # past the closing fence
    return blocks


def _examples() -> list[Any]:
    params = []
    for page in PAGES:
        for line, code in python_blocks(page):
            first = code.strip().splitlines()[0].strip() if code.strip() else ""
            marks = [pytest.mark.skip(reason="marked '# not run'")] if first.startswith(SKIP_MARK) else []
            params.append(pytest.param(code, id=f"{page.relative_to(ROOT)}:{line}", marks=marks))
    return params


EXAMPLES = _examples()


def test_the_pages_have_examples() -> None:
    assert len(EXAMPLES) >= 10, f"found only {len(EXAMPLES)} python examples in {[p.name for p in PAGES]}"


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["HPCFUTURES_RECORD_DIR"] = str(tmp_path / "records")  # examples that record keep out of $HOME
    env.pop("HPCFUTURES_RECORD", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that a timeout can stop the example and what it started
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the example did not finish within {TIMEOUT:g} s\n--- stdout\n{out}\n--- stderr\n{err}")
    assert proc.returncode == 0, (
        f"the example exited with status {proc.returncode}\n--- code\n{code}\n--- stdout\n{out}\n--- stderr\n{err}"
    )
