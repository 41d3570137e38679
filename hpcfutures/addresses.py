"""Finding the address worker pools connect to.

On a cluster the interchange runs where the driver runs (a login node, a laptop with a
tunnel) and pools start on compute nodes, which must reach it.  Which of the driver's
addresses they can reach depends on the site's network, so hpcfutures offers a few ways to
name one, and lets the pool choose among several: give the executor a list
(``address=[address_by_hostname(), address_by_interface("ib0")]``) and each pool tries them
from its node, in order, and connects to the first that answers.  The executor logs the
candidates; each pool logs (and reports at registration) the one it chose.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import psutil

from .errors import ConfigurationError


def address_by_hostname() -> str:
    """This machine's fully qualified host name, as other nodes of a cluster usually know it."""
    return socket.getfqdn()


def address_by_interface(interface: str) -> str:
    """The IPv4 address of network interface *interface* (``"eth0"``, ``"ib0"``).

    Raises:
        ConfigurationError: there is no such interface, or it has no IPv4 address; the
            message lists the interfaces there are.
    """
    if not isinstance(interface, str) or not interface:
        raise ConfigurationError(f"interface must be an interface name such as 'eth0', got {interface!r}")
    interfaces = psutil.net_if_addrs()
    for entry in interfaces.get(interface, []):
        if entry.family == socket.AF_INET:
            return str(entry.address)
    raise ConfigurationError(
        f"interface {interface!r} has no IPv4 address here; interfaces with one: "
        + ", ".join(sorted(n for n, a in interfaces.items() if any(e.family == socket.AF_INET for e in a)))
    )


def address_by_route(destination: str = "8.8.8.8") -> str:
    """The local address this machine would use to reach *destination* (no packet is sent).

    Useful when compute nodes sit on the route to a known host.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((destination, 9))
        except OSError as exc:
            raise ConfigurationError(f"no route to {destination!r} from this machine: {exc}") from exc
        return str(s.getsockname()[0])


def all_addresses(include_loopback: bool = False) -> list[str]:
    """Every IPv4 address of this machine's interfaces that are up; loopback last, if asked for."""
    stats = psutil.net_if_stats()
    found: list[str] = []
    loopback: list[str] = []
    for name, entries in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for entry in entries:
            if entry.family == socket.AF_INET:
                (loopback if entry.address.startswith("127.") else found).append(str(entry.address))
    return found + (loopback if include_loopback else [])


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the host and port of ``tcp://host:port`` opens in time."""
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_address(candidates: Sequence[str], timeout: float = 2.0, rounds: int = 3) -> str | None:
    """Return the first of ``tcp://`` *candidates* that accepts a connection from here.

    Tries them in order, *rounds* times (the interchange may still be starting), waiting a
    little between rounds; None when none answers.  A single candidate is returned as it is:
    there is nothing to choose.
    """
    if len(candidates) == 1:
        return candidates[0]
    for attempt in range(rounds):
        for url in candidates:
            if reachable(url, timeout):
                return url
        if attempt + 1 < rounds:
            time.sleep(0.5 * (attempt + 1))
    return None
