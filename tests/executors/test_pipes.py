"""Tests of the framed pipe link between a pool manager and its workers (htex/pipes.py)."""

from __future__ import annotations

import os
import random

import pytest

from hpcfutures.executors.htex.pipes import Receiver, Sender, encode, pipe_pair


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


def test_writing_to_a_pipe_whose_reader_has_gone_raises(pipe):
    read_fd, write_fd = pipe
    os.close(read_fd)
    with pytest.raises(BrokenPipeError):
        Sender(write_fd).send([b"x"])
