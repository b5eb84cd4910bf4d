"""The cluster resolver: 127.0.0.11:53 (UDP and TCP) inside every task's namespace.

The sockets are created in each task's namespace (they stay there) and all
are served by the agent's one asyncio loop: no DNAT, no process per task.
Each task has its own table of names (services on the networks it shares,
`tasks.NAME`), set by the agent whenever services or endpoints change.
Cluster names answer with a short TTL; an unknown single-label name gets
NXDOMAIN at once; anything else goes to the host's resolvers (timeout and
a cap on queries in flight), from the agent's own namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from shoal.overlay import netns

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
PORT = 53
TTL_S = 2
FORWARD_TIMEOUT_S = 2.0
MAX_FORWARDS = 64
RESOLV_CONF = "nameserver 127.0.0.11\noptions ndots:0\n"


def host_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's resolvers: where names that are not the cluster's are forwarded."""
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                out.append(parts[1])
    return out


@dataclass
class _Task:
    names: dict[str, list[str]] = field(default_factory=dict)
    # name -> shuffle the answer on every query (dnsrr)
    shuffle: set[str] = field(default_factory=set)
    udp: asyncio.DatagramTransport | None = None
    tcp: asyncio.Server | None = None


class Resolver:
    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self.tasks: dict[str, _Task] = {}
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self._pending: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ tasks

    async def add(self, task_id: str, path: str) -> None:
        """Starts serving in the task's namespace (idempotent)."""
        if task_id in self.tasks:
            return
        entry = _Task()
        self.tasks[task_id] = entry
        loop = asyncio.get_running_loop()
        udp = netns.socket_in(path, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = netns.socket_in(path, socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((ADDRESS, PORT))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((ADDRESS, PORT))
            tcp.listen(64)
            udp.setblocking(False)
            tcp.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self, task_id), sock=udp
            )
            entry.udp = transport
            entry.tcp = await asyncio.start_server(lambda r, w: self._tcp(task_id, r, w), sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            self.tasks.pop(task_id, None)
            raise

    def set_names(self, task_id: str, names: dict[str, list[str]], shuffle: set[str]) -> None:
        entry = self.tasks.get(task_id)
        if entry is not None:
            entry.names = names
            entry.shuffle = shuffle

    def remove(self, task_id: str) -> None:
        entry = self.tasks.pop(task_id, None)
        if entry is None:
            return
        if entry.udp is not None:
            entry.udp.close()
        if entry.tcp is not None:
            entry.tcp.close()

    def close(self) -> None:
        for task_id in list(self.tasks):
            self.remove(task_id)
        for pending in self._pending:
            pending.cancel()

    # ------------------------------------------------------------ answers

    def local(self, task_id: str, query: DNSRecord) -> DNSRecord | None:
        """The answer from the task's table, or None: forward it."""
        entry = self.tasks.get(task_id)
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        reply = query.reply()
        reply.header.ra = 1
        known = entry.names.get(name) if entry is not None else None
        if known is not None:
            if q.qtype in (QTYPE.A, QTYPE.ANY):
                ips = list(known)
                if entry is not None and name in entry.shuffle:
                    random.shuffle(ips)
                for ip in ips:
                    reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ip), ttl=TTL_S))
            return reply
        head, _, rest = name.partition(".")
        if not rest or (head == "tasks" and "." not in rest) or not self.upstreams:
            # A single label (or tasks.LABEL) is a service's name or nothing: no
            # upstream knows it.
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        return None

    async def answer(self, task_id: str, data: bytes) -> bytes | None:
        query = parse(data)
        if query is None:
            return None
        reply = self.local(task_id, query)
        if reply is not None:
            return bytes(reply.pack())
        return await self.forward(query, data)

    async def forward(self, query: DNSRecord, data: bytes) -> bytes:
        async with self._forwards:
            loop = asyncio.get_running_loop()
            for upstream in self.upstreams:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    try:
                        await loop.sock_sendto(s, data, (upstream, 53))
                        got, _ = await asyncio.wait_for(
                            loop.sock_recvfrom(s, 65535), FORWARD_TIMEOUT_S
                        )
                        return got
                    except (OSError, TimeoutError):
                        continue
        reply = query.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())

    def spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _tcp(
        self, task_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                out = await self.answer(task_id, data)
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, task_id: str) -> None:
        self.resolver = resolver
        self.task_id = task_id
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = parse(data)
        if query is None or self.transport is None:
            return
        reply = self.resolver.local(self.task_id, query)
        if reply is not None:  # the common case: answered inline, no task
            self.transport.sendto(bytes(reply.pack()), addr)
        else:
            self.resolver.spawn(self._forward(query, data, addr))

    async def _forward(self, query: DNSRecord, data: bytes, addr: tuple[str, int]) -> None:
        out = await self.resolver.forward(query, data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


def parse(data: bytes) -> DNSRecord | None:
    try:
        query = DNSRecord.parse(data)
    except Exception:
        return None  # not DNS: dropped
    return query if query.questions else None
