"""Published ports in the host's namespace (nftables DNAT on the way in).

A connection to one of the host's own addresses on a published port goes to
a local serving task of the service when there is one (through the task's
egress leg, so the task sees the client's real address), otherwise - mode
ingress only - to a node that has one, on the same published port; only
that forwarded path is masqueraded (so replies come back through this node).
Mode host ports answer only where a task runs. TCP and UDP. A port some
process on the host already listens on is left alone and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from shoal.overlay.nft import Nft, fresh_chains

log = logging.getLogger(__name__)

TABLE = "shoal-pub"
FORWARD_MARK = 0x5348  # a forwarded connection's first packet: masquerade it


@dataclass(frozen=True)
class Published:
    protocol: str  # tcp | udp
    port: int
    local: tuple[tuple[str, int], ...]  # (task's egress address, target port)
    remote: tuple[str, ...]  # addresses of nodes with a serving task (ingress only)


def port_in_use(protocol: str, port: int) -> bool:
    """Whether a process on this host holds the port (our DNAT never binds it)."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def _map(targets: list[str]) -> str:
    return ", ".join(f"{i} : {t}" for i, t in enumerate(targets))


def render(ports: list[Published]) -> str:
    lines = fresh_chains(
        TABLE,
        {
            "pre": "type nat hook prerouting priority -100",
            "post": "type nat hook postrouting priority 100",
        },
    )
    lines.append(f"add rule ip {TABLE} post meta mark {FORWARD_MARK:#x} masquerade")
    for p in sorted(ports, key=lambda x: (x.protocol, x.port)):
        match = f"add rule ip {TABLE} pre fib daddr type local {p.protocol} dport {p.port}"
        if p.local:
            targets = [f"{addr} . {target}" for addr, target in p.local]
            lines.append(
                f"{match} dnat ip to numgen random mod {len(targets)} map {{ {_map(targets)} }}"
            )
        elif p.remote:
            targets = [f"{addr} . {p.port}" for addr in p.remote]
            lines.append(
                f"{match} meta mark set {FORWARD_MARK:#x} "
                f"dnat ip to numgen random mod {len(targets)} map {{ {_map(targets)} }}"
            )
        elif p.protocol == "tcp":
            lines.append(f"{match} reject with tcp reset")
        else:
            lines.append(f"{match} reject")
    return "\n".join(lines) + "\n"


class HostPorts:
    """The host's published-port table; replaced in one transaction when it changes."""

    def __init__(self, marker: Path | None = None) -> None:
        self._nft: Nft | None = None
        # Exists while this host has a table of ours: after an agent restart, a table
        # the previous run left is replaced or removed; a host that never published
        # anything is never touched (no nftables context made, no table looked for).
        self.marker = marker
        self._script: str | None = None if marker is not None and marker.exists() else ""

    async def apply(self, ports: list[Published]) -> None:
        script = render(ports) if ports else ""
        if script == self._script:
            return
        if self._nft is None:
            self._nft = await asyncio.to_thread(Nft)
        if self.marker is not None and script:
            self.marker.touch()
        if script:
            # Forwarding to local tasks' legs and to other nodes (this namespace's own
            # setting; a node without local tasks has no egress bridge that set it).
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            await asyncio.to_thread(self._nft.run, script)
        else:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._nft.run, f"delete table ip {TABLE}\n")
            if self.marker is not None:
                self.marker.unlink(missing_ok=True)
        self._script = script

    def close(self) -> None:
        if self._nft is not None:
            self._nft.close()
            self._nft = None
