"""The object kinds the store holds, their proto classes and their etcd keys."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TypeAlias

from shoal.proto import objects_pb2 as pb

Object: TypeAlias = pb.Node | pb.Service | pb.Task | pb.Network | pb.Cluster


class Kind(StrEnum):
    NODE = "nodes"
    SERVICE = "services"
    TASK = "tasks"
    NETWORK = "networks"
    CLUSTER = "clusters"


MESSAGE: dict[Kind, type[Object]] = {
    Kind.NODE: pb.Node,
    Kind.SERVICE: pb.Service,
    Kind.TASK: pb.Task,
    Kind.NETWORK: pb.Network,
    Kind.CLUSTER: pb.Cluster,
}

KIND_OF: dict[type[Object], Kind] = {cls: kind for kind, cls in MESSAGE.items()}

# Kinds whose name must be unique; the store keeps a name key beside the object.
NAMED: frozenset[Kind] = frozenset({Kind.SERVICE, Kind.NETWORK})


def kind_of(obj: Object) -> Kind:
    return KIND_OF[type(obj)]


def name_of(obj: Object) -> str | None:
    if isinstance(obj, pb.Service | pb.Network):
        return obj.spec.annotations.name
    return None


def now_ms() -> int:
    return int(time.time() * 1000)


class Keys:
    """etcd key layout under one prefix (default /shoal/v1)."""

    def __init__(self, prefix: str = "/shoal/v1") -> None:
        self.prefix = prefix.rstrip("/")
        self.objects = f"{self.prefix}/o/".encode()
        self.leader = f"{self.prefix}/leader".encode()

    def kind_prefix(self, kind: Kind) -> bytes:
        return self.objects + kind.value.encode() + b"/"

    def object(self, kind: Kind, object_id: str) -> bytes:
        return self.kind_prefix(kind) + object_id.encode()

    def name(self, kind: Kind, name: str) -> bytes:
        return f"{self.prefix}/n/{kind.value}/{name}".encode()

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
