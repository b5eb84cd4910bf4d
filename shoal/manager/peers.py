"""The overlay peer table: every task's address on every network, and its node's VTEP.

The dispatcher keeps one table for all networks, fed by cache changes, and
sends each node the endpoints of the networks its tasks use: all of them when
the node starts using a network, then only changes. Agents program these as
static FDB and neighbour entries: no flooding, no learning.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.manager.servicetable import serving
from shoal.manager.store import Cache, Change, Kind
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb


def endpoint_key(network_id: str, task_id: str) -> str:
    return f"{network_id}/{task_id}"


@dataclass
class NodeUpdate:
    """What one node must hear: endpoints added or changed, and keys removed."""

    endpoints: dict[str, dpb.Endpoint] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


class PeerTable:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.endpoints: dict[str, dict[str, dpb.Endpoint]] = defaultdict(dict)
        # How many endpoints each node has on each network: its membership.
        self.members: dict[str, Counter[str]] = defaultdict(Counter)

    def _endpoints_of(self, task: pb.Task | None) -> list[dpb.Endpoint]:
        # A task being stopped keeps its endpoint (not serving) until it stopped: it
        # leaves DNS and load balancers first, its in-flight connections finish.
        if task is None or not task.node_id or task.desired_state > pb.SHUTDOWN:
            return []
        if task.status.state > pb.RUNNING or task.status.state < pb.ASSIGNED:
            return []
        node: pb.Node | None = self.cache.get(Kind.NODE, task.node_id)
        vtep = node.status.addr if node is not None else ""
        return [
            dpb.Endpoint(
                task_id=task.id,
                network_id=a.network_id,
                address=a.addresses[0],
                mac=a.mac,
                node_id=task.node_id,
                vtep=vtep,
                service_id=task.service_id,
                serving=serving(task),
            )
            for a in task.networks
            if a.addresses
        ]

    def rebuild(self) -> None:
        self.endpoints = defaultdict(dict)
        self.members = defaultdict(Counter)
        for task in self.cache.list_objects(Kind.TASK):
            for ep in self._endpoints_of(task):
                self._add(ep)

    def _add(self, ep: dpb.Endpoint) -> None:
        self.endpoints[ep.network_id][ep.task_id] = ep
        self.members[ep.network_id][ep.node_id] += 1

    def _remove(self, ep: dpb.Endpoint) -> None:
        self.endpoints[ep.network_id].pop(ep.task_id, None)
        self.members[ep.network_id][ep.node_id] -= 1
        if self.members[ep.network_id][ep.node_id] <= 0:
            del self.members[ep.network_id][ep.node_id]

    def networks_of(self, node_id: str) -> list[str]:
        return [n for n, m in self.members.items() if node_id in m]

    def full(self, node_id: str) -> list[dpb.Endpoint]:
        return [ep for n in self.networks_of(node_id) for ep in self.endpoints[n].values()]

    def apply(self, changes: Iterable[Change]) -> dict[str, NodeUpdate]:
        """Folds cache changes into the table; returns what each node must be told."""
        changed: dict[str, dict[str, dpb.Endpoint | None]] = defaultdict(dict)
        members_before = {n: set(m) for n, m in self.members.items()}
        tasks: list[tuple[pb.Task | None, pb.Task | None]] = []
        for c in changes:
            if c.kind == Kind.TASK:
                tasks.append((c.old, c.obj))  # type: ignore[arg-type]
            elif c.kind == Kind.NODE:
                # A node's address (its VTEP) changed: all its endpoints change.
                old, new = c.old, c.obj
                old_addr = old.status.addr if isinstance(old, pb.Node) else None
                new_addr = new.status.addr if isinstance(new, pb.Node) else None
                if old_addr != new_addr:
                    tasks.extend((t, t) for t in self.cache.tasks_of_node(c.id))
        for old_task, new_task in tasks:
            before = {ep.network_id: ep for ep in self._current(old_task or new_task)}
            after = {ep.network_id: ep for ep in self._endpoints_of(new_task)}
            for net_id, ep in before.items():
                if net_id not in after:
                    self._remove(ep)
                    changed[net_id][ep.task_id] = None
            for net_id, ep in after.items():
                old_ep = before.get(net_id)
                if old_ep is not None and old_ep == ep:
                    continue
                if old_ep is not None:
                    self._remove(old_ep)
                self._add(ep)
                changed[net_id][ep.task_id] = ep
        updates: dict[str, NodeUpdate] = defaultdict(NodeUpdate)
        for net_id, eps in changed.items():
            was = members_before.get(net_id, set())
            now = set(self.members.get(net_id, ()))
            for node_id in now | was:
                update = updates[node_id]
                if node_id in now and node_id not in was:
                    # Newly on this network: the node needs every endpoint on it.
                    for known in self.endpoints[net_id].values():
                        update.endpoints[endpoint_key(net_id, known.task_id)] = known
                    continue
                for task_id, maybe in eps.items():
                    key = endpoint_key(net_id, task_id)
                    if maybe is None:
                        update.removed.add(key)
                        update.endpoints.pop(key, None)
                    else:
                        update.endpoints[key] = maybe
                        update.removed.discard(key)
        return updates

    def _current(self, task: pb.Task | None) -> list[dpb.Endpoint]:
        if task is None:
            return []
        return [
            self.endpoints[a.network_id][task.id]
            for a in task.networks
            if task.id in self.endpoints.get(a.network_id, {})
        ]
