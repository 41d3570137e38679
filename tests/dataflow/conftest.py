"""Real staging servers on loopback for the dataflow tests: HTTP, FTP and sshd (for rsync).

Each server is started once per test session (per xdist worker) on 127.0.0.1 and a free
port, and stopped at the end.  A fixture skips its tests, saying why, when what it needs is
missing (pyftpdlib, sshd, rsync, root); with ``HPCF_REQUIRE_SERVICES=1`` (set by CI) it
fails instead, so that CI cannot skip them silently.  ``.ci/setup-services.sh`` installs them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcfutures import DataflowExecutor, HighThroughputExecutor, ThreadExecutor

START_TIMEOUT = 15.0

# A pyftpdlib server: anonymous read-only, one user with write access; prints its port.
_FTP_SERVER = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
root, user, password, low, high = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
authorizer = DummyAuthorizer()
authorizer.add_anonymous(root)
authorizer.add_user(user, password, root, perm="elradfmwMT")
FTPHandler.authorizer = authorizer
FTPHandler.passive_ports = range(low, high)
FTPHandler.permit_foreign_addresses = False
server = FTPServer(("127.0.0.1", 0), FTPHandler)
print(server.address[1], flush=True)
server.serve_forever()
"""


def _missing(reason: str) -> None:
    """Skip the test, or fail it when CI requires every service."""
    if os.environ.get("HPCF_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (HPCF_REQUIRE_SERVICES=1; run .ci/setup-services.sh)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_line(process: subprocess.Popen[str], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(5)
        raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready")
    return line


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclasses.dataclass(frozen=True)
class HttpServer:
    """``python -m http.server`` serving ``root`` at ``url`` (no trailing slash)."""

    root: Path
    url: str


@dataclasses.dataclass(frozen=True)
class FtpServer:
    """A pyftpdlib server serving ``root``: anonymous can read, ``user``/``password`` can write."""

    root: Path
    port: int
    user: str
    password: str

    @property
    def url(self) -> str:
        """The base URL with the writing user's credentials (no trailing slash)."""
        return f"ftp://{self.user}:{self.password}@127.0.0.1:{self.port}"

    @property
    def anonymous_url(self) -> str:
        """The base URL for anonymous (read-only) access."""
        return f"ftp://127.0.0.1:{self.port}"


@dataclasses.dataclass(frozen=True)
class SshServer:
    """An sshd on 127.0.0.1:``port`` that lets ``user`` log in with the private key ``key``."""

    port: int
    user: str
    key: Path
    known_hosts: Path

    @property
    def ssh_options(self) -> tuple[str, ...]:
        """ssh ``-o`` options that check the host key against this server's known_hosts only."""
        return (f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes", "ConnectTimeout=5")


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """Serve a temporary directory over HTTP on 127.0.0.1."""
    root = tmp_path_factory.mktemp("http-root")
    command = [
        sys.executable,
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(root),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        line = _read_line(process, "python -m http.server")  # "Serving HTTP on 127.0.0.1 port 43123 (…) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield HttpServer(root, f"http://127.0.0.1:{port}")
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    """Serve a temporary directory over FTP on 127.0.0.1 (needs pyftpdlib)."""
    if importlib.util.find_spec("pyftpdlib") is None:
        _missing("pyftpdlib is not installed (pip install pyftpdlib, or the [test] extra)")
    root = tmp_path_factory.mktemp("ftp-root")
    low = 30000 + (os.getpid() % 50) * 20  # a small passive range, different per xdist worker
    command = [sys.executable, "-u", "-c", _FTP_SERVER, str(root), "hpcf", "hpcf", str(low), str(low + 20)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        port = int(_read_line(process, "the pyftpdlib server"))
        yield FtpServer(root, port, "hpcf", "hpcf")
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """Run a private sshd on 127.0.0.1 that lets root log in with a generated key (needs root)."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        _missing(
            "OpenSSH (sshd, ssh, ssh-keygen) is not installed (apt-get install openssh-server openssh-client)"
        )
    if os.geteuid() != 0:
        _missing("the sshd fixture logs in as root and must run as root")
    assert sshd is not None
    directory = tmp_path_factory.mktemp("sshd")
    host_key, client_key = directory / "host_key", directory / "client_key"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (directory / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    os.makedirs(
        "/run/sshd", mode=0o755, exist_ok=True
    )  # privilege separation; sshd will not start without it

    last_error = ""
    for _attempt in range(5):  # the free port may be taken between choosing it and binding it
        port = _free_port()
        host_public = host_key.with_suffix(".pub").read_text().split()
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
        config = directory / "sshd_config"
        # StrictModes is off because the keys sit under /tmp, which is world-writable.
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\nAllowUsers root\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nPidFile none\nMaxStartups 100:30:200\nLogLevel VERBOSE\n"
        )
        log = directory / "sshd.log"
        process = subprocess.Popen(
            [sshd, "-D", "-f", str(config), "-E", str(log)], stdin=subprocess.DEVNULL, text=True
        )
        server = SshServer(port, "root", client_key, known_hosts)
        ssh = [
            "ssh",
            "-p",
            str(port),
            "-i",
            str(client_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ]
        for option in server.ssh_options:
            ssh += ["-o", option]
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            result = subprocess.run([*ssh, "root@127.0.0.1", "echo ssh-ok"], capture_output=True, text=True)
            if result.stdout.strip() == "ssh-ok":
                try:
                    yield server
                finally:
                    _stop(process)
                return
            last_error = result.stderr.strip()
            time.sleep(0.1)
        _stop(process)
        last_error = f"{last_error}; sshd log: {log.read_text()[-500:] if log.exists() else ''}"
    raise RuntimeError(f"sshd did not accept a login on 127.0.0.1: {last_error}")


@pytest.fixture(scope="session")
def rsync_binary() -> str:
    """The path of rsync (skips when it is not installed)."""
    rsync = shutil.which("rsync")
    if rsync is None:
        _missing("rsync is not installed (apt-get install rsync)")
    assert rsync is not None
    return rsync


# -- executors shared by the apps and tutorial tests -------------------------------------------------


@pytest.fixture(scope="module")
def htex():
    """One local HighThroughputExecutor per test module (its pool is slow to start per test)."""
    ex = HighThroughputExecutor(max_workers=2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


@pytest.fixture(params=["threads", "htex"])
def dfx(request, tmp_path):
    """A DataflowExecutor over threads, then over the module's HighThroughputExecutor."""
    if request.param == "threads":
        backend, owned = ThreadExecutor(max_workers=4), True
    else:
        backend, owned = request.getfixturevalue("htex"), False
    dfx = DataflowExecutor(backend, run_dir=tmp_path / "run", shutdown_executors=owned)
    try:
        yield dfx
    finally:
        dfx.shutdown(wait=True, cancel_futures=True)
