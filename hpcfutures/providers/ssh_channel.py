"""SSHChannel: run scheduler commands and copy files on another host over SSH (paramiko).

A provider given ``SSHChannel("login.cluster.org", …)`` drives that host's scheduler from
here: commands run through one SSH connection (opened at first use, reopened once when it
dropped), files move over SFTP.  Only keys authenticate, and the host's key is checked
against a known_hosts file (:mod:`.ssh_hostkeys`): an unknown host is refused unless the
user chose otherwise.

The channel also forwards TCP ports through its connection (:meth:`SSHChannel.forward_remote`,
:meth:`SSHChannel.forward_local`, carried by :mod:`.ssh_forward`), so that worker pools on a
cluster can reach an interchange on a machine they cannot connect to directly.

Opening the connection may take several ``connect_timeout`` waits (TCP, the SSH handshake,
the login).  It happens under no lock: one thread connects, the others that need the connection
meanwhile wait for that one attempt, and :meth:`SSHChannel.close` abandons it at once.
"""

from __future__ import annotations

import getpass
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
from typing import Any

from .._validate import check_count, check_seconds, check_text
from ..errors import ConfigurationError
from ..tails import TAIL_BYTES, TAIL_LINES, last_lines
from .channels import DEFAULT_COMMAND_TIMEOUT, Channel, ChannelError, CommandResult
from .ssh_forward import Forward, PortForwards
from .ssh_hostkeys import HOST_KEY_POLICIES, HostKeyPolicy, SSHHostKeyError, changed_key_error, fingerprint

__all__ = ["HOST_KEY_POLICIES", "SSHAuthenticationError", "SSHChannel", "SSHHostKeyError", "fingerprint"]

logger = logging.getLogger(__name__)

# The remote shell announces its pid on stderr first, so that a command that outlives its
# timeout can be killed with its process group.
_PID_TAG = "__hpcfutures_pid__="
_PID_LINE = re.compile(r"^" + _PID_TAG + r"(\d+)\n", re.MULTILINE)
_CWD_TAG = "__hpcfutures_no_cwd__"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Seconds a killed command's process group gets between SIGTERM and SIGKILL.
_KILL_GRACE = 2.0
# Seconds a command's wait for output sleeps between checks of its deadline.
_POLL = 0.2
_CHUNK = 65536


class SSHAuthenticationError(ChannelError):
    """The host refused every key offered for the user."""

def _check_port(name: str, value: object, allow_zero: bool) -> int:
    return check_count(name, value, 0 if allow_zero else 1, maximum=65535, what="a TCP port number")


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


class _Attempt:
    """One attempt to open a channel's connection, made by one thread under no lock.

    Other threads that need the connection meanwhile wait for :attr:`done` and share the
    outcome.  Every field is written under the channel's ``_lock``; :attr:`transport` and
    :attr:`error` are final once :attr:`done` is set, and are read only after it.
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.transport: Any = None
        self.error: BaseException | None = None
        # The TCP connection once made, so that close() can cut the SSH handshake short.
        self.sock: socket.socket | None = None

    def finish(self, transport: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome (the first one counts) and release the waiting threads."""
        if not self.done.is_set():
            self.transport, self.error = transport, error
            self.done.set()

    def attach(self, sock: socket.socket) -> None:
        """Remember the attempt's TCP connection; shut it at once if close() abandoned the attempt already."""
        self.sock = sock
        if self.error is not None:  # only abandon() sets it before the attempt's own thread ends
            _shut(sock)

    def abandon(self, error: ChannelError) -> None:
        """Fail the attempt with *error* and shut its connection, so that its handshake fails now."""
        self.finish(error=error)
        if self.sock is not None:
            _shut(self.sock)

    def result(self) -> Any:
        """Return the transport, or raise (a copy of) the attempt's error in this thread."""
        if self.error is None:
            return self.transport
        raise _copy_error(self.error) from self.error


