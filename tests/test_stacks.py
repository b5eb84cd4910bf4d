"""Stack deploys on a real etcd: one transaction, a diff on redeploy, prune, dry run, rm."""

from __future__ import annotations

import textwrap
from pathlib import Path

import grpc
import grpc.aio
import pytest

from shoal.manager.keyservice import KeyKeeper
from shoal.manager.store import Cache, Kind, Store
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.compose import build

from .test_secrets import control, raw_values  # noqa: F401  (the fixture)

Control = tuple[api_grpc.ControlStub, KeyKeeper]

COMPOSE = """\
services:
  web:
    image: 127.0.0.1:1/busybox:1
    command: httpd -f -p 8080
    ports: ["8080:8080"]
    networks: [front]
    secrets: [pw]
    deploy: {replicas: 2}
  probe:
    image: 127.0.0.1:1/busybox:1
    command: sleep 1000
    networks: [front]
    deploy: {replicas: 1}
networks:
  front:
secrets:
  pw:
    file: pw.txt
"""


def compose(tmp_path: Path, text: str = COMPOSE, pw: str = "first-pw") -> Path:
    (tmp_path / "pw.txt").write_text(pw)
    path = tmp_path / "stack.yml"
    path.write_text(textwrap.dedent(text))
    return path


def deploy_request(path: Path, **flags: bool) -> api.DeployStackRequest:
    req = build([path], "app", environ={}).request
    for key, value in flags.items():
        setattr(req, key, value)
    return req


def actions(resp: api.DeployStackResponse | api.RemoveStackResponse) -> dict[str, str]:
    return {f"{c.kind}/{c.name}": c.action for c in resp.changes}


async def test_deploy_redeploy_prune_and_rm(
    tmp_path: Path,
    store: Store,
    cache: Cache,
    control: Control,  # noqa: F811
) -> None:
    c, _ = control
    path = compose(tmp_path)
    dry = await c.DeployStack(deploy_request(path, dry_run=True))
    assert dry.dry_run and actions(dry)["service/app_web"] == "create"
    await cache.sync()
    assert not cache.list_objects(Kind.SERVICE) and not cache.list_objects(Kind.NETWORK)

    first = await c.DeployStack(deploy_request(path))
    assert set(actions(first).values()) == {"create"}
    await cache.sync()
    web = cache.get(Kind.SERVICE, cache.id_by_name(Kind.SERVICE, "app_web"))
    probe = cache.get(Kind.SERVICE, cache.id_by_name(Kind.SERVICE, "app_probe"))
    net_id = cache.id_by_name(Kind.NETWORK, "app_front")
    assert [(a.target, list(a.aliases)) for a in web.spec.task.networks] == [(net_id, ["web"])]
    assert web.spec.task.container.secrets[0].version == 1
    assert b"first-pw" not in await raw_values(store)
    stacks = (await c.ListStacks(api.ListStacksRequest())).stacks
    assert [(s.name, s.services, s.networks, s.secrets) for s in stacks] == [("app", 2, 1, 1)]

    # Same file again: nothing changes, nothing is written.
    revision = await store.revision()
    again = await c.DeployStack(deploy_request(path))
    assert set(actions(again).values()) == {"unchanged"}
    assert await store.revision() == revision

    # One service's replicas: only it is updated (no new task spec, no roll).
    path.write_text(COMPOSE.replace("deploy: {replicas: 1}", "deploy: {replicas: 3}"))
    changed = await c.DeployStack(deploy_request(path))
    assert actions(changed)["service/app_probe"] == "update"
    assert actions(changed)["service/app_web"] == "unchanged"
    await cache.sync()
    assert cache.get(Kind.SERVICE, web.id).meta.version == web.meta.version
    updated_probe = cache.get(Kind.SERVICE, probe.id)
    assert updated_probe.spec.replicated.replicas == 3
    assert updated_probe.spec_version == probe.spec_version

    # The secret's file changed: a new version, and web rolls to it.
    compose(tmp_path, path.read_text(), pw="second-pw")
    rolled = await c.DeployStack(deploy_request(path))
    assert actions(rolled)["secret/app_pw"] == "update"
    assert actions(rolled)["service/app_web"] == "update"
    await cache.sync()
    web2 = cache.get(Kind.SERVICE, web.id)
    assert web2.spec.task.container.secrets[0].version == 2
    assert web2.spec_version == web.spec_version + 1

    # probe gone from the file: kept without --prune, removed with it.
    path.write_text(
        path.read_text().split("  probe:")[0] + COMPOSE.split("    deploy: {replicas: 1}\n")[1]
    )
    kept = await c.DeployStack(deploy_request(path))
    assert "service/app_probe" not in actions(kept)
    pruned = await c.DeployStack(deploy_request(path, prune=True))
    assert actions(pruned)["service/app_probe"] == "remove"

    removed = await c.RemoveStack(api.RemoveStackRequest(name="app"))
    assert set(actions(removed)) == {"service/app_web", "network/app_front", "secret/app_pw"}
    await cache.sync()
    for kind in (Kind.SERVICE, Kind.NETWORK, Kind.SECRET, Kind.SECRET_DATA):
        assert not cache.list_objects(kind), kind
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.RemoveStack(api.RemoveStackRequest(name="app"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_failing_deploy_writes_nothing(
    tmp_path: Path,
    store: Store,
    cache: Cache,
    control: Control,  # noqa: F811
) -> None:
    c, _ = control
    # A name taken by an object outside the stack: refused, and nothing else is created.
    await c.CreateService(
        api.CreateServiceRequest(
            spec=pb.ServiceSpec(
                annotations=pb.Annotations(name="app_probe"),
                task=pb.TaskSpec(container=pb.ContainerSpec(image="127.0.0.1:1/busybox:1")),
            )
        )
    )
    revision = await store.revision()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.DeployStack(deploy_request(compose(tmp_path)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "not part of stack" in (err.value.details() or "")
    assert await store.revision() == revision

    # A missing external object is named; nothing is created.
    ext = COMPOSE.replace("networks:\n  front:\n", "networks:\n  front:\n    external: true\n")
    await c.RemoveService(api.RemoveServiceRequest(ref="app_probe"))
    revision = await store.revision()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.DeployStack(deploy_request(compose(tmp_path, ext)))
    assert "external network 'front' not found" in (err.value.details() or "")
    assert await store.revision() == revision
