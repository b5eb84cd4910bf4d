"""Probes inside tasks' network namespaces (simulated tasks have a real namespace but
no process): an httpd answering with the task's id, and a GET from another task."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from shoal.proto import objects_pb2 as pb

BUSYBOX = shutil.which("busybox") or "busybox"


def task_netns(task: pb.Task) -> str:
    return f"/var/run/netns/shoal-{task.node_id[:10]}-{task.id[:16]}"


def ip_of(task: pb.Task) -> str:
    return task.networks[0].addresses[0].partition("/")[0]


class Servers:
    """httpd in tasks' namespaces, each answering with its task id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def serve(self, task: pb.Task) -> None:
        www = self.root / "www" / task.id
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_text(task.id)
        self.procs.append(
            subprocess.Popen(
                [
                    "nsenter",
                    f"--net={task_netns(task)}",
                    BUSYBOX,
                    "httpd",
                    "-f",
                    "-p",
                    "8080",
                    "-h",
                    str(www),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


class FetchError(Exception):
    """A GET that got no page, with why: no answer in time, or wget's / nsenter's words."""


def fetch(client: pb.Task, server: pb.Task, timeout_s: float = 2) -> str:
    """GET from inside the client's namespace: the page, or FetchError saying why not.
    (busybox wget -T crashes: the timeout is the subprocess's.)"""
    url = f"http://{ip_of(server)}:8080/"
    try:
        out = subprocess.run(
            ["nsenter", f"--net={task_netns(client)}", BUSYBOX, "wget", "-q", "-O", "-", url],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise FetchError(f"{url}: no answer within {timeout_s}s") from None
    if out.returncode != 0:
        raise FetchError(f"{url}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout.strip()
