"""File staging inside DataflowExecutor tasks, against real HTTP and FTP servers on loopback."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from hpcfutures import (
    DataflowExecutor,
    DependencyError,
    File,
    HighThroughputExecutor,
    ThreadExecutor,
    python_app,
)
from hpcfutures.dataflow.staging import StagingError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # HTEX workers cannot import this module


def read(path: File) -> str:
    with open(path) as f:  # os.PathLike: the staged local copy
        return f.read()


def shout(source: File, outputs: list[File]) -> str:
    with open(source) as f, open(outputs[0], "w") as out:
        text = f.read().upper()
        out.write(text)
    return os.fspath(outputs[0])


@pytest.fixture(params=["threads", "htex"])
def dfx(request):
    backend = (
        ThreadExecutor(max_workers=2) if request.param == "threads" else HighThroughputExecutor(max_workers=2)
    )
    with DataflowExecutor(backend, shutdown_executors=True) as ex:
        yield ex


def test_a_remote_input_is_staged_in_before_the_task_runs(dfx, http_server, ftp_server):
    (http_server.root / "greeting.txt").write_text("hello over http")
    (ftp_server.root / "data.txt").write_text("hello over ftp")
    assert dfx.submit(read, File(f"{http_server.url}/greeting.txt")).result(timeout=60) == "hello over http"
    assert dfx.submit(read, File(f"{ftp_server.url}/data.txt")).result(timeout=60) == "hello over ftp"


def test_a_remote_output_is_staged_out_after_the_task_succeeds(dfx, http_server, ftp_server):
    (http_server.root / "words.txt").write_text("quiet words")
    shout_app = python_app(shout, executor=dfx)
    future = shout_app(File(f"{http_server.url}/words.txt"), outputs=[File(f"{ftp_server.url}/loud.txt")])
    future.result(timeout=60)
    assert (ftp_server.root / "loud.txt").read_text() == "QUIET WORDS"
    assert future.outputs[0].result(timeout=10).url.endswith("/loud.txt")


def test_failed_staging_names_the_file_and_fails_dependents(dfx, http_server):
    missing = File(f"{http_server.url}/no-such-file.txt")
    first = dfx.submit(read, missing)
    second = dfx.submit(str.upper, first)
    with pytest.raises(StagingError, match="no-such-file.txt"):
        first.result(timeout=60)
    with pytest.raises(DependencyError):
        second.result(timeout=60)


def test_a_task_sees_its_own_copy_of_a_shared_file(dfx, http_server):
    (http_server.root / "shared.txt").write_text("same")
    shared = File(f"{http_server.url}/shared.txt")
    assert [f.result(timeout=60) for f in [dfx.submit(read, shared) for _ in range(3)]] == ["same"] * 3
    assert shared.local_path is None  # the caller's File is never changed by staging
