"""etcd holds the trust root: the embedded one is TLS-only with client certificates,
and external etcd is reached the way its URLs and credentials say."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from shoal.lab.procs import ManagerProcess
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import EtcdAuth, EtcdConnection, Store, client_config
from shoal.manager.store.etcd import PASSWORD_ENV

pytestmark = pytest.mark.integration


def range_body(key: bytes) -> bytes:
    return json.dumps({"key": base64.b64encode(key).decode()}).encode()


def post_range(url: str, key: bytes, ctx: ssl.SSLContext | None = None) -> dict[str, object]:
    req = urllib.request.Request(f"{url}/v3/kv/range", data=range_body(key), method="POST")
    with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
        return dict(json.loads(resp.read()))


def assert_plain_http_refused(url: str) -> None:
    """Plain HTTP on a TLS-only port: the connection is closed (or a 400), never data."""
    try:
        post_range(url, b"/")
    except urllib.error.HTTPError as err:
        assert err.code == 400
        assert b"kvs" not in err.read()
    except (ConnectionError, http.client.HTTPException, urllib.error.URLError):
        pass
    else:
        raise AssertionError(f"{url} answered a plain HTTP range request")


def client_ctx(etcd: EmbeddedEtcd, with_cert: bool) -> ssl.SSLContext:
    tls = etcd.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file))
    if with_cert:
        assert tls.cert_file is not None and tls.key_file is not None
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


async def test_embedded_etcd_refuses_plain_http_and_certless_clients(etcd: EmbeddedEtcd) -> None:
    store = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    try:
        await store.conn.kv.Put(rpc.PutRequest(key=b"/probe", value=b"secret-value"))
    finally:
        await store.close()
    # Positive control: the manager's client certificate reads the key.
    got = post_range(etcd.url, b"/probe", client_ctx(etcd, with_cert=True))
    kvs = got["kvs"]
    assert isinstance(kvs, list) and base64.b64decode(kvs[0]["value"]) == b"secret-value"
    assert_plain_http_refused(f"http://{etcd.endpoint}")
    # TLS without a client certificate: the handshake is refused.
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        post_range(etcd.url, b"/probe", client_ctx(etcd, with_cert=False))
    # A certless gRPC client gets nothing either.
    creds = grpc.ssl_channel_credentials(root_certificates=etcd.tls.ca_file.read_bytes())  # type: ignore[union-attr]
    async with grpc.aio.secure_channel(etcd.endpoint, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"/probe"), timeout=5)


def test_embedded_etcd_credentials_are_private(
    tmp_path: Path, managers: list[ManagerProcess]
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    pki = m.state_dir / "etcd" / "pki"
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for f in pki.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    ports = json.loads((m.state_dir / "etcd" / "ports.json").read_text())
    assert_plain_http_refused(f"http://127.0.0.1:{ports['client']}")
    # The manager itself works over that TLS: the cluster exists and answers.
    assert m.ctl("cluster", "inspect", "--format", "json").code == 0


async def enable_auth(store: Store, password: str) -> None:
    auth = rpc.AuthStub(store.conn.channel)
    await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"))
    await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password))
    await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    await auth.AuthEnable(rpc.AuthEnableRequest())


async def test_etcd_user_password_auth(etcd: EmbeddedEtcd) -> None:
    admin = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    try:
        await enable_auth(admin, "s3cret")
    finally:
        await admin.close()
    # Without a token the client certificate's CN is the user: no such user, refused.
    plain = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await plain.conn.kv.Range(rpc.RangeRequest(key=b"/x"), timeout=5)
    finally:
        await plain.close()
    wrong = Store(EtcdConnection([etcd.endpoint], etcd.tls, EtcdAuth("root", "nope")))
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await wrong.conn.kv.Range(rpc.RangeRequest(key=b"/x"), timeout=5)
    finally:
        await wrong.close()
    right = Store(EtcdConnection([etcd.endpoint], etcd.tls, EtcdAuth("root", "s3cret")))
    try:
        await right.conn.kv.Put(rpc.PutRequest(key=b"/x", value=b"1"), timeout=5)
        got = await right.conn.kv.Range(rpc.RangeRequest(key=b"/x"), timeout=5)
        assert got.kvs[0].value == b"1"
    finally:
        await right.close()


def test_client_config_from_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    hosts, tls, auth = client_config("https://10.1.2.3:2379,https://h2:2379", None, None, None)
    assert hosts == ["10.1.2.3:2379", "h2:2379"]
    assert tls is not None and tls.ca_file is None  # system roots
    hosts, tls, auth = client_config("http://127.0.0.1:2379", None, None, None)
    assert tls is None and auth is None
    _, tls, _ = client_config("http://127.0.0.1:2379", None, cert, key)
    assert tls is not None and tls.cert_file == cert and tls.ca_file is None
    _, tls, _ = client_config("127.0.0.1:2379", ca, cert, key)
    assert tls is not None and tls.ca_file == ca
    with pytest.raises(ValueError, match="go together"):
        client_config("https://h:2379", None, cert, None)
    with pytest.raises(ValueError, match="mix"):
        client_config("https://h:2379,http://g:2379", None, None, None)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ValueError, match="password"):
        client_config("https://h:2379", None, None, None, user="root")
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    _, _, auth = client_config("https://h:2379", None, None, None, user="root")
    assert auth == EtcdAuth("root", "pw")
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    _, _, auth = client_config("https://h:2379", None, None, None, "root", pw)
    assert auth == EtcdAuth("root", "from-file")
