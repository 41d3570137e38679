"""Tests of the framed links of htex: pipes (pool manager to workers, driver to interchange)
and the local pools' stream connection (htex/pipes.py, htex/stream.py)."""

from __future__ import annotations

import os
import random
import select
import signal
import struct
import threading
import time

import pytest

from hpcfutures.executors.htex.pipes import Receiver, Sender, encode, pipe_pair
from hpcfutures.executors.htex.stream import SCHEME, StreamConnection, StreamListener


@pytest.fixture
def pipe():
    read_fd, write_fd = pipe_pair()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def exchange(sender: Sender, receiver: Receiver, messages: list[list[bytes]]) -> list[list[bytes]]:
    """Send every message, reading whenever the pipe is full, until all have arrived."""
    got: list[list[bytes]] = []
    queued = iter(messages)
    while len(got) < len(messages):
        if not sender.pending:
            message = next(queued, None)
            if message is not None:
                sender.send(message)
        else:
            sender.flush()
        got.extend([bytes(f) for f in m] for m in receiver.read())
    return got


def test_messages_of_every_size_arrive_whole_and_in_order(pipe):
    rng = random.Random(7)
    sizes = [0, 1, 100, 65_535, 65_536, 65_537, 300_000, 3_000_000]
    messages = [[rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(1, 4))] for _ in range(120)]
    assert exchange(Sender(pipe[1]), Receiver(pipe[0]), messages) == messages


def test_a_message_the_pipe_cannot_take_waits_in_the_sender_without_blocking(pipe):
    sender, receiver = Sender(pipe[1]), Receiver(pipe[0])
    big = os.urandom(8 << 20)  # larger than any pipe buffer the kernel grants
    assert sender.send([b"t", big]) is True  # returned instead of blocking
    assert sender.send([b"after"]) is True  # queued behind it, order kept
    got = []
    while len(got) < 2:
        got.extend(receiver.read())
        sender.flush()
    assert [bytes(f) for f in got[0]] == [b"t", big]
    assert [bytes(f) for f in got[1]] == [b"after"]
    assert not sender.pending


def test_more_frames_than_one_writev_takes(pipe):
    message = [b"%d" % i for i in range(3000)]
    assert exchange(Sender(pipe[1]), Receiver(pipe[0]), [message]) == [message]


def test_end_of_file_is_reported_once_what_was_written_is_read(pipe):
    read_fd, write_fd = pipe
    receiver = Receiver(read_fd)
    os.writev(write_fd, encode([b"last", b"words"]))
    os.close(write_fd)
    assert [[bytes(f) for f in m] for m in receiver.drain()] == [[b"last", b"words"]]
    assert receiver.closed


def test_a_message_cut_short_by_the_writer_going_is_not_delivered(pipe):
    read_fd, write_fd = pipe
    receiver = Receiver(read_fd)
    header, *frames = encode([os.urandom(200_000)])
    os.write(write_fd, bytes(header) + bytes(frames[0][:1000]))
    os.close(write_fd)
    assert receiver.drain() == []
    assert receiver.closed


def test_a_header_above_the_size_limit_ends_the_link_without_allocating(pipe):
    read_fd, write_fd = pipe
    receiver = Receiver(read_fd, max_message=1 << 16)
    # 2**62 bytes: allocating it would raise MemoryError
    os.write(write_fd, bytes(encode([b"before"])[0]) + b"before" + struct.pack("<IQ", 1, 1 << 62))
    assert [[bytes(f) for f in m] for m in receiver.read()] == [[b"before"]]  # what came first
    assert receiver.closed and receiver.large is None
    assert receiver.error is not None and str((1 << 62) + 12) in receiver.error  # header included
    os.write(write_fd, bytes(encode([b"after"])[0]) + b"after")
    assert receiver.read() == [] and receiver.drain() == []  # nothing more is read


@pytest.mark.parametrize("count", [17, 0xFFFFFFFF])
def test_a_header_of_too_many_frames_ends_the_link_before_its_lengths_are_read(pipe, count):
    read_fd, write_fd = pipe
    receiver = Receiver(read_fd, max_message=1 << 30, max_frames=16)
    os.write(write_fd, struct.pack("<I", count))  # the lengths never come
    assert receiver.read() == []
    assert receiver.closed and "frames" in (receiver.error or "")


def test_a_header_of_frames_whose_lengths_alone_exceed_the_size_limit_ends_the_link(pipe):
    read_fd, write_fd = pipe
    receiver = Receiver(read_fd, max_message=1 << 10)  # room for 127 lengths, not 200
    os.write(write_fd, struct.pack("<I", 200))
    assert receiver.read() == []
    assert receiver.closed and receiver.error is not None


