"""A joining node's hostname is checked at the NodeCA: terminal escapes and control
characters never reach `node ls` (measured on main: they did), and a refused join
writes nothing (etcd's revision, which `store` reads, is the whole etcd's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.lab.procs import ManagerProcess, free_manager_addr
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Store
from shoal.pki import join as ident_mod

pytestmark = pytest.mark.integration


async def test_hostile_hostnames_refused_at_join(
    tmp_path: Path, etcd: EmbeddedEtcd, store: Store, managers: list[ManagerProcess]
) -> None:
    m = ManagerProcess(
        tmp_path / "m1", *etcd.manager_args(), "--listen-addr", free_manager_addr()
    ).start()
    managers.append(m)
    got = m.ctl("cluster", "join-token", "worker", "-q")
    assert got.code == 0, got.err
    token = got.out.strip()
    before = await store.revision()
    for hostname in ("\x1b[2J\x1b[31mpwned", "a\nb", "", "with space", "x" * 300, "tab\there"):
        with pytest.raises(ident_mod.JoinError) as err:
            await ident_mod.join(m.addr, token, hostname)
        assert "invalid hostname" in str(err.value) and not err.value.transient
        assert await store.revision() == before, f"join as {hostname!r} wrote to etcd"
    ok = await ident_mod.join(m.addr, token, "worker-1.example")
    nodes = json.loads(m.ctl("node", "ls", "--format", "json").out)
    assert {n["hostname"] for n in nodes if n["id"] == ok.node_id} == {"worker-1.example"}
