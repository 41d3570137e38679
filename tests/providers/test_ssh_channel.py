"""SSHChannel against a real sshd on loopback: commands, files, host keys, reconnects, tunnels."""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import threading
import time

import psutil
import pytest
import zmq

from hpcfutures.errors import ConfigurationError
from hpcfutures.providers.channels import ChannelError
from hpcfutures.providers.ssh_channel import SSHAuthenticationError, SSHChannel, SSHHostKeyError
from tests.sshd import generate_key, sshd_fixture

sshd = sshd_fixture()


@pytest.fixture
def channel(sshd):
    ch = SSHChannel(sshd.host, port=sshd.port, username=sshd.user, key_filename=sshd.key, known_hosts=sshd.known_hosts)
    yield ch
    ch.close()


def forward_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hpcfutures-ssh-forward")]


def wait_until(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- commands -----------------------------------------------------------------------------------


def test_run_returns_exit_code_and_both_outputs(channel):
    result = channel.run("echo out-line; echo err-line >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out-line\n", "err-line\n")
    assert not result.ok
    assert channel.run("true").ok


def test_run_passes_env_and_cwd(channel, tmp_path):
    result = channel.run('pwd; printf "%s|" "$GREETING" "$OTHER"', env={"GREETING": "hello 'world' $x", "OTHER": ""},
                         cwd=str(tmp_path))
    assert result.stdout == f"{tmp_path}\nhello 'world' $x||"


def test_channel_env_applies_to_every_command(sshd):
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=sshd.known_hosts,
                    env={"SITE": "cluster $HOME", "WHO": "channel"})
    try:
        assert ch.run('echo "$SITE|$WHO"').stdout == "cluster $HOME|channel\n"
        assert ch.run('echo "$SITE|$WHO"', env={"WHO": "call"}).stdout == "cluster $HOME|call\n"
    finally:
        ch.close()


def test_relative_cwd_is_the_home_directory(channel):
    home = channel.run("cd; pwd").stdout.strip()
    assert channel.run("pwd", cwd="~").stdout.strip() == home


def test_missing_cwd_is_a_channel_error(channel, tmp_path):
    with pytest.raises(ChannelError, match="no directory"):
        channel.run("true", cwd=str(tmp_path / "absent"))


def test_stdin_is_empty(channel):
    assert channel.run("cat; echo end").stdout == "end\n"


def test_timeout_gives_124_and_kills_the_command(channel, tmp_path):
    pids = tmp_path / "pids"
    # 3 s: long enough for the remote shell to start and print on a loaded machine.
    result = channel.run(f"echo $$ > {pids}; sleep 60 & echo $! >> {pids}; echo started; wait", timeout=3.0)
    assert result.returncode == 124
    assert result.stdout == "started\n"
    assert "timed out after 3 s" in result.stderr
    shell, sleeper = (int(p) for p in pids.read_text().split())
    wait_until(lambda: not alive(shell) and not alive(sleeper), "the timed-out command's processes to end")


def test_commands_run_concurrently_on_one_connection(channel):
    results: dict[int, str] = {}

    def work(i):
        results[i] = channel.run(f"sleep 0.2; echo {i}").stdout.strip()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: str(i) for i in range(8)}


def test_reconnects_when_the_connection_dropped(channel, tmp_path):
    assert channel.run("echo one").stdout == "one\n"
    first = channel._transport
    first.close()
    assert channel.run("echo two").stdout == "two\n"
    assert channel._transport is not first and channel._transport.is_active()
    channel._transport.close()
    (tmp_path / "f.txt").write_text("data")
    assert channel.push_file(str(tmp_path / "f.txt"), str(tmp_path / "again")) == str(tmp_path / "again" / "f.txt")


# -- files --------------------------------------------------------------------------------------


