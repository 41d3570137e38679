"""HtexConfig alone: settings checked and normalised once, before anything starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpcfutures import ConfigurationError
from hpcfutures.executors.htex.config import HtexConfig
from hpcfutures.providers import LocalProvider


def test_defaults_give_one_local_pool_on_loopback():
    config = HtexConfig()
    assert isinstance(config.provider, LocalProvider) and config.provider.max_blocks == 1
    assert config.address_candidates == ("127.0.0.1",) and config.bind_address == "127.0.0.1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.label = "other"  # type: ignore[misc]


def test_values_are_normalised():
    config = HtexConfig(address=["10.0.0.1", "10.0.0.2"], run_dir="runs", heartbeat_period=1, heartbeat_threshold=5)
    assert config.address_candidates == ("10.0.0.1", "10.0.0.2")
    assert config.bind_address == "*", "several candidates: the interchange binds every interface"
    assert config.run_dir == Path("runs")
    assert isinstance(config.heartbeat_period, float) and isinstance(config.heartbeat_threshold, float)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": True}, "max_workers"),
        ({"provider": object()}, "provider"),
        ({"label": "a/b"}, "label"),
        ({"address": []}, "address"),
        ({"address": ["ok", ""]}, "address"),
        ({"tunnel": True}, "tunnel=True"),
        ({"initializer": 3}, "initializer"),
        ({"initargs": [1]}, "initargs"),
        ({"prefetch": -1}, "prefetch"),
        ({"lost_task_retries": 1.5}, "lost_task_retries"),
        ({"start_timeout": 0}, "start_timeout"),
        ({"block_poll_period": float("nan")}, "block_poll_period"),
        ({"at_exit": "later"}, "at_exit"),
        ({"heartbeat_period": 5, "heartbeat_threshold": 5}, "heartbeat_threshold"),
        ({"provider": LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0)}, "max_blocks"),
    ],
)
def test_a_bad_setting_names_its_parameter(settings, named):
    with pytest.raises(ConfigurationError, match=named):
        HtexConfig(**settings)
