"""Checks of what a task may ask beyond the default confinement: capabilities,
seccomp, pids limit and bind mounts. Anything looser than the defaults must be
asked for explicitly and exactly; anything unknown is refused, never dropped."""

from __future__ import annotations

from shoal.mountpolicy import bind_refusal
from shoal.proto import objects_pb2 as pb

# Linux capabilities by name (capability.h); a typo must not pass as "no change".
CAPABILITIES = frozenset(
    "CAP_" + c
    for c in """CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
    LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
    SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
    SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
    MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF
    CHECKPOINT_RESTORE""".split()
)
SECCOMP_MODES = ("", "unconfined")
PID_MAX_LIMIT = 4 * 1024 * 1024  # the kernel's PID_MAX_LIMIT on 64-bit


class ConfinementError(ValueError):
    pass


def check_container(c: pb.ContainerSpec) -> None:
    for cap in c.cap_add:
        if cap not in CAPABILITIES:
            raise ConfinementError(f"unknown capability {cap!r} in cap_add (e.g. CAP_NET_ADMIN)")
    for cap in c.cap_drop:
        if cap != "ALL" and cap not in CAPABILITIES:
            raise ConfinementError(f"unknown capability {cap!r} in cap_drop (CAP_... or ALL)")
    if c.seccomp not in SECCOMP_MODES:
        raise ConfinementError(
            f"seccomp {c.seccomp!r} is not supported: the default profile, or unconfined"
        )
    if c.pids_limit < -1:
        raise ConfinementError("pids limit must be a positive number, or -1 for none")
    if c.pids_limit > PID_MAX_LIMIT:
        # The kernel's pids.max refuses more (EINVAL): the task would fail on every node.
        raise ConfinementError(f"pids limit must be at most {PID_MAX_LIMIT}, or -1 for none")
    for m in c.mounts:
        if m.type == pb.Mount.BIND:
            why = bind_refusal(m.source)
            if why:
                raise ConfinementError(why)
