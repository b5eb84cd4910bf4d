"""What the agent needs from a container runtime, and the errors it reports.

Two implementations: `containerd` (the product path, containerd's gRPC API)
and `simulated` (runs nothing; for scale benchmarks and fast unit tests).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# The runtime's errors include the registry's.
from shoal.registry import ImagePullError as ImagePullError


class RuntimeFailure(Exception):
    """A runtime operation failed; the message is shown to users in `service ps`."""


class ContainerNotFound(RuntimeFailure):
    pass


class RuntimeUnavailable(Exception):
    """The runtime cannot be reached right now (containerd restarting). Not a
    RuntimeFailure on purpose: it says nothing about the task, which must neither fail
    nor lose its network while its container keeps running; callers try again."""


@dataclass(frozen=True)
class MountConfig:
    # "bind" or "volume" (a directory the runtime keeps per node); "file": a secret or
    # config file the agent made on the task's tmpfs (not subject to the bind policy).
    type: str
    source: str
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class ContainerConfig:
    """Everything needed to create one task's container."""

    container_id: str
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    # "uid[:gid]" or "name[:group]" resolved against the image's /etc/passwd, /etc/group.
    user: str = ""
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[MountConfig] = field(default_factory=list)
    nano_cpus: int = 0
    memory_bytes: int = 0
    # stdout and stderr of the container go here (appended).
    log_path: Path | None = None
    # A network namespace to join (the task's overlay netns); None = a fresh, empty one.
    netns_path: str | None = None
    # The agent's own file for the container's /etc/resolv.conf (the cluster resolver):
    # mounted read-only, not a user bind (those may not come from the agent's state).
    resolv_conf: str | None = None
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp_unconfined: bool = False
    # 0: the default limit; -1: none.
    pids_limit: int = 0


@dataclass(frozen=True)
class ContainerState:
    container_id: str
    # "created", "running", "stopped" (exited), "unknown"
    status: str
    pid: int = 0
    exit_code: int | None = None


class Runtime(Protocol):
    name: str

    async def pull(self, image: str) -> None:
        """Makes the image available locally; raises ImagePullError with the registry's reason."""

    async def create(self, config: ContainerConfig) -> None:
        """Creates the container (not started). Idempotent for an existing container id."""

    async def start(self, container_id: str) -> int:
        """Starts the container's process; returns its pid."""

    async def wait(self, container_id: str) -> int:
        """Blocks until the container's process exits; returns the exit code.

        Works for a container started by an earlier agent process (reattach).
        """

    async def stop(self, container_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s; returns once it has exited."""

    async def remove(self, container_id: str) -> None:
        """Deletes the container and everything it holds (task, snapshot). Idempotent."""

    async def state(self, container_id: str) -> ContainerState | None:
        """The container's current state, or None if it does not exist."""

    async def list(self) -> builtins.list[str]:
        """Ids of all containers this runtime holds for this node."""

    async def exec(self, container_id: str, argv: builtins.list[str], timeout_s: float) -> int:
        """Runs argv inside the running container; returns its exit code (health checks)."""

    async def close(self) -> None: ...
