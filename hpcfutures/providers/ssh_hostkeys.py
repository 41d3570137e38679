"""Host keys for :class:`~hpcfutures.providers.ssh_channel.SSHChannel`: known_hosts and the policy.

Before an SSH channel sends anything, the host's key is compared with a known_hosts file.
A key that differs from the known one is always refused; a host that is not listed is
refused, connected to with a warning, or trusted and recorded, as ``host_key_policy`` says.
The messages name the fingerprint and the command that fixes the problem.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from typing import Any

from .channels import ChannelError

logger = logging.getLogger(__name__)

HOST_KEY_POLICIES = ("reject", "warn", "auto-add")


class SSHHostKeyError(ChannelError):
    """The host's key is unknown or differs from the one in known_hosts: not connected."""


def fingerprint(key: Any) -> str:
    """Return the ``SHA256:…`` fingerprint of a paramiko public key, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    """Return how known_hosts names *hostname* on *port* (``[host]:port`` unless port 22)."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def changed_key_error(where: str, hostname: str, port: int, known_hosts: str, exc: Any) -> SSHHostKeyError:
    """Explain paramiko's ``BadHostKeyException`` *exc*: the host offered a key other than the known one."""
    name = known_hosts_name(hostname, port)
    return SSHHostKeyError(
        f"the host key of {where} ({fingerprint(exc.key)}) differs from the one in "
        f"{known_hosts} ({fingerprint(exc.expected_key)}): someone may be intercepting the "
        f"connection, or the host was reinstalled.  Check with the host's administrators; if the new key "
        f"is right, remove the old one with `ssh-keygen -R '{name}' -f {known_hosts}`"
    )


class HostKeyPolicy:
    """Decides about a host whose key is not in known_hosts, per ``host_key_policy``.

    paramiko calls :meth:`missing_host_key` during the login; raising refuses the host.
    """

    def __init__(self, policy: str, known_hosts: str, hostname: str, port: int) -> None:
        self.policy = policy
        self.known_hosts = known_hosts
        self.hostname = hostname
        self.port = port

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        """Refuse, warn about, or record (``auto-add``) the unknown *key* of *hostname*."""
        print_ = fingerprint(key)
        if self.policy == "reject":
            raise SSHHostKeyError(
                f"the host key of {hostname} ({key.get_name()} {print_}) is not in {self.known_hosts}, "
                f"so the connection was refused.  Check the fingerprint with the host's administrators, then add "
                f"it: `ssh-keyscan -p {self.port} {self.hostname} >> {self.known_hosts}` (or log in once "
                "with ssh); or pass host_key_policy='auto-add' to trust a host on first use"
            )
        if self.policy == "warn":
            logger.warning("connecting to %s, whose host key %s is not in %s", hostname, print_, self.known_hosts)
            return
        client.get_host_keys().add(hostname, key.get_name(), key)
        directory = os.path.dirname(self.known_hosts)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        logger.warning("added the host key of %s (%s) to %s", hostname, print_, self.known_hosts)
