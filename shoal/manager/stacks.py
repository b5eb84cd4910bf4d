"""Stacks: a deploy request (converted from compose by the client) applied as a diff.

Everything a deploy writes goes in ONE etcd transaction: creates, updates and
removals of services, networks, secrets and configs succeed together or not
at all. Objects belong to a stack by their label (STACK_LABEL). A redeploy
changes only what differs: unchanged services keep their tasks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal import defaults
from shoal.manager import allocator, secrets
from shoal.manager.ids import new_id
from shoal.manager.keys import data_aad
from shoal.manager.keyservice import KeyKeeper
from shoal.manager.pinning import ImagePinner
from shoal.manager.store import AlreadyExists, Cache, Create, Delete, Kind, NotFound, Op, Update
from shoal.manager.validation import InvalidSpec, check_name, check_network_spec, check_service_spec
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

STACK_LABEL = "com.docker.stack.namespace"
_WORD = {
    Kind.SERVICE: "service",
    Kind.NETWORK: "network",
    Kind.SECRET: "secret",
    Kind.CONFIG: "config",
}


class StackInUse(Exception):
    """An object of the stack is used by something outside it."""


class Resolver(Protocol):
    cache: Cache
    pinner: ImagePinner

    def resolve(self, kind: Kind, ref: str) -> Any: ...


def stack_of(obj: Any) -> str:
    return str(obj.spec.annotations.labels.get(STACK_LABEL, ""))


def members(cache: Cache, kind: Kind, stack: str) -> dict[str, Any]:
    return {o.spec.annotations.name: o for o in cache.list_objects(kind) if stack_of(o) == stack}


@dataclass
class Plan:
    stack: str
    ops: list[Op] = field(default_factory=list)
    changes: list[api.StackChange] = field(default_factory=list)
    planned: secrets.Planned = field(default_factory=dict)
    # Services (names) whose specs this request writes: not rolled separately.
    services: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def note(self, kind: Kind, name: str, action: str, details: list[str] | None = None) -> None:
        self.changes.append(
            api.StackChange(kind=_WORD[kind], name=name, action=action, details=details or [])
        )


def _owned(existing: Any, kind: Kind, stack: str) -> None:
    if stack_of(existing) != stack:
        raise AlreadyExists(
            f"{_WORD[kind]} {existing.spec.annotations.name!r} exists and is not part of "
            f"stack {stack!r}"
        )


def check_externals(api_: Resolver, req: api.DeployStackRequest) -> None:
    missing = []
    for kind, names in (
        (Kind.NETWORK, req.external_networks),
        (Kind.SECRET, req.external_secrets),
        (Kind.CONFIG, req.external_configs),
    ):
        for name in names:
            if api_.cache.id_by_name(kind, name) is None:
                missing.append(f"{_WORD[kind]} {name!r}")
    if missing:
        raise NotFound(f"external {', '.join(missing)} not found; nothing was created")


def plan_networks(cache: Cache, req: api.DeployStackRequest, plan: Plan) -> None:
    known = list(cache.list_objects(Kind.NETWORK))
    for spec in req.networks:
        name = spec.annotations.name
        existing = cache.get(Kind.NETWORK, cache.id_by_name(Kind.NETWORK, name) or "")
        if existing is not None:
            _owned(existing, Kind.NETWORK, plan.stack)
            wanted = pb.NetworkSpec()
            wanted.CopyFrom(spec)
            wanted.driver = wanted.driver or "overlay"
            if wanted.subnet == "":
                wanted.subnet = existing.spec.subnet
            if wanted != existing.spec:
                raise InvalidSpec(
                    f"network {name!r} differs from the deployed one; a network cannot be "
                    "changed in place (remove the stack, or give the network a new name)"
                )
            plan.planned[(Kind.NETWORK, name)] = (existing.id, 0)
            continue
        requested = check_network_spec(spec)
        net = pb.Network(id=new_id(), spec=spec)
        allocator.allocate_network(net, known, requested)
        known.append(net)
        plan.ops.append(Create(net))
        plan.planned[(Kind.NETWORK, name)] = (net.id, 0)
        plan.note(Kind.NETWORK, name, "create")


async def plan_files(cache: Cache, keys: KeyKeeper, kind: Kind, files: Any, plan: Plan) -> None:
    """Secrets/configs: new ones created, changed data -> a new version."""
    for f in files:
        existing = cache.get(kind, cache.id_by_name(kind, f.name) or "")
        if existing is None:
            ops = secrets.new_object(
                kind, pb.Annotations(name=f.name, labels=f.labels), f.data, keys
            )
            plan.ops.extend(ops)
            plan.planned[(kind, f.name)] = (ops[0].obj.id, 1)
            plan.note(kind, f.name, "create")
            continue
        _owned(existing, kind, plan.stack)
        sealed = cache.get(Kind.SECRET_DATA, secrets.data_id(existing.id, existing.secret_version))
        current = (
            await keys.open(sealed.data, data_aad(existing.id, existing.secret_version))
            if sealed is not None
            else None
        )
        if current == f.data:
            plan.planned[(kind, f.name)] = (existing.id, existing.secret_version)
            plan.note(kind, f.name, "unchanged")
            continue
        secrets.check_data(kind, f.data)
        version = existing.secret_version + 1
        updated = type(existing)()
        updated.CopyFrom(existing)
        updated.secret_version = version
        plan.ops += [
            Update(updated),
            Create(secrets.sealed_version(existing.id, version, f.data, keys)),
        ]
        plan.planned[(kind, f.name)] = (existing.id, version)
        plan.note(kind, f.name, "update", [f"secret_version {version}"])


def roll_outsiders(cache: Cache, plan: Plan) -> None:
    """Services outside the request that use an updated secret/config roll to it too."""
    for (kind, name), (object_id, version) in plan.planned.items():
        if kind not in (Kind.SECRET, Kind.CONFIG) or version <= 1:
            continue
        for service in secrets.users(cache, kind, object_id):
            if service.spec.annotations.name in plan.services:
                continue
            moved = secrets.rolled_service(service, kind, object_id, version)
            if moved is not None:
                plan.ops.append(Update(moved))
                plan.note(Kind.SERVICE, service.spec.annotations.name, "update", [f"{name} rolled"])


def prepare_service(
    api_: Resolver, spec: pb.ServiceSpec, plan: Plan, ids: dict[str, str]
) -> pb.ServiceSpec:
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    defaults.fill_service_spec(out)
    check_service_spec(out)
    for attachment in out.task.networks:
        hit = plan.planned.get((Kind.NETWORK, attachment.target))
        attachment.target = hit[0] if hit else api_.resolve(Kind.NETWORK, attachment.target).id
    secrets.resolve_refs(api_, out, plan.planned)  # type: ignore[arg-type]
    deps = []
    for dep in out.depends_on_healthy:
        deps.append(ids.get(dep) or api_.resolve(Kind.SERVICE, dep).id)
    del out.depends_on_healthy[:]
    out.depends_on_healthy.extend(deps)
    return out


def spec_diff(old: pb.ServiceSpec, new: pb.ServiceSpec) -> list[str]:
    """Top-level fields (and task fields) that differ, for the dry-run listing."""
    out = []
    for fd in pb.ServiceSpec.DESCRIPTOR.fields:
        if fd.name == "task":
            for tf in pb.TaskSpec.DESCRIPTOR.fields:
                if getattr(old.task, tf.name) != getattr(new.task, tf.name):
                    out.append(f"task.{tf.name}")
        elif getattr(old, fd.name) != getattr(new, fd.name):
            out.append(fd.name)
    if old.WhichOneof("mode") != new.WhichOneof("mode"):
        out.append("mode")
    return sorted(set(out))


def plan_services(api_: Resolver, req: api.DeployStackRequest, plan: Plan) -> None:
    cache = api_.cache
    ids: dict[str, str] = {}
    for spec in req.services:
        name = spec.annotations.name
        existing = cache.get(Kind.SERVICE, cache.id_by_name(Kind.SERVICE, name) or "")
        if existing is not None:
            _owned(existing, Kind.SERVICE, plan.stack)
        ids[name] = existing.id if existing is not None else new_id()
        plan.services.add(name)
    for spec in req.services:
        name = spec.annotations.name
        prepared = prepare_service(api_, spec, plan, ids)
        current = cache.get(Kind.SERVICE, ids[name])
        # The manager's count of forced updates is no part of a compose file.
        prepared.task.force_update = current.spec.task.force_update if current else 0
        if current is None:
            plan.ops.append(Create(pb.Service(id=ids[name], spec=prepared, spec_version=1)))
            plan.note(Kind.SERVICE, name, "create")
        elif current.spec == prepared:
            plan.note(Kind.SERVICE, name, "unchanged")
        else:
            if prepared.WhichOneof("mode") != current.spec.WhichOneof("mode"):
                raise InvalidSpec(f"service {name!r}: its mode (replicated/global) cannot change")
            plan.ops.append(Update(secrets.respecced(current, prepared)))
            plan.note(Kind.SERVICE, name, "update", spec_diff(current.spec, prepared))


def plan_removals(cache: Cache, plan: Plan, keep: set[tuple[Kind, str]]) -> None:
    """Deletes the stack's objects not in `keep`; refused if something outside uses them."""
    services = members(cache, Kind.SERVICE, plan.stack)
    gone_services = {n: s for n, s in services.items() if (Kind.SERVICE, n) not in keep}
    staying = [
        s for s in cache.list_objects(Kind.SERVICE) if s.spec.annotations.name not in gone_services
    ]
    for name, service in sorted(gone_services.items()):
        plan.ops.append(Delete(service))
        plan.note(Kind.SERVICE, name, "remove")
    for kind in (Kind.NETWORK, Kind.SECRET, Kind.CONFIG):
        for name, obj in sorted(members(cache, kind, plan.stack).items()):
            if (kind, name) in keep:
                continue
            users = [s.spec.annotations.name for s in staying if _uses(s, kind, obj.id)]
            if users:
                raise StackInUse(
                    f"{_WORD[kind]} {name!r} of stack {plan.stack!r} is used by service(s) "
                    f"{', '.join(sorted(users))}"
                )
            plan.ops.append(Delete(obj))
            if kind != Kind.NETWORK:
                for v in range(1, obj.secret_version + 1):
                    data = cache.get(Kind.SECRET_DATA, secrets.data_id(obj.id, v))
                    if data is not None:
                        plan.ops.append(Delete(data))
            plan.note(kind, name, "remove")


