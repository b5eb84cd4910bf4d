"""The allocator: VNIs and subnets for overlay networks.

A network gets the lowest free VNI (4096..2^24-1) and either the subnet asked
for or the first free /24 of the default pool. The store's claim keys on VNI
and subnet make two managers allocating at once fail instead of colliding.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

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
) -> None:
    """Fills in net.vni, net.subnet and net.gateway, in place."""
    existing = list(existing)
    used_vnis = {n.vni for n in existing}
    vni = next((v for v in range(VNI_MIN, VNI_MAX + 1) if v not in used_vnis), None)
    if vni is None:
        raise InvalidSpec("no free VNI left")
    used = [(n, _subnet(n)) for n in existing if n.subnet]
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
                if not any(s.overlaps(u) for _, u in used)
            ),
            None,
        )
        if found is None:
            raise InvalidSpec(f"the default address pool {DEFAULT_POOL} is exhausted")
        subnet = found
    net.vni = vni
    net.subnet = str(subnet)
    net.gateway = str(next(subnet.hosts()))
