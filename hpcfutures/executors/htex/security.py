"""CurveZMQ keys for one executor, and the ZAP check that admits only their holders.

Each executor makes two key pairs (the interchange's and the pools') and a
random token, written to files readable only by their owner.  Pools on other nodes connect
over TCP with CurveZMQ.  The driver, and pools on the interchange's own node, connect through
Unix sockets in a private (0700) directory; such pools must also present the token.  The interchange answers
ZeroMQ's authentication requests itself and admits a peer only if it presents the client key
expected on that socket, so a process without the key files can neither register as a pool
nor inject results.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
POOL_DOMAIN = b"pool"


@dataclass(frozen=True)
class KeyFiles:
    """Where an executor's key files live: one directory, mode 0700."""

    directory: Path

    @property
    def interchange(self) -> Path:
        return self.directory / "interchange.json"

    @property
    def pool(self) -> Path:
        return self.directory / "pool.json"

    @property
    def token(self) -> bytes:
        """The run's token, which pools and workers present to prove they belong to it."""
        return load(self.pool)["token"]


def _write_private(path: Path, data: dict[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def create_keys(directory: Path) -> KeyFiles:
    """Generate the key pairs and token into ``directory`` (created with mode 0700)."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE security; reinstall pyzmq from its wheels")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    files = KeyFiles(directory)
    server_public, server_secret = zmq.curve_keypair()
    pool_public, pool_secret = zmq.curve_keypair()
    token = secrets.token_hex(32)
    _write_private(
        files.interchange,
        {
            "token": token,
            "public": server_public.decode(),
            "secret": server_secret.decode(),
            "pool_public": pool_public.decode(),
        },
    )
    _write_private(
        files.pool,
        {
            "public": pool_public.decode(),
            "secret": pool_secret.decode(),
            "server": server_public.decode(),
            "token": token,
        },
    )
    return files


def load(path: Path | str) -> dict[str, bytes]:
    """Read one key file."""
    with open(path) as f:
        return {k: v.encode() for k, v in json.load(f).items()}


def make_client(sock: zmq.Socket, key_file: Path | str) -> None:
    """Configure ``sock`` as a CurveZMQ client holding the keys in ``key_file``."""
    keys = load(key_file)
    sock.curve_secretkey = keys["secret"]
    sock.curve_publickey = keys["public"]
    sock.curve_serverkey = keys["server"]


def make_server(sock: zmq.Socket, keys: dict[str, bytes], domain: bytes) -> None:
    """Configure ``sock`` as a CurveZMQ server whose peers are checked in ``domain``."""
    sock.curve_secretkey = keys["secret"]
    sock.curve_publickey = keys["public"]
    sock.curve_server = True
    sock.zap_domain = domain


class ZapHandler:
    """Answers ZeroMQ authentication requests: only the expected key per domain gets in."""

    def __init__(self, context: zmq.Context, keys: dict[str, bytes]):
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self._allowed = {
            POOL_DOMAIN: z85.decode(keys["pool_public"]),
        }
        self.refused = 0

    def handle(self) -> None:
        """Answer one pending request (call when the socket is readable)."""
        frames = self.socket.recv_multipart()
        version, request_id, domain = frames[0], frames[1], frames[2]
        mechanism = frames[5]
        credentials = frames[6:]
        ok = mechanism == b"CURVE" and credentials and self._allowed.get(domain) == credentials[0]
        if not ok:
            self.refused += 1
        status, text = (b"200", b"OK") if ok else (b"400", b"unknown key")
        self.socket.send_multipart([version, request_id, status, text, domain if ok else b"", b""])

    def close(self) -> None:
        self.socket.close(linger=0)