def _uses(service: pb.Service, kind: Kind, object_id: str) -> bool:
    if kind == Kind.NETWORK:
        return any(a.target == object_id for a in service.spec.task.networks)
    return any(r.id == object_id for r in secrets.refs_of(service.spec, kind))


async def plan_deploy(api_: Resolver, keys: KeyKeeper, req: api.DeployStackRequest) -> Plan:
    check_name("stack", req.name)
    if not req.services:
        raise InvalidSpec("a stack needs at least one service")
    plan = Plan(req.name)
    check_externals(api_, req)
    plan_networks(api_.cache, req, plan)
    await plan_files(api_.cache, keys, Kind.SECRET, req.secrets, plan)
    await plan_files(api_.cache, keys, Kind.CONFIG, req.configs, plan)
    plan_services(api_, req, plan)
    if not req.dry_run:
        await pin_images(api_, plan)
    roll_outsiders(api_.cache, plan)
    if req.prune:
        keep = {(Kind.SERVICE, s.annotations.name) for s in req.services}
        keep |= {(Kind.NETWORK, n.annotations.name) for n in req.networks}
        keep |= {(Kind.SECRET, f.name) for f in req.secrets}
        keep |= {(Kind.CONFIG, f.name) for f in req.configs}
        plan_removals(api_.cache, plan, keep)
    return plan


