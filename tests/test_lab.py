"""`shoal-lab up`, swarmctl from the root shell, `shoal-lab down`: nothing left behind.

The leftover checks here are the test's own (recorded pids, a /proc scan, /proc/mounts,
the netns directory, the root namespace's links), not the lab's finder, so a `down` that
misses something fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shoal.lab.containerd import containers
from shoal.lab.lab import DATA_ROOT, STATE_ROOT
from shoal.lab.units import command_line, unit_text

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


def test_lab_runs_the_units_command_lines() -> None:
    """The lab's argv is the unit's ExecStart, expanded as systemd does: ${VAR} is one
    argument, $VAR splits; unset variables take the unit's Environment= defaults."""
    argv = command_line(
        "worker",
        {
            "SHOAL_JOIN_ADDR": "10.0.0.1:4242",
            "SHOAL_ADVERTISE_ADDR": "10.0.0.2",
            "SHOAL_WORKER_ARGS": "--hostname w1  --runtime simulated",
        },
    )
    assert argv == [
        sys.executable, "-m", "shoal.daemon", "worker",
        "--state-dir", "/var/lib/shoal",
        "--join-addr", "10.0.0.1:4242",
        "--join-token-file", "/etc/shoal/join-token",
        "--advertise-addr", "10.0.0.2",
        "--hostname", "w1", "--runtime", "simulated",
    ]  # fmt: skip
    worker = unit_text("worker")
    assert "Restart=on-failure" in worker
    # Stopping the agent must leave its containers (containerd's shims) running.
    assert "KillMode=process" in worker
    assert "--join-token" not in worker.replace("--join-token-file", "")
    manager = command_line("manager", {"SHOAL_ADVERTISE_ADDR": "10.0.0.1"})
    assert manager[3:] == [
        "manager", "--state-dir", "/var/lib/shoal", "--listen-addr", "0.0.0.0:4242",
        "--advertise-addr", "10.0.0.1",
    ]  # fmt: skip
    assert "Restart=on-failure" in unit_text("manager")


@pytest.mark.parametrize(
    ("content", "extra", "error"),
    [
        ("", [], "is empty"),
        ("SWMTKN-1-x", ["--join-token", "SWMTKN-1-y"], "exclusive"),
        (None, [], "No such file"),
    ],
)
def test_join_token_file_refused(
    tmp_path: Path, content: str | None, extra: list[str], error: str
) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    for role in ("worker", "manager"):
        out = subprocess.run(
            [
                sys.executable, "-m", "shoal.daemon", role, "--state-dir", str(tmp_path / role),
                "--join-addr", "127.0.0.1:1", "--join-token-file", str(token), *extra,
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert error in out.stderr
        assert not (tmp_path / role).exists()


@pytest.mark.integration
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
        node_ns = tuple(f"shoal-{n['id'][:10]}-" for n in workers)
        ours = [n for n in os.listdir(NETNS) if n.startswith(node_ns)]
        # One namespace per task, and one per network on each worker that runs one
        # (its bridge and VXLAN device: `-n<VNI>`).
        tasks_ns = [n for n in ours if not re.fullmatch(r"n\d+", n.rsplit("-", 1)[1])]
        assert len(tasks_ns) == 3, ours
        assert len(ours) - len(tasks_ns) == len({t["node"] for t in live}), ours

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
        left += [n for n in os.listdir(NETNS) if n.startswith(node_ns)]
        assert not left, f"namespaces left: {left}"
        assert root_links() <= links_before
        assert not state.exists() and not data.exists()
        assert name not in lab("ls").stdout
    finally:
        if state.exists() or any(n.startswith(f"shlab-{name}-") for n in os.listdir(NETNS)):
            lab("down", name)