def test_push_makes_directories_and_keeps_mode(channel, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o700)
    remote_dir = tmp_path / "remote" / "a" / "b"
    path = channel.push_file(str(script), str(remote_dir))
    assert path == str(remote_dir / "job.sh")
    assert (remote_dir / "job.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(remote_dir).st_mode) == 0o700
    assert [p.name for p in remote_dir.iterdir()] == ["job.sh"]  # no partial file left
    assert channel.run(path).stdout == "hi\n"


def test_push_relative_directory_lands_in_home(channel, tmp_path):
    (tmp_path / "rel.txt").write_text("x")
    home = channel.run("cd; pwd").stdout.strip()
    name = f".hpcf-test-{os.getpid()}"
    try:
        assert channel.push_file(str(tmp_path / "rel.txt"), f"{name}/d") == f"{home}/{name}/d/rel.txt"
        assert channel.push_file(str(tmp_path / "rel.txt"), f"~/{name}/e") == f"{home}/{name}/e/rel.txt"
    finally:
        channel.run(f"rm -rf ~/{name}")


def test_push_of_a_missing_file_fails(channel, tmp_path):
    with pytest.raises(ChannelError, match="no such local file"):
        channel.push_file(str(tmp_path / "absent"), str(tmp_path))


def test_pull_copies_the_file(channel, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "remote.bin").write_bytes(data)
    local = channel.pull_file(str(tmp_path / "remote.bin"), str(tmp_path / "local"))
    assert local == str(tmp_path / "local" / "remote.bin")
    assert (tmp_path / "local" / "remote.bin").read_bytes() == data
    with pytest.raises(ChannelError, match="absent"):
        channel.pull_file(str(tmp_path / "absent"), str(tmp_path / "local"))


def test_makedirs(channel, tmp_path):
    channel.makedirs(str(tmp_path / "x" / "y"))
    assert (tmp_path / "x" / "y").is_dir()
    channel.makedirs(str(tmp_path / "x" / "y"))  # already there: fine


def test_read_tail(channel, tmp_path):
    (tmp_path / "log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert channel.read_tail(str(tmp_path / "log"), 3) == "line 97\nline 98\nline 99"
    assert channel.read_tail(str(tmp_path / "absent")) == ""
    (tmp_path / "long").write_text("x" * 100_000 + "\nlast\n")
    assert channel.read_tail(str(tmp_path / "long")) == "last"  # the cut first line is dropped


# -- host keys and authentication ---------------------------------------------------------------


def test_unknown_host_key_is_refused_with_the_fix(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=empty)
    with pytest.raises(SSHHostKeyError) as info:
        ch.run("true")
    message = str(info.value)
    assert f"[127.0.0.1]:{sshd.port}" in message and "SHA256:" in message
    assert "ssh-keyscan" in message and "host_key_policy='auto-add'" in message
    assert ch._transport is None


def test_default_known_hosts_is_used_when_none_given(sshd, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.ssh: the host is unknown
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key)
    assert ch.known_hosts == str(tmp_path / ".ssh" / "known_hosts")
    with pytest.raises(SSHHostKeyError, match="is not in"):
        ch.connect()


def test_auto_add_trusts_and_records_the_host(sshd, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=known, host_key_policy="auto-add")
    try:
        assert ch.run("echo ok").stdout == "ok\n"
    finally:
        ch.close()
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    strict = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=known)
    try:
        assert strict.run("echo again").stdout == "again\n"
    finally:
        strict.close()


def test_warn_policy_connects_without_recording(sshd, tmp_path, caplog):
    known = tmp_path / "known_hosts"
    known.write_text("")
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=known, host_key_policy="warn")
    try:
        assert ch.run("echo ok").stdout == "ok\n"
    finally:
        ch.close()
    assert known.read_text() == ""
    assert "not in" in caplog.text


def test_changed_host_key_is_refused_even_with_auto_add(sshd, tmp_path):
    other = generate_key(tmp_path / "other_host_key")
    key_type, data = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {data}\n")
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=known, host_key_policy="auto-add")
    with pytest.raises(SSHHostKeyError, match="differs from the one in") as info:
        ch.connect()
    assert "ssh-keygen -R" in str(info.value)


