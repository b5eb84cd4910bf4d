"""An agent in a mount namespace containerd cannot see (`ip netns exec`, `unshare -m`)
refuses to start, in one line, instead of failing every task with runc's EOF."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.lab.containerd import Containerd

pytestmark = pytest.mark.integration


def start_worker(
    prefix: list[str], state: Path, containerd: Containerd
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "shoal.daemon",
            "worker",
            "--state-dir",
            str(state),
            "--join-addr",
            "127.0.0.1:9",
            "--join-token",
            "not-a-token",
            "--containerd-socket",
            str(containerd.socket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_in_a_private_mount_namespace_refuses_to_start(
    tmp_path: Path, containerd: Containerd
) -> None:
    got = start_worker(["unshare", "-m", "--propagation", "private"], tmp_path / "a", containerd)
    assert got.returncode == 1
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "different mount namespace than containerd" in lines[0], got.stderr
    # Positive control: in containerd's mount namespace the check passes, and the agent
    # gets as far as its (bad) join token.
    ok = start_worker([], tmp_path / "b", containerd)
    assert ok.returncode == 1 and "mount namespace" not in ok.stderr, ok.stderr
    assert "token" in ok.stderr
