"""Service images pinned to digests at create and update, as Swarm does: every task
of a service runs the same bytes even if the tag is pushed again meanwhile, and
`update --image app:latest` (or `update --force`) really pulls the new one.
"""

from __future__ import annotations

import logging

from shoal.registry import ImagePullError, RegistryClient, pinned_reference

log = logging.getLogger(__name__)

# The manager waits this long for the registry; then the service goes on unpinned.
RESOLVE_TIMEOUT_S = 10.0


class ImagePinner:
    def __init__(self, insecure: set[str] | None = None) -> None:
        self.registry = RegistryClient(insecure=insecure, timeout_s=RESOLVE_TIMEOUT_S)

    async def pin(self, image: str) -> tuple[str, str]:
        """(REF@sha256:..., "") or, when the registry cannot say, ("", a warning)."""
        try:
            resolved = await self.registry.resolve(image)
        except ImagePullError as err:
            warning = (
                f"image {image} could not be resolved to a digest on the manager ({err}); "
                "it is left unpinned and each node resolves it when it pulls"
            )
            log.warning("%s", warning)
            return "", warning
        return pinned_reference(image, resolved.target.digest), ""

    async def close(self) -> None:
        await self.registry.close()
