"""Tests for hpcfutures/dataflow/staging/ and File parsing, against real servers on loopback."""

from __future__ import annotations

import os
import pickle
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from hpcfutures.dataflow.files import File
from hpcfutures.dataflow.staging import (
    DEFAULT_PROVIDERS,
    FileStaging,
    FTPStaging,
    HTTPStaging,
    RsyncStaging,
    StagingError,
    prepare_outputs,
    provider_for,
    stage_inputs,
    stage_outputs,
)
from hpcfutures.errors import HpcFuturesError

from .conftest import FtpServer, HttpServer, SshServer

CONTENT = b"hello from hpcfutures staging\n" * 100


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rsync(sshd: SshServer) -> RsyncStaging:
    return RsyncStaging(ssh_key=sshd.key, ssh_options=sshd.ssh_options, timeout=60)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- File ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, scheme, host, port, user, path",
    [
        ("data/a.txt", "file", None, None, None, "data/a.txt"),
        ("/abs/a.txt", "file", None, None, None, "/abs/a.txt"),
        ("file:///abs/a.txt", "file", None, None, None, "/abs/a.txt"),
        ("./me@host:a.txt", "file", None, None, None, "./me@host:a.txt"),
        ("http://example.org/d/a.txt", "http", "example.org", None, None, "/d/a.txt"),
        ("https://example.org:8443/a.txt", "https", "example.org", 8443, None, "/a.txt"),
        ("ftp://u:pw@127.0.0.1:2121/d/a.txt", "ftp", "127.0.0.1", 2121, "u", "/d/a.txt"),
        ("rsync://root@host:2222/abs/a.txt", "rsync", "host", 2222, "root", "/abs/a.txt"),
        ("rsync://host/abs/a.txt", "rsync", "host", None, None, "/abs/a.txt"),
        ("root@127.0.0.1:/abs/a.txt", "rsync", "127.0.0.1", None, "root", "/abs/a.txt"),
        ("me@cluster.example.org:rel/a.txt", "rsync", "cluster.example.org", None, "me", "rel/a.txt"),
        ("me@[::1]:/abs/a.txt", "rsync", "::1", None, "me", "/abs/a.txt"),
    ],
)
def test_file_parses_every_form(url, scheme, host, port, user, path):
    f = File(url)
    assert (f.scheme, f.host, f.port, f.username, f.path) == (scheme, host, port, user, path)
    assert f.filename == os.path.basename(path)
    assert f.is_remote == (scheme != "file")
    assert f.local_path is None


def test_scp_form_without_path_is_rejected():
    with pytest.raises(ValueError, match="no path"):
        File("me@host:")


def test_file_equality_hash_and_order_follow_the_url():
    a, same, other = File("http://h/a.txt"), File("http://h/a.txt"), File("http://h/b.txt")
    assert a == same and hash(a) == hash(same) and a != other
    assert sorted([other, a]) == [a, other] and a < other
    assert a != "http://h/a.txt"
    inputs = {a: 1}
    a.local_path = "/work/a.txt"  # staging a File must not lose it in a set or dict
    assert inputs[a] == 1 and a in {same} and a.filepath == os.fspath(a) == "/work/a.txt"
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and copy.local_path == "/work/a.txt"


# --- providers ----------------------------------------------------------------------------


def test_default_providers_cover_file_http_ftp_rsync():
    for url, kind in [
        ("a.txt", FileStaging),
        ("http://h/a", HTTPStaging),
        ("https://h/a", HTTPStaging),
        ("ftp://h/a", FTPStaging),
        ("rsync://h/a", RsyncStaging),
        ("u@h:a", RsyncStaging),
    ]:
        assert isinstance(provider_for(File(url), DEFAULT_PROVIDERS), kind)


def test_unknown_scheme_fails_naming_the_file_and_the_scheme(tmp_path):
    with pytest.raises(StagingError, match=r"s3://bucket/a\.txt: no staging provider handles scheme 's3'"):
        stage_inputs([File("s3://bucket/a.txt")], str(tmp_path))
    with pytest.raises(StagingError, match="scheme 'http'.*known: file"):
        provider_for(File("http://h/a"), [FileStaging()])


