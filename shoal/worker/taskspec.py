"""What a task's container is made of: the runtime's ContainerConfig from the task."""

from __future__ import annotations

from pathlib import Path

from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.base import ContainerConfig, MountConfig


def container_config(
    task: pb.Task,
    log_path: Path,
    netns_path: str | None,
    files: list[MountConfig] | None = None,
    resolv_conf: Path | None = None,
) -> ContainerConfig:
    c = task.spec.container
    labels = dict(c.labels)
    labels.update(
        {
            "shoal.task.id": task.id,
            "shoal.service.id": task.service_id,
            "shoal.service.name": task.service_name,
            "shoal.task.slot": str(task.slot),
        }
    )
    return ContainerConfig(
        container_id=task.id,
        image=c.image,
        command=list(c.command),
        args=list(c.args),
        env=list(c.env),
        workdir=c.dir,
        user=c.user,
        hostname=task.id[:12],
        labels=labels,
        mounts=[
            MountConfig(
                type="volume" if m.type == pb.Mount.VOLUME else "bind",
                source=m.source,
                target=m.target,
                readonly=m.readonly,
            )
            for m in c.mounts
        ]
        + (files or []),
        nano_cpus=task.spec.limits.nano_cpus,
        memory_bytes=task.spec.limits.memory_bytes,
        log_path=log_path,
        netns_path=netns_path,
        # A task in a namespace of ours resolves through the cluster resolver there.
        resolv_conf=str(resolv_conf) if resolv_conf else None,
        cap_add=list(c.cap_add),
        cap_drop=list(c.cap_drop),
        seccomp_unconfined=c.seccomp == "unconfined",
        pids_limit=c.pids_limit,
        shim_group=shim_group(task),
    )


# Replicas per runc shim process (containerd.py: SHIM_GROUP), and shims per block of
# slots. A shim per container costs a daemon start and ~6 ms of CPU (bench/README.md);
# one shim per service would make a shim crash take the whole service with it, and
# would create its containers one by one (a shim runs one `runc create` at a time).
# So slots are dealt out across SHIM_LANES shims, at most SHIM_GROUP_SIZE in each:
# slots 1-64 in shims 0-7 (slot 1, 9, 17, ... in shim 0), 65-128 in the next eight.
SHIM_GROUP_SIZE = 8
SHIM_LANES = 8


def shim_group(task: pb.Task) -> str:
    """The shim a task's container joins: its service's, by slot, so a replacement
    for a slot finds its siblings' shim. Global tasks (one per node) get their own."""
    if not task.slot or not task.service_id:
        return ""
    block, lane = divmod(task.slot - 1, SHIM_LANES)
    return f"{task.service_id}.{block // SHIM_GROUP_SIZE}.{lane}"