async def pin_images(api_: Resolver, plan: Plan) -> None:
    """New services and changed images pinned to a digest, as service create/update do
    (all at once: the registry round trips overlap)."""
    todo: list[pb.Service] = []
    for op in plan.ops:
        svc = op.obj
        if isinstance(op, Delete) or not isinstance(svc, pb.Service):
            continue
        current = api_.cache.get(Kind.SERVICE, svc.id)
        if current is None or current.spec.task.container.image != svc.spec.task.container.image:
            todo.append(svc)
    pins = await asyncio.gather(*(api_.pinner.pin(s.spec.task.container.image) for s in todo))
    for svc, (pinned, warning) in zip(todo, pins, strict=True):
        svc.pinned_image = pinned
        if warning:
            plan.warnings.append(warning)


def stack_list(cache: Cache) -> list[api.StackInfo]:
    stacks: dict[str, api.StackInfo] = {}
    for kind, attr in (
        (Kind.SERVICE, "services"),
        (Kind.NETWORK, "networks"),
        (Kind.SECRET, "secrets"),
        (Kind.CONFIG, "configs"),
    ):
        for obj in cache.list_objects(kind):
            name = stack_of(obj)
            if name:
                info = stacks.setdefault(name, api.StackInfo(name=name))
                setattr(info, attr, getattr(info, attr) + 1)
    return [stacks[n] for n in sorted(stacks)]
