"""A manager's etcd client on a 3-member etcd cluster over TLS (found by the chaos test:
with several https:// endpoints every call failed hostname verification, since one gRPC
channel over an address list checks every member against the whole list).

The members run on three netns hosts (shoal.lab.etcd.etcd_cluster); the client runs
on the first host, where the underlay is reachable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shoal.lab.etcd import etcd_cluster
from shoal.lab.hosts import Hosts

pytestmark = pytest.mark.integration

# Reads through the store until one succeeds (at most 3 tries: the first may find the
# current member dead and move on); prints the tries it took.
CLIENT = """
import asyncio, sys
from pathlib import Path
from shoal.manager.store import EtcdConnection, Keys, NotFound, Store, Kind
from shoal.manager.store.etcd import EtcdTLS

async def main() -> None:
    pki = Path(sys.argv[1])
    tls = EtcdTLS(pki / "ca.crt", pki / "client.crt", pki / "client.key")
    store = Store(EtcdConnection(sys.argv[2].split(","), tls), Keys("/t"))
    for tries in range(1, 4):
        try:
            await store.get(Kind.NODE, "none")
        except NotFound:
            print(tries)
            return
        except Exception as err:
            print(repr(err)[:200], file=sys.stderr)
    sys.exit("no read succeeded")

asyncio.run(main())
"""


def test_store_on_a_tls_etcd_cluster_and_a_dead_member(root: None, tmp_path: Path) -> None:
    with Hosts(3) as hosts:
        members = etcd_cluster(hosts.hosts, tmp_path / "etcd")
        eps = ",".join(m.endpoint.removeprefix("https://") for m in members)
        pki = str(tmp_path / "etcd" / "pki")

        def read() -> str:
            out = hosts[0].run(sys.executable, "-c", CLIENT, pki, eps, check=False, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        assert read() == "1"
        # The first member (the one a client starts on) is gone: the client moves on (a
        # third try if the second member had no leader yet).
        assert members[0].proc is not None
        members[0].proc.kill()
        members[0].proc.wait()
        assert read() in ("1", "2", "3")
