"""A removed manager's certificate (still valid for weeks) is refused at once."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from shoal.lab.procs import ManagerProcess
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.pki.identity import NodeIdentity
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc

from .test_managers_ha import nodes_json, two_managers, wait_for

pytestmark = pytest.mark.integration


async def list_services_as(ident: NodeIdentity, addr: str) -> int:
    async with ident.channel(addr) as ch:
        resp = await api_grpc.ControlStub(ch).ListServices(api.ListServicesRequest(), timeout=10)
    return len(resp.services)


async def test_removed_manager_certificate_loses_control_at_once(
    tmp_path: Path, etcd: EmbeddedEtcd, managers: list[ManagerProcess]
) -> None:
    m1, m2 = two_managers(tmp_path, etcd, managers)
    ident = NodeIdentity.load(m2.state_dir)
    assert ident is not None
    # Positive control: while mgr2 is a member, its certificate runs the Control API.
    assert await list_services_as(ident, m1.addr) == 0
    assert m2.stop() == 0
    wait_for(
        lambda: nodes_json(m1)["mgr2"]["manager_status"]["reachable"] is False, 10, "mgr2 down"
    )
    assert m1.ctl("node", "rm", "mgr2").code == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_services_as(ident, m1.addr)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "removed" in (err.value.details() or "")
