"""`shoal-lab up`, swarmctl from the root shell, `shoal-lab down`: nothing left behind.

The leftover checks here are the test's own (recorded pids, a /proc scan, /proc/mounts,
the netns directory, the root namespace's links), not the lab's finder, so a `down` that
misses something fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shoal.lab.containerd import containers
from shoal.lab.lab import DATA_ROOT, STATE_ROOT

pytestmark = pytest.mark.integration

NETNS = Path("/var/run/netns")
SLEEPER = "trap 'exit 0' TERM; sleep 3600 & wait"


def lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.lab", *args], capture_output=True, text=True, timeout=timeout
    )


def swarmctl(socket: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "shoal.swarmctl", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "SWARM_SOCKET": socket},
    )
    assert out.returncode == 0, f"swarmctl {' '.join(args)}: {out.stderr}"
    return out.stdout


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (d / "cmdline").read_bytes() and running(int(d.name)):
                out.append(int(d.name))
        except OSError:
            pass
    return out


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip() for line in out.stdout.splitlines()}


def test_up_swarmctl_down_leaves_nothing() -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    state, data = STATE_ROOT / name, DATA_ROOT / name
    links_before = root_links()
    try:
        up = lab("up", "--workers", "3", "--name", name)
        assert up.returncode == 0, up.stdout + up.stderr
        exports = [x for x in up.stdout.splitlines() if x.startswith("export SWARM_SOCKET=")]
        socket = exports[0].split("=", 1)[1]
        record = json.loads((state / "lab.json").read_text())

        nodes = json.loads(swarmctl(socket, "node", "ls", "--format", "json"))
        workers = [n for n in nodes if n["role"] == "worker" and n["status"] == "ready"]
        assert sorted(n["hostname"] for n in workers) == ["worker1", "worker2", "worker3"]

        # On an overlay: task namespaces and VXLAN links that down must remove too.
        swarmctl(socket, "network", "create", "--driver", "overlay", "front")
        swarmctl(
            socket, "service", "create", "--name", "web", "--image", record["image"],
            "--replicas", "3", "--network", "front", "--stop-grace-period", "1s",
            "sh", "-c", SLEEPER,
        )  # fmt: skip
        tasks = json.loads(swarmctl(socket, "service", "ps", "web", "--format", "json"))
        live = [t for t in tasks if t["state"] == "running"]
        assert len(live) == 3, tasks

        # The containers really run, in the workers' own containerds.
        pids = [int(p) for p in record["pids"].values() if p]
        for node in {t["node"] for t in live}:
            host = next(n["hostname"] for n in workers if n["id"] == node)
            ctd = state / f"ctd-{host}" / "containerd.sock"
            found = containers(ctd, node)
            assert any(status == "running" for status, _ in found.values()), found
            pids += [pid for _, pid in found.values() if pid]
        assert all(running(p) for p in pids)
        task_ns = tuple(f"shoal-{n['id'][:10]}-" for n in workers)
        assert len([n for n in os.listdir(NETNS) if n.startswith(task_ns)]) == 3

        ex = lab("exec", "--name", name, "worker1", "--", "ip", "-br", "addr", "show", "eth0")
        worker1 = next(h for h in record["hosts"] if h["name"] == "worker1")
        assert worker1["addr"] in ex.stdout, ex.stdout + ex.stderr

        # As after a crash: the record is gone and an agent died without cleaning up.
        # down must still find everything by name.
        os.kill(record["pids"]["worker2"], signal.SIGKILL)
        (state / "lab.json").unlink()
        down = lab("down", name)
        assert down.returncode == 0, down.stdout + down.stderr

        assert not [p for p in pids if running(p)], "lab processes still running"
        assert not mentioning(f"{state}/") and not mentioning(f"{data}/")
        assert not [m for m in Path("/proc/mounts").read_text().splitlines() if name in m]
        left = [n for n in os.listdir(NETNS) if n.startswith(f"shlab-{name}-")]
        left += [n for n in os.listdir(NETNS) if n.startswith(task_ns)]
        assert not left, f"namespaces left: {left}"
        assert root_links() <= links_before
        assert not state.exists() and not data.exists()
        assert name not in lab("ls").stdout
    finally:
        if state.exists() or any(n.startswith(f"shlab-{name}-") for n in os.listdir(NETNS)):
            lab("down", name)