def test_a_message_of_exactly_the_limit_passes_and_the_limit_can_be_raised(pipe):
    read_fd, write_fd = pipe
    body = os.urandom(1000)
    size = sum(v.nbytes for v in encode([b"t", body]))
    receiver = Receiver(read_fd, max_message=size, max_frames=2)
    os.writev(write_fd, encode([b"t", body]))
    assert [[bytes(f) for f in m] for m in receiver.read()] == [[b"t", body]]
    large = os.urandom(200_000)  # read in place, over several calls
    receiver.max_message, receiver.max_frames = 1 << 20, 4
    got = exchange(Sender(write_fd), receiver, [[b"t", large, b"x"]])
    assert got == [[b"t", large, b"x"]] and receiver.error is None


def test_without_limits_a_large_message_passes(pipe):
    assert Receiver(pipe[0]).max_message > 1 << 64
    message = [b"r", os.urandom(3_000_000)]
    assert exchange(Sender(pipe[1]), Receiver(pipe[0]), [message]) == [message]


def test_writing_to_a_pipe_whose_reader_has_gone_raises(pipe):
    read_fd, write_fd = pipe
    os.close(read_fd)
    with pytest.raises(BrokenPipeError):
        Sender(write_fd).send([b"x"])


# -- the local pools' stream connection (htex/stream.py) ----------------------------------------


def test_a_pool_connecting_before_the_interchange_listens_waits_for_it(tmp_path):
    address = f"{SCHEME}{tmp_path}/pools"
    listening = threading.Event()
    accepted: list[StreamConnection] = []

    def listen_later() -> None:
        listening.wait(5)
        listener = StreamListener(address)
        while not accepted:
            select.select([listener], [], [], 5)
            accepted.extend(listener.accept())
        listener.close()

    thread = threading.Thread(target=listen_later)
    thread.start()
    timer = threading.Timer(0.2, listening.set)  # the pool tries first and finds nothing
    timer.start()
    pool = StreamConnection.connect(address, timeout=10)
    thread.join(10)
    (interchange,) = accepted
    pool.send_multipart([b"R", b"hello"])
    assert interchange.poll(5000)
    assert [bytes(f) for f in interchange.recv_multipart()] == [b"R", b"hello"]
    for end in (pool, interchange):
        end.close()


def test_connecting_where_nothing_listens_fails_after_the_timeout(tmp_path):
    with pytest.raises(FileNotFoundError):
        StreamConnection.connect(f"{SCHEME}{tmp_path}/nobody", timeout=0.1)


def test_a_peer_killed_with_data_unread_reads_as_closed(tmp_path):
    # A stopped pool that the interchange kept writing to, then SIGKILLed: its socket resets.
    address = f"{SCHEME}{tmp_path}/pools"
    listener = StreamListener(address)
    child = os.fork()
    if child == 0:  # the "pool": connect, then stop reading and die
        try:
            connection = StreamConnection.connect(address, timeout=10)  # held open until killed
            time.sleep(30)
            connection.close()
        finally:
            os._exit(0)
    select.select([listener], [], [], 10)
    (interchange,) = listener.accept()
    interchange.send_multipart([b"t", b"x" * 100_000])
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    deadline = time.monotonic() + 10
    while not interchange.closed and time.monotonic() < deadline:
        interchange.poll(100)
    assert interchange.closed
    with pytest.raises(ConnectionError):
        interchange.recv_multipart()
    interchange.close()
    listener.close()


def test_the_listener_holds_its_connections_to_its_limits_until_raised(tmp_path):
    address = f"{SCHEME}{tmp_path}/pools"
    listener = StreamListener(address, max_message=1 << 10, max_frames=4)
    pool = StreamConnection.connect(address, timeout=5)
    select.select([listener], [], [], 5)
    (interchange,) = listener.accept()
    pool.send_multipart([b"R", b"x" * 100])
    assert interchange.poll(5000)
    assert [bytes(f) for f in interchange.recv_multipart()] == [b"R", b"x" * 100]
    interchange.limit(1 << 20, 16)  # it has proved who it is
    pool.send_multipart([b"r", b"y" * 100_000])
    assert interchange.poll(5000)
    assert bytes(interchange.recv_multipart()[1]) == b"y" * 100_000
    interchange.limit(1 << 10, 4)
    pool.send_multipart([b"r", b"z" * 2000])
    assert not interchange.poll(2000)
    assert interchange.closed and "bytes" in (interchange.error or "")
    interchange.close()
    assert interchange.fileno() == -1  # a poller's stale event no longer matches it
    for end in (pool, listener):
        end.close()
