"""Service networking without a cluster: VIP and port allocation, the rules rendered
for nftables, the resolver's answers, the CLI's --publish forms."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from dnslib import RCODE, DNSRecord
from google.protobuf import json_format

from shoal.manager import allocator, endpoints
from shoal.manager.store import Kind
from shoal.manager.validation import InvalidSpec
from shoal.overlay import lb, publish
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import parse
from shoal.worker import resolver
from shoal.worker.resolver import Resolver


class Services:
    """What allocate() reads from the cache: the other services."""

    def __init__(self) -> None:
        self.services: list[pb.Service] = []

    def list_objects(self, kind: Kind) -> list[Any]:
        assert kind == Kind.SERVICE
        return self.services


def service(name: str, nets: list[str], ports: list[pb.PortConfig] | None = None) -> pb.Service:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    for n in nets:
        spec.task.networks.add(target=n)
    spec.ports.extend(ports or [])
    return pb.Service(id=f"id-{name}", spec=spec)


def allocate(cache: Services, svc: pb.Service, cluster: pb.Cluster | None = None) -> pb.Service:
    endpoints.allocate(svc, cache, cluster)  # type: ignore[arg-type]
    cache.services = [s for s in cache.services if s.id != svc.id] + [svc]
    return svc


def test_vips_per_network_distinct_and_kept_across_updates() -> None:
    cache = Services()
    a = allocate(cache, service("a", ["n1", "n2"]))
    b = allocate(cache, service("b", ["n1"]))
    vips = [v.addr for s in (a, b) for v in s.endpoint.virtual_ips]
    assert len(set(vips)) == 3
    assert all(ipaddress.ip_address(v) in endpoints.DEFAULT_VIP_RANGE for v in vips)
    first = {v.network_id: v.addr for v in a.endpoint.virtual_ips}
    del a.spec.task.networks[1]
    a.spec.task.networks.add(target="n3")
    allocate(cache, a)
    again = {v.network_id: v.addr for v in a.endpoint.virtual_ips}
    assert again["n1"] == first["n1"] and "n2" not in again and again["n3"] not in vips
    # dnsrr: no VIP at all.
    c = service("c", ["n1"])
    c.spec.endpoint_mode = pb.ENDPOINT_DNSRR
    assert not allocate(cache, c).endpoint.virtual_ips


def test_vip_range_from_the_cluster_and_its_checks() -> None:
    cluster = pb.Cluster(spec=pb.ClusterSpec(vip_range="10.254.0.0/24"))
    svc = allocate(Services(), service("a", ["n1"]), cluster)
    assert svc.endpoint.virtual_ips[0].addr == "10.254.0.1"
    net = pb.Network(spec=pb.NetworkSpec(annotations=pb.Annotations(name="front")))
    net.subnet = "10.254.0.0/24"
    with pytest.raises(InvalidSpec, match="overlaps network 'front'"):
        endpoints.check_vip_range("10.254.0.0/16", [net])
    with pytest.raises(InvalidSpec, match="too small"):
        endpoints.check_vip_range("10.9.0.0/28", [])


def test_network_subnets_stay_out_of_the_vip_range() -> None:
    reserved = endpoints.DEFAULT_VIP_RANGE
    nets: list[pb.Network] = []
    for _ in range(3):
        n = pb.Network()
        allocator.allocate_network(n, nets, None, reserved=reserved)
        assert not ipaddress.IPv4Network(n.subnet).overlaps(reserved)
        nets.append(n)
    with pytest.raises(InvalidSpec, match="VIP range"):
        allocator.allocate_network(
            pb.Network(), nets, ipaddress.IPv4Network("10.255.3.0/24"), reserved=reserved
        )


def port(published: int, target: int, mode: int = pb.PortConfig.INGRESS) -> pb.PortConfig:
    return pb.PortConfig(published_port=published, target_port=target, mode=mode)  # type: ignore[arg-type]


def test_published_ports_auto_clash_and_host_mode() -> None:
    cache = Services()
    web = allocate(cache, service("web", [], [port(8080, 80), port(0, 81)]))
    assert [p.published_port for p in web.endpoint.ports] == [8080, 30000]
    # Kept on update, not picked again.
    allocate(cache, web)
    assert [p.published_port for p in web.endpoint.ports] == [8080, 30000]
    other = allocate(cache, service("other", [], [port(0, 80)]))
    assert other.endpoint.ports[0].published_port == 30001
    with pytest.raises(InvalidSpec, match=r"port 8080/tcp is already published by service 'web'"):
        allocate(cache, service("clash", [], [port(8080, 90)]))
    with pytest.raises(InvalidSpec, match="8080/tcp"):
        allocate(cache, service("clash", [], [port(8080, 90, pb.PortConfig.HOST)]))
    allocate(cache, service("h1", [], [port(9000, 90, pb.PortConfig.HOST)]))
    allocate(cache, service("h2", [], [port(9000, 90, pb.PortConfig.HOST)]))


def test_lb_rules_balance_or_refuse() -> None:
    script = lb.render(
        [lb.Vip("10.255.0.2", "eth0", ("10.0.0.3", "10.0.0.4")), lb.Vip("10.255.0.3", "eth0", ())]
    )
    assert (
        "ip daddr 10.255.0.2 dnat to numgen random mod 2 map { 0 : 10.0.0.3, 1 : 10.0.0.4 }"
        in script
    )
    assert "ip daddr 10.255.0.3 meta l4proto tcp reject with tcp reset" in script
    assert script.index("flush chain ip shoal-lb out") < script.index("add rule")


def test_published_rules_local_keep_source_remote_masquerade() -> None:
    script = publish.render(
        [
            publish.Published("tcp", 8080, (("172.30.0.2", 80),), ()),
            publish.Published("udp", 5353, (), ("172.29.1.11",)),
        ]
    )
    local = next(line for line in script.splitlines() if "dport 8080" in line)
    assert "dnat ip to numgen random mod 1 map { 0 : 172.30.0.2 . 80 }" in local
    assert "mark" not in local
    remote = next(line for line in script.splitlines() if "dport 5353" in line)
    assert "udp dport 5353 meta mark set 0x5348" in remote and "172.29.1.11 . 5353" in remote
    assert "meta mark 0x5348 masquerade" in script


def ask(r: Resolver, name: str) -> DNSRecord | None:
    return r.local("t1", DNSRecord.question(name, "A"))


def test_resolver_answers_names_tasks_nxdomain_and_forwards() -> None:
    r = Resolver(["192.0.2.53"])
    r.tasks["t1"] = resolver._Task()
    r.set_names("t1", {"web": ["10.255.0.2"], "tasks.web": ["10.0.0.3", "10.0.0.4"]}, set())
    reply = ask(r, "Web.")
    assert reply is not None and [str(x.rdata) for x in reply.rr] == ["10.255.0.2"]
    assert reply.rr[0].ttl <= 5
    reply = ask(r, "tasks.web")
    assert reply is not None and sorted(str(x.rdata) for x in reply.rr) == ["10.0.0.3", "10.0.0.4"]
    for unknown in ("nosuch", "tasks.nosuch"):
        reply = ask(r, unknown)
        assert reply is not None and reply.header.rcode == RCODE.NXDOMAIN
    assert ask(r, "example.org") is None  # forwarded
    aaaa = r.local("t1", DNSRecord.question("web", "AAAA"))
    assert aaaa is not None and aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr


def test_publish_flag_forms() -> None:
    p = json_format.ParseDict(
        parse.port("published=8080,target=80,protocol=udp,mode=host"), pb.PortConfig()
    )
    assert (p.published_port, p.target_port, p.protocol, p.mode) == (
        8080,
        80,
        pb.PortConfig.UDP,
        pb.PortConfig.HOST,
    )
    auto = json_format.ParseDict(parse.port("target=80"), pb.PortConfig())
    assert auto.published_port == 0 and auto.mode == pb.PortConfig.INGRESS
    for bad in ("target=0", "published=8080", "target=80,mode=mesh", "target=80,foo=1"):
        with pytest.raises(ValueError, match="invalid port"):
            parse.port(bad)


class Objects:
    """What the service table reads from the cache: services, nodes (and tasks)."""

    def __init__(self, *objects: Any) -> None:
        self.by_kind: dict[Kind, dict[str, Any]] = {Kind.SERVICE: {}, Kind.NODE: {}, Kind.TASK: {}}
        for o in objects:
            kind = {pb.Service: Kind.SERVICE, pb.Node: Kind.NODE, pb.Task: Kind.TASK}[type(o)]
            self.by_kind[kind][o.id] = o

    def get(self, kind: Kind, object_id: str) -> Any:
        return self.by_kind[kind].get(object_id)

    def list_objects(self, kind: Kind) -> list[Any]:
        return list(self.by_kind[kind].values())


def running(task_id: str, service_id: str, node_id: str, **status: Any) -> pb.Task:
    t = pb.Task(id=task_id, service_id=service_id, node_id=node_id, desired_state=pb.RUNNING)
    t.status.state = pb.RUNNING
    for key, value in status.items():
        setattr(t.status, key, value)
    return t


def test_service_table_sends_serving_nodes_only_for_ingress_ports() -> None:
    from shoal.manager.servicetable import ServiceTable
    from shoal.manager.store import Change

    web = service("web", ["n1"], [port(8080, 80)])
    web.endpoint.ports.extend(web.spec.ports)
    plain = service("plain", ["n1"])
    node = pb.Node(id="node1")
    node.status.addr = "172.29.0.11"
    cache = Objects(web, plain, node)
    table = ServiceTable(cache)  # type: ignore[arg-type]
    table.rebuild()
    assert {r.name: list(r.serving_nodes) for r in table.full().services} == {
        "web": [],
        "plain": [],
    }
    changes = [
        Change(Kind.TASK, "t1", running("t1", web.id, "node1")),
        Change(Kind.TASK, "t2", running("t2", plain.id, "node1")),
        # Unhealthy: not serving, so not counted.
        Change(Kind.TASK, "t3", running("t3", web.id, "node2", health=pb.HEALTH_UNHEALTHY)),
    ]
    update = table.apply(changes)
    assert update is not None
    assert [(r.name, list(r.serving_nodes)) for r in update.services] == [("web", ["172.29.0.11"])]
    # A second serving task on the same node changes nothing: nothing is sent.
    assert table.apply([Change(Kind.TASK, "t4", running("t4", web.id, "node1"))]) is None


def test_service_table_sends_no_record_no_agent_can_use() -> None:
    """A service on no network with no published port: no agent resolves or forwards
    it, so its record is not sent (one gRPC message per node per service created);
    a record that becomes unusable is removed from the agents, and one that becomes
    usable is sent."""
    from shoal.manager.servicetable import ServiceTable
    from shoal.manager.store import Change

    bare, web = service("bare", []), service("web", ["n1"])
    cache = Objects(bare, web)
    table = ServiceTable(cache)  # type: ignore[arg-type]
    table.rebuild()
    assert [r.name for r in table.full().services] == ["web"]
    other = service("other", [])
    cache.by_kind[Kind.SERVICE][other.id] = other
    assert table.apply([Change(Kind.SERVICE, other.id, other)]) is None
    # Tasks of it running change nothing either.
    assert table.apply([Change(Kind.TASK, "t1", running("t1", other.id, "node1"))]) is None
    # It publishes a port: now every agent needs it.
    published = service("other", [], [port(8080, 80)])
    published.endpoint.ports.extend(published.spec.ports)
    cache.by_kind[Kind.SERVICE][other.id] = published
    update = table.apply([Change(Kind.SERVICE, other.id, published)])
    assert update is not None and [r.name for r in update.services] == ["other"]
    # Back to nothing published: the agents drop it.
    cache.by_kind[Kind.SERVICE][other.id] = other
    update = table.apply([Change(Kind.SERVICE, other.id, other)])
    assert update is not None and list(update.removed) == [other.id] and not update.services
    # Removed while unusable: nothing to tell; a usable one's removal is told.
    del cache.by_kind[Kind.SERVICE][other.id]
    del cache.by_kind[Kind.SERVICE][web.id]
    assert table.apply([Change(Kind.SERVICE, other.id, None)]) is None
    update = table.apply([Change(Kind.SERVICE, web.id, None)])
    assert update is not None and list(update.removed) == [web.id]
