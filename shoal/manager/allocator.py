"""The allocator: VNIs and subnets for overlay networks, IPs and MACs for tasks.

A network gets a random free VNI (4096..2^24-1: a VNI is not reused at once,
while tasks of a removed network may still be stopping) and either the subnet asked
for or the first free /24 of the default pool. The store's claim keys on VNI
and subnet make two managers allocating at once fail instead of colliding.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from shoal.manager.store import Cache, Kind
from shoal.manager.validation import InvalidSpec
from shoal.proto import objects_pb2 as pb

VNI_MIN = 4096
VNI_MAX = 2**24 - 1
DEFAULT_POOL = ipaddress.IPv4Network("10.0.0.0/8")
DEFAULT_PREFIX = 24


def _subnet(net: pb.Network) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(net.subnet)


def allocate_network(
    net: pb.Network,
    existing: Iterable[pb.Network],
    requested: ipaddress.IPv4Network | None,
    reserved: ipaddress.IPv4Network | None = None,
) -> None:
    """Fills in net.vni, net.subnet and net.gateway, in place (never in `reserved`,
    the services' VIP range)."""
    existing = list(existing)
    used_vnis = {n.vni for n in existing}
    if len(used_vnis) > VNI_MAX - VNI_MIN:
        raise InvalidSpec("no free VNI left")
    vni = secrets.randbelow(VNI_MAX - VNI_MIN + 1) + VNI_MIN
    while vni in used_vnis:
        vni = secrets.randbelow(VNI_MAX - VNI_MIN + 1) + VNI_MIN
    used = [(n, _subnet(n)) for n in existing if n.subnet]
    if reserved is not None and requested is not None and requested.overlaps(reserved):
        raise InvalidSpec(f"subnet {requested} overlaps the services' VIP range {reserved}")
    blocked = [u for _, u in used] + ([reserved] if reserved is not None else [])
    if requested is not None:
        for other, subnet in used:
            if subnet.overlaps(requested):
                raise InvalidSpec(
                    f"subnet {requested} overlaps network {other.spec.annotations.name!r} "
                    f"({subnet})"
                )
        subnet = requested
    else:
        found = next(
            (
                s
                for s in DEFAULT_POOL.subnets(new_prefix=DEFAULT_PREFIX)
                if not any(s.overlaps(u) for u in blocked)
            ),
            None,
        )
        if found is None:
            raise InvalidSpec(f"the default address pool {DEFAULT_POOL} is exhausted")
        subnet = found
    net.vni = vni
    net.subnet = str(subnet)
    net.gateway = str(next(subnet.hosts()))


def random_mac() -> str:
    """A locally administered unicast MAC (02:xx:...)."""
    tail = secrets.token_bytes(5)
    return "02:" + ":".join(f"{b:02x}" for b in tail)


class IPAM:
    """Addresses for tasks on overlay networks.

    Free addresses come from the cache's per-network index plus what this pass
    already handed out; the store's claim keys (`ip/<network>/<ip>`) make a
    concurrent allocation of the same address fail instead of succeed twice.
    """

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._next: dict[str, int] = {}

    def allocate(self, task: pb.Task, taken: dict[str, set[str]]) -> str:
        """Fills in task.networks; returns "" or why it could not (task left unchanged)."""
        attachments: list[pb.NetworkAttachment] = []
        for config in task.spec.networks:
            net: pb.Network | None = self.cache.get(Kind.NETWORK, config.target)
            if net is None:
                return f"network {config.target} not found"
            ip = self._free_ip(net, taken.setdefault(net.id, set()))
            if ip is None:
                return f"no IP address left in {net.spec.annotations.name}"
            prefix = ipaddress.IPv4Network(net.subnet).prefixlen
            attachments.append(
                pb.NetworkAttachment(
                    network_id=net.id, addresses=[f"{ip}/{prefix}"], mac=random_mac()
                )
            )
        for a in attachments:
            taken[a.network_id].add(a.addresses[0].partition("/")[0])
        del task.networks[:]
        task.networks.extend(attachments)
        return ""

    def _free_ip(self, net: pb.Network, taken: set[str]) -> str | None:
        subnet = ipaddress.IPv4Network(net.subnet)
        first = int(subnet.network_address) + 1
        last = int(subnet.broadcast_address) - 1
        size = last - first + 1
        used = self.cache.used_ips(net.id)
        start = self._next.get(net.id, first)
        # Round-robin from where the last allocation stopped: a freed address is
        # not handed out again at once (stale peer entries have time to go).
        for i in range(size):
            n = first + (start - first + i) % size
            ip = str(ipaddress.IPv4Address(n))
            if ip == net.gateway or ip in used or ip in taken:
                continue
            self._next[net.id] = n + 1 if n < last else first
            return ip
        return None
