"""Probes from inside a task's network namespace, without a process per probe.

Sockets are created in the namespace (shoal's ctypes setns) and used from the
test process: DNS queries to the cluster resolver, HTTP GETs through VIPs.
"""

from __future__ import annotations

import socket
import subprocess
import time

from dnslib import QTYPE, RCODE, DNSRecord

from shoal.overlay import netns
from shoal.proto import objects_pb2 as pb


def task_netns(task: pb.Task) -> str:
    return f"/var/run/netns/shoal-{task.node_id[:10]}-{task.id[:16]}"


def ip_of(task: pb.Task, index: int = 0) -> str:
    return task.networks[index].addresses[0].partition("/")[0]


def dns(path: str, name: str, timeout: float = 2.0) -> tuple[str, list[str], float]:
    """(rcode name, A records, seconds) of a query to 127.0.0.11 in the namespace."""
    s = netns.socket_in(path, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        start = time.monotonic()
        s.sendto(bytes(DNSRecord.question(name, "A").pack()), ("127.0.0.11", 53))
        try:
            data, _ = s.recvfrom(65535)
        except TimeoutError:
            return "TIMEOUT", [], time.monotonic() - start
        took = time.monotonic() - start
    finally:
        s.close()
    reply = DNSRecord.parse(data)
    ips = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
    return RCODE.get(reply.header.rcode), ips, took


def dns_tcp(path: str, name: str) -> list[str]:
    s = netns.socket_in(path, socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(("127.0.0.11", 53))
        q = bytes(DNSRecord.question(name, "A").pack())
        s.sendall(len(q).to_bytes(2, "big") + q)
        size = int.from_bytes(_read(s, 2), "big")
        reply = DNSRecord.parse(_read(s, size))
    finally:
        s.close()
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def _read(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def http_get(path: str | None, ip: str, port: int, timeout: float = 2.0, hold_s: float = 0) -> str:
    """The body of GET / ("" on any failure), from the namespace at path (None: ours).
    hold_s: wait that long between connecting and asking (a request in flight)."""
    s = (
        netns.socket_in(path, socket.AF_INET, socket.SOCK_STREAM)
        if path
        else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    )
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
        time.sleep(hold_s)
        s.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return ""
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode(errors="replace").strip() if b" 200 " in head.split(b"\r\n")[0] else ""


def host_get(netns_name: str, ip: str, port: int, timeout: float = 2.0, hold_s: float = 0) -> str:
    """GET from a (lab) host namespace by name."""
    return http_get(f"/var/run/netns/{netns_name}", ip, port, timeout, hold_s)


def links(netns_name: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns_name, "-o", "link"], capture_output=True, text=True
    ).stdout


def nft_tables(netns_name: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{netns_name}", "nft", "list", "tables"],
        capture_output=True,
        text=True,
    ).stdout
