"""Hostile input to the HighThroughputExecutor's interchange (issue 10, finding 3).

Whatever reaches the local pools' socket or the TCP port, the interchange must carry on:
the tasks pending when the bytes arrive complete, and new tasks run.  The first part tests
the registration parser alone; the rest attacks a live executor, over loopback only.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import zmq

from hpcfutures import HighThroughputExecutor, __version__
from hpcfutures.executors.htex import protocol as P
from hpcfutures.executors.htex.pipes import encode
from hpcfutures.executors.htex.slots import PoolShape
from hpcfutures.executors.htex.stream import SCHEME
from hpcfutures.testing import Gate, faults

from .htex_helpers import assert_all_gone, descendants, pool_key

NESTED = b"[" * 100_000  # json.loads raises RecursionError, not ValueError
NESTED_IN_FIELD = b'{"pool_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # under the size limit


def info(**changes: Any) -> dict[str, Any]:
    """A valid registration's fields, with ``changes``."""
    fields = {
        "pool_id": "p-1",
        "block_id": "hostile",
        "workers": 2,
        "host": "here",
        "pid": 1234,
        "block_end_in": None,
        "protocol": P.PROTOCOL_VERSION,
        "python": P.python_version(),
        "hpcfutures": __version__,
    }
    fields.update(changes)
    return fields


# -- the registration parser alone ---------------------------------------------------------------


def test_a_valid_registration_parses_into_typed_fields():
    reg = P.parse_registration(json.dumps(info(block_id=3, block_end_in=100)).encode())
    assert reg == P.Registration(
        "p-1", 3, 2, "here", 1234, 100.0, P.PROTOCOL_VERSION, P.python_version(), __version__
    )
    assert reg.block == "3"
    assert isinstance(reg.block_end_in, float)


def test_a_pools_shape_travels_in_its_registration():
    shape = PoolShape((0, 1), 3.5, ("fake0",), 2, "here")
    reg = P.parse_registration(json.dumps(info(shape=shape.to_json())).encode())
    assert reg.shape == shape
    assert P.parse_registration(json.dumps(info()).encode()).shape is None


def test_what_the_pool_manager_sends_parses():
    data = P.registration(pool_id="p", block_id="0", workers=1, host="h", pid=os.getpid(), block_end_in=None)
    assert P.parse_registration(memoryview(data)).pool_id == "p"


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b"null",
        b'"a string"',
        b"12",
        b"{",
        b"\xff\xfe not utf-8",
        NESTED,
        NESTED_IN_FIELD,
        b'{"a": "' + b"x" * P.MAX_REGISTRATION + b'"}',  # above the size limit
        b"1" * 5000,  # an integer of more digits than Python converts
    ],
    ids=[
        "list", "null", "string", "number", "cut short",
        "not utf-8", "nested", "nested field", "large", "digits",
    ],  # fmt: skip
)
def test_a_registration_that_is_no_json_object_is_refused(data):
    with pytest.raises(P.RegistrationError) as caught:
        P.parse_registration(data)
    assert not isinstance(caught.value, P.VersionMismatch)


@pytest.mark.parametrize(
    "changes",
    [
        {"pool_id": 7},
        {"pool_id": None},
        {"block_id": [1]},
        {"block_id": True},
        {"workers": "2"},
        {"workers": 0},
        {"workers": 2.0},
        {"workers": True},
        {"workers": 1 << 40},
        {"host": ["h"]},
        {"pid": -1},
        {"pid": "1"},
        {"block_end_in": "soon"},
        {"block_end_in": float("inf")},
        {"block_end_in": float("nan")},
        {"block_end_in": 10**400},
        {"shape": "4 cores"},
        {"shape": {"cpus": [], "memory_gb": None, "gpus": [], "tasks_per_gpu": 1, "host": "h"}},
        {"shape": {"cpus": [0, 0], "memory_gb": None, "gpus": [], "tasks_per_gpu": 1, "host": "h"}},
        {"shape": {"cpus": [0], "memory_gb": -1, "gpus": [], "tasks_per_gpu": 1, "host": "h"}},
        {"shape": {"cpus": [0], "memory_gb": None, "gpus": [7], "tasks_per_gpu": 1, "host": "h"}},
    ],
    ids=repr,
)
def test_a_field_of_the_wrong_type_is_refused(changes):
    data = json.dumps(info(**changes)).encode()
    with pytest.raises(P.RegistrationError) as caught:
        P.parse_registration(data)
    assert not isinstance(caught.value, P.VersionMismatch)


