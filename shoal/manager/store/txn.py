"""Store writes as etcd transactions: the ops, their compares and puts, conflicts.

Each object is one key (`<prefix>/o/<kind>/<id>`) holding its serialized proto;
its version is the key's mod_revision, so updates are compare-and-swap and a
stale write fails with Conflict instead of overwriting. Unique values (names,
VNIs, subnets) are reserved by claim keys written in the same transaction,
which makes "create if the name is free" atomic even across managers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aetcd import rpc

from shoal.clock import now_ms
from shoal.manager.store.errors import AlreadyExists, Conflict, StoreError
from shoal.manager.store.kinds import MESSAGE, Keys, Kind, Object, claims, kind_of, name_of

# etcd's default --max-txn-ops is 128; one slot is kept for the leader fence.
MAX_TXN_OPS = 128


@dataclass
class Create:
    obj: Object


@dataclass
class Update:
    """Compare-and-swap on obj.meta.version.

    `previous` (the version being replaced) is needed when the update changes
    the object's claims, e.g. a task's IP addresses: the claim keys follow.
    """

    obj: Object
    previous: Object | None = None


@dataclass
class Delete:
    """Deletes obj if it still has obj.meta.version (0 = any version)."""

    obj: Object


Op = Create | Update | Delete


@dataclass(frozen=True)
class Fence:
    """A leader's claim: writes go through only while the leader key is still ours."""

    key: bytes
    create_revision: int

    def compare(self) -> Any:
        return rpc.Compare(
            key=self.key,
            target=rpc.Compare.CREATE,
            result=rpc.Compare.EQUAL,
            create_revision=self.create_revision,
        )


@dataclass
class Txn:
    compares: list[Any] = field(default_factory=list)
    success: list[Any] = field(default_factory=list)
    objects: list[Object] = field(default_factory=list)


def decode(kind: Kind, value: bytes, mod_revision: int) -> Object:
    obj = MESSAGE[kind]()
    obj.ParseFromString(value)
    obj.meta.version = mod_revision
    return obj


def encode(obj: Object) -> bytes:
    # The version is the key's mod_revision: never stored, so it cannot drift.
    version = obj.meta.version
    obj.meta.version = 0
    try:
        return obj.SerializeToString()
    finally:
        obj.meta.version = version


def op_cost(op: Op) -> int:
    """How many etcd operations an op takes (the object and its claim keys)."""
    cost = 1 + len(claims(op.obj))
    if isinstance(op, Update) and op.previous is not None:
        cost += len(claims(op.previous))
    return cost


def build(keys: Keys, ops: Sequence[Op]) -> Txn:
    """The compares and puts of ops; stamps created/updated times on the objects."""
    txn = Txn()
    stamp = now_ms()
    for op in ops:
        obj = op.obj
        kind = kind_of(obj)
        key = keys.object(kind, obj.id)
        claim_keys = [keys.claim(kind, c) for c in claims(obj)]
        if isinstance(op, Create):
            obj.meta.created_at_ms = obj.meta.created_at_ms or stamp
            obj.meta.updated_at_ms = stamp
            txn.compares.append(absent(key))
            txn.success.append(put(key, encode(obj)))
            for claim_key in claim_keys:
                txn.compares.append(absent(claim_key))
                txn.success.append(put(claim_key, obj.id.encode()))
            txn.objects.append(obj)
        elif isinstance(op, Update):
            obj.meta.updated_at_ms = stamp
            txn.compares.append(_version_is(key, obj.meta.version))
            txn.success.append(put(key, encode(obj)))
            if op.previous is not None:
                old, new = set(claims(op.previous)), set(claims(obj))
                for claim in sorted(new - old):
                    claim_key = keys.claim(kind, claim)
                    txn.compares.append(absent(claim_key))
                    txn.success.append(put(claim_key, obj.id.encode()))
                txn.success.extend(delete(keys.claim(kind, claim)) for claim in sorted(old - new))
            txn.objects.append(obj)
        else:
            if obj.meta.version:
                txn.compares.append(_version_is(key, obj.meta.version))
            txn.success.append(delete(key))
            txn.success.extend(delete(claim_key) for claim_key in claim_keys)
    return txn


def conflict(ops: Sequence[Op]) -> StoreError:
    """The error for a transaction of ops whose compares failed."""
    if len(ops) == 1 and isinstance(ops[0], Create):
        obj = ops[0].obj
        kind = kind_of(obj)
        name = name_of(obj)
        what = f"{kind.value[:-1]} {name!r}" if name else f"{kind.value[:-1]} {obj.id}"
        if len(claims(obj)) > 1:
            return AlreadyExists(
                f"{what} conflicts with an existing one ({', '.join(claims(obj))})"
            )
        return AlreadyExists(f"{what} already exists")
    if len(ops) == 1:
        obj = ops[0].obj
        return Conflict(
            f"{kind_of(obj).value[:-1]} {obj.id} was changed or removed by someone else "
            f"(version {obj.meta.version} is out of date)"
        )
    return Conflict(f"a batch of {len(ops)} writes conflicted with a concurrent change")


def absent(key: bytes) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
    )


def value_is(key: bytes, value: bytes) -> Any:
    return rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=value)


def _version_is(key: bytes, version: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=version
    )


def put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def get(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
