"""Placement constraints: `node.labels.K==V`, `node.hostname!=X`, `node.role==manager`, ..."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.proto import objects_pb2 as pb

_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(\S(?:.*\S)?)\s*$")
_FIELDS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_ROLES = {"manager": pb.ROLE_MANAGER, "worker": pb.ROLE_WORKER}


@dataclass(frozen=True)
class Constraint:
    key: str
    equal: bool
    value: str

    def __str__(self) -> str:
        return f"{self.key}{'==' if self.equal else '!='}{self.value}"

    def matches(self, node: pb.Node) -> bool:
        actual: str | None
        if self.key.startswith("node.labels."):
            actual = node.spec.labels.get(self.key[len("node.labels.") :])
        elif self.key == "node.id":
            actual = node.id
        elif self.key == "node.hostname":
            actual = node.description.hostname
        elif self.key == "node.role":
            actual = "manager" if node.role == pb.ROLE_MANAGER else "worker"
        elif self.key == "node.platform.os":
            actual = node.description.os
        else:
            actual = node.description.arch
        # Like Swarm: `!=` also matches nodes that lack the label entirely.
        return (actual == self.value) == self.equal


def parse(expr: str) -> Constraint:
    m = _CONSTRAINT.match(expr)
    if not m:
        raise ValueError(f"invalid constraint {expr!r}: expected KEY==VALUE or KEY!=VALUE")
    key, op, value = m.groups()
    if (
        not (key.startswith("node.labels.") and len(key) > len("node.labels."))
        and key not in _FIELDS
    ):
        raise ValueError(
            f"invalid constraint {expr!r}: unknown key {key!r} "
            f"(use node.labels.<name>, {', '.join(_FIELDS)})"
        )
    if key == "node.role" and value not in _ROLES:
        raise ValueError(f"invalid constraint {expr!r}: node.role is manager or worker")
    return Constraint(key=key, equal=op == "==", value=value)


def parse_all(exprs: list[str]) -> list[Constraint]:
    return [parse(e) for e in exprs]