def test_a_missing_field_is_refused():
    fields = info()
    del fields["workers"]
    with pytest.raises(P.RegistrationError, match="workers"):
        P.parse_registration(json.dumps(fields).encode())


@pytest.mark.parametrize(
    "changes", [{"protocol": 1}, {"protocol": True}, {"python": "2.7"}, {"hpcfutures": [["0"]]}], ids=repr
)
def test_other_versions_are_checked_first_and_named(changes):
    # a pool of another version may have other fields too: the versions decide the answer
    data = json.dumps(info(workers="many", block_id=5, **changes)).encode()
    with pytest.raises(P.VersionMismatch) as caught:
        P.parse_registration(data)
    assert str(next(iter(changes))) in str(caught.value)
    assert "install the same" in str(caught.value)
    assert caught.value.block_id == 5


def test_load_json_bounds_size_and_depth():
    assert P.load_json(b'{"reason": "x"}', 100) == {"reason": "x"}
    with pytest.raises(P.ProtocolError):
        P.load_json(b'"' + b"x" * 100 + b'"', 100)
    with pytest.raises(P.ProtocolError):
        P.load_json(NESTED, len(NESTED))


def test_a_node_sample_parses_into_checked_numbers():
    data = b'{"load1": 1, "cpu_percent": 12.5, "mem_percent": 40.0, "rss_mb": 3.5, "busy": 2, "workers": 4}'
    assert P.parse_sample(data) == {
        "load1": 1.0, "cpu_percent": 12.5, "mem_percent": 40.0, "rss_mb": 3.5, "busy": 2, "workers": 4,
    }  # fmt: skip
    assert P.parse_sample(b"{}") == {}


@pytest.mark.parametrize(
    "data",
    [
        b"[]", b"null", NESTED, b'{"load1": "1"}', b'{"load1": null}', b'{"load1": -0.5}', b'{"load1": 1e400}',
        b'{"load1": NaN}', b'{"busy": 1.0}', b'{"busy": true}', b'{"workers": 4294967296}',
        b'{"load1": ' + b"9" * 5000 + b"}", b'{"other": 1}', b'{"load1": 1, "x": "' + b"y" * P.MAX_SAMPLE + b'"}',
    ],
    ids=repr,
)
def test_a_malformed_node_sample_is_refused(data):
    with pytest.raises(P.ProtocolError):
        P.parse_sample(data)


def test_a_worker_lost_event_parses_and_a_malformed_one_is_refused():
    good = {"event": "worker_lost", "task": 7, "worker": 1, "pid": 99, "exit_code": -9, "reason": "killed"}
    assert P.parse_pool_event(json.dumps(good).encode()) == good
    bad = [
        {"event": "pool_lost"}, {**good, "task": -1}, {**good, "task": 1 << 64}, {**good, "task": "7"},
        {**good, "worker": None}, {**good, "pid": True}, {**good, "exit_code": "9"},
        {**good, "exit_code": 1 << 40}, {**good, "reason": 5}, {**good, "reason": "x" * 2000},
    ]  # fmt: skip
    for changes in bad:
        with pytest.raises(P.ProtocolError):
            P.parse_pool_event(json.dumps(changes).encode())
    with pytest.raises(P.ProtocolError):
        P.parse_pool_event(NESTED)


# -- a live executor under attack --------------------------------------------------------------


@pytest.fixture
def htex() -> Iterator[HighThroughputExecutor]:
    before = descendants()
    ex = HighThroughputExecutor(max_workers=1)
    assert ex.submit(pow, 2, 2).result(timeout=30) == 4  # its pool has registered
    yield ex
    ours = descendants() - before
    ex.terminate()
    assert_all_gone(ours)


@contextmanager
def pending_tasks(ex: HighThroughputExecutor) -> Iterator[None]:
    """Hold the only worker and queue tasks behind it; after the block, all must complete."""
    with Gate() as gate:
        held = ex.submit(faults.report_pid_then, gate.wait, os.devnull)
        gate.wait_entered(1, timeout=30)
        queued = [ex.submit(pow, 3, i) for i in range(5)]
        yield
        gate.open()
        assert isinstance(held.result(timeout=30), int)
        assert [f.result(timeout=30) for f in queued] == [3**i for i in range(5)]
    assert ex.submit(pow, 2, 10).result(timeout=30) == 1024
    assert ex._space.interchange.poll() is None, "the interchange died"


def framed(*frames: bytes) -> bytes:
    """One message as the local socket carries it."""
    return b"".join(bytes(v) for v in encode(frames))


