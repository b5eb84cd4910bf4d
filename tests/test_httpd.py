"""The daemons' HTTP side: address parsing, mTLS with the cluster CA, cgroup reading."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from shoal.httpd import BadHttpAddr, HttpAddr, HttpServer, mtls_context, parse_http_addr
from shoal.pki import ca
from shoal.proto import objects_pb2 as pb
from shoal.worker.metrics import NodeUsageSampler, cgroup_usage, netns_bytes


def test_parse_http_addr() -> None:
    assert parse_http_addr(":9100") == HttpAddr("127.0.0.1", 9100)
    assert parse_http_addr("9100") == HttpAddr("127.0.0.1", 9100)
    assert parse_http_addr("10.0.0.1:80") == HttpAddr("10.0.0.1", 80)
    assert parse_http_addr("[::1]:80") == HttpAddr("::1", 80)
    assert parse_http_addr(":9100").loopback
    assert not parse_http_addr("0.0.0.0:9100").loopback
    for bad in ("x", "host:", ":99999", "a:b"):
        with pytest.raises(BadHttpAddr):
            parse_http_addr(bad)


def test_non_loopback_without_tls_is_refused() -> None:
    async def ok() -> tuple[bool, str]:
        return True, ""

    with pytest.raises(BadHttpAddr, match="mTLS"):
        HttpServer(HttpAddr("0.0.0.0", 0), CollectorRegistry(), ok)


def _cert(root: pb.RootCA, role: pb.NodeRole.ValueType) -> tuple[bytes, bytes]:
    key = ca.new_key()
    cert = ca.issue_cert(
        root, ca.new_csr(key), "node1", role, "cluster1", datetime.timedelta(hours=1)
    )
    return cert, ca.key_pem(key)


async def test_mtls_requires_a_cluster_certificate(tmp_path: Path) -> None:
    root = ca.new_root_ca("cluster1")
    cert, key = _cert(root, pb.ROLE_MANAGER)
    registry = CollectorRegistry()
    Counter("probe", "a probe", registry=registry).inc()

    async def ok() -> tuple[bool, str]:
        return True, "fine"

    server = HttpServer(
        HttpAddr("127.0.0.1", 0), registry, ok, mtls_context(cert, key, root.ca_cert_pem)
    )
    await server.start()
    try:
        url = f"https://127.0.0.1:{server.port}/metrics"
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(root.ca_cert_pem)

        def client_context(name: str, pair: tuple[bytes, bytes] | None) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.check_hostname = False
            if pair is not None:
                (tmp_path / f"{name}.crt").write_bytes(pair[0])
                (tmp_path / f"{name}.key").write_bytes(pair[1])
                ctx.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
            return ctx

        # No client certificate, or one from another CA: the handshake fails.
        other = _cert(ca.new_root_ca("other"), pb.ROLE_MANAGER)
        for refused in (client_context("none", None), client_context("other", other)):
            async with httpx.AsyncClient(verify=refused) as client:
                with pytest.raises(httpx.HTTPError):
                    await client.get(url)
        # The cluster's certificate (a worker's will do: it is read-only).
        good = client_context("worker", _cert(root, pb.ROLE_WORKER))
        async with httpx.AsyncClient(verify=good) as client:
            r = await client.get(url)
            assert r.status_code == 200 and "probe_total 1.0" in r.text
            h = await client.get(f"https://127.0.0.1:{server.port}/healthz")
            assert h.status_code == 200 and h.text == "fine\n"
    finally:
        await server.stop()


def test_cgroup_v1_and_v2_files(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    d = v2 / "shoal" / "ns" / "c1"
    d.mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (d / "memory.current").write_text("10485760\n")
    (d / "memory.stat").write_text("anon 1\ninactive_file 4194304\n")
    u = cgroup_usage("/shoal/ns/c1", v2)
    assert u.cpu_seconds == 2.5 and u.memory_bytes == 6 * 1024 * 1024

    v1 = tmp_path / "v1"
    (v1 / "cpuacct" / "shoal" / "ns" / "c1").mkdir(parents=True)
    (v1 / "memory" / "shoal" / "ns" / "c1").mkdir(parents=True)
    (v1 / "cpuacct" / "shoal" / "ns" / "c1" / "cpuacct.usage").write_text("1500000000\n")
    (v1 / "memory" / "shoal" / "ns" / "c1" / "memory.usage_in_bytes").write_text("8192\n")
    (v1 / "memory" / "shoal" / "ns" / "c1" / "memory.stat").write_text("total_inactive_file 0\n")
    u = cgroup_usage("/shoal/ns/c1", v1)
    assert u.cpu_seconds == 1.5 and u.memory_bytes == 8192
    # A container that is gone: nothing, not an error.
    assert cgroup_usage("/shoal/ns/gone", v1) == cgroup_usage("/shoal/ns/gone", v2)


def test_own_netns_bytes_and_node_usage() -> None:
    import os

    counts = netns_bytes(os.getpid())
    assert counts is not None and all(c >= 0 for c in counts)
    sampler = NodeUsageSampler()
    first = sampler()
    assert first.memory_total_bytes > first.memory_used_bytes > 0
    second = sampler()
    assert 0 <= second.cpu_fraction <= 1
