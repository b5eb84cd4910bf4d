"""swarmd manager as a real process: crash safety, embedded etcd, two managers, one leader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aetcd import rpc

from shoal.lab.procs import ManagerProcess, control
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Cache, Create, EtcdConnection, Kind, Store
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

from .conftest import Bounds
from .helpers import live, make_node, service_spec, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def shared_store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    """A store on the managers' own key space."""
    s = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    try:
        yield s
    finally:
        await s.close()


async def leader_id(store: Store) -> str | None:
    resp = await store.conn.kv.Range(rpc.RangeRequest(key=store.keys.leader))
    return resp.kvs[0].value.decode() if resp.kvs else None


def test_control_socket_is_root_only(tmp_path: Path, managers: list[ManagerProcess]) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    assert m.socket.stat().st_mode & 0o777 == 0o600


def test_kill_9_and_restart_keeps_everything(
    tmp_path: Path, managers: list[ManagerProcess]
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    c = control(m)
    created = {}
    for name, replicas in (("web", 3), ("db", 1)):
        resp = c.CreateService(api.CreateServiceRequest(spec=service_spec(name, replicas)))
        created[resp.service.service.id] = resp.service.service.meta.version
    net = c.CreateNetwork(
        api.CreateNetworkRequest(
            spec=pb.NetworkSpec(annotations=pb.Annotations(name="front"), driver="overlay")
        )
    ).network
    cluster_id = c.GetCluster(api.GetClusterRequest()).cluster.id
    etcd_pid = int((m.state_dir / "etcd" / "etcd.pid").read_text())

    m.kill()  # between two requests: no clean shutdown at all
    m.start()
    c = control(m)
    services = {
        s.service.id: s.service.meta.version
        for s in c.ListServices(api.ListServicesRequest()).services
    }
    assert services == created
    assert c.GetNetwork(api.GetNetworkRequest(ref="front")).network.vni == net.vni
    assert c.GetCluster(api.GetClusterRequest()).cluster.id == cluster_id
    # The embedded etcd came back as a new child; the old one died with its parent.
    new_pid = int((m.state_dir / "etcd" / "etcd.pid").read_text())
    assert new_pid != etcd_pid
    assert (
        not Path(f"/proc/{etcd_pid}/cmdline").exists()
        or Path(f"/proc/{etcd_pid}/cmdline").read_bytes() == b""
    )
    # And it still takes writes.
    c.CreateService(api.CreateServiceRequest(spec=service_spec("after", 1)))
    assert m.stop() == 0


async def test_two_managers_one_leader_and_takeover(
    tmp_path: Path,
    etcd: EmbeddedEtcd,
    shared_store: Store,
    managers: list[ManagerProcess],
    bounds: Bounds,
) -> None:
    etcd_args = etcd.manager_args()
    m1 = ManagerProcess(tmp_path / "m1", *etcd_args).start()
    managers.append(m1)
    token = control(m1).GetCluster(api.GetClusterRequest()).cluster.join_tokens.manager
    m2 = ManagerProcess(
        tmp_path / "m2",
        *etcd_args,
        "--join-addr",
        m1.addr,
        "--join-token",
        token,
    ).start()
    managers.append(m2)
    await shared_store.batch([Create(make_node(f"n{i}")) for i in range(3)])

    cache = Cache(shared_store)
    await cache.start()
    try:
        first = await leader_id(shared_store)
        assert first in (m1.node_id, m2.node_id)
        svc = (
            control(m2)
            .CreateService(api.CreateServiceRequest(spec=service_spec("web", 12)))
            .service.service
        )
        await until(cache, lambda: sum(1 for t in live(cache, svc.id) if t.node_id) == 12)

        leader, follower = (m1, m2) if first == m1.node_id else (m2, m1)
        killed_at = time.monotonic()
        leader.kill()
        while await leader_id(shared_store) != follower.node_id:
            assert time.monotonic() - killed_at < 60, "no takeover"
            await asyncio.sleep(0.05)  # the test's own poll of the leader key
        bounds.check(time.monotonic() - killed_at, 3 + 1, "takeover (lease TTL 3 s)")

        c = control(follower)
        current = c.GetService(api.GetServiceRequest(ref="web")).service.service
        spec = pb.ServiceSpec()
        spec.CopyFrom(current.spec)
        spec.replicated.replicas = 20
        c.UpdateService(
            api.UpdateServiceRequest(ref="web", version=current.meta.version, spec=spec)
        )
        await until(cache, lambda: sum(1 for t in live(cache, svc.id) if t.node_id) == 20)
        await cache.sync()
        tasks = cache.tasks_of_service(svc.id)
        assert sorted(t.slot for t in tasks) == list(range(1, 21)), "a slot got two tasks"
    finally:
        await cache.stop()


def test_manager_join_with_wrong_token_is_refused(
    tmp_path: Path, etcd: EmbeddedEtcd, managers: list[ManagerProcess]
) -> None:
    etcd_args = etcd.manager_args()
    m1 = ManagerProcess(tmp_path / "m1", *etcd_args).start()
    managers.append(m1)
    worker_token = control(m1).GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
    bad = ManagerProcess(
        tmp_path / "m2",
        *etcd_args,
        "--join-addr",
        m1.addr,
        "--join-token",
        worker_token,
    )
    with pytest.raises(RuntimeError, match="not a current manager token"):
        bad.start()
    assert bad.proc is not None and bad.proc.returncode == 1


async def test_concurrent_ipam_through_two_managers(
    tmp_path: Path, etcd: EmbeddedEtcd, shared_store: Store, managers: list[ManagerProcess]
) -> None:
    etcd_args = etcd.manager_args()
    m1 = ManagerProcess(tmp_path / "m1", *etcd_args).start()
    managers.append(m1)
    m2 = ManagerProcess(tmp_path / "m2", *etcd_args).start()
    managers.append(m2)
    await shared_store.batch([Create(make_node(f"n{i}")) for i in range(4)])
    control(m1).CreateNetwork(
        api.CreateNetworkRequest(
            spec=pb.NetworkSpec(
                annotations=pb.Annotations(name="front"), driver="overlay", subnet="10.60.0.0/22"
            )
        )
    )

    def create(m: ManagerProcess, name: str) -> None:
        spec = service_spec(name, 100)
        spec.task.networks.add(target="front")
        control(m).CreateService(api.CreateServiceRequest(spec=spec))

    await asyncio.gather(asyncio.to_thread(create, m1, "a"), asyncio.to_thread(create, m2, "b"))
    cache = Cache(shared_store)
    await cache.start()
    try:

        def addressed() -> list[str]:
            return [
                a.addresses[0]
                for t in cache.list_objects(Kind.TASK)
                for a in t.networks
                if a.addresses
            ]

        await until(cache, lambda: len(addressed()) == 200, 30)
        assert len(set(addressed())) == 200
    finally:
        await cache.stop()