def local(ex: HighThroughputExecutor) -> socket.socket:
    """A raw connection to the local pools' socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(ex.endpoints["ipc"][len(SCHEME) :])  # blocking: waits while the backlog is full
    sock.settimeout(5)
    return sock


def token(ex: HighThroughputExecutor) -> bytes:
    return pool_key(ex)["token"].encode()


def registration(ex: HighThroughputExecutor, pool_id: str = "hostile") -> bytes:
    """A valid registration that asks for no task (credit 0)."""
    data = json.dumps(info(pool_id=pool_id, pid=os.getpid())).encode()
    return framed(P.REGISTER, P.CREDIT.pack(0), token(ex), data)


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the interchange closes ``sock`` within ``timeout`` (what it sends is skipped)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            if not sock.recv(1 << 16):
                return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True
    return False


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, unless the interchange has already closed the connection."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def curve_dealer(ctx: zmq.Context, ex: HighThroughputExecutor) -> zmq.Socket:
    """A DEALER holding the pool key, connected to the TCP port: a peer past CurveZMQ."""
    keys = pool_key(ex)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 2000
    sock.sndtimeo = 5000
    sock.curve_publickey = keys["public"].encode()
    sock.curve_secretkey = keys["secret"].encode()
    sock.curve_serverkey = keys["server"].encode()
    sock.connect(ex.endpoints["tcp"].split(",")[0])
    return sock


def tcp_address(ex: HighThroughputExecutor) -> tuple[str, int]:
    host, port = ex.endpoints["tcp"].split(",")[0][len("tcp://") :].rsplit(":", 1)
    assert host in ("127.0.0.1", "localhost")  # loopback only
    return host, int(port)


#: The start of a ZMTP 3 handshake as a CurveZMQ client would send it.
ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x00" + bytes(31)


def test_a_message_of_no_frames_is_dropped(htex):
    with pending_tasks(htex):
        stranger = local(htex)
        stranger.sendall(struct.pack("<I", 0))
        assert closed_by_peer(stranger)
        pool = local(htex)  # a registered pool's connection, too
        pool.sendall(registration(htex))
        pool.sendall(struct.pack("<I", 0))
        assert closed_by_peer(pool)


@pytest.mark.parametrize("transport", ["local", "tcp"])
def test_a_registration_whose_json_is_a_list_is_dropped(htex, transport):
    with pending_tasks(htex):
        attack_json(htex, transport, b"[]")


@pytest.mark.parametrize("transport", ["local", "tcp"])
def test_a_deeply_nested_registration_is_dropped(htex, transport):
    with pending_tasks(htex):
        attack_json(htex, transport, NESTED)
        attack_json(htex, transport, NESTED_IN_FIELD)


def attack_json(ex: HighThroughputExecutor, transport: str, data: bytes) -> None:
    """Register with ``data`` for JSON: in protocol 1's layout, without the token, with it."""
    credit = P.CREDIT.pack(0)
    if transport == "local":
        old_layout, guess = local(ex), local(ex)
        old_layout.sendall(framed(P.REGISTER, credit, data))
        guess.sendall(framed(P.REGISTER, credit, b"guess", data))
        with_token = local(ex)
        with_token.sendall(framed(P.REGISTER, credit, token(ex), data))
        assert closed_by_peer(with_token)  # past the token: its JSON is malformed
        for refused in (old_layout, guess):  # never answered; closed by what they send next
            send_quietly(refused, framed(P.HEARTBEAT, credit))
            assert closed_by_peer(refused)
        return
    ctx = zmq.Context()
    try:
        socks = [curve_dealer(ctx, ex) for _ in range(3)]
        socks[0].send_multipart([P.REGISTER, credit, data])
        socks[1].send_multipart([P.REGISTER, credit, b"guess", data])
        socks[2].send_multipart([P.REGISTER, credit, token(ex), data])
        for sock in socks:
            assert not sock.poll(300), "the interchange answered a malformed registration"
    finally:
        ctx.destroy(linger=0)


