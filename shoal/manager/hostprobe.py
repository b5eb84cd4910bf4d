"""Is the host still there? Told apart by its kernel, not by its agent.

When an agent's session drops without a goodbye, either its process died (a crash,
the OOM killer: its containers still run) or its host went away (power, network).
The first must not cost a reschedule, the second must fail over fast. A host whose
kernel answers a TCP connection attempt, even with a refusal (nothing listens on the
agent's old port any more), is up; one that does not answer in PROBE_TIMEOUT_S is
taken for gone.
"""

from __future__ import annotations

import asyncio

# Well inside the leader's 1 s grace for a lost session (liveness.SESSION_GRACE_S).
PROBE_TIMEOUT_S = 0.5


def peer_addr(peer: str) -> tuple[str, int] | None:
    """gRPC's peer string (`ipv4:10.0.0.5:41234`, `ipv6:[::1]:5`) -> (host, port)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


async def host_answers(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True if the host's kernel answered (connected or refused) within the timeout."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except ConnectionRefusedError:
        return True
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
