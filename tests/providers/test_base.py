"""Tests of hpcfutures.providers.base: job states and validation of shared settings."""

from __future__ import annotations

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers import ExecutionProvider, JobState, JobStatus


class _Nothing(ExecutionProvider):
    def __init__(self, **kwargs):
        super().__init__(**{"label": "nothing", **kwargs})

    def submit(self, command, max_workers, job_name="hpcfutures.block"):
        raise NotImplementedError

    def status(self, job_ids):
        return [JobStatus(JobState.MISSING) for _ in job_ids]

    def cancel(self, job_ids):
        return [False for _ in job_ids]


def test_terminal_states():
    terminal = {s for s in JobState if s.terminal}
    assert terminal == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.MISSING,
    }


def test_job_status_defaults_and_is_frozen():
    status = JobStatus(JobState.RUNNING)
    assert (status.exit_code, status.message, status.stdout_tail, status.stderr_tail) == (None, "", "", "")
    with pytest.raises(AttributeError):
        status.state = JobState.FAILED  # type: ignore[misc]


def test_defaults():
    provider = _Nothing()
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 0, 1)
    assert provider.nodes_per_block == 1
    assert provider.worker_init == ""
    assert provider.script_dir is None
    provider.close()  # the default close does nothing


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"init_blocks": -1}, "init_blocks"),
        ({"min_blocks": -1}, "min_blocks"),
        ({"max_blocks": -2}, "max_blocks"),
        ({"min_blocks": 3, "max_blocks": 2}, "min_blocks"),
        ({"max_blocks": 1.5}, "max_blocks"),
        ({"init_blocks": True}, "init_blocks"),
        ({"nodes_per_block": 0}, "nodes_per_block"),
        ({"worker_init": ["module load x"]}, "worker_init"),
        ({"launcher": "srun"}, "launcher"),
        ({"label": ""}, "label"),
        ({"parallelism": 1.5}, "parallelism must be a number from 0 to 1"),
        ({"parallelism": float("nan")}, "parallelism"),
        ({"parallelism": True}, "parallelism"),
    ],
)
def test_invalid_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        _Nothing(**kwargs)


def test_min_above_max_says_how_to_fix():
    with pytest.raises(ConfigurationError, match="raise max_blocks"):
        _Nothing(min_blocks=4, max_blocks=1)


def test_init_blocks_may_exceed_max_blocks_like_parsl():
    assert _Nothing(init_blocks=3, min_blocks=0, max_blocks=1).init_blocks == 3

