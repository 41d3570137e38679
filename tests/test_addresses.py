"""Address helpers and the pool's choice among candidate addresses."""

from __future__ import annotations

import socket

import pytest

from hpcfutures import HighThroughputExecutor
from hpcfutures.addresses import (
    address_by_hostname,
    address_by_interface,
    all_addresses,
    choose_address,
    reachable,
)
from hpcfutures.errors import ConfigurationError
from hpcfutures.providers import LocalProvider


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def test_interface_and_host_helpers() -> None:
    assert address_by_interface("lo") == "127.0.0.1"
    with pytest.raises(ConfigurationError, match="no IPv4 address here; interfaces with one: .*lo"):
        address_by_interface("no-such-if0")
    with pytest.raises(ConfigurationError, match="interface must be"):
        address_by_interface("")
    assert "127.0.0.1" in all_addresses(include_loopback=True)
    assert "127.0.0.1" not in all_addresses()
    assert address_by_hostname()


def test_choose_address_takes_the_first_that_answers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        good = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        bad = f"tcp://127.0.0.1:{closed_port()}"
        assert reachable(good) and not reachable(bad)
        assert choose_address([bad, good], timeout=1.0) == good
    assert choose_address([bad, f"tcp://127.0.0.1:{closed_port()}"], timeout=0.5, rounds=1) is None
    assert choose_address(["tcp://only:1"]) == "tcp://only:1"  # nothing to choose


def test_pools_choose_a_reachable_candidate() -> None:
    # The first candidate is a TEST-NET address nobody answers on; the pool must skip it.
    with HighThroughputExecutor(
        max_workers=1, address=["192.0.2.1", "127.0.0.1"], provider=LocalProvider()
    ) as ex:
        ex._force_tcp = True  # make the local pool take the remote (TCP + CurveZMQ) path
        assert ex.submit(pow, 3, 3).result(timeout=120) == 27
        tcp = ex.endpoints["tcp"].split(",")
        assert [u.rsplit(":", 1)[0] for u in tcp] == ["tcp://192.0.2.1", "tcp://127.0.0.1"]


@pytest.mark.parametrize("address", ["", [], [""], 5])
def test_bad_address_is_refused(address) -> None:
    with pytest.raises(ConfigurationError, match="address must be"):
        HighThroughputExecutor(address=address)


def test_tunnel_needs_an_ssh_provider() -> None:
    with pytest.raises(ConfigurationError, match="tunnel=True needs a provider whose commands run over SSH"):
        HighThroughputExecutor(tunnel=True)
