"""Workers reaching the interchange through an SSH tunnel (paramiko remote port forwarding),
against a real sshd on loopback: the pool is started over SSH and connects to the SSH host's
end of the tunnel, never to the interchange's own port."""

from __future__ import annotations

from hpcfutures import HighThroughputExecutor
from hpcfutures.providers.ssh import SSHProvider
from tests.sshd import sshd_fixture

sshd = sshd_fixture()


def test_pools_connect_through_the_tunnel(sshd, tmp_path):
    provider = SSHProvider(
        ["127.0.0.1"],
        port=sshd.port,
        username=sshd.user,
        key_filename=sshd.key,
        known_hosts=sshd.known_hosts,
        poll_interval=0.0,
        cancel_grace=1.0,
    )
    ex = HighThroughputExecutor(max_workers=1, provider=provider, tunnel=True, run_dir=tmp_path / "run")
    try:
        assert ex.submit(pow, 2, 10).result(timeout=120) == 1024
        interchange_port = ex._space.pool_port
        tcp = ex.endpoints["tcp"]
        assert tcp.startswith("tcp://127.0.0.1:") and not tcp.endswith(f":{interchange_port}")
        (channel,) = provider.channels
        forwards = list(channel._forwards.values())
        assert len(forwards) == 1 and forwards[0].target_port == interchange_port
        assert forwards[0].connections >= 1  # the pool's connection came through it
        assert sorted(ex.map(abs, range(-5, 0))) == [1, 2, 3, 4, 5]
    finally:
        ex.shutdown()
    assert channel._forwards == {}  # the tunnel is closed with the executor
