"""The overlay driver of one host (the flannel/libnetwork model, programmed statically).

Per network on this host: a bridge and a VXLAN device (the network's VNI,
UDP 4789, learning off, ARP answered from the neighbour table), MTU =
underlay MTU - 50. Per task: a network namespace with a veth into the bridge
of each network, the task's IP and MAC, lo up. Remote tasks are programmed
from the manager's peer table as an FDB entry (MAC -> remote VTEP) and a
permanent neighbour entry (IP -> MAC) on the VXLAN device: no flooding, no
learning, no gossip. Every change is idempotent, and `reconcile` removes what
no longer belongs (namespaces, devices, stale entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.overlay import netns
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
NETNS_DIR = "/var/run/netns"
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
ENOENT, EEXIST, ESRCH = 2, 17, 3


def bridge_name(vni: int) -> str:
    return f"sbr-{vni}"


def vxlan_name(vni: int) -> str:
    return f"svx-{vni}"


def veth_name(task_id: str, network_id: str) -> str:
    digest = hashlib.sha256(f"{task_id}/{network_id}".encode()).hexdigest()[:10]
    return f"svh{digest}"


@dataclass(frozen=True)
class Attachment:
    network: pb.Network
    address: str  # CIDR
    mac: str


class OverlayDriver:
    def __init__(self, node_id: str, local_addr: str = "", port: int = VXLAN_PORT) -> None:
        self.node_id = node_id
        self.local_addr = local_addr
        self.port = port
        # Namespaces of this node's tasks: /var/run/netns/<prefix>-<task id>.
        self.netns_prefix = f"shoal-{node_id[:10]}"
        self.networks: dict[str, pb.Network] = {}
        self.attached: dict[str, list[Attachment]] = {}
        self.peers: dict[str, dpb.Endpoint] = {}
        self.underlay_mtu = 1500
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ names

    def netns_name(self, task_id: str) -> str:
        return f"{self.netns_prefix}-{task_id[:16]}"

    def netns_path(self, task_id: str) -> str:
        return f"{NETNS_DIR}/{self.netns_name(task_id)}"

    @property
    def mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD

    # ------------------------------------------------------------ start-up

    async def start(self, manager_addr: str) -> None:
        """Learns the underlay MTU from the interface that reaches the manager."""
        host = manager_addr.rpartition(":")[0].strip("[]")
        async with AsyncIPRoute() as ipr:
            try:
                dst = socket.gethostbyname(host)
                routes = await _all(await ipr.route("get", dst=dst))
                oif = routes[0].get("RTA_OIF") if routes else None
                if oif:
                    links = await _all(await ipr.link("get", index=oif))
                    self.underlay_mtu = int(links[0].get("IFLA_MTU") or 1500)
            except (NetlinkError, OSError, IndexError) as err:
                log.warning("cannot tell the underlay MTU (%s); assuming 1500", err)
        log.info("overlay: underlay MTU %d, overlay MTU %d", self.underlay_mtu, self.mtu)

    def restore(self, task_id: str, attachments: list[Attachment]) -> None:
        """Records a task wired by a previous run of the agent (nothing is touched)."""
        self.attached[task_id] = attachments
        for att in attachments:
            self.networks[att.network.id] = att.network

    async def reconcile(self, keep_tasks: set[str]) -> None:
        """Removes namespaces of tasks this node no longer has, and unused networks."""
        async with self._lock:
            for name in netns.names():
                if not name.startswith(self.netns_prefix + "-"):
                    continue
                if not any(self.netns_name(t) == name for t in keep_tasks):
                    log.info("overlay: removing stale namespace %s", name)
                    with contextlib.suppress(OSError):
                        netns.remove(name)
            await self._collect_networks()

    # ------------------------------------------------------------ networks

    async def _ensure_network(self, ipr: AsyncIPRoute, net: pb.Network) -> int:
        """The network's bridge and VXLAN device; returns the bridge's index."""
        self.networks[net.id] = net
        br, vx = bridge_name(net.vni), vxlan_name(net.vni)
        br_idx = await _lookup(ipr, br)
        if br_idx is None:
            await ipr.link("add", ifname=br, kind="bridge", mtu=self.mtu)
            br_idx = await _lookup(ipr, br)
            assert br_idx is not None
        vx_idx = await _lookup(ipr, vx)
        if vx_idx is None:
            spec: dict[str, Any] = {
                "ifname": vx,
                "kind": "vxlan",
                "vxlan_id": net.vni,
                "vxlan_port": self.port,
                "vxlan_learning": 0,
                # Answer ARP for remote tasks from the neighbour table: no flooding.
                "vxlan_proxy": 1,
                # No outer UDP checksum, as the kernel and iproute2 default (the inner
                # packet has its own): it costs CPU on every packet.
                "vxlan_udp_csum": 0,
                "mtu": self.mtu,
            }
            if self.local_addr:
                spec["vxlan_local"] = self.local_addr
            await ipr.link("add", **spec)
            vx_idx = await _lookup(ipr, vx)
            assert vx_idx is not None
            await ipr.link("set", index=vx_idx, master=br_idx)
            await ipr.link("set", index=vx_idx, state="up")
            await ipr.link("set", index=br_idx, state="up")
            # A fresh device: program what is already known about this network.
            await self._program(ipr, [p for p in self.peers.values() if p.network_id == net.id])
        return br_idx

    async def _collect_networks(self) -> None:
        """Deletes the devices of networks no local task uses any more.

        The networks are those this agent knew and those a link dump shows; each device
        is then looked up by name. A dump alone misses devices: one that runs while other
        links go away (a task namespace just removed takes its veth with it, later, in the
        kernel) may skip entries, and left a VXLAN device behind (the chaos test)."""
        in_use = {a.network.vni for atts in self.attached.values() for a in atts}
        async with AsyncIPRoute() as ipr:
            vnis = {net.vni for net in self.networks.values()}
            for link in await _all(await ipr.link("dump")):
                name = link.get("IFLA_IFNAME") or ""
                if name[:4] in ("svx-", "sbr-") and name[4:].isdigit():
                    vnis.add(int(name[4:]))
            for vni in sorted(vnis - in_use):
                for name in (vxlan_name(vni), bridge_name(vni)):
                    index = await _lookup(ipr, name)
                    if index is None:
                        continue
                    log.info("overlay: removing %s (network no longer used here)", name)
                    with contextlib.suppress(NetlinkError):
                        await ipr.link("del", index=index)

    # ------------------------------------------------------------ tasks

    async def attach(self, task_id: str, attachments: list[Attachment]) -> str:
        """Creates (or finds) the task's namespace wired into each network; returns its path."""
        async with self._lock:
            name = self.netns_name(task_id)
            if name not in netns.names():
                netns.create(name)
            self.attached[task_id] = attachments
            async with AsyncIPRoute() as ipr:
                for i, att in enumerate(attachments):
                    br_idx = await self._ensure_network(ipr, att.network)
                    await self._wire(ipr, task_id, name, i, att, br_idx)
            async with _in_netns(self.netns_path(task_id)) as ns:
                lo = await _lookup(ns, "lo")
                if lo is not None:
                    await ns.link("set", index=lo, state="up")
            return self.netns_path(task_id)

    async def _wire(
        self, ipr: AsyncIPRoute, task_id: str, ns_name: str, i: int, att: Attachment, br_idx: int
    ) -> None:
        host_if = veth_name(task_id, att.network.id)
        peer_tmp = host_if.replace("svh", "svp", 1)
        if await _lookup(ipr, host_if) is not None:
            stray = await _lookup(ipr, peer_tmp)
            if stray is None:
                return  # wired already (agent restart): keep what runs
            # An agent died between making the pair and moving its end into the
            # task's namespace: start over (deleting one end deletes both).
            await ipr.link("del", index=stray)
        await ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": peer_tmp}, mtu=self.mtu)
        host_idx = await _lookup(ipr, host_if)
        peer_idx = await _lookup(ipr, peer_tmp)
        assert host_idx is not None and peer_idx is not None
        await ipr.link("set", index=host_idx, master=br_idx, state="up")
        fd = os.open(self.netns_path(task_id), os.O_RDONLY)
        try:
            await ipr.link("set", index=peer_idx, net_ns_fd=fd)
        finally:
            os.close(fd)
        ip, _, prefix = att.address.partition("/")
        async with _in_netns(self.netns_path(task_id)) as ns:
            idx = await _lookup(ns, peer_tmp)
            assert idx is not None
            await ns.link("set", index=idx, ifname=f"eth{i}", address=att.mac, mtu=self.mtu)
            await ns.addr("add", index=idx, address=ip, prefixlen=int(prefix))
            await ns.link("set", index=idx, state="up")
        log.debug(
            "overlay: task %s on %s as %s", task_id, att.network.spec.annotations.name, att.address
        )

    async def detach(self, task_id: str) -> None:
        """Removes the task's namespace (its veths go with it); drops unused networks."""
        async with self._lock:
            had = self.attached.pop(task_id, None)
            name = self.netns_name(task_id)
            if name in netns.names():
                with contextlib.suppress(OSError):
                    netns.remove(name)
            if had:
                await self._collect_networks()

    # ------------------------------------------------------------ peers

    async def set_peers(self, update: dpb.PeerUpdate) -> None:
        async with self._lock:
            if update.full:
                wanted = {f"{e.network_id}/{e.task_id}": e for e in update.endpoints}
                gone = [ep for key, ep in self.peers.items() if key not in wanted]
                self.peers = wanted
            else:
                gone = [self.peers.pop(k) for k in update.removed if k in self.peers]
                for ep in update.endpoints:
                    old = self.peers.get(f"{ep.network_id}/{ep.task_id}")
                    if old is not None and (old.mac, old.address) != (ep.mac, ep.address):
                        gone.append(old)
                    self.peers[f"{ep.network_id}/{ep.task_id}"] = ep
            async with AsyncIPRoute() as ipr:
                await self._unprogram(ipr, gone)
                await self._program(ipr, list(update.endpoints))
                if update.full:
                    await self._remove_stale(ipr)

    def _remote(self, ep: dpb.Endpoint) -> pb.Network | None:
        if ep.node_id == self.node_id or not ep.vtep or not ep.address:
            return None
        return self.networks.get(ep.network_id)

    async def _program(self, ipr: AsyncIPRoute, endpoints: list[dpb.Endpoint]) -> None:
        for ep in endpoints:
            net = self._remote(ep)
            if net is None:
                continue
            vx = await _lookup(ipr, vxlan_name(net.vni))
            if vx is None:
                continue  # no local task on this network yet: programmed when it comes
            ip = ep.address.partition("/")[0]
            # NTF_SELF: an entry of the VXLAN device itself (MAC -> remote VTEP),
            # not of the bridge it is enslaved to.
            await ipr.fdb(
                "replace",
                ifindex=vx,
                lladdr=ep.mac,
                dst=ep.vtep,
                state=NUD_PERMANENT,
                flags=NTF_SELF,
            )
            await ipr.neigh("replace", ifindex=vx, dst=ip, lladdr=ep.mac, state=NUD_PERMANENT)

    async def _unprogram(self, ipr: AsyncIPRoute, endpoints: list[dpb.Endpoint]) -> None:
        for ep in endpoints:
            net = self.networks.get(ep.network_id)
            if net is None or ep.node_id == self.node_id:
                continue
            vx = await _lookup(ipr, vxlan_name(net.vni))
            if vx is None:
                continue
            ip = ep.address.partition("/")[0]
            with contextlib.suppress(NetlinkError):
                await ipr.neigh("del", ifindex=vx, dst=ip, lladdr=ep.mac)
            with contextlib.suppress(NetlinkError):
                await ipr.fdb("del", ifindex=vx, lladdr=ep.mac, dst=ep.vtep, flags=NTF_SELF)

    async def _remove_stale(self, ipr: AsyncIPRoute) -> None:
        """Deletes FDB and neighbour entries on our VXLAN devices that no peer explains."""
        for net in list(self.networks.values()):
            vx = await _lookup(ipr, vxlan_name(net.vni))
            if vx is None:
                continue
            wanted = [p for p in self.peers.values() if self._remote(p) is net]
            macs = {p.mac.lower() for p in wanted}
            ips = {p.address.partition("/")[0]: p.mac.lower() for p in wanted}
            own_mac = await _mac(ipr, vx)
            for entry in await _all(await ipr.fdb("dump", ifindex=vx)):
                mac = (entry.get("NDA_LLADDR") or "").lower()
                if entry.get("ifindex") != vx or not mac or mac == own_mac:
                    continue
                if mac not in macs or mac == "00:00:00:00:00:00":
                    log.info("overlay: removing stale FDB entry %s on %s", mac, vxlan_name(net.vni))
                    with contextlib.suppress(NetlinkError):
                        await ipr.fdb(
                            "del", ifindex=vx, lladdr=mac, dst=entry.get("NDA_DST"), flags=NTF_SELF
                        )
            for entry in await _all(await ipr.neigh("dump", ifindex=vx)):
                ip = entry.get("NDA_DST")
                if entry.get("ifindex") != vx or not ip:
                    continue
                mac = (entry.get("NDA_LLADDR") or "").lower()
                if ips.get(ip) != mac:
                    log.info("overlay: removing stale neighbour %s on %s", ip, vxlan_name(net.vni))
                    with contextlib.suppress(NetlinkError):
                        await ipr.neigh("del", ifindex=vx, dst=ip, lladdr=mac or None)


def _in_netns(path: str) -> AsyncIPRoute:
    return AsyncIPRoute(fileno=netns.netlink_socket(path).detach())


async def _all(result: Any) -> list[Any]:
    """pyroute2 returns lists for some requests and async generators for dumps."""
    if hasattr(result, "__aiter__"):
        return [x async for x in result]
    return list(result)


async def _lookup(ipr: AsyncIPRoute, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


async def _mac(ipr: AsyncIPRoute, index: int) -> str:
    links = await _all(await ipr.link("get", index=index))
    return str(links[0].get("IFLA_ADDRESS") or "").lower() if links else ""
