"""The control API: validates requests, writes desired state, reads from the cache.

Reads first catch the cache up with etcd (`Cache.sync`), so a client sees its
own writes. Every write is one etcd transaction decided by compare-and-swap: a
rejected request writes nothing.

One module per object group, each a `ControlBase` subclass with that group's
RPCs (services.py, tasks.py, nodes.py, networks.py, cluster.py, events.py); base.py
has lookups and the error -> status code mapping. A new group is a new module whose
class joins the bases of `ControlAPI` below.
"""

from __future__ import annotations

from shoal.manager.controlapi.base import ControlBase, Precondition, rpc
from shoal.manager.controlapi.cluster import ClusterRPCs, public_cluster
from shoal.manager.controlapi.events import EventRPCs
from shoal.manager.controlapi.networks import NetworkRPCs
from shoal.manager.controlapi.nodes import NodeRPCs
from shoal.manager.controlapi.services import ServiceRPCs
from shoal.manager.controlapi.tasks import TaskRPCs
from shoal.proto import control_pb2_grpc as api_grpc

__all__ = ["ControlAPI", "ControlBase", "Precondition", "public_cluster", "rpc"]


class ControlAPI(
    ServiceRPCs,
    TaskRPCs,
    NodeRPCs,
    NetworkRPCs,
    ClusterRPCs,
    EventRPCs,
    # Last, so the groups' methods override its UNIMPLEMENTED defaults.
    api_grpc.ControlServicer,
):
    """The ControlAPI gRPC service: every group's RPCs on one servicer."""
