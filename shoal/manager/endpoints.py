"""Service endpoints: virtual IPs from the cluster's VIP range, and published ports.

A service gets one VIP per network it is on, from a cluster-wide range that
is kept out of the networks' subnet pool (so VIPs never eat a network's task
addresses and ~65k services fit). A published port given only as a target gets
a free port from 30000-32767, as Swarm does. Both are kept across updates: a
service keeps its VIP on a network it stays on, and its published ports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from shoal import defaults
from shoal.manager.store import Cache, Kind
from shoal.manager.validation import InvalidSpec, check_subnet
from shoal.proto import objects_pb2 as pb

DEFAULT_VIP_RANGE = ipaddress.IPv4Network(defaults.VIP_RANGE)
AUTO_PORTS = range(30000, 32768)
PROTOCOLS = {pb.PortConfig.TCP: "tcp", pb.PortConfig.UDP: "udp"}


def vip_range(cluster: pb.Cluster | None) -> ipaddress.IPv4Network:
    if cluster is not None and cluster.spec.vip_range:
        return ipaddress.IPv4Network(cluster.spec.vip_range)
    return DEFAULT_VIP_RANGE


def check_vip_range(cidr: str, networks: Iterable[pb.Network]) -> None:
    """A VIP range must be an IPv4 subnet (not a reserved one), hold at least 254 VIPs
    and overlap no network's subnet."""
    rng = check_subnet(cidr)
    if rng.prefixlen > 24:
        raise InvalidSpec(f"VIP range {cidr} is too small: use /24 or larger")
    for net in networks:
        if net.subnet and ipaddress.IPv4Network(net.subnet).overlaps(rng):
            raise InvalidSpec(
                f"VIP range {cidr} overlaps network {net.spec.annotations.name!r} ({net.subnet})"
            )


def port_name(port: pb.PortConfig) -> str:
    return f"{port.published_port}/{PROTOCOLS.get(port.protocol, 'tcp')}"


def allocate(service: pb.Service, cache: Cache, cluster: pb.Cluster | None) -> None:
    """Fills in service.endpoint from its spec, in place; InvalidSpec on a clash."""
    others = [s for s in cache.list_objects(Kind.SERVICE) if s.id != service.id]
    old = pb.ServiceEndpoint()
    old.CopyFrom(service.endpoint)
    ep = pb.ServiceEndpoint(mode=service.spec.endpoint_mode)
    ep.ports.extend(_ports(service.spec, old, others))
    if service.spec.endpoint_mode == pb.ENDPOINT_VIP:
        kept = {v.network_id: v.addr for v in old.virtual_ips}
        used = {v.addr for s in others for v in s.endpoint.virtual_ips} | set(kept.values())
        rng = vip_range(cluster)
        hosts = _free_addresses(rng, used)
        for attachment in service.spec.task.networks:
            addr = kept.get(attachment.target)
            if addr is None:
                addr = next(hosts, None)
                if addr is None:
                    raise InvalidSpec(f"the VIP range {rng} is exhausted")
            ep.virtual_ips.add(network_id=attachment.target, addr=addr)
    service.endpoint.CopyFrom(ep)


def _free_addresses(rng: ipaddress.IPv4Network, used: set[str]) -> Iterator[str]:
    for host in rng.hosts():
        text = str(host)
        if text not in used:
            yield text


def _ports(
    spec: pb.ServiceSpec, old: pb.ServiceEndpoint, others: list[pb.Service]
) -> list[pb.PortConfig]:
    """The spec's ports with published ports filled in; refuses ports others publish."""
    # Host-mode ports may repeat across services (each node tells if its own is
    # taken); an ingress port answers on every node, so it clashes with any other.
    taken: dict[tuple[int, int], tuple[str, int]] = {}
    for s in others:
        for p in s.endpoint.ports:
            key = (p.published_port, p.protocol)
            if taken.get(key, ("", pb.PortConfig.HOST))[1] == pb.PortConfig.HOST:
                taken[key] = (s.spec.annotations.name, p.mode)
    explicit: set[tuple[int, int]] = {
        (p.published_port, p.protocol) for p in spec.ports if p.published_port
    }
    previous = {
        (p.target_port, p.protocol, p.mode): p.published_port
        for p in old.ports
        if (p.published_port, p.protocol) not in explicit
    }
    out: list[pb.PortConfig] = []
    for p in spec.ports:
        port = pb.PortConfig()
        port.CopyFrom(p)
        if not port.published_port:
            port.published_port = previous.pop((p.target_port, p.protocol, p.mode), 0)
        if not port.published_port:
            port.published_port = _auto_port(port.protocol, taken, explicit)
        owner, mode = taken.get((port.published_port, port.protocol), ("", 0))
        if owner and pb.PortConfig.INGRESS in (mode, port.mode):
            raise InvalidSpec(f"port {port_name(port)} is already published by service {owner!r}")
        explicit.add((port.published_port, port.protocol))
        out.append(port)
    return out


def _auto_port(
    protocol: int, taken: dict[tuple[int, int], tuple[str, int]], mine: set[tuple[int, int]]
) -> int:
    for candidate in AUTO_PORTS:
        if (candidate, protocol) not in taken and (candidate, protocol) not in mine:
            return candidate
    raise InvalidSpec(f"no free port left in {AUTO_PORTS.start}-{AUTO_PORTS.stop - 1}")
