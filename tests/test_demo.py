"""The README's first command works end to end and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root")]


def test_demo_runs_and_cleans_up() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal.lab", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "worker1" in out.stdout and "worker2" in out.stdout
    line = next(x for x in out.stdout.splitlines() if "-> http://" in x)
    served_by = line.rsplit(": ", 1)[1]
    assert len(served_by) == 12, line  # a container's hostname: the task ID prefix
    # Its own namespaces (other tests may run beside it): the hosts' it printed, and the
    # task namespaces of the nodes in its `node ls`.
    hosts = re.findall(r"^   \w+: (shlab-demo-\w+-\w+) at ", out.stdout, re.M)
    nodes = re.findall(r"^(\w{12}) +(?:manager|worker)\d ", out.stdout, re.M)
    assert len(hosts) == 3 and len(nodes) == 3, out.stdout
    prefixes = (*hosts, *(f"shoal-{n[:10]}-" for n in nodes))
    left = [n for n in os.listdir("/var/run/netns") if n.startswith(prefixes)]
    assert not left, f"namespaces left: {left}"
