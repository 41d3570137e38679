"""A real OpenSSH server on loopback for tests: generated keys, a free port, key login only.

:func:`running_sshd` starts ``sshd -D`` as a child of the test process, listening on
127.0.0.1 and a free port, with a generated ed25519 host key and one authorized client key,
and stops it on exit.  :func:`sshd_fixture` turns it into a pytest fixture of any scope.

The server lets only the current user log in (root on the CI machine), by key; it serves
SFTP (``internal-sftp``) and TCP forwarding.  ``known_hosts`` lists the host key under both
``[127.0.0.1]:port`` and ``[localhost]:port``, so two "hosts" reach one server.  Nothing is
written to ``~/.ssh``.  When sshd or ssh-keygen is missing, or the user is not root (sshd
needs root to switch users), the fixture skips its tests (fails them under
``HPCF_REQUIRE_SERVICES=1``); ``.ci/setup-services.sh`` installs OpenSSH.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import missing

#: Seconds sshd may take to accept its first login.
START_TIMEOUT = 20.0

_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The keys live under /tmp, which is world-writable: strict modes would refuse them.
StrictModes no
Subsystem sftp internal-sftp
AllowTcpForwarding yes
MaxStartups 100:30:200
MaxSessions 64
LogLevel VERBOSE
"""


@dataclasses.dataclass(frozen=True)
class Sshd:
    """A running sshd: where it listens and the files a client needs to log in."""

    host: str
    port: int
    user: str
    key: Path
    """The client's private key (no passphrase), authorized for :attr:`user`."""
    known_hosts: Path
    """A known_hosts file holding the server's host key for 127.0.0.1 and localhost."""
    directory: Path
    log: Path
    pid: int

    @property
    def ssh_options(self) -> tuple[str, ...]:
        """``ssh -o`` options that check the host key against :attr:`known_hosts` only."""
        return (f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes", "ConnectTimeout=5")

    def log_tail(self, limit: int = 2000) -> str:
        """Return the end of sshd's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def sshd_binary() -> str | None:
    """Return the path of sshd, or None when OpenSSH's server is not installed."""
    found = shutil.which("sshd")
    if found:
        return found
    return "/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None


def skip_unless_sshd_can_run() -> None:
    """Skip the calling test (fail it under CI) when a private sshd cannot be started here."""
    if sshd_binary() is None or shutil.which("ssh-keygen") is None:
        missing("OpenSSH's sshd and ssh-keygen are not installed (apt-get install openssh-server openssh-client)")
    if os.geteuid() != 0:
        missing("a private sshd must run as root to switch to the logged-in user")


def generate_key(path: Path) -> Path:
    """Write a new passphrase-less ed25519 key pair at *path* and ``path.pub``; return *path*."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hpcfutures-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _accepts_login(server: Sshd) -> str | None:
    """Log in once with paramiko and run ``echo``; return None on success, else the error."""
    import paramiko

    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(server.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            server.host,
            port=server.port,
            username=server.user,
            key_filename=str(server.key),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
            banner_timeout=5,
            auth_timeout=5,
        )
        _stdin, stdout, _stderr = client.exec_command("echo sshd-ok", timeout=10)
        out = stdout.read().decode().strip()
        return None if out == "sshd-ok" else f"echo printed {out!r}"
    except (OSError, paramiko.SSHException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


@contextlib.contextmanager
def running_sshd(directory: str | os.PathLike[str] | None = None) -> Iterator[Sshd]:
    """Start a private sshd on 127.0.0.1 for the current user; stop it on exit.

    Args:
        directory: where keys, config and log go; a new temporary directory (removed on
            exit) when None.

    Raises:
        RuntimeError: sshd did not accept a login within :data:`START_TIMEOUT` seconds
            (the message carries its log).
    """
    sshd = sshd_binary()
    if sshd is None:
        raise RuntimeError("sshd is not installed (apt-get install openssh-server)")
    owned = directory is None
    root = Path(tempfile.mkdtemp(prefix="hpcf-sshd-") if directory is None else directory)
    root.mkdir(parents=True, exist_ok=True)
    try:
        host_key = generate_key(root / "host_key")
        client_key = generate_key(root / "client_key")
        authorized = root / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        # sshd refuses to start without its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        user = getpass.getuser()
        key_type, key_data = host_key.with_suffix(".pub").read_text().split()[:2]
        last_error = ""
        for _attempt in range(5):  # another process may take the free port before sshd binds it
            port = _free_port()
            known_hosts = root / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{port},[localhost]:{port} {key_type} {key_data}\n")
            config = root / "sshd_config"
            config.write_text(
                _CONFIG.format(port=port, host_key=host_key, authorized_keys=authorized, user=user)
            )
            log = root / "sshd.log"
            process = subprocess.Popen(
                [sshd, "-D", "-f", str(config), "-E", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            server = Sshd("127.0.0.1", port, user, client_key, known_hosts, root, log, process.pid)
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while process.poll() is None and time.monotonic() < deadline:
                    error = _accepts_login(server)
                    if error is None:
                        break
                    last_error = error
                    time.sleep(0.1)
                else:
                    last_error = f"{last_error}; sshd exit code {process.poll()}; log:\n{server.log_tail()}"
                    continue
                yield server
                return
            finally:
                _stop(process)
        raise RuntimeError(f"sshd did not accept a login on 127.0.0.1: {last_error}")
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def sshd_fixture(scope: Any = "session") -> Callable[..., Any]:
    """Return a pytest fixture (of *scope*) that yields a running :class:`Sshd`.

    Use it in a conftest or test module: ``sshd = sshd_fixture()``.  It skips (fails under
    ``HPCF_REQUIRE_SERVICES=1``) when sshd cannot run here.
    """

    @pytest.fixture(scope=scope)
    def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
        skip_unless_sshd_can_run()
        with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server

    return sshd
