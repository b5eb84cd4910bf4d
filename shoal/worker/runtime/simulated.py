"""A runtime that runs nothing: containers are records with states and delays.

Only for scale benchmarks (many hollow nodes per process) and fast unit tests;
never the product path. An image whose name contains "missing" fails to pull.
With a state dir, its "containers" outlive an agent restart, as real ones do.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from dataclasses import dataclass, field
from pathlib import Path

from shoal.worker.runtime.base import (
    ContainerConfig,
    ContainerNotFound,
    ContainerState,
    ImagePullError,
)


@dataclass
class _Container:
    config: ContainerConfig
    status: str = "created"
    exit_code: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class SimulatedRuntime:
    name = "simulated"

    def __init__(
        self,
        pull_delay_s: float = 0.0,
        start_delay_s: float = 0.0,
        state_dir: Path | None = None,
    ) -> None:
        self.pull_delay_s = pull_delay_s
        self.start_delay_s = start_delay_s
        self.containers: dict[str, _Container] = {}
        self._pids = 1000
        # One small file per container: a change costs O(1), as on a real host.
        self.state_dir = state_dir
        if state_dir is None:
            return
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in state_dir.glob("*.json"):
            saved = json.loads(path.read_text())
            c = _Container(
                ContainerConfig(container_id=path.stem, image=saved["image"]),
                saved["status"],
                saved["exit_code"],
            )
            if c.status == "stopped":
                c.exited.set()
            self.containers[path.stem] = c

    def _save(self, container_id: str) -> None:
        if self.state_dir is None:
            return
        path = self.state_dir / f"{container_id}.json"
        c = self.containers.get(container_id)
        if c is None:
            path.unlink(missing_ok=True)
            return
        tmp = self.state_dir / f"{container_id}.tmp"
        tmp.write_text(
            json.dumps({"image": c.config.image, "status": c.status, "exit_code": c.exit_code})
        )
        tmp.replace(path)

    def _get(self, container_id: str) -> _Container:
        c = self.containers.get(container_id)
        if c is None:
            raise ContainerNotFound(f"container {container_id} not found")
        return c

    async def pull(self, image: str) -> None:
        if self.pull_delay_s:
            await asyncio.sleep(self.pull_delay_s)
        if "missing" in image:
            raise ImagePullError(f"pull {image}: manifest unknown: manifest unknown")

    async def create(self, config: ContainerConfig) -> None:
        self.containers.setdefault(config.container_id, _Container(config))
        self._save(config.container_id)

    async def start(self, container_id: str) -> int:
        c = self._get(container_id)
        if self.start_delay_s:
            await asyncio.sleep(self.start_delay_s)
        c.status = "running"
        self._pids += 1
        self._save(container_id)
        return self._pids

    async def wait(self, container_id: str) -> int:
        c = self._get(container_id)
        await c.exited.wait()
        return c.exit_code or 0

    def exit(self, container_id: str, code: int) -> None:
        """Makes a running container exit, as if its process ended (for tests)."""
        c = self._get(container_id)
        c.status, c.exit_code = "stopped", code
        c.exited.set()
        self._save(container_id)

    async def stop(self, container_id: str, grace_s: float) -> None:
        c = self.containers.get(container_id)
        if c is not None and c.status == "running":
            self.exit(container_id, 143)

    async def remove(self, container_id: str) -> None:
        self.containers.pop(container_id, None)
        self._save(container_id)

    async def state(self, container_id: str) -> ContainerState | None:
        c = self.containers.get(container_id)
        if c is None:
            return None
        return ContainerState(
            container_id, c.status, 1 if c.status == "running" else 0, c.exit_code
        )

    async def list(self) -> builtins.list[str]:
        return list(self.containers)

    async def exec(self, container_id: str, argv: builtins.list[str], timeout_s: float) -> int:
        return 0 if self._get(container_id).status == "running" else 1

    async def close(self) -> None:
        pass
