"""Implements Gate and Recorder: real cross-process events for tests, over loopback TCP.

Tasks may run in other processes, so a test cannot share a ``threading.Event`` with them,
and sleeping to "let them start" is a race.  Instead the test process listens on a
loopback socket and hands tasks small picklable callables that connect to it:

- :class:`Gate`: ``gate.wait`` blocks the calling task until the test calls
  ``gate.open()``; ``gate.wait_entered(n)`` tells the test that ``n`` tasks are inside.
- :class:`Recorder`: ``recorder.record(value)`` reports ``value`` to the test and waits for
  the acknowledgement, so a value is recorded before the task's future can complete.

Every blocking call has a timeout.  Closing a Gate releases the tasks still waiting, and a
task that arrives after the close passes straight through, so a failing test cannot leave
workers stuck.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from typing import Any

__all__ = ["Gate", "GateWait", "RecordCall", "Recorder"]

Address = tuple[str, int]

#: How long a task waits at a closed gate before giving up with ``TimeoutError``.
DEFAULT_TASK_TIMEOUT = 120.0

_OPEN = b"O"
_ACK = b"A"


class _Listener:
    """A loopback listening socket served by one daemon thread; subclasses handle connections."""

    def __init__(self, kind: str) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._sock.setblocking(False)
        self.address: Address = self._sock.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        # Must be held while reading or changing the subclass's state and _closed.
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._serve, name=f"hpcfutures-{kind}-{self.address[1]}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    while True:
                        try:
                            conn, _ = self._sock.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            return
                        self._handle(conn)
        finally:
            self._selector.close()
            self._sock.close()
            self._wake_r.close()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _wait_until(self, predicate: Any, timeout: float, describe: Any) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(describe())
                self._cond.wait(remaining)

    def close(self) -> None:
        """Stop listening and join the serving thread (at most a few seconds)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            self._wake_w.send(b"x")
        finally:
            self._wake_w.close()
        self._thread.join(5.0)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} lives in the test process and cannot be pickled; "
            "hand tasks its picklable callable instead"
        )


class GateWait:
    """The picklable callable behind ``Gate.wait``: block until the gate opens.

    Called with one positional argument it returns that argument, so that
    ``ex.map(gate.wait, items)`` yields the items; called with none it returns None.
    """

    __slots__ = ("address", "timeout")

    def __init__(self, address: Address, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    def __call__(self, *args: Any) -> Any:
        try:
            conn = socket.create_connection(self.address, timeout=self.timeout)
        except ConnectionRefusedError:
            pass  # the gate is closed and gone: nothing to wait for
        else:
            with conn:
                try:
                    conn.recv(1)  # b"O" when opened, b"" when the gate was closed
                except TimeoutError:
                    raise TimeoutError(
                        f"the Gate at {self.address[0]}:{self.address[1]} was not opened within "
                        f"{self.timeout} s"
                    ) from None
                except ConnectionResetError:
                    pass
        return args[0] if args else None

    def __getstate__(self) -> tuple[Address, float]:
        return self.address, self.timeout

    def __setstate__(self, state: tuple[Address, float]) -> None:
        self.address, self.timeout = state

    def __repr__(self) -> str:
        return f"GateWait({self.address!r})"


class Gate(_Listener):
    """A barrier that tasks in any process can wait at until the test opens it.

    Usage::

        with Gate() as gate:
            futures = [ex.submit(gate.wait) for _ in range(workers)]
            gate.wait_entered(workers, timeout=30)   # every worker is now busy
            ...
            gate.open()

    A task counts as *entered* once its connection is accepted, which happens while the
    task runs.  ``close()`` (also on leaving the ``with`` block) opens the gate first.
    """

    def __init__(self, task_timeout: float = DEFAULT_TASK_TIMEOUT) -> None:
        """Start listening; ``task_timeout`` bounds how long a task waits at the closed gate."""
        self._waiting: list[socket.socket] = []
        self._entered = 0
        self._open = False
        super().__init__("gate")
        self.wait = GateWait(self.address, task_timeout)

    def _handle(self, conn: socket.socket) -> None:
        with self._cond:
            self._entered += 1
            if self._open or self._closed:
                _release(conn)
            else:
                self._waiting.append(conn)
            self._cond.notify_all()

    @property
    def entered(self) -> int:
        """How many tasks have reached the gate so far (including ones let through)."""
        with self._cond:
            return self._entered

    @property
    def is_open(self) -> bool:
        """Whether the gate has been opened."""
        with self._cond:
            return self._open

    def wait_entered(self, n: int, timeout: float) -> None:
        """Block until ``n`` tasks have reached the gate; raise ``TimeoutError`` after ``timeout`` s."""
        self._wait_until(
            lambda: self._entered >= n,
            timeout,
            lambda: f"only {self._entered} of {n} tasks reached the gate within {timeout} s",
        )

    def open(self) -> None:
        """Release every waiting task, and let every later one through at once."""
        with self._cond:
            self._open = True
            waiting, self._waiting = self._waiting, []
            for conn in waiting:
                _release(conn)

    def close(self) -> None:
        """Open the gate, then stop listening; a task arriving later passes straight through."""
        self.open()
        super().close()


def _release(conn: socket.socket) -> None:
    try:
        conn.sendall(_OPEN)
    except OSError:
        pass  # the task gave up already
    finally:
        conn.close()


class RecordCall:
    """The picklable callable behind ``Recorder.record``: report a value and return it."""

    __slots__ = ("address", "timeout")

    def __init__(self, address: Address, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    def __call__(self, value: Any) -> Any:
        message = json.dumps(value).encode() + b"\n"
        with socket.create_connection(self.address, timeout=self.timeout) as conn:
            conn.sendall(message)
            if conn.recv(1) != _ACK:
                raise ConnectionError(
                    f"the Recorder at {self.address[0]}:{self.address[1]} did not acknowledge {value!r}"
                )
        return value

    def __getstate__(self) -> tuple[Address, float]:
        return self.address, self.timeout

    def __setstate__(self, state: tuple[Address, float]) -> None:
        self.address, self.timeout = state

    def __repr__(self) -> str:
        return f"RecordCall({self.address!r})"


class Recorder(_Listener):
    """Collects values that tasks in any process report, in the order they arrive.

    ``recorder.record`` is a picklable callable: ``ex.submit(recorder.record, 7)`` reports
    7 and returns it.  A value is in :attr:`values` before the task's future completes.
    Values travel as JSON, so use numbers, strings, lists and dicts.
    """

    def __init__(self, task_timeout: float = 30.0) -> None:
        """Start listening; ``task_timeout`` bounds each task's connect, send and wait for ack."""
        self._values: list[Any] = []
        super().__init__("recorder")
        self.record = RecordCall(self.address, task_timeout)

    def _handle(self, conn: socket.socket) -> None:
        # The task sends one line right after connecting; read it here rather than juggle
        # many half-read connections in the selector.
        with conn:
            conn.settimeout(5.0)
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                value = json.loads(data)
                with self._cond:
                    self._values.append(value)
                    self._cond.notify_all()
                conn.sendall(_ACK)
            except (OSError, ValueError):
                return

    @property
    def values(self) -> list[Any]:
        """The values recorded so far, in arrival order."""
        with self._cond:
            return list(self._values)

    def wait_for(self, n: int, timeout: float) -> list[Any]:
        """Block until ``n`` values are recorded and return them; ``TimeoutError`` after ``timeout`` s."""
        self._wait_until(
            lambda: len(self._values) >= n,
            timeout,
            lambda: f"only {len(self._values)} of {n} values were recorded within {timeout} s",
        )
        return self.values
