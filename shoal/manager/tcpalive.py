"""A vanished agent host noticed by the kernel: TCP keepalive on the agents' port.

The manager must see within seconds that an agent's host is gone (power lost, link
down: no FIN ever comes) for its tasks to move. HTTP/2 keepalive pings every 1.5 s
did that, at a cost per connection and per ping in gRPC core: a timer, a TLS record
out and one in, and the wake-ups of its threads; with 1,000 agents they were about
half the manager's CPU at rest, growing with the fleet. The kernel's TCP keepalive
checks the same thing below TLS: after a second without a segment from the peer it
sends a bare ACK probe, which the peer's kernel answers; no process wakes up while
the peer lives. A connection gets these options from the listening socket that
accepted it (Linux copies them to the new socket), so they are set once, on the
listener gRPC opened, found among this process's descriptors by its port.
"""

from __future__ import annotations

import contextlib
import os
import socket

# Dead after KEEPALIVE_IDLE_S without a segment from the peer and one unanswered
# probe KEEPALIVE_INTERVAL_S later: <= 2 s (the HTTP/2 pings took 1-2.5 s).
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_PROBES = 1
# Data sent and not acknowledged for this long also ends the connection (gRPC core
# sets it on each connection from keepalive_timeout_ms; the listener gets it too).
USER_TIMEOUT_MS = 1000

# The agents' server: HTTP/2 pings now only a slow backstop; the kernel's probes
# (keep_alive_on_port) find a dead peer.
PING_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", USER_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),
]


def _tcp_sockets_on_port(port: int) -> list[socket.socket]:
    """Duplicates of this process's TCP sockets whose local port is `port` (the
    listener, and any connection it already accepted); the caller closes them."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # closed meanwhile
        if (
            sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM
            and sock.getsockname()[1] == port
        ):
            found.append(sock)
        else:
            sock.close()
    return found


def keep_alive_on_port(port: int) -> bool:
    """Kernel keepalive on this process's TCP sockets bound to `port`, and through
    the listener on every connection it accepts from now on. False when no
    listening socket was found (connections there rely on the HTTP/2 pings)."""
    listening = False
    for sock in _tcp_sockets_on_port(port):
        with contextlib.closing(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            # gRPC core may hold the listener under more than one descriptor.
            listening |= bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    return listening
