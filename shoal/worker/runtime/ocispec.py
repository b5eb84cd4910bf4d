"""OCI runtime specs for task containers (what containerd hands to runc).

Docker-like defaults: the usual pseudo-filesystems, Docker's default
capabilities, the default seccomp profile (seccomp.py), a pids limit, private
pid/ipc/uts/mount/cgroup namespaces, masked and read-only kernel paths, a device
allow-list; then the task's command, env, user, working dir, mounts (binds
nosuid,nodev), and cgroup limits.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from shoal.mountpolicy import API_RULES, BindPolicy
from shoal.worker.runtime import seccomp
from shoal.worker.runtime.base import ContainerConfig, MountConfig, RuntimeFailure

# Docker's default open-files limit, or what this host allows if that is less.
NOFILE = min(1_048_576, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000
# A fork bomb in one task must not take the node's pids; generous for real servers.
DEFAULT_PIDS_LIMIT = 4096
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# (type, major, minor): null, zero, full, random, urandom, tty, console, ptmx, pts.
DEVICES = [
    ("c", 1, 3),
    ("c", 1, 5),
    ("c", 1, 7),
    ("c", 1, 8),
    ("c", 1, 9),
    ("c", 5, 0),
    ("c", 5, 1),
    ("c", 5, 2),
    ("c", 136, None),
]


def layer_dirs(mounts: list[Any]) -> list[Path]:
    """The snapshot's directories, top first (to read /etc/passwd without mounting)."""
    dirs: list[Path] = []
    for m in mounts:
        if m.type == "bind":
            dirs.append(Path(m.source))
            continue
        opts = dict(o.split("=", 1) for o in m.options if "=" in o)
        if "upperdir" in opts:
            dirs.append(Path(opts["upperdir"]))
        dirs.extend(Path(d) for d in opts.get("lowerdir", "").split(":") if d)
    return dirs


def _read(dirs: list[Path], rel: str) -> list[list[str]]:
    for d in dirs:
        f = d / rel
        if f.is_file():
            return [
                line.split(":")
                for line in f.read_text(errors="replace").splitlines()
                if line and not line.startswith("#")
            ]
    return []


def resolve_user(user: str, dirs: list[Path]) -> tuple[int, int, list[int]]:
    """`uid[:gid]` or `name[:group]` -> (uid, gid, supplementary gids), like Docker."""
    if not user:
        return 0, 0, []
    name, _, group = user.partition(":")
    passwd = _read(dirs, "etc/passwd")
    groups = _read(dirs, "etc/group")
    entry = next((p for p in passwd if len(p) > 3 and (p[0] == name or p[2] == name)), None)
    if name.isdigit():
        uid = int(name)
    elif entry is not None:
        uid = int(entry[2])
    else:
        raise RuntimeFailure(f"unable to find user {name}: no matching entries in passwd file")
    gid = int(entry[3]) if entry is not None else 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((x for x in groups if len(x) > 2 and x[0] == group), None)
            if g is None:
                raise RuntimeFailure(f"unable to find group {group}: no matching entries")
            gid = int(g[2])
    login = entry[0] if entry is not None else ""
    extra = sorted(
        {
            int(g[2])
            for g in groups
            if len(g) > 3 and login and login in g[3].split(",") and int(g[2]) != gid
        }
    )
    return uid, gid, extra


