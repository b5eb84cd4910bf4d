"""The object kinds the store holds, their proto classes and their etcd keys."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from shoal.proto import objects_pb2 as pb

Object: TypeAlias = (
    pb.Node | pb.Service | pb.Task | pb.Network | pb.Cluster | pb.Secret | pb.Config | pb.SecretData
)


class Kind(StrEnum):
    NODE = "nodes"
    SERVICE = "services"
    TASK = "tasks"
    NETWORK = "networks"
    CLUSTER = "clusters"
    SECRET = "secrets"
    CONFIG = "configs"
    # One version of a secret's or config's sealed data.
    SECRET_DATA = "secretdata"


MESSAGE: dict[Kind, type[Object]] = {
    Kind.NODE: pb.Node,
    Kind.SERVICE: pb.Service,
    Kind.TASK: pb.Task,
    Kind.NETWORK: pb.Network,
    Kind.CLUSTER: pb.Cluster,
    Kind.SECRET: pb.Secret,
    Kind.CONFIG: pb.Config,
    Kind.SECRET_DATA: pb.SecretData,
}

KIND_OF: dict[type[Object], Kind] = {cls: kind for kind, cls in MESSAGE.items()}

# Kinds with a unique name, which the cache indexes.
NAMED: frozenset[Kind] = frozenset(
    {Kind.SERVICE, Kind.NETWORK, Kind.CLUSTER, Kind.SECRET, Kind.CONFIG}
)


def kind_of(obj: Object) -> Kind:
    return KIND_OF[type(obj)]


def name_of(obj: Object) -> str | None:
    if isinstance(obj, pb.Service | pb.Network | pb.Cluster | pb.Secret | pb.Config):
        return obj.spec.annotations.name
    return None


def claims(obj: Object) -> list[str]:
    """Values no two objects of a kind may share (name, VNI, subnet).

    The store writes a key per claim in the same transaction as the object,
    guarded by "key absent", so uniqueness holds even when two managers
    write at the same instant. An update that changes claims must name the
    object's previous version (Update.previous).
    """
    if isinstance(obj, pb.Network):
        out = [f"name/{obj.spec.annotations.name}"]
        if obj.vni:
            out.append(f"vni/{obj.vni}")
        if obj.subnet:
            out.append(f"subnet/{obj.subnet}")
        return out
    if isinstance(obj, pb.Task):
        # A task's overlay addresses: one IP per network, never two tasks.
        return [
            f"ip/{a.network_id}/{addr.partition('/')[0]}"
            for a in obj.networks
            for addr in a.addresses
        ]
    name = name_of(obj)
    return [f"name/{name}"] if name else []


class Keys:
    """etcd key layout under one prefix (default /shoal/v1)."""

    def __init__(self, prefix: str = "/shoal/v1") -> None:
        self.prefix = prefix.rstrip("/")
        self.root = f"{self.prefix}/".encode()
        self.objects = f"{self.prefix}/o/".encode()
        self.leader = f"{self.prefix}/leader".encode()
        # Written to move a watch on: its event proves every earlier one was delivered.
        self.progress = f"{self.prefix}/progress".encode()
        # Keys on a manager's lease: gone when that manager is (see manager/presence).
        self.presence = f"{self.prefix}/p/".encode()
        self.managers = self.presence + b"managers/"
        self.sessions = self.presence + b"sessions/"

    def manager(self, manager_id: str) -> bytes:
        return self.managers + manager_id.encode()

    def session(self, node_id: str) -> bytes:
        return self.sessions + node_id.encode()

    def is_live(self, key: bytes) -> bool:
        """Keys that live on leases: manager presence, node sessions, the leader."""
        return key == self.leader or key.startswith(self.presence)

    def kind_prefix(self, kind: Kind) -> bytes:
        return self.objects + kind.value.encode() + b"/"

    def object(self, kind: Kind, object_id: str) -> bytes:
        return self.kind_prefix(kind) + object_id.encode()

    def tombstone(self, kind: Kind, object_id: str) -> bytes:
        """Left (on a lease) by Store.delete_remembered: that id may not be created again."""
        return f"{self.prefix}/r/{kind.value}/{object_id}".encode()

    def claim(self, kind: Kind, claim: str) -> bytes:
        return f"{self.prefix}/c/{kind.value}/{claim}".encode()

    def parse_object_key(self, key: bytes) -> tuple[Kind, str]:
        kind, _, object_id = key[len(self.objects) :].decode().partition("/")
        return Kind(kind), object_id


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
