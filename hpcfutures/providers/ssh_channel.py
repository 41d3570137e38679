"""SSHChannel: run scheduler commands and copy files on another host over SSH (paramiko).

A provider given ``SSHChannel("login.cluster.org", …)`` drives that host's scheduler from
here: commands run through one SSH connection (opened at first use, reopened once when it
dropped), files move over SFTP.  Only keys authenticate, and the host's key is checked
against a known_hosts file: an unknown host is refused unless the user chose otherwise.

The channel also forwards TCP ports through its connection (:meth:`SSHChannel.forward_remote`,
:meth:`SSHChannel.forward_local`), so that worker pools on a cluster can reach an
interchange on a machine they cannot connect to directly.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import posixpath
import re
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .base import TAIL_BYTES
from .channels import DEFAULT_COMMAND_TIMEOUT, Channel, ChannelError, CommandResult

logger = logging.getLogger(__name__)

HOST_KEY_POLICIES = ("reject", "warn", "auto-add")

# The remote shell announces its pid on stderr first, so that a command that outlives its
# timeout can be killed with its process group.
_PID_TAG = "__hpcfutures_pid__="
_PID_LINE = re.compile(r"^" + _PID_TAG + r"(\d+)\n", re.MULTILINE)
_CWD_TAG = "__hpcfutures_no_cwd__"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Seconds a killed command's process group gets between SIGTERM and SIGKILL.
_KILL_GRACE = 2.0
# Seconds a reconnect keeps asking the host to restore a remote forward.
_RESTORE_SECONDS = 5.0
# Seconds between checks of a forwarding thread's stop flag.
_PUMP_POLL = 0.2
_CHUNK = 65536


class SSHHostKeyError(ChannelError):
    """The host's key is unknown or differs from the one in known_hosts: not connected."""


class SSHAuthenticationError(ChannelError):
    """The host refused every key offered for the user."""


def fingerprint(key: Any) -> str:
    """Return the ``SHA256:…`` fingerprint of a paramiko public key, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def _check_port(name: str, value: object, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise ConfigurationError(f"{name} must be a TCP port number from {low} to 65535, got {value!r}")
    return value


def _check_host(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigurationError(f"{name} must be a host name or address without spaces, got {value!r}")
    return value


def _check_env(env: object) -> None:
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and _ENV_NAME.fullmatch(k) and isinstance(v, str) for k, v in env.items())
    ):
        raise ConfigurationError(f"env must be a dict of variable names to str values, or None, got {env!r}")


def _shell_path(path: str) -> str:
    """Quote *path* for the remote shell, keeping a leading ``~/`` meaning the home directory."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


@dataclass
class _Forward:
    """One port forward and the threads that carry its connections."""

    kind: str  # "remote": a port on the SSH host reaches us; "local": a port here reaches it
    bind_host: str
    bind_port: int
    target_host: str
    target_port: int
    stop: threading.Event = field(default_factory=threading.Event)
    threads: set[threading.Thread] = field(default_factory=set)
    listener: socket.socket | None = None
    connections: int = 0  # how many connections it has carried, for diagnostics and tests


