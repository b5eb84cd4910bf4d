"""Secrets and configs: versioned objects whose data is sealed in etcd.

A Secret (or Config) object holds the name, labels and the latest
`secret_version`; each version's data is a SecretData object ("<id>.<n>"),
sealed with a fresh data key wrapped by the managers' KEK (keys.py). An
update adds a version and, in the same transaction, moves every service that
uses the name unpinned to it (a new task spec: the orchestrator rolls them
with their update policy). Nothing here ever returns the data to a client;
only the node running a task that uses it gets it (task_files, dispatcher).
"""

from __future__ import annotations

import copy
import logging
import posixpath
from typing import Any, Protocol

import grpc

from shoal.clock import now_ms
from shoal.manager.authz import peer_identity
from shoal.manager.ids import new_id
from shoal.manager.keys import data_aad
from shoal.manager.keyservice import KeyKeeper
from shoal.manager.store import (
    Cache,
    Create,
    Delete,
    Kind,
    NotFound,
    Op,
    Store,
    Unavailable,
    Update,
)
from shoal.manager.validation import InvalidSpec, check_labels, check_name
from shoal.proto import control_pb2 as api
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# Swarm's limit: secrets and configs are small files, not volumes.
MAX_DATA_BYTES = 500 * 1024
DEFAULT_MODE = 0o444
SecretLike = pb.Secret | pb.Config


class InUse(Exception):
    """Refused: services still use the object (the message names them)."""


class Resolver(Protocol):
    store: Store
    cache: Cache

    def resolve(self, kind: Kind, ref: str) -> Any: ...


def word(kind: Kind) -> str:
    return "secret" if kind == Kind.SECRET else "config"


def refs_of(spec: pb.ServiceSpec, kind: Kind) -> Any:
    c = spec.task.container
    return c.secrets if kind == Kind.SECRET else c.configs


def data_id(owner_id: str, version: int) -> str:
    return f"{owner_id}.{version}"


def check_data(kind: Kind, data: bytes) -> None:
    if not data:
        raise InvalidSpec(f"the {word(kind)}'s data is empty")
    if len(data) > MAX_DATA_BYTES:
        raise InvalidSpec(
            f"the {word(kind)}'s data is {len(data)} bytes; the limit is {MAX_DATA_BYTES} (500 KiB)"
        )


def new_object(kind: Kind, annotations: pb.Annotations, data: bytes, keys: KeyKeeper) -> list[Op]:
    """A new secret/config at version 1 and its sealed data: the ops that create them."""
    check_name(word(kind), annotations.name)
    check_labels(word(kind), dict(annotations.labels))
    check_data(kind, data)
    cls = pb.Secret if kind == Kind.SECRET else pb.Config
    obj = cls(id=new_id(), spec=pb.SecretSpec(annotations=annotations), secret_version=1)
    return [Create(obj), Create(sealed_version(obj.id, 1, data, keys))]


def sealed_version(owner_id: str, version: int, data: bytes, keys: KeyKeeper) -> pb.SecretData:
    return pb.SecretData(
        id=data_id(owner_id, version),
        owner_id=owner_id,
        version=version,
        data=keys.ring.seal(data, data_aad(owner_id, version)),
    )


def users(cache: Cache, kind: Kind, owner_id: str) -> list[pb.Service]:
    return sorted(
        (
            s
            for s in cache.list_objects(Kind.SERVICE)
            if any(r.id == owner_id for r in refs_of(s.spec, kind))
        ),
        key=lambda s: s.spec.annotations.name,
    )


def respecced(service: pb.Service, spec: pb.ServiceSpec) -> pb.Service:
    """The service with a new spec; a new task spec starts a rolling update."""
    updated = pb.Service()
    updated.CopyFrom(service)
    updated.spec.CopyFrom(spec)
    updated.previous_spec.CopyFrom(service.spec)
    updated.previous_pinned_image = service.pinned_image
    if spec.task != service.spec.task:
        updated.spec_version = service.spec_version + 1
        updated.update_status.CopyFrom(
            pb.UpdateStatus(state=pb.UpdateStatus.UPDATING, started_at_ms=now_ms())
        )
    return updated


