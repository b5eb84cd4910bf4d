"""Netlink link helpers of the overlay driver, and finding the devices it left behind.

The driver makes a network's VXLAN device and a task's veth pair in the host's
namespace and then moves them out; an agent killed in between leaves them there,
under names only the driver gives (`HOST_STRAY`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

NLM_F_DUMP_INTR = 0x10
# A network's VXLAN device and bridge, a task's veth ends (see driver.py's names).
HOST_STRAY = re.compile(r"(svx|sbr)-\d+|sv[hp][0-9a-f]{10}")


async def all_of(result: Any) -> list[Any]:
    """pyroute2 returns lists for some requests and async generators for dumps."""
    if hasattr(result, "__aiter__"):
        return [x async for x in result]
    return list(result)


async def lookup(ipr: AsyncIPRoute, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


async def dump_links(ipr: AsyncIPRoute, tries: int = 5) -> list[Any]:
    """A link dump, done again when the kernel says links changed while it ran
    (NLM_F_DUMP_INTR): such a dump may miss some."""
    links: list[Any] = []
    for _ in range(tries):
        links = await all_of(await ipr.link("dump"))
        if not any(int(m["header"].get("flags") or 0) & NLM_F_DUMP_INTR for m in links):
            break
    return links


async def delete_host_links(names: list[str]) -> None:
    """Deletes those of these links that are in the host's namespace (looked up by name)."""
    if not names:
        return
    async with AsyncIPRoute() as ipr:
        for name in names:
            idx = await lookup(ipr, name)
            if idx is not None:
                log.info("overlay: removing %s left in the host's namespace", name)
                with contextlib.suppress(NetlinkError):
                    await ipr.link("del", index=idx)
