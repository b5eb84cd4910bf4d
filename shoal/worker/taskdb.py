"""The agent's small local record of its tasks (and their networks), so a restart reattaches.

One file per task under the state dir, holding the task as last assigned and
the last status the agent observed; written atomically (tmp + rename).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)


class TaskDB:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, task_id: str) -> Path:
        return self.root / f"{task_id}.pb"

    def put(self, task: pb.Task) -> None:
        """Stores the task with its status as this agent sees it."""
        _write(self._path(task.id), task.SerializeToString())

    def put_network(self, net: pb.Network) -> None:
        _write(self.root / f"net-{net.id}.net", net.SerializeToString())

    def load_networks(self) -> list[pb.Network]:
        nets = []
        for path in sorted(self.root.glob("net-*.net")):
            net = pb.Network()
            with contextlib.suppress(Exception):
                net.ParseFromString(path.read_bytes())
                nets.append(net)
        return nets

    def delete(self, task_id: str) -> None:
        self._path(task_id).unlink(missing_ok=True)

    def load(self) -> list[pb.Task]:
        tasks = []
        for path in sorted(self.root.glob("*.pb")):
            task = pb.Task()
            try:
                task.ParseFromString(path.read_bytes())
            except Exception as err:  # a torn file from a crash: the manager knows the task
                log.warning("ignoring unreadable task record %s: %s", path, err)
                continue
            tasks.append(task)
        return tasks


def _write(path: Path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
