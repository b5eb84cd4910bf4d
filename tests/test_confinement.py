"""Default confinement of task containers, checked on the OCI spec and the API rules."""

from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.manager import validation
from shoal.manager.confinement import CAPABILITIES
from shoal.mountpolicy import API_RULES, BindPolicy
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime import ocispec, seccomp
from shoal.worker.runtime.base import ContainerConfig, MountConfig, RuntimeFailure


def spec_of(config: ContainerConfig, binds: BindPolicy = API_RULES) -> dict:  # type: ignore[type-arg]
    config = dataclasses.replace(config, command=config.command or ["sh"])
    return ocispec.build(config, {}, [], Path("/nonexistent-volumes"), "/shoal/t/x", binds)


def names(profile: dict, action: str = "SCMP_ACT_ALLOW") -> set[str]:  # type: ignore[type-arg]
    return {
        n
        for rule in profile["syscalls"]
        if rule["action"] == action and "args" not in rule
        for n in rule["names"]
    }


def test_default_spec_is_confined() -> None:
    spec = spec_of(ContainerConfig(container_id="x", image="busybox"))
    linux = spec["linux"]
    assert {"type": "cgroup"} in linux["namespaces"]
    assert linux["resources"]["pids"] == {"limit": ocispec.DEFAULT_PIDS_LIMIT}
    assert spec["process"]["noNewPrivileges"] is True
    prof = linux["seccomp"]
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = names(prof)
    # What namespaces do not isolate, with Docker's default capabilities: refused.
    for call in (
        "unshare",
        "setns",
        "mount",
        "keyctl",
        "add_key",
        "bpf",
        "userfaultfd",
        "ptrace",
        "kexec_load",
        "init_module",
        "io_uring_setup",
        "perf_event_open",
    ):
        assert call not in allowed, call
    for call in ("read", "openat", "clone", "execve", "socket", "epoll_wait", "futex"):
        assert call in allowed or call == "clone", call
    clone = [r for r in prof["syscalls"] if r["names"] == ["clone"]]
    assert clone and clone[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert clone[0]["args"][0]["value"] & 0x10000000  # CLONE_NEWUSER is in the mask
    assert ["clone3"] in [r["names"] for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ERRNO"]


def test_capabilities_add_drop_and_the_calls_they_open() -> None:
    cfg = ContainerConfig(
        container_id="x", image="i", cap_add=["CAP_SYS_ADMIN"], cap_drop=["CAP_NET_RAW"]
    )
    spec = spec_of(cfg)
    caps = spec["process"]["capabilities"]["effective"]
    assert "CAP_SYS_ADMIN" in caps and "CAP_NET_RAW" not in caps and "CAP_CHOWN" in caps
    allowed = names(spec["linux"]["seccomp"])
    assert {"mount", "unshare", "setns"} <= allowed
    assert "keyctl" not in allowed  # never, whatever the capabilities
    none = spec_of(ContainerConfig(container_id="x", image="i", cap_drop=["ALL"]))
    assert none["process"]["capabilities"]["bounding"] == []


def test_unconfined_and_unlimited_only_when_asked() -> None:
    spec = spec_of(
        ContainerConfig(container_id="x", image="i", seccomp_unconfined=True, pids_limit=-1)
    )
    assert "seccomp" not in spec["linux"] and "pids" not in spec["linux"]["resources"]
    assert spec_of(ContainerConfig(container_id="x", image="i", pids_limit=100))["linux"][
        "resources"
    ]["pids"] == {"limit": 100}


@pytest.mark.parametrize(
    "source",
    [
        "/",
        "/proc",
        "/sys/fs",
        "/dev/sda",
        "/run/containerd/containerd.sock",
        "/var/run/docker.sock",
        "/var/lib/shoal/node.key",
        "/srv/../proc",
        "relative",
    ],
)
def test_dangerous_bind_sources_are_refused_at_the_api(source: str) -> None:
    task = pb.TaskSpec()
    task.container.image = "busybox"
    task.container.mounts.add(type=pb.Mount.BIND, source=source, target="/x")
    with pytest.raises(validation.InvalidSpec):
        validation.check_task_spec(task)


def test_bind_policy_on_the_node() -> None:
    policy = BindPolicy(allowed=("/srv",), forbidden=("/var/lib/shoal-node1",))
    assert policy.refusal("/srv/data") == ""
    assert "outside" in policy.refusal("/tmp/x")
    assert "under" in BindPolicy(forbidden=("/state",)).refusal("/state/x")
    cfg = ContainerConfig(
        container_id="x", image="i", mounts=[MountConfig(type="bind", source="/tmp", target="/t")]
    )
    with pytest.raises(RuntimeFailure, match="outside"):
        spec_of(cfg, policy)
    spec = spec_of(
        ContainerConfig(
            container_id="x",
            image="i",
            mounts=[MountConfig(type="bind", source="/tmp", target="/t")],
        )
    )
    bind = next(m for m in spec["mounts"] if m["destination"] == "/t")
    assert {"nosuid", "nodev"} <= set(bind["options"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cap_add", ["NET_ADMIN"], "unknown capability"),
        ("cap_drop", ["CAP_BOGUS"], "unknown"),
        ("seccomp", "custom.json", "not supported"),
        ("pids_limit", -5, "pids limit"),
    ],
)
def test_confinement_fields_are_checked(field: str, value: object, message: str) -> None:
    task = pb.TaskSpec()
    task.container.image = "busybox"
    attr = getattr(task.container, field)
    if isinstance(value, list):
        attr.extend(value)
    else:
        setattr(task.container, field, value)
    with pytest.raises(validation.InvalidSpec, match=message):
        validation.check_task_spec(task)


@given(
    st.lists(st.sampled_from(sorted(CAPABILITIES)), max_size=5),
    st.lists(st.sampled_from([*sorted(CAPABILITIES), "ALL"]), max_size=5),
)
def test_capability_sets_and_profile_agree(add: list[str], drop: list[str]) -> None:
    cfg = ContainerConfig(container_id="x", image="i", cap_add=add, cap_drop=drop)
    caps = set(ocispec.capabilities(cfg))
    assert set(add) <= caps
    if "ALL" not in drop:
        assert not (set(drop) - set(add)) & caps
    allowed = names(seccomp.profile(caps))
    for cap, calls in seccomp.BY_CAPABILITY.items():
        if cap not in caps:
            # A call may also come with another capability (bpf: CAP_BPF or CAP_SYS_ADMIN).
            others = {c for c2, cs in seccomp.BY_CAPABILITY.items() if c2 in caps for c in cs}
            assert not (set(calls) - others) & allowed


def test_profile_covers_only_the_abis_this_kernel_runs() -> None:
    arches = seccomp.architectures("x86_64")
    # i386 binaries run on every x86_64 kernel Shoal supports: their calls stay filtered.
    assert arches[:2] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    libc = ctypes.CDLL(None, use_errno=True)
    x32_runs = libc.syscall(seccomp.X32_SYSCALL_BIT | seccomp.X86_64_GETPID) == os.getpid()
    assert ("SCMP_ARCH_X32" in arches) == x32_runs
    assert seccomp.architectures("aarch64") == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert seccomp.architectures("riscv64") == []
