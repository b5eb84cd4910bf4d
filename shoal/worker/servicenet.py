"""Service networking on one host: names, VIP load balancing, egress, published ports.

Fed by the manager's service table (names, VIPs, ports, nodes with serving
tasks) and peer table (every task's address on the networks this host's
tasks use, with its service and whether it serves), it keeps, for each local
task, the resolver's names and the namespace's load balancer, and for the
host the published-port table. Changes are coalesced: one pass over all
local tasks applies each namespace's changes as one nftables transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.aiotasks import cancel_and_wait
from shoal.overlay.driver import OverlayDriver
from shoal.overlay.egress import Egress
from shoal.overlay.lb import TaskLB, Vip
from shoal.overlay.publish import HostPorts, Published, port_in_use
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker.resolver import Resolver

log = logging.getLogger(__name__)

PROTOCOL = {pb.PortConfig.TCP: "tcp", pb.PortConfig.UDP: "udp"}

# (task id, error or "") -> reported on the task (a published port taken on this host)
Notify = Callable[[str, str], None]


@dataclass
class LocalTask:
    task: pb.Task
    path: str
    ifnames: dict[str, str]  # network id -> interface in the task's namespace
    lb: TaskLB
    egress: str = ""  # address on the host's gateway bridge ("" for internal-only tasks)


@dataclass
class _Index:
    """Serving addresses per (service, network), from the peer table."""

    backends: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    # Every endpoint's address, serving or not (a draining one keeps its connections).
    alive: set[str] = field(default_factory=set)


def _serving(task: pb.Task) -> bool:
    return (
        task.desired_state == pb.RUNNING
        and task.status.state == pb.RUNNING
        and task.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)
    )


class ServiceNet:
    def __init__(
        self,
        overlay: OverlayDriver,
        egress: Egress | None,
        resolver: Resolver,
        notify: Notify,
        current: Callable[[str], pb.Task | None],
        state_dir: Path | None = None,
    ) -> None:
        self.overlay = overlay
        self.current = current
        self.egress = egress
        self.resolver = resolver
        self.notify = notify
        self.records: dict[str, dpb.ServiceRecord] = {}
        self.tasks: dict[str, LocalTask] = {}
        self.ports = HostPorts(state_dir / "published-ports" if state_dir is not None else None)
        self._dirty = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._port_errors: dict[str, str] = {}

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="servicenet")

    async def close(self) -> None:
        """Agent shutdown: rules stay in the kernel (published ports keep answering)."""
        await cancel_and_wait([self._loop])
        self.resolver.close()
        for t in self.tasks.values():
            t.lb.close()
        self.ports.close()

    # ------------------------------------------------------------ inputs

    def services(self, update: dpb.ServiceUpdate) -> None:
        if update.full:
            self.records = {}
        for service_id in update.removed:
            self.records.pop(service_id, None)
        for record in update.services:
            self.records[record.id] = record
        self._dirty.set()

    def peers_changed(self) -> None:
        self._dirty.set()

    def wants_netns(self, task: pb.Task) -> bool:
        """A task on no network still needs a namespace if its service publishes ports."""
        record = self.records.get(task.service_id)
        return record is not None and bool(record.ports)

    def _serving_here(self, service_id: str) -> list[LocalTask]:
        """Local tasks of the service taking connections, as this agent sees them now."""
        out = []
        for local in self.tasks.values():
            task = self.current(local.task.id)
            if task is not None and task.service_id == service_id and _serving(task):
                out.append(local)
        return out

    async def task_up(self, task: pb.Task, path: str, restoring: bool = False) -> None:
        """A task's namespace is wired: its egress leg, resolver and load balancer."""
        if task.id in self.tasks:
            return
        ifnames = {a.network_id: f"eth{i}" for i, a in enumerate(task.networks)}
        nets = [self.overlay.networks.get(a.network_id) for a in task.networks]
        # On no network at all (a published-port-only task) counts as external.
        external = not nets or any(n is not None and not n.spec.internal for n in nets)
        addr = ""
        lb: TaskLB | None = None
        try:
            if self.egress is not None and external:
                if restoring:
                    await self.egress.restore(task.id, path)
                addr = await self.egress.attach(task.id, path)
            lb = await TaskLB.open(path)
            await self.resolver.add(task.id, path)
        except BaseException:
            # Cancelled (the task was removed meanwhile) or failed: undo, or the
            # sockets left open would keep the namespace alive.
            if lb is not None:
                lb.close()
            self.resolver.remove(task.id)
            if self.egress is not None:
                await asyncio.shield(self.egress.detach(task.id))
            raise
        self.tasks[task.id] = LocalTask(task, path, ifnames, lb, addr)
        self._dirty.set()

    async def task_down(self, task_id: str) -> None:
        local = self.tasks.pop(task_id, None)
        self.resolver.remove(task_id)
        if local is not None:
            local.lb.close()
        if self.egress is not None:
            await self.egress.detach(task_id)
        self._dirty.set()

    # ------------------------------------------------------------ reconcile

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("service networking: reconcile failed; retrying")
                await asyncio.sleep(1)
                self._dirty.set()

    def _index(self) -> _Index:
        index = _Index()
        for ep in self.overlay.peers.values():
            index.alive.add(ep.address.partition("/")[0])
            if ep.serving and ep.service_id:
                ip = ep.address.partition("/")[0]
                index.backends[(ep.service_id, ep.network_id)].append(ip)
        for ips in index.backends.values():
            ips.sort()
        return index

    async def reconcile(self) -> None:
        index = self._index()
        tasks = list(self.tasks.values())
        results = await asyncio.gather(
            *(self._apply_task(t, index) for t in tasks), return_exceptions=True
        )
        for local, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.warning("service networking of task %s: %s", local.task.id, result)
        await self._apply_ports(index)

    async def _apply_task(self, local: LocalTask, index: _Index) -> None:
        names: dict[str, list[str]] = {}
        shuffle: set[str] = set()
        vips: list[Vip] = []
        for record in self.records.values():
            shared = [n for n in record.network_ids if n in local.ifnames]
            if not shared:
                continue
            task_ips = sorted({ip for n in shared for ip in index.backends.get((record.id, n), [])})
            name = record.name.lower()
            names[f"tasks.{name}"] = task_ips
            shuffle.add(f"tasks.{name}")
            if record.mode == pb.ENDPOINT_DNSRR:
                names[name] = task_ips
                shuffle.add(name)
                continue
            for vip in record.virtual_ips:
                if vip.network_id not in local.ifnames:
                    continue
                backends = tuple(index.backends.get((record.id, vip.network_id), []))
                vips.append(Vip(vip.addr, local.ifnames[vip.network_id], backends))
                names.setdefault(name, [vip.addr])
            _alias_names(record, local, index, names, shuffle)
        self.resolver.set_names(local.task.id, names, shuffle)
        await local.lb.apply(vips, index.alive)

    async def _apply_ports(self, index: _Index) -> None:
        own = self.overlay.local_addr
        wanted: list[Published] = []
        errors: dict[str, str] = {}
        for record in self.records.values():
            if not record.ports:
                continue
            local = self._serving_here(record.id)
            for port in record.ports:
                proto = PROTOCOL.get(port.protocol, "tcp")
                targets = tuple((t.egress, port.target_port) for t in local if t.egress)
                remote: tuple[str, ...] = ()
                if port.mode == pb.PortConfig.INGRESS and not targets:
                    remote = tuple(a for a in record.serving_nodes if a != own)
                if not targets and not remote and port.mode == pb.PortConfig.HOST:
                    continue
                if port_in_use(proto, port.published_port):
                    err = f"port {port.published_port}/{proto} is already in use on this host"
                    for t in local:
                        errors[t.task.id] = err
                    continue
                wanted.append(Published(proto, port.published_port, targets, remote))
        await self.ports.apply(wanted)
        for task_id in set(self._port_errors) | set(errors):
            if self._port_errors.get(task_id) != errors.get(task_id):
                with contextlib.suppress(Exception):
                    self.notify(task_id, errors.get(task_id, ""))
        self._port_errors = errors


def _alias_names(
    record: dpb.ServiceRecord,
    local: LocalTask,
    index: _Index,
    names: dict[str, list[str]],
    shuffle: set[str],
) -> None:
    """A service's other names (a stack's short name, compose aliases), on the networks
    they were given for: like its own name there, a service's real name wins a clash."""
    for aliases in record.aliases:
        if aliases.network_id not in local.ifnames:
            continue
        ips = sorted(index.backends.get((record.id, aliases.network_id), []))
        vip = next((v.addr for v in record.virtual_ips if v.network_id == aliases.network_id), "")
        for alias in (a.lower() for a in aliases.names):
            names.setdefault(f"tasks.{alias}", ips)
            shuffle.add(f"tasks.{alias}")
            if record.mode == pb.ENDPOINT_DNSRR or not vip:
                names.setdefault(alias, ips)
                shuffle.add(alias)
            else:
                names.setdefault(alias, [vip])
