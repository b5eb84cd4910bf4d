"""Service images pinned to digests at create and update, as Swarm does: every task
of a service runs the same bytes even if the tag is pushed again meanwhile, and
`update --image app:latest` (or `update --force`) really pulls the new one.
"""

from __future__ import annotations

import asyncio
import logging

from shoal.registry import ImagePullError, RegistryClient, pinned_reference

log = logging.getLogger(__name__)

# The manager waits this long for the registry in all (the token, the manifest: several
# requests); then the service goes on unpinned. Well under swarmctl's 10 s per call, so
# a slow registry never makes a create answer after the CLI has given up on it.
RESOLVE_TIMEOUT_S = 5.0


class ImagePinner:
    def __init__(self, insecure: set[str] | None = None) -> None:
        self.registry = RegistryClient(insecure=insecure, timeout_s=RESOLVE_TIMEOUT_S)

    async def pin(self, image: str) -> tuple[str, str]:
        """(REF@sha256:..., "") or, when the registry cannot say, ("", a warning)."""
        try:
            resolved = await asyncio.wait_for(self.registry.resolve(image), RESOLVE_TIMEOUT_S)
        except TimeoutError:
            return "", self._unpinned(image, f"no answer within {RESOLVE_TIMEOUT_S:.0f} s")
        except ImagePullError as err:
            return "", self._unpinned(image, str(err))
        return pinned_reference(image, resolved.target.digest), ""

    @staticmethod
    def _unpinned(image: str, why: str) -> str:
        warning = (
            f"image {image} could not be resolved to a digest on the manager ({why}); "
            "it is left unpinned and each node resolves it when it pulls"
        )
        log.warning("%s", warning)
        return warning

    async def close(self) -> None:
        await self.registry.close()