def process_args(config: ContainerConfig, image: dict[str, Any]) -> list[str]:
    """Docker's rule: command replaces the entrypoint; args replace the image's cmd."""
    img = image.get("config") or {}
    entrypoint = list(config.command) or list(img.get("Entrypoint") or [])
    if config.args:
        cmd = list(config.args)
    elif config.command:
        cmd = []
    else:
        cmd = list(img.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise RuntimeFailure("no command: the image has none and the service gives none")
    return args


def env(config: ContainerConfig, image: dict[str, Any]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*((image.get("config") or {}).get("Env") or []), *config.env]:
        key, _, _ = item.partition("=")
        merged[key] = item
    if "PATH" not in merged:
        merged["PATH"] = DEFAULT_PATH
    if config.hostname and "HOSTNAME" not in merged:
        merged["HOSTNAME"] = f"HOSTNAME={config.hostname}"
    return list(merged.values())


# The pseudo-filesystems every container gets (as Docker's defaults).
SYSTEM_MOUNTS: list[dict[str, Any]] = [
    {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["ro", "nosuid", "noexec", "nodev"],
    },
]


def _user_mount(m: MountConfig, volumes: Path, binds: BindPolicy) -> dict[str, Any]:
    if m.type == "file":
        # A secret or config the agent itself wrote on the task's tmpfs (under
        # /run/shoal, which user binds may not reach): read-only, nothing runs from it.
        return {
            "destination": m.target,
            "type": "bind",
            "source": m.source,
            "options": ["bind", "nosuid", "nodev", "noexec", "ro"],
        }
    if m.type == "volume":
        source = volumes / m.source
        source.mkdir(parents=True, exist_ok=True)
    else:
        why = binds.refusal(m.source)
        if why:
            raise RuntimeFailure(why)
        source = Path(m.source)
        if not source.exists():
            raise RuntimeFailure(f"bind source path does not exist: {m.source}")
    return {
        "destination": m.target,
        "type": "bind",
        "source": str(source),
        "options": ["rbind", "nosuid", "nodev", "ro" if m.readonly else "rw"],
    }


def mounts(
    config: ContainerConfig, volumes: Path, binds: BindPolicy = API_RULES
) -> list[dict[str, Any]]:
    out = [dict(m, options=list(m["options"])) for m in SYSTEM_MOUNTS]
    if config.resolv_conf:
        out.append(
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": config.resolv_conf,
                "options": ["rbind", "nosuid", "nodev", "noexec", "ro"],
            }
        )
    out.extend(_user_mount(m, volumes, binds) for m in config.mounts)
    return out


def capabilities(config: ContainerConfig) -> list[str]:
    """Docker's default set, less --cap-drop (ALL: every one), plus --cap-add."""
    drop = set(config.cap_drop)
    caps = [] if "ALL" in drop else [c for c in CAPABILITIES if c not in drop]
    caps += [c for c in config.cap_add if c not in caps]
    return caps


def build(
    config: ContainerConfig,
    image: dict[str, Any],
    rootfs_dirs: list[Path],
    volumes: Path,
    cgroups_path: str,
    binds: BindPolicy = API_RULES,
) -> dict[str, Any]:
    uid, gid, extra = resolve_user(
        config.user or (image.get("config") or {}).get("User", ""), rootfs_dirs
    )
    img = image.get("config") or {}
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "cgroup"},
        {"type": "network", "path": config.netns_path}
        if config.netns_path
        else {"type": "network"},
    ]
    resources: dict[str, Any] = {
        "devices": [{"allow": False, "access": "rwm"}]
        + [
            {
                "allow": True,
                "type": t,
                "major": major,
                "access": "rwm",
                **({"minor": minor} if minor is not None else {}),
            }
            for t, major, minor in DEVICES
        ],
    }
    if config.pids_limit >= 0:
        resources["pids"] = {"limit": config.pids_limit or DEFAULT_PIDS_LIMIT}
    if config.memory_bytes:
        resources["memory"] = {"limit": config.memory_bytes}
    if config.nano_cpus:
        resources["cpu"] = {
            "period": CPU_PERIOD,
            "quota": config.nano_cpus * CPU_PERIOD // 1_000_000_000,
        }
    caps = capabilities(config)
    linux: dict[str, Any] = {
        "resources": resources,
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
        "maskedPaths": MASKED,
        "readonlyPaths": READONLY,
    }
    if not config.seccomp_unconfined:
        linux["seccomp"] = seccomp.profile(set(caps))
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": extra},
            "args": process_args(config, image),
            "env": env(config, image),
            "cwd": config.workdir or img.get("WorkingDir") or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": config.hostname,
        "mounts": mounts(config, volumes, binds),
        "linux": linux,
    }