def rolled_service(
    service: pb.Service, kind: Kind, owner_id: str, version: int
) -> pb.Service | None:
    """The service moved to `version` of the object (unpinned references), or None."""
    spec = pb.ServiceSpec()
    spec.CopyFrom(service.spec)
    changed = False
    for ref in refs_of(spec, kind):
        if ref.id == owner_id and not ref.pinned and ref.version != version:
            ref.version = version
            changed = True
    return respecced(service, spec) if changed else None


def versions_in_use(cache: Cache, kind: Kind, owner_id: str) -> set[int]:
    """Versions a service spec (current or previous) or a live task still refers to."""
    used: set[int] = set()
    for s in cache.list_objects(Kind.SERVICE):
        for spec in (s.spec, s.previous_spec):
            used.update(r.version for r in refs_of(spec, kind) if r.id == owner_id)
    for t in cache.list_objects(Kind.TASK):
        if t.desired_state <= pb.RUNNING:
            c = t.spec.container
            refs = c.secrets if kind == Kind.SECRET else c.configs
            used.update(r.version for r in refs if r.id == owner_id)
    return used


def update_ops(
    cache: Cache, kind: Kind, current: SecretLike, data: bytes, keys: KeyKeeper
) -> tuple[list[Op], list[str]]:
    """A new version, the services rolled to it, and old versions nobody uses dropped."""
    check_data(kind, data)
    updated = copy.deepcopy(current)
    version = current.secret_version + 1
    updated.secret_version = version
    ops: list[Op] = [Update(updated), Create(sealed_version(current.id, version, data, keys))]
    rolled: list[str] = []
    for service in users(cache, kind, current.id):
        moved = rolled_service(service, kind, current.id, version)
        if moved is not None:
            ops.append(Update(moved))
            rolled.append(service.spec.annotations.name)
    keep = versions_in_use(cache, kind, current.id)
    for v in range(1, current.secret_version + 1):
        old = cache.get(Kind.SECRET_DATA, data_id(current.id, v))
        if old is not None and v not in keep:
            ops.append(Delete(old))
    return ops, rolled


def remove_ops(cache: Cache, kind: Kind, obj: SecretLike) -> list[Op]:
    names = [s.spec.annotations.name for s in users(cache, kind, obj.id)]
    if names:
        raise InUse(
            f"{word(kind)} {obj.spec.annotations.name!r} is in use by service(s) {', '.join(names)}"
        )
    ops: list[Op] = [Delete(obj)]
    for v in range(1, obj.secret_version + 1):
        old = cache.get(Kind.SECRET_DATA, data_id(obj.id, v))
        if old is not None:
            ops.append(Delete(old))
    return ops


# ---------------------------------------------------------------- service references


def default_target(kind: Kind, name: str) -> str:
    return f"/run/secrets/{name}" if kind == Kind.SECRET else f"/{name}"


# (kind, name) -> (id, latest version) of objects a stack deploy creates or updates.
Planned = dict[tuple[Kind, str], tuple[str, int]]


def resolve_refs(api_: Resolver, spec: pb.ServiceSpec, planned: Planned | None = None) -> None:
    """Names -> IDs, versions (latest unless pinned), default target and mode; checked."""
    targets: set[str] = set()
    for kind in (Kind.SECRET, Kind.CONFIG):
        for ref in refs_of(spec, kind):
            hit = (planned or {}).get((kind, ref.name)) if not ref.id else None
            if hit is not None:
                object_id, latest = hit
            else:
                obj = api_.resolve(kind, ref.id or ref.name)
                ref.name, object_id, latest = obj.spec.annotations.name, obj.id, obj.secret_version
            ref.id = object_id
            if ref.pinned:
                if not 1 <= ref.version <= latest or (
                    ref.version < latest
                    and api_.cache.get(Kind.SECRET_DATA, data_id(object_id, ref.version)) is None
                ):
                    raise InvalidSpec(
                        f"{word(kind)} {ref.name!r} has no version {ref.version} "
                        f"(latest is {latest})"
                    )
            else:
                ref.version = latest
            ref.target = ref.target or default_target(kind, ref.name)
            ref.mode = ref.mode or DEFAULT_MODE
            _check_ref(kind, ref)
            if ref.target in targets:
                raise InvalidSpec(f"two secrets/configs use the target {ref.target}")
            targets.add(ref.target)