def test_wrong_key_is_refused_clearly(sshd, tmp_path):
    stranger = generate_key(tmp_path / "stranger")
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=stranger, known_hosts=sshd.known_hosts)
    with pytest.raises(SSHAuthenticationError) as info:
        ch.run("true")
    message = str(info.value)
    assert str(stranger) in message and "authorized_keys" in message and sshd.user in message


def test_unreachable_host_is_a_channel_error(sshd, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    ch = SSHChannel("127.0.0.1", port=closed_port, key_filename=sshd.key, known_hosts=sshd.known_hosts,
                    connect_timeout=5)
    with pytest.raises(ChannelError, match="cannot connect"):
        ch.run("true")


# -- connecting while other threads use or close the channel -----------------------------------


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never speaks SSH: a login to it hangs.

    Yields its port and an Event set once a client sent its SSH banner, that is, once the
    client waits for the server's.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    greeted = threading.Event()
    accepted: list[socket.socket] = []

    def serve():
        try:
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                line = b""
                while not line.endswith(b"\n") and (chunk := conn.recv(1)):
                    line += chunk
                if line.startswith(b"SSH-"):
                    greeted.set()
        except OSError:
            pass  # the listener was shut at teardown

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], greeted
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone would not)
    listener.close()
    for conn in accepted:
        conn.close()


def in_thread(target, errors):
    """Start *target* in a daemon thread that appends a ChannelError it raises to *errors*."""
    def call():
        try:
            target()
        except ChannelError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_close_abandons_a_hanging_login_without_waiting_for_it(silent_server, tmp_path):
    port, greeted = silent_server
    known = tmp_path / "known_hosts"
    known.write_text("")
    ch = SSHChannel("127.0.0.1", port=port, known_hosts=known, connect_timeout=60)
    errors: list[ChannelError] = []
    connecting = in_thread(lambda: ch.run("true"), errors)
    assert greeted.wait(30), "the channel never started its SSH handshake"
    closer = in_thread(ch.close, errors)
    closer.join(10)  # far below the 60 s the handshake would wait for the server's banner
    assert not closer.is_alive(), "close() waited for the connection attempt"
    connecting.join(10)
    assert not connecting.is_alive(), "the abandoned connection attempt went on"
    assert len(errors) == 1 and "closed while connecting" in str(errors[0])
    assert ch._transport is None


