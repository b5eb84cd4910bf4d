"""A peer that goes silent without closing (its host vanished) ends its gRPC stream
on the agents' server within ~2 s, through the kernel's keepalive alone.

Each case runs in a child process in a network namespace of its own (`unshare
--net`, gone with the process): a gRPC server with the manager's session options,
a client holding a stream open on loopback, then an nftables rule there drops
every packet to the client, as if its host lost power.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from shoal.manager.tcpalive import PING_OPTIONS, keep_alive_on_port

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nft"),
    reason="needs root, unshare and nft",
)
ROOT = Path(__file__).resolve().parent.parent


async def _silent_peer(tuned: bool, wait_s: float) -> float | None:
    """Seconds from the client going silent to its stream ending on the server
    (None: still open after wait_s)."""
    ended = asyncio.get_running_loop().create_future()
    peers: list[str] = []

    async def hold(_request: bytes, context: grpc.aio.ServicerContext) -> None:
        peers.append(context.peer())
        context.add_done_callback(lambda _c: ended.done() or ended.set_result(time.monotonic()))
        await asyncio.Event().wait()
        yield b""

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *PING_OPTIONS])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"Hold": grpc.unary_stream_rpc_method_handler(hold)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if tuned:
        assert keep_alive_on_port(port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_stream("/t.T/Hold")(b"")
    reader = asyncio.ensure_future(call.read())
    await asyncio.sleep(0.5)  # the stream is open on both sides
    assert not ended.done()
    # The client's side of the connection, as the server sees it: "ipv6:[...]:PORT".
    client_port = peers[0].rsplit(":", 1)[1]
    for cmd in (
        "add table inet t",
        "add chain inet t in { type filter hook input priority 0; }",
        f"add rule inet t in tcp dport {client_port} drop",
    ):
        nft = await asyncio.create_subprocess_exec("nft", cmd)
        assert await nft.wait() == 0, cmd
    silent = time.monotonic()
    try:
        return await asyncio.wait_for(ended, wait_s) - silent
    except TimeoutError:
        return None
    finally:
        reader.cancel()
        await server.stop(0)


def _in_own_netns(tuned: bool, wait_s: float) -> float | None:
    code = (
        "import asyncio, json, subprocess;"
        "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True);"
        "from tests.test_tcpalive import _silent_peer;"
        f"print(json.dumps(asyncio.run(_silent_peer({tuned}, {wait_s}))))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: float | None = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_vanished_peer_ends_its_stream_within_about_two_seconds() -> None:
    took = _in_own_netns(tuned=True, wait_s=10)
    assert took is not None and took < 3.0, f"the stream ended after {took} s"


def test_without_the_listener_options_the_stream_stays_open() -> None:
    """The control: the HTTP/2 pings alone (every 30 s now) do not notice in 4 s."""
    assert _in_own_netns(tuned=False, wait_s=4) is None