def _check_ref(kind: Kind, ref: pb.FileReference) -> None:
    what = f"{word(kind)} {ref.name!r}"
    if not ref.target.startswith("/") or posixpath.normpath(ref.target) != ref.target:
        raise InvalidSpec(f"{what}: target must be a clean absolute path, not {ref.target!r}")
    if ref.target == "/" or ref.target.startswith(("/proc/", "/sys/", "/dev/")):
        raise InvalidSpec(f"{what}: target {ref.target} is not allowed")
    if ref.mode > 0o777:
        raise InvalidSpec(f"{what}: mode {oct(ref.mode)} is not a file mode (0 to 0777)")


# ---------------------------------------------------------------- delivery


async def task_files(
    cache: Cache, keys: KeyKeeper, node_id: str, task_id: str
) -> dpb.TaskFilesResponse:
    """The secrets and configs of a task, for the node it is assigned to.

    Refused (PermissionError) unless the calling node runs the task and the
    task is meant to run: a node never obtains a secret no task of its needs.
    """
    await cache.sync()
    task: pb.Task | None = cache.get(Kind.TASK, task_id)
    if task is None or task.node_id != node_id or task.desired_state > pb.RUNNING:
        raise PermissionError(f"task {task_id} is not assigned to this node")
    if task.status.state > pb.RUNNING:
        raise PermissionError(f"task {task_id} has ended")
    out = dpb.TaskFilesResponse()
    c = task.spec.container
    for kind, refs in ((Kind.SECRET, c.secrets), (Kind.CONFIG, c.configs)):
        for ref in refs:
            sealed = cache.get(Kind.SECRET_DATA, data_id(ref.id, ref.version))
            if sealed is None:
                raise NotFound(f"{word(kind)} {ref.name!r} version {ref.version} is gone")
            out.files.add(
                kind=word(kind),
                name=ref.name,
                version=ref.version,
                target=ref.target,
                uid=ref.uid,
                gid=ref.gid,
                mode=ref.mode,
                data=await keys.open(sealed.data, data_aad(ref.id, ref.version)),
            )
    return out


async def serve_task_files(
    cache: Cache, keys: KeyKeeper | None, request: dpb.TaskFilesRequest, context: Any
) -> dpb.TaskFilesResponse:
    """The Dispatcher's TaskFiles RPC: the caller is the node in its certificate."""
    ident = peer_identity(context)
    if ident is None or keys is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node certificate is required")
    assert ident is not None and keys is not None
    try:
        return await task_files(cache, keys, ident.node_id, request.task_id)
    except PermissionError as err:
        log.warning("node %s: refused the files of task %s", ident.node_id, request.task_id)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        raise
    except LookupError as err:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        raise


def info(
    cache: Cache, kind: Kind, obj: SecretLike, rolled: list[str] | None = None
) -> api.SecretResponse:
    services = [s.spec.annotations.name for s in users(cache, kind, obj.id)]
    if kind == Kind.SECRET:
        assert isinstance(obj, pb.Secret)
        return api.SecretResponse(secret=obj, services=services, rolled=rolled or [])
    assert isinstance(obj, pb.Config)
    return api.SecretResponse(config=obj, services=services, rolled=rolled or [])


def require_keys(keys: KeyKeeper | None) -> KeyKeeper:
    if keys is None:
        raise Unavailable("this manager holds no key-encryption key")
    return keys