def test_a_login_that_ends_after_close_is_discarded(sshd, monkeypatch):
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=sshd.known_hosts)
    logged_in, release = threading.Event(), threading.Event()
    transports = []
    open_client = ch._open_client

    def held_open_client(*args):
        client = open_client(*args)
        transports.append(client.get_transport())
        logged_in.set()
        release.wait(60)
        return client

    monkeypatch.setattr(ch, "_open_client", held_open_client)
    errors: list[ChannelError] = []
    connecting = in_thread(ch.connect, errors)
    try:
        assert logged_in.wait(30)
        closer = in_thread(ch.close, errors)
        closer.join(10)
        assert not closer.is_alive(), "close() waited for the connection attempt"
    finally:
        release.set()
    connecting.join(30)
    assert not connecting.is_alive()
    assert len(errors) == 1 and "closed while connecting" in str(errors[0])
    assert ch._transport is None and not transports[0].is_active()  # the late login was closed
    assert ch.run("echo again").stdout == "again\n"  # the channel connects again afterwards
    ch.close()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"hostname": ""}, "hostname"),
        ({"hostname": "a b"}, "hostname"),
        ({"port": 0}, "port"),
        ({"port": "22"}, "port"),
        ({"username": ""}, "username"),
        ({"key_filename": "/nonexistent/key"}, "key_filename"),
        ({"host_key_policy": "accept"}, "host_key_policy"),
        ({"known_hosts": "/nonexistent/known_hosts"}, "known_hosts"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"script_dir": ""}, "script_dir"),
        ({"env": {"A B": "x"}}, "env"),
        ({"env": {"A": 1}}, "env"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    args = {"hostname": "login.example.org", **kwargs}
    hostname = args.pop("hostname")
    with pytest.raises(ConfigurationError, match=name):
        SSHChannel(hostname, **args)


def test_bad_run_arguments(channel):
    with pytest.raises(ConfigurationError, match="command"):
        channel.run("  ")
    with pytest.raises(ConfigurationError, match="timeout"):
        channel.run("true", timeout=0)
    with pytest.raises(ConfigurationError, match="env"):
        channel.run("true", env={"BAD-NAME": "x"})
    with pytest.raises(ConfigurationError, match="remote_port"):
        channel.forward_remote(70000, "127.0.0.1", 80)


# -- tunnels ------------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def open_connections(port):
    """This process's TCP connections to or from *port*, listening sockets excepted."""
    return [
        c for c in psutil.Process().net_connections(kind="tcp")
        if c.status != psutil.CONN_LISTEN and port in (c.laddr.port if c.laddr else None, c.raddr.port if c.raddr else None)
    ]


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # caught in the backlog of a listener that was closing: ask again
        return False
    return False


def test_reverse_forward_reaches_a_local_server_and_tears_down(channel, echo_server):
    port = channel.forward_remote(0, "127.0.0.1", echo_server)
    assert port != echo_server
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.settimeout(10)
            payload = os.urandom(200_000)
            conn.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += conn.recv(65536)
            assert received == payload
    assert channel._forwards[("remote", port)].connections == 2
    channel.cancel_forward(port)
    assert forward_threads() == []
    wait_until(lambda: open_connections(echo_server) == [], "the forwarded connections to close")
    wait_until(lambda: refused(port), "sshd to stop listening on the forwarded port")


def test_reverse_forward_carries_zeromq(channel):
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    req = ctx.socket(zmq.REQ)
    try:
        rep.linger = req.linger = 0
        local_port = rep.bind_to_random_port("tcp://127.0.0.1")
        port = channel.forward_remote(0, "127.0.0.1", local_port)
        req.connect(f"tcp://127.0.0.1:{port}")
        for message in (b"hello", os.urandom(2_000_000), b"bye"):
            req.send(message)
            assert rep.poll(20_000), "the request did not come through the tunnel"
            got = rep.recv()
            rep.send(b"re:" + got)
            assert req.poll(20_000), "the reply did not come back through the tunnel"
            assert req.recv() == b"re:" + message
        assert channel._forwards[("remote", port)].connections == 1
        req.close()
        channel.cancel_forward(port)
        assert forward_threads() == []
        wait_until(lambda: open_connections(local_port) == [], "the tunnelled connection to close")
    finally:
        req.close()
        rep.close()
        ctx.term()


def test_forward_is_restored_after_a_reconnect(channel, echo_server):
    port = channel.forward_remote(0, "127.0.0.1", echo_server)
    channel._transport.close()
    channel.connect()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"ping")
        conn.settimeout(10)
        assert conn.recv(16) == b"ping"


def test_run_and_cancel_forward_go_on_while_forwards_are_restored(channel, echo_server, monkeypatch):
    port = channel.forward_remote(0, "127.0.0.1", echo_server)
    restoring, release = threading.Event(), threading.Event()
    restore = channel._restore_forwards

    def held_restore(*args):
        restoring.set()
        release.wait(60)
        return restore(*args)

    monkeypatch.setattr(channel, "_restore_forwards", held_restore)
    channel._transport.close()
    errors: list[ChannelError] = []
    reconnecting = in_thread(channel.connect, errors)
    try:
        assert restoring.wait(30), "the reconnect did not reach the restore"
        outputs = []
        runner = in_thread(lambda: outputs.append(channel.run("echo meanwhile").stdout), errors)
        canceller = in_thread(lambda: channel.cancel_forward(port), errors)
        runner.join(30)
        canceller.join(30)
        # Both ended while the restore still waits: neither waited for it.
        assert (outputs, canceller.is_alive()) == (["meanwhile\n"], False)
    finally:
        release.set()
    reconnecting.join(30)
    assert not reconnecting.is_alive() and errors == []
    assert channel._forwards == {}
    wait_until(lambda: refused(port), "the cancelled forward to stay closed after the restore")