class SSHChannel(Channel):
    """Run commands and move files on *hostname* over SSH, with key authentication.

    Args:
        hostname: the host to log in to (a cluster's login node).
        username: the remote user; the local user's name by default.
        port: the SSH port.
        key_filename: the private key to log in with.  None: the SSH agent and the default
            keys in ``~/.ssh`` are tried.
        known_hosts: the known_hosts file to check the host's key against;
            ``~/.ssh/known_hosts`` (and ``/etc/ssh/ssh_known_hosts``) by default.
        host_key_policy: what to do with a host whose key is not in known_hosts: ``"reject"``
            (the default: refuse, with the fingerprint to check), ``"warn"`` (log a warning
            and connect) or ``"auto-add"`` (trust it and add it to ``known_hosts``).  A key
            that *differs* from the known one is always refused.
        connect_timeout: seconds to wait for the connection and the login.
        script_dir: where providers using this channel put job scripts and output on the
            host, by default.  None lets each provider choose (under the home directory).
        env: variables set for every command (for example a ``PATH`` that finds the site's
            scheduler commands, which non-interactive logins may lack).  Values are taken
            literally, not expanded by the shell.

    Nothing connects until the first command or :meth:`connect`.  Every method may be
    called from any thread; commands run concurrently over the one connection.
    """

    def __init__(
        self,
        hostname: str,
        *,
        username: str | None = None,
        port: int = 22,
        key_filename: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        host_key_policy: str = "reject",
        connect_timeout: float = 15.0,
        script_dir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Validate the settings; connect later.

        Raises:
            ConfigurationError: a parameter cannot work (the message names it), the key
                file does not exist, or an explicit known_hosts file is missing while
                ``host_key_policy`` is ``"reject"``.
        """
        self.hostname = _check_host("hostname", hostname)
        if username is None:
            username = getpass.getuser()
        if not isinstance(username, str) or not username or any(c.isspace() for c in username):
            raise ConfigurationError(f"username must be a non-empty user name, got {username!r}")
        self.username = username
        self.port = _check_port("port", port, allow_zero=False)
        if key_filename is not None:
            if not isinstance(key_filename, (str, os.PathLike)):
                raise ConfigurationError(f"key_filename must be a path or None, got {key_filename!r}")
            key_filename = os.path.expanduser(os.fspath(key_filename))
            if not os.path.isfile(key_filename):
                raise ConfigurationError(
                    f"key_filename {key_filename!r} is not a file; give the path of your private key "
                    "(for example ~/.ssh/id_ed25519), or None to use the SSH agent and default keys"
                )
        self.key_filename: str | None = key_filename
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ConfigurationError(
                f"host_key_policy must be one of {', '.join(map(repr, HOST_KEY_POLICIES))}, got {host_key_policy!r}"
            )
        self.host_key_policy = host_key_policy
        if known_hosts is None:
            self.known_hosts = os.path.expanduser("~/.ssh/known_hosts")
            self._known_hosts_given = False
        elif isinstance(known_hosts, (str, os.PathLike)):
            self.known_hosts = os.path.expanduser(os.fspath(known_hosts))
            self._known_hosts_given = True
            if host_key_policy == "reject" and not os.path.isfile(self.known_hosts):
                raise ConfigurationError(
                    f"known_hosts file {self.known_hosts!r} does not exist, so every host key would be refused; "
                    f"create it (ssh-keyscan -p {self.port} {self.hostname} >> {self.known_hosts}, after "
                    "checking the fingerprint) or pass host_key_policy='auto-add' to trust the host on first use"
                )
        else:
            raise ConfigurationError(f"known_hosts must be a path or None, got {known_hosts!r}")
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, (int, float))
            or not 0 < connect_timeout < float("inf")
        ):
            raise ConfigurationError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")
        self.connect_timeout = float(connect_timeout)
        if script_dir is not None and (not isinstance(script_dir, str) or not script_dir):
            raise ConfigurationError(f"script_dir must be a remote directory path or None, got {script_dir!r}")
        self.script_dir = script_dir
        _check_env(env)
        self.env = dict(env or {})

        # Must be held while reading or replacing _client, _transport and _home, and while
        # changing _forwards.
        self._lock = threading.Lock()
        self._client: Any = None  # paramiko.SSHClient
        self._transport: Any = None  # paramiko.Transport
        self._home: str | None = None
        self._forwards: dict[tuple[str, int], _Forward] = {}
        # Must be held while using or replacing _sftp (paramiko's SFTP client is not
        # meant for concurrent requests).
        self._sftp_lock = threading.Lock()
        self._sftp: Any = None
        self._sftp_transport: Any = None

    # -- connecting ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (it opens on first use otherwise), to surface errors early.

        Raises:
            SSHHostKeyError: the host's key is unknown (with ``host_key_policy="reject"``) or changed.
            SSHAuthenticationError: no key was accepted.
            ChannelError: the host cannot be reached.
        """
        with self._lock:
            self._transport_locked()

    def _transport_locked(self) -> Any:
        """Return the live transport, connecting (again) if needed; hold :attr:`_lock`."""
        if self._transport is not None and self._transport.is_active():
            return self._transport
        if self._client is not None:
            logger.info("SSH connection to %s dropped; reconnecting", self._where())
            self._client.close()
            self._client = self._transport = None
        self._client = self._open_client()
        self._transport = self._client.get_transport()
        self._transport.set_keepalive(30)
        self._restore_forwards()
        return self._transport

    def _restore_forwards(self) -> None:
        """Ask again for the remote forwards, which died with the old connection; hold :attr:`_lock`."""
        # The host's sshd may hold the old connection's listening port for a moment.
        deadline = time.monotonic() + _RESTORE_SECONDS
        for fw in self._forwards.values():
            if fw.kind != "remote":
                continue
            while True:
                try:
                    self._transport.request_port_forward(fw.bind_host, fw.bind_port, self._dispatch)
                    break
                except Exception as exc:  # noqa: BLE001 - paramiko raises SSHException or socket errors
                    if time.monotonic() >= deadline or not self._transport.is_active():
                        logger.warning("could not restore the forward of %s:%d on %s: %s", fw.bind_host,
                                       fw.bind_port, self.hostname, exc)
                        break
                    time.sleep(0.1)

    def _open_client(self) -> Any:
        import paramiko

        client = paramiko.SSHClient()
        if not self._known_hosts_given and os.path.isfile("/etc/ssh/ssh_known_hosts"):
            client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
        if os.path.isfile(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        try:
            client.connect(
                self.hostname,
                port=self.port,
                username=self.username,
                key_filename=self.key_filename,
                look_for_keys=self.key_filename is None,
                allow_agent=self.key_filename is None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except SSHHostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = _known_hosts_name(self.hostname, self.port)
            raise SSHHostKeyError(
                f"the host key of {self._where()} ({fingerprint(exc.key)}) differs from the one in "
                f"{self.known_hosts} ({fingerprint(exc.expected_key)}): someone may be intercepting the "
                f"connection, or the host was reinstalled.  Check with the host's administrators; if the new key "
                f"is right, remove the old one with `ssh-keygen -R '{name}' -f {self.known_hosts}`"
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            key = self.key_filename or "the SSH agent's and ~/.ssh's default keys"
            raise SSHAuthenticationError(
                f"{self._where()} refused the login of {self.username!r} with {key} ({exc}); "
                f"add the public key to ~{self.username}/.ssh/authorized_keys there, or pass key_filename= "
                "the private key that is authorized"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise ChannelError(f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}") from exc
        return client

    def _where(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    def _open_session(self) -> Any:
        """Open a session channel, reconnecting once if the connection dropped."""
        import paramiko

        for attempt in (1, 2):
            with self._lock:
                transport = self._transport_locked()
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if attempt == 2 or transport.is_active():
                    raise ChannelError(f"cannot open a session on {self._where()}: {exc}") from exc
                logger.info("SSH connection to %s dropped while opening a session; retrying", self._where())
        raise AssertionError("unreachable")

    # -- commands -----------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run *command* with ``/bin/sh`` on the host; see :meth:`Channel.run`.

        stdin is empty.  On timeout the command's process group is sent SIGTERM, then
        SIGKILL, and the result has exit code 124.  A relative *cwd* is relative to the
        home directory.

        Raises:
            ChannelError: not connected, or *cwd* does not exist on the host.
        """
        if not isinstance(command, str) or not command.strip():
            raise ConfigurationError(f"command must be a non-empty shell command string, got {command!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _check_env(env)
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise ConfigurationError(f"cwd must be a directory path or None, got {cwd!r}")
        # The script goes in on stdin so that the login shell (bash, tcsh, …) never parses it.
        lines = [f'echo "{_PID_TAG}$$" >&2']
        if cwd is not None:
            lines.append(f"cd {_shell_path(cwd)} || {{ echo {_CWD_TAG} >&2; exit 1; }}")
        lines += [f"export {name}={shlex.quote(value)}" for name, value in {**self.env, **(env or {})}.items()]
        lines.append(f"exec /bin/sh -c {shlex.quote(command)} </dev/null")
        code, out, err, pid = self._execute("exec /bin/sh -s", "\n".join(lines) + "\n", timeout)
        if code is None:
            self._kill_group(pid)
            return CommandResult(
                124, out, err + f"\n[hpcfutures] command timed out after {timeout:g} s on {self.hostname}: {command}"
            )
        if code == 1 and err.rstrip().endswith(_CWD_TAG):
            raise ChannelError(f"cannot run {command!r} on {self.hostname}: no directory {cwd!r} there")
        return CommandResult(code, out, err)

    def _execute(self, remote: str, stdin: str, timeout: float) -> tuple[int | None, str, str, int | None]:
        """Run *remote* fed *stdin*; return (exit code or None on timeout, stdout, stderr, pid)."""
        deadline = time.monotonic() + timeout
        chan = self._open_session()
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            chan.exec_command(remote)
            chan.sendall(stdin.encode())
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(_CHUNK))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(_CHUNK))
                if chan.exit_status_ready() and (chan.eof_received or chan.closed):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                ready, _, _ = select.select([chan], [], [], min(remaining, _PUMP_POLL))
                if ready and not (chan.recv_ready() or chan.recv_stderr_ready()):
                    chan.status_event.wait(min(remaining, 0.05))  # EOF came before the exit status
            while chan.recv_ready():
                out.append(chan.recv(_CHUNK))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(_CHUNK))
            code = chan.recv_exit_status() if chan.exit_status_ready() else None
        except (OSError, EOFError) as exc:
            raise ChannelError(f"lost the connection to {self._where()} while running a command: {exc}") from exc
        finally:
            chan.close()
        stderr = b"".join(err).decode(errors="replace")
        pid = None
        # Login scripts may print before the tag; take the first tag line out wherever it is.
        tag = _PID_LINE.search(stderr)
        if tag is not None:
            pid = int(tag.group(1))
            stderr = stderr[: tag.start()] + stderr[tag.end() :]
        return code, b"".join(out).decode(errors="replace"), stderr, pid

    def _kill_group(self, pid: int | None) -> None:
        """Stop the process group of the timed-out command whose shell had *pid*."""
        if pid is None:
            return
        script = (
            f"g=$(ps -o pgid= -p {pid} 2>/dev/null | tr -d ' '); [ -n \"$g\" ] || exit 0\n"
            'kill -TERM "-$g" 2>/dev/null\n'
            f"i=0; while kill -0 \"-$g\" 2>/dev/null && [ $i -lt {int(_KILL_GRACE * 10)} ]; do "
            "sleep 0.1; i=$((i+1)); done\n"
            'kill -KILL "-$g" 2>/dev/null\n'
            "exit 0\n"
        )
        try:
            self._execute("exec /bin/sh -s", script, _KILL_GRACE + 10)
        except ChannelError as exc:
            logger.warning("could not stop a timed-out command on %s: %s", self.hostname, exc)

    # -- files --------------------------------------------------------------------------------

    def _sftp_call(self, what: str, operation: Callable[[Any], Any]) -> Any:
        """Run ``operation(sftp)`` under the SFTP lock, reconnecting once if the connection dropped."""
        import paramiko

        with self._sftp_lock:
            for attempt in (1, 2):
                with self._lock:
                    transport = self._transport_locked()
                try:
                    if self._sftp is None or self._sftp_transport is not transport:
                        if self._sftp is not None:
                            self._sftp.close()
                        self._sftp = transport.open_sftp_client()
                        self._sftp_transport = transport
                        self._home = self._sftp.normalize(".")
                    return operation(self._sftp)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    if attempt == 1 and not transport.is_active():
                        self._sftp = None
                        continue
                    raise ChannelError(f"cannot {what} on {self._where()}: {exc}") from exc
        raise AssertionError("unreachable")

    def _absolute(self, path: str) -> str:
        """Return *path* on the host as an absolute path (``~`` and relative paths from home)."""
        home = self._home or "."
        if path == "~":
            return home
        if path.startswith("~/"):
            path = path[2:]
        return posixpath.normpath(posixpath.join(home, path))

    def _sftp_makedirs(self, sftp: Any, path: str, mode: int) -> None:
        parts = self._absolute(path).split("/")
        current = ""
        for part in parts[1:]:
            current += "/" + part
            try:
                sftp.stat(current)
            except FileNotFoundError:
                sftp.mkdir(current, mode)

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create directory *path* (and parents) on the host if missing; see :meth:`Channel.makedirs`."""
        if not isinstance(path, str) or not path:
            raise ConfigurationError(f"path must be a directory path, got {path!r}")
        self._sftp_call(f"create directory {path!r}", lambda sftp: self._sftp_makedirs(sftp, path, mode))

    def push_file(self, local_path: str, remote_dir: str) -> str:
        """Copy *local_path* into *remote_dir* over SFTP, keeping its permission bits.

        The directory is made (mode 0700) if missing, and the file appears whole: it is
        written under a temporary name and renamed.  Returns its absolute path on the host.
        """
        if not isinstance(local_path, (str, os.PathLike)) or not os.path.isfile(local_path):
            raise ChannelError(f"cannot push {local_path!r} to {self.hostname}: no such local file")
        if not isinstance(remote_dir, str) or not remote_dir:
            raise ConfigurationError(f"remote_dir must be a directory path, got {remote_dir!r}")
        local_path = os.fspath(local_path)
        mode = os.stat(local_path).st_mode & 0o777

        def push(sftp: Any) -> str:
            self._sftp_makedirs(sftp, remote_dir, 0o700)
            target = posixpath.join(self._absolute(remote_dir), os.path.basename(local_path))
            partial = f"{target}.part-{uuid.uuid4().hex[:8]}"
            sftp.put(local_path, partial, confirm=True)
            try:
                sftp.chmod(partial, mode)
                sftp.posix_rename(partial, target)
            except Exception:
                sftp.remove(partial)
                raise
            return target

        return str(self._sftp_call(f"push {local_path!r}", push))

    def pull_file(self, remote_path: str, local_dir: str) -> str:
        """Copy *remote_path* from the host into *local_dir* (made if missing); return the local path."""
        if not isinstance(remote_path, str) or not remote_path:
            raise ConfigurationError(f"remote_path must be a file path, got {remote_path!r}")
        os.makedirs(local_dir, exist_ok=True)
        target = os.path.join(local_dir, posixpath.basename(remote_path))
        self._sftp_call(
            f"pull {remote_path!r}", lambda sftp: sftp.get(self._absolute(remote_path), target)
        )
        return target

    def read_tail(self, path: str, lines: int = 20) -> str:
        """Return the last *lines* lines of the text file *path* on the host (``""`` if unreadable)."""
        command = f"tail -n {int(lines)} -- {_shell_path(path)} 2>/dev/null | tail -c {TAIL_BYTES}"
        try:
            result = self.run(command, timeout=max(self.connect_timeout, 10.0))
        except ChannelError as exc:
            logger.debug("cannot read the tail of %s on %s: %s", path, self.hostname, exc)
            return ""
        text = result.stdout
        parts = text.splitlines()
        if len(text.encode()) >= TAIL_BYTES and len(parts) > 1:
            parts = parts[1:]  # the first line was cut by the byte limit
        return "\n".join(parts)

    # -- port forwarding ----------------------------------------------------------------------

    def forward_remote(
        self, remote_port: int, local_host: str, local_port: int, *, bind_address: str = "127.0.0.1"
    ) -> int:
        """Make *remote_port* on the SSH host lead to *local_host*:*local_port* here.

        Connections to ``bind_address:remote_port`` on the host travel through this SSH
        connection and are connected to *local_host*:*local_port* from this machine.  Give
        ``remote_port=0`` to let the host choose.  A *bind_address* other than loopback
        needs ``GatewayPorts clientspecified`` in the host's sshd_config.  The forward
        is restored on the same port if the connection is reopened.

        Returns:
            The port listening on the host.

        Raises:
            ChannelError: the host refused the forward (port in use, forwarding disabled).
        """
        _check_port("remote_port", remote_port, allow_zero=True)
        _check_host("local_host", local_host)
        _check_port("local_port", local_port, allow_zero=False)
        _check_host("bind_address", bind_address)
        import paramiko

        with self._lock:
            transport = self._transport_locked()
            try:
                port = int(transport.request_port_forward(bind_address, remote_port, self._dispatch))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ChannelError(
                    f"{self.hostname} refused to forward {bind_address}:{remote_port} to {local_host}:{local_port} "
                    f"({exc}); the port may be in use, or AllowTcpForwarding is off in its sshd_config"
                ) from exc
            self._forwards[("remote", port)] = _Forward("remote", bind_address, port, local_host, local_port)
        logger.info("forwarding %s:%d on %s to %s:%d", bind_address, port, self.hostname, local_host, local_port)
        return port

    def cancel_forward(self, remote_port: int) -> None:
        """Stop the forward of *remote_port* made by :meth:`forward_remote` and close its connections."""
        with self._lock:
            fw = self._forwards.pop(("remote", remote_port), None)
            transport = self._transport
        if fw is None:
            return
        if transport is not None and transport.is_active():
            try:
                # Not transport.cancel_port_forward: it would drop the handler of every other forward.
                transport.global_request("cancel-tcpip-forward", (fw.bind_host, fw.bind_port), wait=True)
            except Exception as exc:  # noqa: BLE001 - the connection may be closing
                logger.debug("cancelling the forward of port %d on %s: %s", remote_port, self.hostname, exc)
        self._stop_forward(fw)

    def forward_local(
        self, local_port: int, remote_host: str, remote_port: int, *, bind_address: str = "127.0.0.1"
    ) -> int:
        """Make *local_port* here lead to *remote_host*:*remote_port* as seen from the SSH host.

        Give ``local_port=0`` to pick a free port.  Returns the local port listening.
        """
        _check_port("local_port", local_port, allow_zero=True)
        _check_host("remote_host", remote_host)
        _check_port("remote_port", remote_port, allow_zero=False)
        _check_host("bind_address", bind_address)
        self.connect()
        listener = socket.create_server((bind_address, local_port))
        port = int(listener.getsockname()[1])
        fw = _Forward("local", bind_address, port, remote_host, remote_port, listener=listener)
        thread = threading.Thread(
            target=self._accept_local, args=(fw,), name=f"hpcfutures-ssh-forward-{port}", daemon=True
        )
        fw.threads.add(thread)
        with self._lock:
            self._forwards[("local", port)] = fw
        thread.start()
        return port

    def cancel_local_forward(self, local_port: int) -> None:
        """Stop the forward of *local_port* made by :meth:`forward_local` and close its connections."""
        with self._lock:
            fw = self._forwards.pop(("local", local_port), None)
        if fw is not None:
            self._stop_forward(fw)

    def _stop_forward(self, fw: _Forward) -> None:
        fw.stop.set()
        for thread in list(fw.threads):
            if thread is not threading.current_thread():
                thread.join(_PUMP_POLL * 10)
        if fw.listener is not None:
            fw.listener.close()

    def _dispatch(self, chan: Any, origin: tuple[str, int], server: tuple[str, int]) -> None:
        # Called on paramiko's transport thread, which must not block: the pump connects.  No
        # lock either: forward_remote holds _lock while it waits for this thread's reply.
        fw = self._forwards.get(("remote", int(server[1])))
        if fw is None or fw.stop.is_set():
            chan.close()
            return
        fw.connections += 1
        thread = threading.Thread(
            target=self._pump_remote, args=(fw, chan), name=f"hpcfutures-ssh-forward-{fw.bind_port}", daemon=True
        )
        fw.threads.add(thread)
        thread.start()

    def _pump_remote(self, fw: _Forward, chan: Any) -> None:
        try:
            sock = socket.create_connection((fw.target_host, fw.target_port), timeout=self.connect_timeout)
        except OSError as exc:
            logger.warning("forwarded connection to %s:%d failed: %s", fw.target_host, fw.target_port, exc)
            chan.close()
            fw.threads.discard(threading.current_thread())
            return
        _pump(fw, chan, sock)

    def _accept_local(self, fw: _Forward) -> None:
        assert fw.listener is not None
        try:
            while not fw.stop.is_set():
                ready, _, _ = select.select([fw.listener], [], [], _PUMP_POLL)
                if not ready:
                    continue
                sock, peer = fw.listener.accept()
                try:
                    with self._lock:
                        transport = self._transport_locked()
                    chan = transport.open_channel(
                        "direct-tcpip", (fw.target_host, fw.target_port), peer, timeout=self.connect_timeout
                    )
                except Exception as exc:  # noqa: BLE001 - report and refuse this one connection
                    logger.warning("forward to %s:%d via %s failed: %s", fw.target_host, fw.target_port,
                                   self.hostname, exc)
                    sock.close()
                    continue
                fw.connections += 1
                thread = threading.Thread(
                    target=_pump, args=(fw, chan, sock), name=f"hpcfutures-ssh-forward-{fw.bind_port}", daemon=True
                )
                fw.threads.add(thread)
                thread.start()
        except OSError:
            if not fw.stop.is_set():
                logger.exception("the forward of local port %d stopped", fw.bind_port)
        finally:
            fw.threads.discard(threading.current_thread())

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every forward and close the connection; a later command reconnects."""
        with self._lock:
            forwards = list(self._forwards.values())
            self._forwards.clear()
        for fw in forwards:
            self._stop_forward(fw)
        with self._sftp_lock:
            if self._sftp is not None:
                self._sftp.close()
            self._sftp = self._sftp_transport = None
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = self._transport = None

    def __repr__(self) -> str:
        return (
            f"SSHChannel({self.hostname!r}, username={self.username!r}, port={self.port}, "
            f"host_key_policy={self.host_key_policy!r}" + (f", env={self.env!r})" if self.env else ")")
        )


def _pump(fw: _Forward, chan: Any, sock: socket.socket) -> None:
    """Copy bytes both ways between an SSH channel and a socket until both sides ended."""
    chan_open = sock_open = True  # whether each side may still send us data
    try:
        sock.settimeout(None)
        while (chan_open or sock_open) and not fw.stop.is_set():
            watch = ([chan] if chan_open else []) + ([sock] if sock_open else [])
            ready, _, _ = select.select(watch, [], [], _PUMP_POLL)
            if chan in ready:
                data = chan.recv(_CHUNK)
                if data:
                    sock.sendall(data)
                else:
                    chan_open = False
                    sock.shutdown(socket.SHUT_WR)
            if sock in ready:
                data = sock.recv(_CHUNK)
                if data:
                    chan.sendall(data)
                else:
                    sock_open = False
                    chan.shutdown_write()
    except OSError as exc:
        logger.debug("forwarded connection on port %d ended: %s", fw.bind_port, exc)
    finally:
        chan.close()
        sock.close()
        fw.threads.discard(threading.current_thread())


class _HostKeyPolicy:
    """Decides about a host whose key is not in known_hosts, per ``host_key_policy``."""

    def __init__(self, channel: SSHChannel) -> None:
        self.channel = channel

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        channel = self.channel
        print_ = fingerprint(key)
        if channel.host_key_policy == "reject":
            raise SSHHostKeyError(
                f"the host key of {hostname} ({key.get_name()} {print_}) is not in {channel.known_hosts}, "
                f"so the connection was refused.  Check the fingerprint with the host's administrators, then add "
                f"it: `ssh-keyscan -p {channel.port} {channel.hostname} >> {channel.known_hosts}` (or log in once "
                "with ssh); or pass host_key_policy='auto-add' to trust a host on first use"
            )
        if channel.host_key_policy == "warn":
            logger.warning("connecting to %s, whose host key %s is not in %s", hostname, print_, channel.known_hosts)
            return
        client.get_host_keys().add(hostname, key.get_name(), key)
        directory = os.path.dirname(channel.known_hosts)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(channel.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        logger.warning("added the host key of %s (%s) to %s", hostname, print_, channel.known_hosts)
