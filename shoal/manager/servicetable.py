"""The service table agents resolve and balance with: one record per service.

A record carries a service's name, VIPs, published ports and networks, and
the underlay addresses of the nodes that have a serving task (running,
healthy or unchecked, not being stopped) - where a worker without a local task
forwards a published port. Task addresses are not in it: they come with the
peer table, per network. Records change when a service changes or a node
gains or loses its last serving task, not with every task.

Agents get only the records they can use: a service on no network and with no
published port is neither resolved nor forwarded by any agent, so its record is
not sent (it would cost a gRPC message to every node per service created).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Protocol

from shoal.manager.store import Cache, Change, Kind
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb


class Sender(Protocol):
    def send(self, msg: dpb.DispatcherMessage) -> None: ...


def serving(task: pb.Task | None) -> bool:
    """Whether a task takes new connections: DNS and load balancers list only these."""
    return (
        task is not None
        and bool(task.node_id)
        and task.desired_state == pb.RUNNING
        and task.status.state == pb.RUNNING
        and task.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)
    )


def usable(record: dpb.ServiceRecord | None) -> bool:
    """Whether an agent does anything with a record: resolve its names (on the
    service's networks; aliases are per network too) or publish its ports."""
    return record is not None and bool(record.network_ids or record.ports)


class ServiceTable:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.records: dict[str, dpb.ServiceRecord] = {}
        # Serving tasks per service, per node.
        self.nodes: dict[str, Counter[str]] = defaultdict(Counter)

    def rebuild(self) -> None:
        self.nodes = defaultdict(Counter)
        for task in self.cache.list_objects(Kind.TASK):
            if serving(task):
                self.nodes[task.service_id][task.node_id] += 1
        self.records = {}
        for service in self.cache.list_objects(Kind.SERVICE):
            self.records[service.id] = self._record(service)

    def full(self) -> dpb.ServiceUpdate:
        return dpb.ServiceUpdate(
            full=True, services=[r for r in self.records.values() if usable(r)]
        )

    def resync(self, sessions: Iterable[Sender]) -> None:
        """After a cache resync: rebuilt, and every session gets the full table."""
        self.rebuild()
        for session in sessions:
            session.send(dpb.DispatcherMessage(services=self.full()))

    def publish(self, changes: Iterable[Change], sessions: Iterable[Sender]) -> None:
        """Folds cache changes in and sends the changed records to every session (before
        the same pass's assignments: a record says whether a task needs a namespace)."""
        update = self.apply(changes)
        if update is not None:
            for session in sessions:
                session.send(dpb.DispatcherMessage(services=update))

    def _record(self, service: pb.Service) -> dpb.ServiceRecord:
        addrs = []
        # Only ingress ports need them (forwarding): other records then never change
        # with tasks, and are not re-sent to every agent as tasks come and go.
        ingress = any(p.mode == pb.PortConfig.INGRESS for p in service.endpoint.ports)
        for node_id in sorted(self.nodes.get(service.id, ())) if ingress else ():
            node: pb.Node | None = self.cache.get(Kind.NODE, node_id)
            if node is not None and node.status.addr:
                addrs.append(node.status.addr)
        return dpb.ServiceRecord(
            id=service.id,
            name=service.spec.annotations.name,
            mode=service.endpoint.mode,
            virtual_ips=service.endpoint.virtual_ips,
            ports=service.endpoint.ports,
            serving_nodes=addrs,
            network_ids=[n.target for n in service.spec.task.networks],
            aliases=[
                dpb.NetworkAliases(network_id=n.target, names=n.aliases)
                for n in service.spec.task.networks
                if n.aliases
            ],
        )

    def apply(self, changes: Iterable[Change]) -> dpb.ServiceUpdate | None:
        """Folds cache changes in; returns the records that changed, or None."""
        touched: set[str] = set()
        for c in changes:
            if c.kind == Kind.SERVICE:
                touched.add(c.id)
            elif c.kind == Kind.TASK:
                old, new = c.old, c.obj
                assert old is None or isinstance(old, pb.Task)
                assert new is None or isinstance(new, pb.Task)
                was, now = serving(old), serving(new)
                if was and old is not None:
                    self._count(old, -1, touched)
                if now and new is not None:
                    self._count(new, +1, touched)
            elif c.kind == Kind.NODE:
                old_addr = c.old.status.addr if isinstance(c.old, pb.Node) else ""
                new_addr = c.obj.status.addr if isinstance(c.obj, pb.Node) else ""
                if old_addr != new_addr:
                    touched.update(s for s, n in self.nodes.items() if c.id in n)
        update = dpb.ServiceUpdate()
        for service_id in touched:
            service: pb.Service | None = self.cache.get(Kind.SERVICE, service_id)
            if service is None:
                if usable(self.records.pop(service_id, None)):
                    update.removed.append(service_id)
                self.nodes.pop(service_id, None)
                continue
            record, old = self._record(service), self.records.get(service_id)
            if old == record:
                continue
            self.records[service_id] = record
            # The agents hold the usable records only: one that became unusable goes.
            if usable(record):
                update.services.append(record)
            elif usable(old):
                update.removed.append(service_id)
        return update if (update.services or update.removed) else None

    def _count(self, task: pb.Task, delta: int, touched: set[str]) -> None:
        per_node = self.nodes[task.service_id]
        before = per_node[task.node_id] > 0
        per_node[task.node_id] += delta
        if per_node[task.node_id] <= 0:
            del per_node[task.node_id]
        if before != (per_node.get(task.node_id, 0) > 0):
            touched.add(task.service_id)