def _shut(sock: socket.socket) -> None:
    """Shut *sock* both ways: a thread blocked reading it sees the end at once (close would not wake it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more


def _copy_error(error: BaseException) -> ChannelError:
    """Return a new exception like *error* to raise in another thread (one object is raised once)."""
    if isinstance(error, ChannelError):
        return type(error)(*error.args)
    return ChannelError(f"could not connect: {type(error).__name__}: {error}")


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
    called from any thread; commands run concurrently over the one connection.  Connecting
    and restoring forwards after a reconnect hold no lock, so they never delay :meth:`close`,
    :meth:`cancel_forward`, or commands on a connection that is already open.
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
        self.connect_timeout = float(check_seconds("connect_timeout", connect_timeout, finite=True))
        self.script_dir = check_text("script_dir", script_dir, what="a remote directory path", optional=True)
        _check_env(env)
        self.env = dict(env or {})

        # Must be held while reading or replacing _client, _transport and _attempt.  Held only
        # for that, never across network I/O: connecting happens outside it (see _live_transport).
        # May be taken with _sftp_lock held (an SFTP call connecting), never the other way round,
        # and never together with _forwarding.lock.
        self._lock = threading.Lock()
        self._client: Any = None  # paramiko.SSHClient
        self._transport: Any = None  # paramiko.Transport of _client
        self._attempt: _Attempt | None = None  # the connection attempt in progress, if any
        # Must be held while using or replacing _sftp, _sftp_transport and _home (paramiko's
        # SFTP client is not meant for concurrent requests).  It is held during SFTP transfers
        # and while connecting for one, so close() does not take it: closing the transport ends
        # the SFTP session, and the next SFTP call replaces a client of an older transport.
        self._sftp_lock = threading.Lock()
        self._sftp: Any = None
        self._sftp_transport: Any = None  # the transport _sftp runs on
        self._home: str | None = None  # the remote home directory, as SFTP reported it
        self._forwarding = PortForwards(
            self.hostname, self.connect_timeout, self._live_transport, self._current_transport
        )

    @property
    def _forwards(self) -> dict[tuple[str, int], Forward]:
        """The forwards by (kind, port), for diagnostics and tests (read without their lock: a snapshot at best)."""
        return self._forwarding.forwards

    # -- connecting ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (it opens on first use otherwise), to surface errors early.

        Raises:
            SSHHostKeyError: the host's key is unknown (with ``host_key_policy="reject"``) or changed.
            SSHAuthenticationError: no key was accepted.
            ChannelError: the host cannot be reached, or :meth:`close` was called meanwhile.
        """
        self._live_transport()

    def _current_transport(self) -> Any:
        """Return the installed transport as it is (perhaps dead), or None; never connects."""
        with self._lock:
            return self._transport

    def _live_transport(self) -> Any:
        """Return the live transport, connecting (again) if needed.

        The first thread to find no live transport makes the attempt, outside :attr:`_lock`;
        threads arriving meanwhile wait for it and share its transport or its error.  After
        installing a new transport, the connecting thread restores the remote forwards, still
        outside the lock.
        """
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            other = self._attempt
            if other is None:
                attempt = self._attempt = _Attempt()
                stale, self._client, self._transport = self._client, None, None
        if other is not None:
            other.done.wait()  # ended by the connecting thread's timeouts, or by close()
            return other.result()
        return self._connect(attempt, stale)

    def _connect(self, attempt: _Attempt, stale: Any) -> Any:
        """Make *attempt*, install its transport unless :meth:`close` abandoned it, restore forwards.

        *stale* is the client of the connection that dropped, if any, to close first.  Whatever
        happens, *attempt* ends, so no thread waits for it forever.
        """
        try:
            if stale is not None:
                logger.info("SSH connection to %s dropped; reconnecting", self._where())
                stale.close()
            client = self._open_client(attempt)
        except BaseException as exc:
            with self._lock:
                if self._attempt is attempt:
                    self._attempt = None
                attempt.finish(error=exc)
            if attempt.error is not None and attempt.error is not exc:
                # Abandoned by close(): say so, rather than how the cut handshake broke.
                raise _copy_error(attempt.error) from exc
            raise
        transport = client.get_transport()
        transport.set_keepalive(30)
        with self._lock:
            installed = self._attempt is attempt
            if installed:
                self._attempt = None
                self._client, self._transport = client, transport
                attempt.finish(transport=transport)
        if not installed:
            client.close()
            return attempt.result()  # raises close()'s error
        self._restore_forwards(transport)
        return transport

    def _restore_forwards(self, transport: Any) -> None:
        """Ask *transport*'s host again for the remote forwards, which died with the old connection.

        Runs on the thread that reconnected, after *transport* was installed, under no lock.
        """
        self._forwarding.restore(transport)

    def _open_client(self, attempt: _Attempt) -> Any:
        """Connect and log in; return the paramiko client.

        Takes :attr:`_lock` only to hand the TCP connection to *attempt*, so that
        :meth:`close` can shut it and end the handshake at once.
        """
        import paramiko

        try:
            sock = socket.create_connection((self.hostname, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ChannelError(f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            attempt.attach(sock)
        client = paramiko.SSHClient()
        try:
            if not self._known_hosts_given and os.path.isfile("/etc/ssh/ssh_known_hosts"):
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
            if os.path.isfile(self.known_hosts):
                client.load_host_keys(self.known_hosts)
            client.set_missing_host_key_policy(
                HostKeyPolicy(self.host_key_policy, self.known_hosts, self.hostname, self.port)
            )
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
                sock=sock,
            )
        except BaseException as exc:
            client.close()
            sock.close()
            error = self._login_error(exc)
            if error is exc:
                raise
            raise error from exc
        return client

    def _login_error(self, exc: BaseException) -> BaseException:
        """Return the error to raise for *exc*, which ended a login: a :class:`ChannelError` that says what to do."""
        import paramiko

        if isinstance(exc, SSHHostKeyError):  # from HostKeyPolicy: already says what to do
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            return changed_key_error(self._where(), self.hostname, self.port, self.known_hosts, exc)
        if isinstance(exc, paramiko.AuthenticationException):
            key = self.key_filename or "the SSH agent's and ~/.ssh's default keys"
            return SSHAuthenticationError(
                f"{self._where()} refused the login of {self.username!r} with {key} ({exc}); "
                f"add the public key to ~{self.username}/.ssh/authorized_keys there, or pass key_filename= "
                "the private key that is authorized"
            )
        if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
            return ChannelError(f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}")
        return exc

    def _where(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    def _open_session(self) -> Any:
        """Open a session channel, reconnecting once if the connection dropped."""
        import paramiko

        for tries in (1, 2):
            transport = self._live_transport()
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if tries == 2 or transport.is_active():
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
        check_text("command", command, what="a non-empty shell command string")
        check_seconds("timeout", timeout)
        _check_env(env)
        check_text("cwd", cwd, what="a directory path", optional=True)
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
                ready, _, _ = select.select([chan], [], [], min(remaining, _POLL))
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
            for tries in (1, 2):
                transport = self._live_transport()
                try:
                    if self._sftp is None or self._sftp_transport is not transport:
                        if self._sftp is not None:
                            self._sftp.close()
                        self._sftp = transport.open_sftp_client()
                        self._sftp_transport = transport
                        self._home = self._sftp.normalize(".")
                    return operation(self._sftp)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    if tries == 1 and not transport.is_active():
                        self._sftp = None
                        continue
                    raise ChannelError(f"cannot {what} on {self._where()}: {exc}") from exc
        raise AssertionError("unreachable")

    def _absolute(self, path: str) -> str:
        """Return *path* on the host as an absolute path (``~`` and relative paths from home).

        Call with :attr:`_sftp_lock` held (inside an :meth:`_sftp_call` operation): it reads :attr:`_home`.
        """
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
        check_text("path", path, what="a directory path")
        self._sftp_call(f"create directory {path!r}", lambda sftp: self._sftp_makedirs(sftp, path, mode))

    def push_file(self, local_path: str, remote_dir: str) -> str:
        """Copy *local_path* into *remote_dir* over SFTP, keeping its permission bits.

        The directory is made (mode 0700) if missing, and the file appears whole: it is
        written under a temporary name and renamed.  Returns its absolute path on the host.
        """
        if not isinstance(local_path, (str, os.PathLike)) or not os.path.isfile(local_path):
            raise ChannelError(f"cannot push {local_path!r} to {self.hostname}: no such local file")
        check_text("remote_dir", remote_dir, what="a directory path")
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
        check_text("remote_path", remote_path, what="a file path")
        os.makedirs(local_dir, exist_ok=True)
        target = os.path.join(local_dir, posixpath.basename(remote_path))
        self._sftp_call(
            f"pull {remote_path!r}", lambda sftp: sftp.get(self._absolute(remote_path), target)
        )
        return target

    def read_tail(self, path: str, lines: int = TAIL_LINES) -> str:
        """Return the last *lines* lines of the text file *path* on the host (``""`` if unreadable)."""
        command = f"tail -n {int(lines)} -- {_shell_path(path)} 2>/dev/null | tail -c {TAIL_BYTES}"
        try:
            result = self.run(command, timeout=max(self.connect_timeout, 10.0))
        except ChannelError as exc:
            logger.debug("cannot read the tail of %s on %s: %s", path, self.hostname, exc)
            return ""
        return last_lines(result.stdout, None, cut=len(result.stdout.encode()) >= TAIL_BYTES)

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
            ChannelError: the host refused the forward (port in use, forwarding disabled), or
                the connection was closed or reopened before the host answered.
        """
        _check_port("remote_port", remote_port, allow_zero=True)
        _check_host("local_host", local_host)
        _check_port("local_port", local_port, allow_zero=False)
        _check_host("bind_address", bind_address)
        return self._forwarding.forward_remote(remote_port, local_host, local_port, bind_address)

    def cancel_forward(self, remote_port: int) -> None:
        """Stop the forward of *remote_port* made by :meth:`forward_remote` and close its connections."""
        self._forwarding.cancel_remote(remote_port)

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
        return self._forwarding.forward_local(local_port, remote_host, remote_port, bind_address)

    def cancel_local_forward(self, local_port: int) -> None:
        """Stop the forward of *local_port* made by :meth:`forward_local` and close its connections."""
        self._forwarding.cancel_local(local_port)

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every forward and close the connection; a later command reconnects.

        A connection attempt in progress is abandoned: its callers get a :class:`ChannelError`
        and whatever it opens is closed.  This does not wait for the attempt to end.
        """
        forwards = self._forwarding.take_all()  # first, so that no reconnect restores them
        with self._lock:
            client, self._client, self._transport = self._client, None, None
            attempt, self._attempt = self._attempt, None
            if attempt is not None:
                attempt.abandon(ChannelError(f"the channel to {self._where()} was closed while connecting"))
        for fw in forwards:
            self._forwarding.stop(fw)
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return (
            f"SSHChannel({self.hostname!r}, username={self.username!r}, port={self.port}, "
            f"host_key_policy={self.host_key_policy!r}" + (f", env={self.env!r})" if self.env else ")")
        )
