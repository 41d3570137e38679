"""TCP port forwarding through an SSH connection, for :class:`~hpcfutures.providers.ssh_channel.SSHChannel`.

A *remote* forward (``ssh -R``) makes a port on the SSH host lead to a host and port as
seen from here; a *local* forward (``ssh -L``) makes a port here lead to one as seen from
the SSH host.  :class:`PortForwards` keeps one channel's forwards, carries their
connections (one thread per connection, copying bytes both ways), and asks the host again
for the remote forwards when the channel reconnects.

It never opens the connection itself: the channel gives it two functions, one returning
the live transport (connecting if needed) and one returning the installed transport as it
is (or None), and calls :meth:`PortForwards.restore` after each reconnect.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .channels import ChannelError

logger = logging.getLogger(__name__)

# Seconds a reconnect keeps asking the host to restore a remote forward: the host's sshd may
# hold the old connection's listening port for a moment.
_RESTORE_SECONDS = 5.0
# Seconds between two such requests.
_RESTORE_RETRY = 0.1
# Seconds between checks of a forwarding thread's stop flag.
_PUMP_POLL = 0.2
_CHUNK = 65536


@dataclass
class Forward:
    """One port forward and the threads that carry its connections.

    ``threads`` and ``connections`` are changed without a lock, by the one thread that
    accepts the forward's connections (paramiko's transport thread, or the local listener's
    thread), except that each connection's thread removes itself from ``threads`` when done
    (``set.add`` and ``set.discard`` are atomic in CPython).  Readers take a copy.
    """

    kind: str  # "remote": a port on the SSH host reaches us; "local": a port here reaches it
    bind_host: str
    bind_port: int
    target_host: str
    target_port: int
    stop: threading.Event = field(default_factory=threading.Event)
    threads: set[threading.Thread] = field(default_factory=set)
    listener: socket.socket | None = None
    connections: int = 0  # how many connections it has carried, for diagnostics and tests


class PortForwards:
    """The port forwards of one SSH channel.

    Args:
        hostname: the SSH host, for messages.
        connect_timeout: seconds to wait for a forwarded connection to open.
        live_transport: returns the channel's live paramiko transport, connecting if needed.
        current_transport: returns the channel's installed transport without connecting
            (None when there is none); a forward asked for on any other transport is gone.
    """

    def __init__(
        self,
        hostname: str,
        connect_timeout: float,
        live_transport: Callable[[], Any],
        current_transport: Callable[[], Any],
    ) -> None:
        self._hostname = hostname
        self._connect_timeout = connect_timeout
        self._live = live_transport
        self._current = current_transport
        # Must be held while reading or changing `forwards`.  Held only for that, never across
        # network I/O or a call into the channel: paramiko's transport thread takes it to
        # dispatch a forwarded connection, while other threads wait for that thread's replies.
        self.lock = threading.Lock()
        self.forwards: dict[tuple[str, int], Forward] = {}

    # -- remote forwards (ssh -R) ---------------------------------------------------------------

    def forward_remote(self, remote_port: int, local_host: str, local_port: int, bind_address: str) -> int:
        """Ask the host to listen on *bind_address*:*remote_port* for *local_host*:*local_port*; return the port."""
        import paramiko

        transport = self._live()
        try:
            port = int(transport.request_port_forward(bind_address, remote_port, self._dispatch))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ChannelError(
                f"{self._hostname} refused to forward {bind_address}:{remote_port} to {local_host}:{local_port} "
                f"({exc}); the port may be in use, or AllowTcpForwarding is off in its sshd_config"
            ) from exc
        fw = Forward("remote", bind_address, port, local_host, local_port)
        with self.lock:
            self.forwards[("remote", port)] = fw
        # Registered first, checked second: a reconnect that installed its transport after this
        # check restores the forward, and one before it is caught here.
        if self._current() is not transport:
            with self.lock:
                if self.forwards.get(("remote", port)) is fw:
                    del self.forwards[("remote", port)]
            self._cancel_on_host(transport, fw)
            raise ChannelError(
                f"the connection to {self._hostname} was closed or reopened while port {port} was being "
                "forwarded; forward it again"
            )
        logger.info("forwarding %s:%d on %s to %s:%d", bind_address, port, self._hostname, local_host, local_port)
        return port

    def cancel_remote(self, remote_port: int) -> None:
        """Stop the remote forward of *remote_port* (if any) on the host and here."""
        with self.lock:
            fw = self.forwards.pop(("remote", remote_port), None)
        if fw is None:
            return
        transport = self._current()
        if transport is not None:
            self._cancel_on_host(transport, fw)
        self.stop(fw)

    def _cancel_on_host(self, transport: Any, fw: Forward) -> None:
        """Ask the host to stop listening for *fw* on *transport*, if that connection is alive."""
        if not transport.is_active():
            return
        try:
            # Not transport.cancel_port_forward: it would drop the handler of every other forward.
            transport.global_request("cancel-tcpip-forward", (fw.bind_host, fw.bind_port), wait=True)
        except Exception as exc:  # noqa: BLE001 - the connection may be closing
            logger.debug("cancelling the forward of port %d on %s: %s", fw.bind_port, self._hostname, exc)

    def restore(self, transport: Any) -> None:
        """Ask *transport*'s host again for every remote forward, which died with the old connection.

        Called with no lock held, after the channel installed *transport*: commands, cancels
        and closes go on meanwhile.  A forward cancelled meanwhile is not restored (or is
        cancelled again on the host if its request was already on the way).
        """
        with self.lock:
            remote = [fw for fw in self.forwards.values() if fw.kind == "remote"]
        deadline = time.monotonic() + _RESTORE_SECONDS
        for fw in remote:
            self._restore_one(transport, fw, deadline)

    def _restore_one(self, transport: Any, fw: Forward, deadline: float) -> None:
        while self._wanted(transport, fw):
            try:
                transport.request_port_forward(fw.bind_host, fw.bind_port, self._dispatch)
            except Exception as exc:  # noqa: BLE001 - paramiko raises SSHException or socket errors
                if time.monotonic() >= deadline or not transport.is_active():
                    logger.warning("could not restore the forward of %s:%d on %s: %s", fw.bind_host,
                                   fw.bind_port, self._hostname, exc)
                    return
                fw.stop.wait(_RESTORE_RETRY)  # ends at once if the forward is cancelled
                continue
            if not self._wanted(transport, fw):  # cancelled, or the channel closed, during the request
                self._cancel_on_host(transport, fw)
            return

    def _wanted(self, transport: Any, fw: Forward) -> bool:
        """Whether *fw* is still a forward of the channel and *transport* still its connection."""
        with self.lock:
            registered = self.forwards.get((fw.kind, fw.bind_port)) is fw
        return registered and self._current() is transport

    def _dispatch(self, chan: Any, origin: tuple[str, int], server: tuple[str, int]) -> None:
        # Called on paramiko's transport thread, which must not block: the pump connects.
        with self.lock:
            fw = self.forwards.get(("remote", int(server[1])))
        if fw is None or fw.stop.is_set():
            chan.close()
            return
        fw.connections += 1
        thread = threading.Thread(
            target=self._pump_remote, args=(fw, chan), name=f"hpcfutures-ssh-forward-{fw.bind_port}", daemon=True
        )
        fw.threads.add(thread)
        thread.start()

    def _pump_remote(self, fw: Forward, chan: Any) -> None:
        try:
            sock = socket.create_connection((fw.target_host, fw.target_port), timeout=self._connect_timeout)
        except OSError as exc:
            logger.warning("forwarded connection to %s:%d failed: %s", fw.target_host, fw.target_port, exc)
            chan.close()
            fw.threads.discard(threading.current_thread())
            return
        pump(fw, chan, sock)

    # -- local forwards (ssh -L) ----------------------------------------------------------------

    def forward_local(self, local_port: int, remote_host: str, remote_port: int, bind_address: str) -> int:
        """Listen on *bind_address*:*local_port* here for *remote_host*:*remote_port*; return the port."""
        self._live()  # fail now, not at the first forwarded connection
        listener = socket.create_server((bind_address, local_port))
        port = int(listener.getsockname()[1])
        fw = Forward("local", bind_address, port, remote_host, remote_port, listener=listener)
        thread = threading.Thread(
            target=self._accept_local, args=(fw,), name=f"hpcfutures-ssh-forward-{port}", daemon=True
        )
        fw.threads.add(thread)
        with self.lock:
            self.forwards[("local", port)] = fw
        thread.start()
        return port

    def cancel_local(self, local_port: int) -> None:
        """Stop the local forward of *local_port* (if any) and close its connections."""
        with self.lock:
            fw = self.forwards.pop(("local", local_port), None)
        if fw is not None:
            self.stop(fw)

    def _accept_local(self, fw: Forward) -> None:
        assert fw.listener is not None
        try:
            while not fw.stop.is_set():
                ready, _, _ = select.select([fw.listener], [], [], _PUMP_POLL)
                if not ready:
                    continue
                sock, peer = fw.listener.accept()
                try:
                    chan = self._live().open_channel(
                        "direct-tcpip", (fw.target_host, fw.target_port), peer, timeout=self._connect_timeout
                    )
                except Exception as exc:  # noqa: BLE001 - report and refuse this one connection
                    logger.warning("forward to %s:%d via %s failed: %s", fw.target_host, fw.target_port,
                                   self._hostname, exc)
                    sock.close()
                    continue
                fw.connections += 1
                thread = threading.Thread(
                    target=pump, args=(fw, chan, sock), name=f"hpcfutures-ssh-forward-{fw.bind_port}", daemon=True
                )
                fw.threads.add(thread)
                thread.start()
        except OSError:
            if not fw.stop.is_set():
                logger.exception("the forward of local port %d stopped", fw.bind_port)
        finally:
            fw.threads.discard(threading.current_thread())

    # -- stopping -------------------------------------------------------------------------------

    def take_all(self) -> list[Forward]:
        """Forget every forward and return them, for :meth:`stop` (a reconnect restores none of them)."""
        with self.lock:
            forwards = list(self.forwards.values())
            self.forwards.clear()
        return forwards

    def stop(self, fw: Forward) -> None:
        """Stop *fw*'s threads (waiting a little for each) and close its listener."""
        fw.stop.set()
        for thread in list(fw.threads):
            if thread is not threading.current_thread():
                thread.join(_PUMP_POLL * 10)
        if fw.listener is not None:
            fw.listener.close()


def pump(fw: Forward, chan: Any, sock: socket.socket) -> None:
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
