"""Load balancing of service VIPs inside a task's network namespace (nftables DNAT).

Peers on an overlay talk over L2, with no routed hop to balance on, so the
client's own namespace translates: a connection to VIP goes to one of the
service's serving tasks, picked by `numgen random`; the backend sees the
caller's own address (no SNAT). A VIP without a serving task is refused at
once (not a timeout). Each namespace's rules are replaced as one nftables
transaction; each VIP has a /32 route through the interface of its network,
so the source address is that network's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError

from shoal.overlay import netns
from shoal.overlay.nft import Nft, NftError, fresh_chains

log = logging.getLogger(__name__)

TABLE = "shoal-lb"
NETFILTER = 12  # NETLINK_NETFILTER (conntrack)
RT_PROTO_SHOAL = 188  # marks our routes (any number not used by the kernel or daemons)


@dataclass(frozen=True)
class Vip:
    addr: str
    ifname: str  # the task's interface on the VIP's network
    backends: tuple[str, ...]


def render(vips: list[Vip]) -> str:
    """The namespace's whole LB table as one transaction."""
    lines = fresh_chains(
        TABLE,
        {
            "out": "type nat hook output priority -100",
            "refuse": "type filter hook output priority 0",
        },
    )
    for vip in sorted(vips, key=lambda v: v.addr):
        if not vip.backends:
            lines.append(
                f"add rule ip {TABLE} refuse ip daddr {vip.addr} meta l4proto tcp "
                "reject with tcp reset"
            )
            lines.append(f"add rule ip {TABLE} refuse ip daddr {vip.addr} reject")
            continue
        targets = ", ".join(f"{i} : {ip}" for i, ip in enumerate(vip.backends))
        lines.append(
            f"add rule ip {TABLE} out ip daddr {vip.addr} "
            f"dnat to numgen random mod {len(vip.backends)} map {{ {targets} }}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class TaskLB:
    """What was last applied in one task's namespace."""

    path: str
    nft: Nft
    # None: not applied by this run yet (a previous run's table may be there).
    script: str | None = None
    routes: dict[str, str] = field(default_factory=dict)  # VIP -> ifname
    # Backends this namespace was given and that may still hold its connections.
    backends: set[str] = field(default_factory=set)
    # The namespace's conntrack socket, made at the first flush (pyroute2 takes
    # over the fd only once used: made earlier, an unused one would keep the
    # namespace alive).
    ct: AsyncConntrack | None = None

    @classmethod
    async def open(cls, path: str) -> TaskLB:
        return cls(path, await asyncio.to_thread(Nft, path))

    async def apply(self, vips: list[Vip], alive: set[str]) -> None:
        """Programs the namespace for these VIPs. Connections to a backend that left are
        flushed once it is gone from `alive` (every known endpoint): one that only
        stopped serving (draining) keeps its in-flight connections."""
        # No VIP to balance, no table: without a NAT hook the namespace does no
        # connection tracking at all (it costs every packet).
        script = render(vips) if vips else ""
        if script != self.script:
            if script:
                await asyncio.to_thread(self.nft.run, script)
                if not self.script:
                    netns.in_thread(lambda: _no_conntrack_checksums(self.path))
            else:
                with contextlib.suppress(NftError):
                    await asyncio.to_thread(self.nft.run, f"delete table ip {TABLE}\n")
            self.script = script
        routes = {v.addr: v.ifname for v in vips}
        if routes != self.routes:
            await self._routes(routes)
            self.routes = routes
        self.backends |= {b for v in vips for b in v.backends}
        dead = self.backends - alive
        self.backends -= dead
        if dead:
            if self.ct is None:
                self.ct = _conntrack(self.path)
            await flush_conntrack(self.ct, dead)

    async def _routes(self, wanted: dict[str, str]) -> None:
        async with AsyncIPRoute(fileno=netns.netlink_socket(self.path).detach()) as ipr:
            index: dict[str, int] = {}
            for name in set(wanted.values()):
                found = await ipr.link_lookup(ifname=name)
                if found:
                    index[name] = int(found[0])
            for addr, ifname in self.routes.items():
                if wanted.get(addr) != ifname:
                    with contextlib.suppress(NetlinkError):
                        await ipr.route("del", dst=f"{addr}/32")
            for addr, ifname in wanted.items():
                if self.routes.get(addr) == ifname or ifname not in index:
                    continue
                await ipr.route(
                    "replace", dst=f"{addr}/32", oif=index[ifname], proto=RT_PROTO_SHOAL
                )

    def close(self) -> None:
        self.nft.close()
        if self.ct is not None:
            self.ct.close()


def _no_conntrack_checksums(path: str) -> None:
    """Conntrack in this namespace trusts checksums instead of computing them in software
    for every packet (decapsulated VXLAN traffic has none checked: it would cost most of
    the overlay's throughput). This namespace's own setting."""
    fd = os.open(path, os.O_RDONLY)
    try:
        netns.enter(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        Path("/proc/sys/net/netfilter/nf_conntrack_checksum").write_text("0\n")


def _conntrack(path: str) -> AsyncConntrack:
    sock = netns.socket_in(path, socket.AF_NETLINK, socket.SOCK_DGRAM, NETFILTER)
    return AsyncConntrack(fileno=sock.detach())


async def flush_conntrack(ct: AsyncConntrack, addrs: set[str]) -> int:
    """Drops a namespace's connections to these (gone) backends, so clients fail fast
    instead of waiting out a dead peer; returns how many went."""
    doomed = [e async for e in await ct.dump_entries() if e.tuple_reply.saddr in addrs]
    deleted = 0
    for entry in doomed:
        with contextlib.suppress(NetlinkError):
            await ct.delete(entry)
            deleted += 1
    return deleted
