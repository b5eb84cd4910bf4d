"""Egress: each task's leg to a per-host gateway bridge, masqueraded to the host's address.

The bridge (`sgw0`, the pool's first address) lives in the host namespace;
each task gets a veth `gw0` with an address from the pool and its default
route through it. Bridge ports are isolated: tasks of different networks on
one host cannot talk over this bridge, only to the host (and out). The same
leg carries published ports to local tasks (the host DNATs to the leg's
address, keeping the client's source). The pool is an agent flag, checked
against the host's routes at start. The bridge and the NAT table go when the
last leg does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.overlay import netns
from shoal.overlay.nft import Nft, fresh_chains

log = logging.getLogger(__name__)

BRIDGE = "sgw0"
TASK_IF = "gw0"
TABLE = "shoal-egress"
DEFAULT_POOL = "172.30.0.0/16"


class EgressError(Exception):
    pass


def leg_name(task_id: str) -> str:
    return "sge" + hashlib.sha256(task_id.encode()).hexdigest()[:10]


async def _all(result: Any) -> list[Any]:
    if hasattr(result, "__aiter__"):
        return [x async for x in result]
    return list(result)


async def check_pool(pool: ipaddress.IPv4Network) -> None:
    """Refuses a pool that overlaps a route of this host (other than our bridge's)."""
    async with AsyncIPRoute() as ipr:
        bridge = await ipr.link_lookup(ifname=BRIDGE)
        for route in await _all(await ipr.route("dump", family=2)):
            dst_len = route["dst_len"]
            dst = route.get("RTA_DST")
            if not dst or dst_len == 0 or route.get("RTA_OIF") in bridge:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{dst_len}", strict=False)
            if net.overlaps(pool) and not net.is_loopback:
                raise EgressError(
                    f"--egress-pool {pool} overlaps this host's route to {net}: pick another pool"
                )


class Egress:
    def __init__(self, pool: str = DEFAULT_POOL) -> None:
        self.pool = ipaddress.IPv4Network(pool)
        self.gateway = str(next(self.pool.hosts()))
        self.addrs: dict[str, str] = {}  # task id -> address on the pool
        self._nft: Nft | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await check_pool(self.pool)

    async def _ensure_host(self, ipr: AsyncIPRoute) -> int:
        found = await ipr.link_lookup(ifname=BRIDGE)
        if not found:
            await ipr.link("add", ifname=BRIDGE, kind="bridge")
            found = await ipr.link_lookup(ifname=BRIDGE)
            idx = int(found[0])
            await ipr.addr("add", index=idx, address=self.gateway, prefixlen=self.pool.prefixlen)
            await ipr.link("set", index=idx, state="up")
        # Per namespace: this is the host's (or, in tests, the netns host's) own setting.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        if self._nft is None:
            self._nft = await asyncio.to_thread(Nft)
            lines = fresh_chains(TABLE, {"post": "type nat hook postrouting priority 100"})
            lines.append(
                f'add rule ip {TABLE} post ip saddr {self.pool} oifname != "{BRIDGE}" masquerade'
            )
            await asyncio.to_thread(self._nft.run, "\n".join(lines) + "\n")
        return int(found[0])

    async def attach(self, task_id: str, path: str) -> str:
        """Wires the task's leg (idempotent); returns its address."""
        async with self._lock:
            if task_id in self.addrs:
                return self.addrs[task_id]
            addr = self._free()
            self.addrs[task_id] = addr
            host_if, tmp = leg_name(task_id), "sgt" + leg_name(task_id)[3:]
            async with AsyncIPRoute() as ipr:
                br = await self._ensure_host(ipr)
                for stale in (host_if, tmp):
                    for idx in await ipr.link_lookup(ifname=stale):
                        await ipr.link("del", index=idx)
                await ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": tmp})
                (h,) = await ipr.link_lookup(ifname=host_if)
                (p,) = await ipr.link_lookup(ifname=tmp)
                await ipr.link("set", index=h, master=br, state="up")
                await ipr.brport("set", index=h, isolated=1)
                fd = os.open(path, os.O_RDONLY)
                try:
                    await ipr.link("set", index=p, net_ns_fd=fd)
                finally:
                    os.close(fd)
            async with AsyncIPRoute(fileno=netns.netlink_socket(path).detach()) as ns:
                (idx,) = await ns.link_lookup(ifname=tmp)
                await ns.link("set", index=idx, ifname=TASK_IF)
                await ns.addr("add", index=idx, address=addr, prefixlen=self.pool.prefixlen)
                await ns.link("set", index=idx, state="up")
                await ns.route("replace", dst="0.0.0.0/0", gateway=self.gateway, oif=idx)
            return addr

    async def restore(self, task_id: str, path: str) -> None:
        """Learns the leg a previous run of the agent made (nothing is changed)."""
        with contextlib.suppress(OSError, NetlinkError, ValueError):
            async with AsyncIPRoute(fileno=netns.netlink_socket(path).detach()) as ns:
                found = await ns.link_lookup(ifname=TASK_IF)
                if found:
                    for a in await _all(await ns.addr("dump", index=found[0])):
                        self.addrs[task_id] = str(a.get("IFA_ADDRESS"))

    def _free(self) -> str:
        used = set(self.addrs.values()) | {self.gateway}
        for host in self.pool.hosts():
            if str(host) not in used:
                return str(host)
        raise EgressError(f"the egress pool {self.pool} is exhausted")

    async def detach(self, task_id: str) -> None:
        """Removes the task's leg; the bridge and NAT table go with the last one."""
        async with self._lock:
            if self.addrs.pop(task_id, None) is None:
                return
            async with AsyncIPRoute() as ipr:
                for idx in await ipr.link_lookup(ifname=leg_name(task_id)):
                    with contextlib.suppress(NetlinkError):
                        await ipr.link("del", index=idx)
                if not self.addrs:
                    await self._remove_host(ipr)

    async def reconcile(self, keep: set[str]) -> None:
        """Drops legs of tasks no longer here (an agent that died mid-way)."""
        wanted = {leg_name(t) for t in keep}
        async with AsyncIPRoute() as ipr:
            for link in await _all(await ipr.link("dump")):
                name = link.get("IFLA_IFNAME") or ""
                if name.startswith(("sge", "sgt")) and "sge" + name[3:] not in wanted:
                    with contextlib.suppress(NetlinkError):
                        await ipr.link("del", index=link["index"])
            if not self.addrs:
                await self._remove_host(ipr)

    async def _remove_host(self, ipr: AsyncIPRoute) -> None:
        bridges = await ipr.link_lookup(ifname=BRIDGE)
        if not bridges and self._nft is None:
            return  # nothing of ours here (the NAT table comes and goes with the bridge)
        for idx in bridges:
            with contextlib.suppress(NetlinkError):
                await ipr.link("del", index=idx)
        nft = self._nft if self._nft is not None else await asyncio.to_thread(Nft)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(nft.run, f"delete table ip {TABLE}\n")
        nft.close()
        self._nft = None