def test_forward_refused_when_the_port_is_taken(channel):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ChannelError, match="refused to forward"):
            channel.forward_remote(taken.getsockname()[1], "127.0.0.1", 9)


def test_local_forward_reaches_a_server_seen_from_the_host(channel, echo_server):
    port = channel.forward_local(0, "127.0.0.1", echo_server)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.settimeout(10)
        conn.sendall(b"through sshd")
        assert conn.recv(64) == b"through sshd"
    assert channel._forwards[("local", port)].connections == 1
    channel.cancel_local_forward(port)
    assert forward_threads() == []
    wait_until(lambda: refused(port), "the local forward to stop listening")
    wait_until(lambda: open_connections(echo_server) == [], "the forwarded connection to close")


def test_close_stops_forwards_and_the_connection(sshd, echo_server):
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=sshd.known_hosts)
    remote = ch.forward_remote(0, "127.0.0.1", echo_server)
    local = ch.forward_local(0, "127.0.0.1", echo_server)
    conn = socket.create_connection(("127.0.0.1", local), timeout=10)  # left open on purpose
    conn.sendall(b"x")
    conn.settimeout(10)
    assert conn.recv(1) == b"x"
    transport = ch._transport
    ch.close()
    assert forward_threads() == []
    transport.join(10)
    assert not transport.is_alive()
    assert conn.recv(1) == b""  # the forward closed its end
    conn.close()
    wait_until(lambda: refused(remote) and refused(local), "both forwarded ports to close")
    assert ch.run("echo reopened").stdout == "reopened\n"  # a closed channel connects again
    ch.close()


# -- a scheduler provider driven through the channel ----------------------------------------------


def test_cluster_provider_submits_watches_and_cancels_over_ssh(sshd, tmp_path):
    """LSFProvider over SSH: its scripts travel by SFTP, its commands and tails run on the host.

    No LSF server can be installed, so the scheduler is the fake ``bsub``/``bjobs``/``bkill`` of
    tests/providers/fake_schedulers (following recorded real LSF output); what this test checks
    is the channel's part: the same provider code works on a remote host.
    """
    from hpcfutures.providers.base import JobState
    from hpcfutures.providers.lsf import LSFProvider

    from .fake_schedulers import FakeScheduler, wait_status

    fake = FakeScheduler("lsf", tmp_path / "lsf-db")
    ch = SSHChannel(sshd.host, port=sshd.port, key_filename=sshd.key, known_hosts=sshd.known_hosts, env=fake.env)
    provider = LSFProvider(channel=ch, remote_script_dir=str(tmp_path / "remote"))
    provider.script_dir = str(tmp_path / "local")
    try:
        done = provider.submit("echo block-output; echo block-error >&2", 1)
        status = wait_status(provider, done, [JobState.COMPLETED])
        assert (status.exit_code, status.stdout_tail, status.stderr_tail) == (0, "block-output", "block-error")
        assert (tmp_path / "remote" / "hpcfutures.block.1.sh").exists()  # pushed over SFTP

        failed = provider.submit("echo broken >&2; exit 4", 1)
        status = wait_status(provider, failed, [JobState.FAILED])
        assert status.exit_code == 4 and "broken" in status.stderr_tail

        running = provider.submit("sleep 300", 1)
        wait_status(provider, running, [JobState.RUNNING])
        assert provider.cancel([running]) == [True]
        wait_status(provider, running, [JobState.CANCELLED])
        assert [call[0] for call in fake.calls()].count("bsub") == 3
    finally:
        provider.close()
        fake.stop()
