"""Tests of hpcfutures.tails: the end of a log file as a job status or an error quotes it."""

from __future__ import annotations

import os

import pytest

from hpcfutures.tails import TAIL_BYTES, TAIL_LINES, last_lines, read_tail


def test_it_keeps_the_last_lines(tmp_path):
    path = tmp_path / "out"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_tail(path).splitlines() == [f"line {i}" for i in range(100 - TAIL_LINES, 100)]
    assert read_tail(path, lines=2) == "line 98\nline 99"
    assert read_tail(str(path), lines=None) == "\n".join(f"line {i}" for i in range(100))


def test_it_reads_a_bounded_amount_and_drops_the_line_the_limit_cut(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"x" * 1_000_000 + b"\nlast line\n")
    assert read_tail(path) == "last line"
    path.write_bytes(b"0123456789\nabcdefghij\nend\n")
    assert read_tail(path, lines=None, max_bytes=14) == "end"  # "bcdefghij" was a fragment
    assert read_tail(path, lines=None, max_bytes=15) == "abcdefghij\nend"  # begins a line


def test_a_single_line_longer_than_the_limit_keeps_its_end(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"y" * 1_000_000 + b"z" * 10)
    assert read_tail(path, max_bytes=100) == "y" * 90 + "z" * 10


def test_a_missing_or_unreadable_file_gives_an_empty_tail(tmp_path):
    assert read_tail(tmp_path / "absent") == ""
    assert read_tail(tmp_path) == ""  # a directory
    path = tmp_path / "secret"
    path.write_text("hidden\n")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: the file stays readable")
        assert read_tail(path) == ""
    finally:
        os.chmod(path, 0o600)


def test_undecodable_bytes_are_replaced(tmp_path):
    path = tmp_path / "core"
    path.write_bytes(b"\xff\xfe\x00bad\nok \xe9t\xe9\n")
    tail = read_tail(path)
    assert tail.endswith("ok \ufffdt\ufffd")
    assert tail.startswith("\ufffd\ufffd\x00bad")


def test_blank_lines_at_the_ends_are_dropped_and_indentation_kept(tmp_path):
    path = tmp_path / "err"
    path.write_text("\n\n  File 'x.py', line 1\nValueError: bad   \n\n\n")
    assert read_tail(path) == "  File 'x.py', line 1\nValueError: bad"
    # The blank lines do not count against the line limit.
    assert read_tail(path, lines=1) == "ValueError: bad"


def test_an_empty_file_and_a_blank_file_give_an_empty_tail(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"")
    assert read_tail(path) == ""
    path.write_text("\n \n\t\n")
    assert read_tail(path) == ""


@pytest.mark.parametrize(
    "text, lines, cut, expected",
    [
        ("a\nb\nc\n", 2, False, "b\nc"),
        ("a\nb\nc", None, False, "a\nb\nc"),
        ("tial\nb\nc\n", None, True, "b\nc"),  # the first line was cut by a byte limit
        ("only-a-fragment", None, True, "only-a-fragment"),
        ("a\r\nb\r\n", None, False, "a\nb"),
        ("a\nb\n", 0, False, ""),
    ],
)
def test_last_lines_of_text_read_elsewhere(text, lines, cut, expected):
    assert last_lines(text, lines, cut=cut) == expected


def test_the_default_byte_limit_is_what_remote_tails_are_cut_at():
    # The SSH channel pipes `tail -c TAIL_BYTES` and calls last_lines with cut=True when the
    # output is that long; the two must agree on the number.
    text = "x" * 10 + "\n" + "y" * (TAIL_BYTES - 11)
    assert len(text.encode()) == TAIL_BYTES
    assert last_lines(text, None, cut=len(text.encode()) >= TAIL_BYTES) == "y" * (TAIL_BYTES - 11)