def test_a_frame_header_declaring_2_62_bytes_is_dropped(htex):
    huge = struct.pack("<IQ", 1, 1 << 62) + b"x" * 100
    with pending_tasks(htex):
        stranger = local(htex)
        stranger.sendall(huge)
        assert closed_by_peer(stranger)
        stranger = local(htex)
        stranger.sendall(struct.pack("<I", 0xFFFFFFFF))  # 2**32 - 1 frames: a 32 GiB header
        assert closed_by_peer(stranger)
        stranger = local(htex)
        stranger.sendall(struct.pack("<IQ", 1, P.UNREGISTERED_MAX_MESSAGE))  # just above the limit
        assert closed_by_peer(stranger)
        pool = local(htex)  # registered pools have a larger limit, but a limit
        pool.sendall(registration(htex))
        pool.sendall(struct.pack("<IQQ", 2, 1, P.MAX_MESSAGE) + P.RESULTS)
        assert closed_by_peer(pool)
        for frame in (b"\x06", b"\x02"):  # a command, and a message, of 2**62 bytes over TCP
            with socket.create_connection(tcp_address(htex), timeout=5) as raw:
                raw.sendall(ZMTP_GREETING + frame + struct.pack(">Q", 1 << 62) + b"x" * 100)
                assert closed_by_peer(raw)


# -- fuzzing ------------------------------------------------------------------------------------

def malformed_pool_messages(rng: random.Random) -> list[bytes | list[bytes]]:
    """Messages a registered pool must be dropped for: frame lists, or raw bytes that break the framing."""
    credit = P.CREDIT.pack(0)
    meta = P.result_meta(1 << 50, P.OK, 4, 0)
    return [
        [],
        [b"rr", credit],
        [b"?", credit],
        [P.HEARTBEAT],
        [P.HEARTBEAT, b"1234"],
        [P.HEARTBEAT, credit, b"extra"],
        [P.RESULTS, credit, meta],
        [P.RESULTS, credit, meta[:-1], b"abcd"],
        [P.RESULTS, credit, meta, b"abc"],
        [P.RESULTS, credit, meta, b"abcde"],
        [P.RESULTS, credit, meta, b"abcd", b"undeclared frame"],
        [P.RESULTS, credit, P.result_meta(1 << 50, 9, 0, 0), b""],
        [P.RESULTS, credit, P.result_meta(1 << 50, P.OK, 0, 3), b"", b""],
        # node samples on heartbeats, and pool events (protocol 5)
        [P.HEARTBEAT, credit, b"", b"[]"],
        [P.HEARTBEAT, credit, b"", NESTED],
        [P.HEARTBEAT, credit, b"", b'{"load1": "high"}'],
        [P.HEARTBEAT, credit, b"", b'{"load1": -1}'],
        [P.HEARTBEAT, credit, b"", b'{"busy": 1.5}'],
        [P.HEARTBEAT, credit, b"", b'{"workers": true}'],
        [P.HEARTBEAT, credit, b"", b'{"mem_percent": 1e999}'],
        [P.HEARTBEAT, credit, b"", b'{"shell": "rm -rf /"}'],
        [P.HEARTBEAT, credit, b"", b'{"load1": ' + b"1" * 5000 + b"}"],
        [P.HEARTBEAT, credit, b"", rng.randbytes(40)],
        [P.HEARTBEAT, credit, b"", b"{}", b"extra"],
        [P.EVENT, credit],
        [P.EVENT, credit, b'{"event": "pool_lost"}'],
        [P.EVENT, credit, b'{"event": "worker_lost", "task": -1, "worker": 0, "pid": 1, "reason": ""}'],
        [P.EVENT, credit, b'{"event": "worker_lost", "task": 1, "worker": 0, "pid": 1, "reason": 5}'],
        [P.EVENT, credit, b'{"event": "worker_lost", "task": 1, "worker": 0, "pid": 1, "exit_code": "9", "reason": ""}'],
        [P.EVENT, credit, NESTED],
        [P.EVENT, credit, b"{}", b"extra"],
        [P.INIT_FAILED, credit],
        [P.INIT_FAILED, credit, b"[]"],
        [P.INIT_FAILED, credit, NESTED],
        [P.INIT_FAILED, credit, b'{"reason": 5}'],
        [P.INIT_FAILED, credit, rng.randbytes(50)],
        [P.REGISTER, credit, b"t", b"{}"],
        [bytes([rng.choice(b"!#$%&")]), rng.randbytes(rng.randint(0, 16))],
        # breaking the framing itself:
        struct.pack("<IQ", 1, 1 << 62),
        struct.pack("<I", P.MAX_FRAMES + 1),
    ]