def test_staging_error_is_an_hpcfutures_error_and_pickles():
    error = pickle.loads(pickle.dumps(StagingError("ftp://h/a", "boom", direction="out")))
    assert isinstance(error, HpcFuturesError)
    assert (str(error), error.url, error.reason, error.direction) == (
        "cannot stage out ftp://h/a: boom",
        "ftp://h/a",
        "boom",
        "out",
    )


def test_file_stage_in_uses_the_path_in_place(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(CONTENT)
    plain, url = File(str(source)), File(f"file://{source}")
    stage_inputs([plain, url, 42], str(tmp_path / "work"))
    assert plain.filepath == url.filepath == str(source)
    assert not (tmp_path / "work").exists()


# --- HTTP ---------------------------------------------------------------------------------


def test_http_stage_in(http_server: HttpServer, tmp_path):
    (http_server.root / "in.txt").write_bytes(CONTENT)
    f = File(f"{http_server.url}/in.txt")
    stage_inputs([f], str(tmp_path))
    assert f.filepath == os.fspath(f) == str(tmp_path / "in.txt")
    assert Path(f).read_bytes() == CONTENT
    assert _leftovers(tmp_path) == ["in.txt"]


def test_http_404_fails_naming_the_url_and_leaves_nothing(http_server: HttpServer, tmp_path):
    url = f"{http_server.url}/missing.txt"
    with pytest.raises(StagingError, match=f"cannot stage in {url}: HTTP 404") as info:
        stage_inputs([File(url)], str(tmp_path))
    assert info.value.url == url
    assert _leftovers(tmp_path) == []


def test_http_stage_out_to_a_server_without_put_says_so(http_server: HttpServer, tmp_path):
    out = tmp_path / "out.txt"
    out.write_bytes(CONTENT)
    with pytest.raises(StagingError, match="does not accept uploads.*501"):
        HTTPStaging().stage_out(str(out), File(f"{http_server.url}/out.txt"))


def test_unreachable_http_host_fails_with_the_cause(tmp_path):
    url = f"http://127.0.0.1:{_unused_port()}/a.txt"
    with pytest.raises(StagingError, match=f"{url}: cannot reach the server: .*refused"):
        stage_inputs([File(url)], str(tmp_path))
    assert _leftovers(tmp_path) == []


def test_interrupted_download_leaves_no_partial_file(tmp_path):
    """A server that promises more bytes than it sends: the download fails, nothing stays."""

    class Truncating(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(CONTENT) * 10))
            self.end_headers()
            self.wfile.write(CONTENT)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Truncating)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/big.bin"
        with pytest.raises(
            StagingError, match=f"{url}: the server closed the connection after 3000 of 30000"
        ):
            stage_inputs([File(url)], str(tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert _leftovers(tmp_path) == []


# --- FTP ----------------------------------------------------------------------------------


def test_ftp_stage_in_anonymous_and_with_a_user(ftp_server: FtpServer, tmp_path):
    (ftp_server.root / "sub").mkdir(exist_ok=True)
    (ftp_server.root / "sub" / "in.bin").write_bytes(CONTENT)
    anonymous, user = File(f"{ftp_server.anonymous_url}/sub/in.bin"), File(f"{ftp_server.url}/sub/in.bin")
    stage_inputs([anonymous, user], str(tmp_path))
    assert anonymous.filepath == str(tmp_path / "in.bin")
    assert user.filepath == str(tmp_path / "staged-1" / "in.bin")  # same name: its own directory
    assert Path(anonymous).read_bytes() == Path(user).read_bytes() == CONTENT


def test_ftp_stage_out(ftp_server: FtpServer, tmp_path):
    f = File(f"{ftp_server.url}/result.bin")
    prepare_outputs([f], str(tmp_path))
    assert f.filepath == str(tmp_path / "result.bin")
    Path(f).write_bytes(CONTENT)
    stage_outputs([f])
    assert (ftp_server.root / "result.bin").read_bytes() == CONTENT
    Path(f).write_bytes(b"second")  # replacing an existing file works too
    stage_outputs([f])
    assert (ftp_server.root / "result.bin").read_bytes() == b"second"
    assert not [p for p in os.listdir(ftp_server.root) if p.endswith(".part")]


def test_ftp_missing_file_fails_naming_the_url_and_leaves_nothing(ftp_server: FtpServer, tmp_path):
    url = f"{ftp_server.anonymous_url}/missing.bin"
    with pytest.raises(StagingError, match=f"cannot stage in {url}: FTP server replied 550"):
        stage_inputs([File(url)], str(tmp_path))
    assert _leftovers(tmp_path) == []


def test_ftp_anonymous_upload_is_refused_and_the_password_is_hidden(ftp_server: FtpServer, tmp_path):
    out = tmp_path / "x.bin"
    out.write_bytes(CONTENT)
    with pytest.raises(StagingError, match="cannot stage out .*: FTP server replied 550"):
        FTPStaging().stage_out(str(out), File(f"{ftp_server.anonymous_url}/x.bin"))
    with pytest.raises(StagingError) as info:
        FTPStaging().stage_in(File(f"ftp://hpcf:secret@127.0.0.1:{ftp_server.port}/x.bin"), str(tmp_path))
    assert "secret" not in str(info.value) and "hpcf:***@" in str(info.value)


def test_stage_outputs_fails_when_the_task_made_no_file(ftp_server: FtpServer, tmp_path):
    f = File(f"{ftp_server.url}/never.bin")
    prepare_outputs([f], str(tmp_path))
    with pytest.raises(StagingError, match="cannot stage out .*never.bin: the task did not create it"):
        stage_outputs([f])


# --- rsync over ssh -----------------------------------------------------------------------


def test_rsync_stage_in_both_forms(sshd_server: SshServer, rsync_binary: str, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "in.bin").write_bytes(CONTENT)
    url_form = File(f"rsync://root@127.0.0.1:{sshd_server.port}{remote}/in.bin")
    scp_form = File(f"root@127.0.0.1:{remote}/in.bin")
    assert url_form.path == scp_form.path == f"{remote}/in.bin"
    work = tmp_path / "work"
    provider = RsyncStaging(
        ssh_port=sshd_server.port, ssh_key=sshd_server.key, ssh_options=sshd_server.ssh_options
    )
    stage_inputs([url_form, scp_form], str(work), [FileStaging(), provider])
    assert Path(url_form).read_bytes() == Path(scp_form).read_bytes() == CONTENT
    assert _leftovers(work) == ["in.bin", "staged-1"]


def test_rsync_stage_out(sshd_server: SshServer, rsync_binary: str, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    f = File(f"rsync://root@127.0.0.1:{sshd_server.port}{remote}/out.bin")
    prepare_outputs([f], str(tmp_path / "work"))
    Path(f).write_bytes(CONTENT)
    stage_outputs([f], [_rsync(sshd_server)])
    assert (remote / "out.bin").read_bytes() == CONTENT


def test_rsync_missing_file_fails_naming_the_url_and_leaves_nothing(
    sshd_server: SshServer, rsync_binary: str, tmp_path
):
    url = f"rsync://root@127.0.0.1:{sshd_server.port}{tmp_path}/missing.bin"
    work = tmp_path / "work"
    with pytest.raises(StagingError, match=f"cannot stage in {url}: rsync exited with code 23.*No such file"):
        stage_inputs([File(url)], str(work), [_rsync(sshd_server)])
    assert _leftovers(work) == []


def test_rsync_unreachable_host_fails_with_the_cause(sshd_server: SshServer, rsync_binary: str, tmp_path):
    url = f"rsync://root@127.0.0.1:{_unused_port()}/tmp/a.bin"
    with pytest.raises(
        StagingError,
        match=f"cannot stage in {url}: rsync exited with code \\d+: ssh: connect to host .*refused",
    ):
        stage_inputs([File(url)], str(tmp_path), [_rsync(sshd_server)])
    assert _leftovers(tmp_path) == []


def test_rsync_host_key_is_checked(sshd_server: SshServer, rsync_binary: str, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    strict = RsyncStaging(
        ssh_key=sshd_server.key, ssh_options=(f"UserKnownHostsFile={empty}", "StrictHostKeyChecking=yes")
    )
    url = f"rsync://root@127.0.0.1:{sshd_server.port}/etc/hostname"
    with pytest.raises(StagingError, match="Host key verification failed"):
        strict.stage_in(File(url), str(tmp_path / "work"))
