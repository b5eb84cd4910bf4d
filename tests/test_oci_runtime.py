"""The OCI runtime under containerd's runc shim (--oci-runtime): which one is picked,
refusals in one line, and containers really run by it (its own state files)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shoal.lab.containerd import RUNC_ROOT, Containerd
from shoal.worker.runtime import ociruntime
from shoal.worker.runtime.base import ContainerConfig
from shoal.worker.runtime.containerd import ContainerdRuntime

HYBRID = (
    "30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n"
    "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    "32 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
)


def fake_root(tmp_path: Path, controllers: str) -> Path:
    (tmp_path / "unified").mkdir(parents=True)
    (tmp_path / "unified" / "cgroup.controllers").write_text(controllers)
    return tmp_path


def test_hybrid_cgroups_with_v2_controllers_are_refused_by_crun(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "hugetlb\n")
    info = HYBRID.replace("/sys/fs/cgroup", str(root))
    assert "hugetlb" in ociruntime.crun_refuses(root, info)
    assert ociruntime.crun_refuses(fake_root(tmp_path / "x", ""), info.replace(
        str(root), str(tmp_path / "x"))) == ""  # hybrid, nothing on the v2 side: fine
    unified = f"30 25 0:26 / {root} rw - cgroup2 cgroup2 rw\n"
    assert ociruntime.crun_refuses(root, unified) == ""  # cgroup v2 only
    legacy = "".join(line for line in info.splitlines(True) if "unified" not in line)
    assert ociruntime.crun_refuses(root, legacy) == ""  # cgroup v1 only


def test_choice_follows_what_is_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runc = "/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else "/usr/bin/runc"
    (tmp_path / "runc").symlink_to(runc)
    monkeypatch.setenv("PATH", str(tmp_path))  # runc only
    assert ociruntime.resolve("auto")[:2] == ("runc", str(tmp_path / "runc"))
    assert ociruntime.resolve("runc")[0] == "runc"
    with pytest.raises(ociruntime.OciRuntimeMissing, match=r"^OCI runtime crun not found on PATH$"):
        ociruntime.resolve("crun")
    with pytest.raises(ociruntime.OciRuntimeMissing, match="unknown OCI runtime"):
        ociruntime.resolve("kata")


def test_an_explicit_runtime_that_is_missing_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no crun there
    r = subprocess.run(
        [sys.executable, "-m", "shoal.daemon", "worker", "--state-dir", str(tmp_path / "s"),
         "--join-addr", "127.0.0.1:9", "--join-token", "x", "--oci-runtime", "crun"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr == "swarmd: OCI runtime crun not found on PATH\n"


def test_a_runtime_choice_with_the_simulated_runtime_is_refused(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "shoal.daemon", "worker", "--state-dir", str(tmp_path / "s"),
         "--join-addr", "127.0.0.1:9", "--join-token", "x", "--runtime", "simulated",
         "--oci-runtime", "runc"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr == (
        "swarmd: --oci-runtime has no effect with --runtime simulated: leave it out\n"
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.integration
@pytest.mark.parametrize("choice", ["runc", "crun"])
async def test_containers_run_under_the_chosen_runtime(
    containerd: Containerd, busybox_image: str, tmp_path: Path, choice: str
) -> None:
    try:
        rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path,
                               oci_runtime=choice)  # fmt: skip
    except ociruntime.OciRuntimeMissing as err:
        pytest.skip(str(err))  # crun not installed, or hybrid cgroups it refuses
    assert rt.oci_runtime == choice
    try:
        await rt.pull(busybox_image)
        await rt.create(
            ContainerConfig(
                container_id="c", image=busybox_image, command=["sleep", "60"],
                log_path=tmp_path / "c.log",
            )
        )  # fmt: skip
        await rt.start("c")
        state = RUNC_ROOT / rt.namespace / "c"
        # Each runtime keeps its own state files under the root the shim gives it.
        assert (state / "state.json").exists() == (choice == "runc"), list(state.iterdir())
        assert (state / "status").exists() == (choice == "crun"), list(state.iterdir())
        assert await rt.exec("c", ["sh", "-c", "exit 3"], 10) == 3  # exec (health checks)
    finally:
        await rt.stop("c", 0.1)
        await rt.remove("c")
        await rt.close()