def random_bytes(rng: random.Random, token_: bytes) -> bytes:
    """Something an unregistered peer might send on the local socket."""
    kinds = [P.REGISTER, P.RESULTS, P.HEARTBEAT, P.INIT_FAILED, P.SHUTDOWN, P.TASKS, b"\x00"]
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.randint(0, 300))
    if choice == 1:  # a header of random counts and lengths, with some body
        count = rng.choice([0, 1, 3, 17, 1 << 16, 0xFFFFFFFF])
        lengths = [rng.choice([0, 1, 8, 1 << 20, 1 << 40, 1 << 63]) for _ in range(min(count, 4))]
        return struct.pack(f"<I{len(lengths)}Q", count, *lengths) + rng.randbytes(rng.randint(0, 64))
    frames = [rng.choice(kinds)]
    frames += [rng.randbytes(rng.choice([0, 1, 7, 8, 9, 40])) for _ in range(rng.randint(0, 5))]
    if choice == 2:  # a registration of random JSON, maybe with the token
        bodies = [b"[]", b"{}", NESTED[: rng.randint(1, 20_000)], b'{"workers": -1}', rng.randbytes(30)]
        body = rng.choice(bodies)
        frames = [P.REGISTER, P.CREDIT.pack(0), rng.choice([token_, b"", rng.randbytes(64)]), body]
        if rng.random() < 0.3:
            frames = frames[:3] + frames[4:]  # protocol 1's layout
    data = framed(*frames)
    if choice == 3:  # cut short
        data = data[: rng.randint(0, len(data))]
    return data


def test_fuzzing_the_local_socket_stops_nothing(htex):
    rng = random.Random(20240610)
    token_ = token(htex)
    deadline = time.monotonic() + 15
    with pending_tasks(htex):
        for _ in range(200):  # strangers
            assert time.monotonic() < deadline
            with local(htex) as sock:
                for _ in range(rng.randint(1, 3)):
                    send_quietly(sock, random_bytes(rng, token_))
        for i in range(100):  # pools that register, then misbehave
            assert time.monotonic() < deadline
            with local(htex) as sock:
                sock.sendall(registration(htex, pool_id=f"fuzz-{i}"))
                bad = rng.choice(malformed_pool_messages(rng))
                send_quietly(sock, bad if isinstance(bad, bytes) else framed(*bad))
                assert closed_by_peer(sock), f"not dropped after {bad!r}"


def test_fuzzing_the_tcp_port_stops_nothing(htex):
    rng = random.Random(20240611)
    address = tcp_address(htex)
    deadline = time.monotonic() + 15
    credit = P.CREDIT.pack(0)
    with pending_tasks(htex):
        for _ in range(150):  # strangers: raw bytes, never past CurveZMQ
            assert time.monotonic() < deadline
            with socket.create_connection(address, timeout=5) as raw:
                head = ZMTP_GREETING[: rng.randint(0, len(ZMTP_GREETING))] if rng.random() < 0.7 else b""
                tail = rng.choice(
                    [rng.randbytes(rng.randint(0, 200)), b"\x06" + struct.pack(">Q", rng.getrandbits(64))]
                )
                send_quietly(raw, head + tail)
        ctx = zmq.Context()
        try:
            for _ in range(30):  # peers holding the pool key, sending garbage
                assert time.monotonic() < deadline
                sock = curve_dealer(ctx, htex)
                frames = [rng.randbytes(rng.choice([0, 1, 2, 8, 50])) for _ in range(rng.randint(1, 5))]
                if rng.random() < 0.5:
                    frames[0] = P.REGISTER
                if rng.random() < 0.3:
                    frames = [P.REGISTER, credit, rng.choice([b"[]", NESTED, rng.randbytes(20)])]
                sock.send_multipart(frames)
                assert not sock.poll(20), "the interchange answered garbage"
                sock.close(linger=0)
            for i in range(30):  # registered pools that misbehave: dropped and told to stop
                assert time.monotonic() < deadline
                sock = curve_dealer(ctx, htex)
                data = json.dumps(info(pool_id=f"fuzz-{i}", pid=os.getpid())).encode()
                sock.send_multipart([P.REGISTER, credit, token(htex), data])
                assert sock.poll(5000) and sock.recv_multipart()[0] == P.ACCEPT
                bad = rng.choice([m for m in malformed_pool_messages(rng) if isinstance(m, list) and m])
                sock.send_multipart(bad)
                assert wait_for(sock, P.SHUTDOWN), f"not dropped after {bad!r}"
                sock.close(linger=0)
        finally:
            ctx.destroy(linger=0)


def wait_for(sock: zmq.Socket, kind: bytes, timeout: float = 10.0) -> bool:
    """Whether a message of ``kind`` reaches ``sock`` within ``timeout`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        if sock.recv_multipart()[0] == kind:
            return True
        if time.monotonic() >= deadline:
            break
    return False
