"""Confinement seen from inside real containers: the default seccomp profile, the pids
limit and the cgroup namespace, and the explicit ways out of them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shoal.lab.containerd import RUNC_ROOT
from shoal.worker.runtime import ociruntime

from . import test_containers
from .test_containers import Cluster

cluster = test_containers.cluster  # the fixture, shared

pytestmark = pytest.mark.integration

PROBE = (
    "grep -E '^(Seccomp|CapEff):' /proc/self/status; "
    "unshare -U true 2>/dev/null && echo USERNS=yes || echo USERNS=no; "
    "echo PIDS=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max); "
    "echo CGROUP=$(cat /proc/self/cgroup | head -1); echo DONE; sleep 1000"
)


# What the cluster's workers run: SHOAL_OCI_RUNTIME (swarmd's --oci-runtime) or its default.
OCI_RUNTIME = ociruntime.resolve(os.environ.get("SHOAL_OCI_RUNTIME", "runc"))[0]


def probe(c: Cluster, name: str, image: str, *flags: str) -> str:
    c.ctl(
        "service",
        "create",
        "--name",
        name,
        "--image",
        image,
        "--stop-grace-period",
        "1s",
        *flags,
        "sh",
        "-c",
        PROBE,
    )
    (t,) = c.live(name)
    worker = next(w for w in c.workers if w.node_id == t["node"])
    log = worker.state_dir / "logs" / f"{t['id']}.log"
    c.wait(lambda: log.exists() and "DONE" in log.read_text(), 30)
    # Run by the OCI runtime the node reports (crun keeps "status", runc "state.json").
    oci = next(n for n in c.ctl("node", "ls", "--format", "json") if n["id"] == t["node"])  # type: ignore[union-attr]
    assert oci["oci_runtime"] == OCI_RUNTIME
    state = RUNC_ROOT / f"shoal-{t['node']}" / t["id"]
    assert (state / ("status" if OCI_RUNTIME == "crun" else "state.json")).exists()
    c.ctl("service", "rm", name)
    return log.read_text()


def cap_eff(text: str) -> int:
    m = re.search(r"CapEff:\s+([0-9a-f]+)", text)
    assert m, text
    return int(m.group(1), 16)


def test_default_confinement_and_explicit_ways_out(cluster: Cluster, busybox_image: str) -> None:
    c = cluster
    confined = probe(c, "confined", busybox_image)
    assert "Seccomp:\t2" in confined  # filter mode
    assert "USERNS=no" in confined  # root in the container cannot make a user namespace
    assert "PIDS=4096" in confined
    # Its own cgroup namespace: it sees itself at the root, not at /shoal/<ns>/<id>.
    assert re.search(r"CGROUP=\d+:[^:\n]*:/\n", confined), confined
    assert not cap_eff(confined) & (1 << 12)  # no CAP_NET_ADMIN by default

    loose = probe(
        c,
        "loose",
        busybox_image,
        "--security-opt",
        "seccomp=unconfined",
        "--cap-add",
        "net_admin",
        "--pids-limit",
        "100",
    )
    assert "Seccomp:\t0" in loose
    assert cap_eff(loose) & (1 << 12)
    assert "PIDS=100" in loose


def test_dangerous_binds_refused_by_the_api_and_by_the_node(
    cluster: Cluster,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    c = cluster
    for source in ("/", "/proc", "/run/containerd/containerd.sock", "/var/lib/shoal"):
        got = c.m.ctl(
            "service",
            "create",
            "--name",
            "evil",
            "--image",
            busybox_image,
            "--mount",
            f"type=bind,source={source},target=/host",
            "-d",
            "true",
        )
        assert got.code == 1 and "bind" in got.err, got
        assert "evil" not in c.m.ctl("service", "ls").out
    # A worker's own state dir is refused by that worker: the task is rejected, with why.
    state = c.workers[0].state_dir
    c.ctl(
        "service",
        "create",
        "--name",
        "peek",
        "--image",
        busybox_image,
        "-d",
        "--constraint",
        f"node.id=={c.workers[0].node_id}",
        "--mount",
        f"type=bind,source={state},target=/state",
        "--restart-condition",
        "none",
        "sleep",
        "1000",
    )
    c.wait(lambda: any(t["state"] == "rejected" for t in c.tasks("peek")), 60)
    (t,) = [t for t in c.tasks("peek") if t["state"] == "rejected"][:1]
    assert str(state) in t["error"] and "may not mount" in t["error"], t
