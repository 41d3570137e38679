"""Fake LSF, HTCondor and Cobalt commands for the provider tests, and helpers to drive them.

No server for these three schedulers can be installed on the test machines.  The fake
commands in ``lsf/``, ``condor/`` and ``cobalt/`` (one directory each, so Cobalt's ``qsub``
never shadows Torque's) keep a job database in a directory, really run every submitted
script, and print the output formats recorded from the real commands in
``tests/providers/recorded/``.  How they work: ``_fakesched.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from hpcfutures.providers.base import ExecutionProvider, JobState, JobStatus
from hpcfutures.providers.channels import LocalChannel

from ._fakesched import DB_VARIABLE, MINUTE_VARIABLE, kill_everything

FAKES = Path(__file__).resolve().parent


class FakeScheduler:
    """One fake cluster: a job database directory and a channel whose PATH finds the fakes.

    Args:
        name: ``"lsf"``, ``"condor"`` or ``"cobalt"``: which commands the PATH finds.
        directory: where the fake keeps its jobs.
        seconds_per_minute: how long a walltime "minute" lasts (``bsub -W``, ``qsub -t``).
        extra_env: more variables for every scheduler command.
    """

    def __init__(self, name: str, directory: Path, seconds_per_minute: float = 60.0, **extra_env: str):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": f"{FAKES / name}:{os.environ['PATH']}",
            DB_VARIABLE: str(directory),
            MINUTE_VARIABLE: str(seconds_per_minute),
            **extra_env,
        }

    def channel(self) -> LocalChannel:
        """Return a channel that runs the fake commands."""
        return LocalChannel(env=self.env)

    def pause(self) -> None:
        """Keep newly queued jobs pending until :meth:`resume`."""
        (self.directory / "paused").touch()

    def resume(self) -> None:
        """Let pending jobs start."""
        (self.directory / "paused").unlink(missing_ok=True)

    def calls(self, command: str | None = None) -> list[list[str]]:
        """Return the argv of every fake command run so far (only *command*'s, if given)."""
        path = self.directory / "calls.log"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines()]
        return [c for c in calls if command is None or c[0] == command]

    def clear_calls(self) -> None:
        """Forget the recorded calls."""
        (self.directory / "calls.log").unlink(missing_ok=True)

    def job(self, job_id: str) -> dict[str, object]:
        """Return the fake's record of a job (its options, files, state)."""
        return json.loads((self.directory / f"job.{job_id}.json").read_text())  # type: ignore[no-any-return]

    def jobs(self) -> list[dict[str, object]]:
        """Return the fake's records of every job submitted to it."""
        return [json.loads(path.read_text()) for path in sorted(self.directory.glob("job.*.json"))]

    def stop(self) -> None:
        """Kill every job the fake still runs."""
        self.resume()
        kill_everything(self.directory)


def wait_status(
    provider: ExecutionProvider, job_id: str, states: Iterable[JobState], timeout: float = 30.0
) -> JobStatus:
    """Poll *provider* until the job is in one of *states*; return that status."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    while True:
        (status,) = provider.status([job_id])
        if status.state in wanted:
            return status
        assert not status.state.terminal, f"job {job_id} ended as {status}, expected {wanted}"
        assert time.monotonic() < deadline, (
            f"job {job_id} still {status} after {timeout} s, expected {wanted}"
        )
        time.sleep(0.05)


class ProviderFactory:
    """Makes providers of one class that talk to a fake scheduler, and closes them all at the end.

    ``make(**kwargs)`` builds ``provider_class(**kwargs)`` with the fake's channel (unless one
    is given) and its scripts under *script_dir*.
    """

    def __init__(self, provider_class: type[ExecutionProvider], fake: FakeScheduler, script_dir: Path) -> None:
        self.provider_class = provider_class
        self.fake = fake
        self.script_dir = str(script_dir)
        self.made: list[ExecutionProvider] = []

    def __call__(self, **kwargs: object) -> ExecutionProvider:
        kwargs.setdefault("channel", self.fake.channel())
        provider = self.provider_class(**kwargs)
        provider.script_dir = self.script_dir
        self.made.append(provider)
        return provider

    def close(self) -> None:
        for provider in self.made:
            provider.close()
