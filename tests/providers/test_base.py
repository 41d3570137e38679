"""Tests of hpcfutures.providers.base: job states, validation of shared settings, output tails."""

from __future__ import annotations

import pytest

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers import ExecutionProvider, JobState, JobStatus
from hpcfutures.providers.base import read_tail


class _Nothing(ExecutionProvider):
    def __init__(self, **kwargs):
        super().__init__(label="nothing", **kwargs)

    def submit(self, command, tasks_per_node, job_name="hpcfutures.block"):
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


def test_read_tail_keeps_last_lines(tmp_path):
    path = tmp_path / "out"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = read_tail(path)
    assert tail.splitlines() == [f"line {i}" for i in range(80, 100)]
    assert read_tail(path, lines=2) == "line 98\nline 99"


def test_read_tail_reads_a_bounded_amount(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"x" * 1_000_000 + b"\nlast line\n")
    assert read_tail(path) == "last line"
    path.write_bytes(b"y" * 1_000_000)  # one line longer than the limit: its end is kept
    assert read_tail(path, max_bytes=100) == "y" * 100


def test_read_tail_of_missing_or_binary_file(tmp_path):
    assert read_tail(tmp_path / "absent") == ""
    path = tmp_path / "core"
    path.write_bytes(b"\xff\xfe\x00bad\nok\n")
    assert read_tail(path).endswith("ok")
