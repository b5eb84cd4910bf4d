"""The overlay driver of one host (the flannel/libnetwork model, programmed statically).

Per network on this host: a namespace of its own (`<prefix>-n<VNI>`, as
libnetwork does) holding a bridge and a VXLAN device (the network's VNI, UDP
4789, learning off, ARP answered from the neighbour table), MTU = underlay
MTU - 50. The VXLAN device is made in the host's namespace, where its UDP
socket stays, then moved in; per-network settings (the bridge's netfilter
hooks) are that namespace's own and never touch the host's. Per task: a
network namespace with a veth into the bridge of each network, the task's IP
and MAC, lo up. Remote tasks are programmed
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
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.overlay import netns
from shoal.overlay.links import HOST_STRAY, delete_host_links, dump_links
from shoal.overlay.links import all_of as _all
from shoal.overlay.links import lookup as _lookup
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
        # Which network a VNI's namespace serves now: a network removed and made again
        # can get the same VNI while a task of the old one still drains here.
        self.owner: dict[int, str] = {}
        self.underlay_mtu = 1500
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ names

    def netns_name(self, task_id: str) -> str:
        return f"{self.netns_prefix}-{task_id[:16]}"

    def netns_path(self, task_id: str) -> str:
        return f"{NETNS_DIR}/{self.netns_name(task_id)}"

    def network_ns(self, vni: int) -> str:
        """The namespace of a network's bridge and VXLAN device on this host."""
        return f"{self.netns_prefix}-n{vni}"

    def _vni_of_ns(self, name: str) -> int | None:
        tail = name[len(self.netns_prefix) + 2 :]
        if name.startswith(self.netns_prefix + "-n") and tail.isdigit():
            return int(tail)
        return None

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
            self.owner[att.network.vni] = att.network.id

    async def reconcile(self, keep_tasks: set[str]) -> None:
        """Start-up: removes namespaces of tasks this node no longer has, devices a killed
        agent left in the host's namespace, and networks no kept task uses."""
        async with self._lock:
            keep = {self.netns_name(t) for t in keep_tasks}
            for name in netns.names():
                if not name.startswith(self.netns_prefix + "-") or self._vni_of_ns(name):
                    continue
                if name not in keep:
                    log.info("overlay: removing stale namespace %s", name)
                    with contextlib.suppress(OSError):
                        netns.remove(name)
            await self._sweep_host()
            await self._collect_networks()

    async def _sweep_host(self) -> None:
        """Deletes every overlay device in the host's namespace, where none belongs once
        no attach is under way: an agent killed before moving them out (a network's new
        VXLAN device, a task's veth pair: deleting the end left here also deletes the
        end already moved into a network's namespace), or an older version's bridges.
        Found by name in a link dump, and by the VNIs of the networks' namespaces."""
        vnis = {v for v in map(self._vni_of_ns, netns.names()) if v is not None}
        async with AsyncIPRoute() as ipr:
            names = {str(link.get("IFLA_IFNAME") or "") for link in await dump_links(ipr)}
        names |= {f(v) for v in vnis for f in (vxlan_name, bridge_name)}
        await delete_host_links(sorted(n for n in names if HOST_STRAY.fullmatch(n)))

    # ------------------------------------------------------------ networks

    async def _ensure_network(self, ipr: AsyncIPRoute, net: pb.Network) -> None:
        """The network's namespace, bridge and VXLAN device (idempotent)."""
        # A network removed and made again may get the same VNI: the old one's record
        # must not act on the new one's devices (e.g. delete its peers as stale).
        for other in [n for n in self.networks.values() if n.vni == net.vni and n.id != net.id]:
            del self.networks[other.id]
        self.networks[net.id] = net
        ns_name = self.network_ns(net.vni)
        if ns_name not in netns.names():
            netns.create(ns_name)
        path = f"{NETNS_DIR}/{ns_name}"
        br, vx = bridge_name(net.vni), vxlan_name(net.vni)
        async with _in_netns(path) as nsr:
            br_idx = await _lookup(nsr, br)
            if br_idx is None:
                await nsr.link("add", ifname=br, kind="bridge", mtu=self.mtu)
                br_idx = await _lookup(nsr, br)
                assert br_idx is not None
                netns.in_thread(lambda: _no_bridge_netfilter(path))
            if await _lookup(nsr, vx) is not None:
                if self.owner.get(net.vni) != net.id:
                    # The namespace served the VNI's previous network: program ours.
                    self.owner[net.vni] = net.id
                    await self._remove_stale_in(nsr, net)
                    await self._program(nsr, net, self._known(net))
                return
            stray = await _lookup(ipr, vx)  # an agent died between making and moving it
            if stray is not None:
                await ipr.link("del", index=stray)
            await ipr.link("add", **self._vxlan_spec(net))
            vx_host = await _lookup(ipr, vx)
            assert vx_host is not None
            await _move(ipr, vx_host, path)
            vx_idx = await _lookup(nsr, vx)
            assert vx_idx is not None
            await nsr.link("set", index=vx_idx, master=br_idx)
            await nsr.link("set", index=vx_idx, state="up")
            await nsr.link("set", index=br_idx, state="up")
            # A fresh device: program what is already known about this network.
            self.owner[net.vni] = net.id
            await self._program(nsr, net, self._known(net))

    def _known(self, net: pb.Network) -> list[dpb.Endpoint]:
        return [p for p in self.peers.values() if p.network_id == net.id]

    def _vxlan_spec(self, net: pb.Network) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "ifname": vxlan_name(net.vni),
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
        return spec

    def _net_ns(self, net: pb.Network) -> AsyncIPRoute:
        return _in_netns(f"{NETNS_DIR}/{self.network_ns(net.vni)}")

    async def _collect_networks(self) -> None:
        """Deletes the namespaces (and so the devices) of networks no local task uses."""
        in_use = {a.network.vni for atts in self.attached.values() for a in atts}
        self.networks = {i: n for i, n in self.networks.items() if n.vni in in_use}
        self.owner = {v: i for v, i in self.owner.items() if v in in_use}
        collected = []
        for name in netns.names():
            vni = self._vni_of_ns(name)
            if vni is not None and vni not in in_use:
                collected.append(vxlan_name(vni))
                log.info("overlay: removing %s (network no longer used here)", name)
                # The devices first, at once: a namespace is destroyed in the background,
                # and until then its VXLAN device would hold the VNI on the host's UDP
                # socket (a network made again with that VNI could not have it).
                with contextlib.suppress(OSError, NetlinkError):
                    async with _in_netns(f"{NETNS_DIR}/{name}") as nsr:
                        for dev in (vxlan_name(vni), bridge_name(vni)):
                            idx = await _lookup(nsr, dev)
                            if idx is not None:
                                await nsr.link("del", index=idx)
                with contextlib.suppress(OSError):
                    netns.remove(name)
        # A VXLAN device made but not moved in (its attach failed there): by name.
        await delete_host_links(collected)

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
                    await self._ensure_network(ipr, att.network)
                    await self._wire(ipr, task_id, i, att)
            async with _in_netns(self.netns_path(task_id)) as ns:
                lo = await _lookup(ns, "lo")
                if lo is not None:
                    await ns.link("set", index=lo, state="up")
            return self.netns_path(task_id)

    async def _wire(self, ipr: AsyncIPRoute, task_id: str, i: int, att: Attachment) -> None:
        host_if, peer_tmp = _veth_pair(task_id, att.network.id)
        async with self._net_ns(att.network) as nsr:
            moved = await _lookup(nsr, host_if)
            if moved is not None:
                if await self._has_if(task_id, f"eth{i}"):
                    return  # wired already (agent restart): keep what runs
                # An agent died between moving the two ends: start over.
                with contextlib.suppress(NetlinkError):
                    await nsr.link("del", index=moved)
            # An agent that died between making the pair and moving its ends left
            # it here: start over (deleting one end deletes both).
            for stray in (host_if, peer_tmp):
                idx = await _lookup(ipr, stray)
                if idx is not None:
                    with contextlib.suppress(NetlinkError):
                        await ipr.link("del", index=idx)
            await ipr.link(
                "add", ifname=host_if, kind="veth", peer={"ifname": peer_tmp}, mtu=self.mtu
            )
            host_idx = await _lookup(ipr, host_if)
            peer_idx = await _lookup(ipr, peer_tmp)
            assert host_idx is not None and peer_idx is not None
            await _move(ipr, host_idx, f"{NETNS_DIR}/{self.network_ns(att.network.vni)}")
            await _move(ipr, peer_idx, self.netns_path(task_id))
            br_idx = await _lookup(nsr, bridge_name(att.network.vni))
            moved = await _lookup(nsr, host_if)
            assert br_idx is not None and moved is not None
            await nsr.link("set", index=moved, master=br_idx, state="up")
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

    async def _has_if(self, task_id: str, ifname: str) -> bool:
        async with _in_netns(self.netns_path(task_id)) as ns:
            return await _lookup(ns, ifname) is not None

    async def detach(self, task_id: str) -> None:
        """Removes the task's namespace (its veths go with it); drops unused networks."""
        async with self._lock:
            had = self.attached.pop(task_id, None)
            name = self.netns_name(task_id)
            if name in netns.names():
                with contextlib.suppress(OSError):
                    netns.remove(name)
            if had:
                # An attach that failed half-way may have left the pair in the host's.
                await delete_host_links(
                    [n for a in had for n in _veth_pair(task_id, a.network.id)]
                )
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
            changed: dict[str, tuple[list[dpb.Endpoint], list[dpb.Endpoint]]] = {}
            for ep in gone:
                changed.setdefault(ep.network_id, ([], []))[0].append(ep)
            for ep in update.endpoints:
                changed.setdefault(ep.network_id, ([], []))[1].append(ep)
            for net_id, (removed, added) in changed.items():
                net = self.networks.get(net_id)
                if net is None or self.owner.get(net.vni) != net_id:
                    continue  # no local task on this network yet: programmed when it comes
                async with self._net_ns(net) as nsr:
                    await self._unprogram(nsr, net, removed)
                    await self._program(nsr, net, added)
            if update.full:
                await self._remove_stale()

    def _remote(self, ep: dpb.Endpoint) -> pb.Network | None:
        if ep.node_id == self.node_id or not ep.vtep or not ep.address:
            return None
        return self.networks.get(ep.network_id)

    async def _program(
        self, nsr: AsyncIPRoute, net: pb.Network, endpoints: list[dpb.Endpoint]
    ) -> None:
        vx = await _lookup(nsr, vxlan_name(net.vni))
        if vx is None:
            return
        for ep in endpoints:
            if self._remote(ep) is None:
                continue
            ip = ep.address.partition("/")[0]
            # NTF_SELF: an entry of the VXLAN device itself (MAC -> remote VTEP),
            # not of the bridge it is enslaved to.
            await nsr.fdb(
                "replace",
                ifindex=vx,
                lladdr=ep.mac,
                dst=ep.vtep,
                state=NUD_PERMANENT,
                flags=NTF_SELF,
            )
            await nsr.neigh("replace", ifindex=vx, dst=ip, lladdr=ep.mac, state=NUD_PERMANENT)

    async def _unprogram(
        self, nsr: AsyncIPRoute, net: pb.Network, endpoints: list[dpb.Endpoint]
    ) -> None:
        vx = await _lookup(nsr, vxlan_name(net.vni))
        if vx is None:
            return
        for ep in endpoints:
            if ep.node_id == self.node_id:
                continue
            ip = ep.address.partition("/")[0]
            with contextlib.suppress(NetlinkError):
                await nsr.neigh("del", ifindex=vx, dst=ip, lladdr=ep.mac)
            with contextlib.suppress(NetlinkError):
                await nsr.fdb("del", ifindex=vx, lladdr=ep.mac, dst=ep.vtep, flags=NTF_SELF)

    async def _remove_stale(self) -> None:
        """Deletes FDB and neighbour entries on our VXLAN devices that no peer explains."""
        here = netns.names()
        for net in list(self.networks.values()):
            if self.network_ns(net.vni) in here and self.owner.get(net.vni) == net.id:
                async with self._net_ns(net) as nsr:
                    await self._remove_stale_in(nsr, net)

    async def _remove_stale_in(self, ipr: AsyncIPRoute, net: pb.Network) -> None:
        vx = await _lookup(ipr, vxlan_name(net.vni))
        if vx is not None:
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


def _veth_pair(task_id: str, network_id: str) -> tuple[str, str]:
    """A task's veth pair on a network: the end for the network's bridge, and the other
    end's name until it is renamed in the task's namespace."""
    host_if = veth_name(task_id, network_id)
    return host_if, host_if.replace("svh", "svp", 1)


async def _move(ipr: AsyncIPRoute, index: int, path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        await ipr.link("set", index=index, net_ns_fd=fd)
    finally:
        os.close(fd)


def _no_bridge_netfilter(path: str) -> None:
    """Bridged packets skip iptables/nftables in this (the network's) namespace only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        netns.enter(fd)
    finally:
        os.close(fd)
    for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
        # Absent without br_netfilter loaded: then nothing hooks bridged packets anyway.
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/bridge/{key}").write_text("0\n")


def _in_netns(path: str) -> AsyncIPRoute:
    return AsyncIPRoute(fileno=netns.netlink_socket(path).detach())


async def _mac(ipr: AsyncIPRoute, index: int) -> str:
    links = await _all(await ipr.link("get", index=index))
    return str(links[0].get("IFLA_ADDRESS") or "").lower() if links else ""
