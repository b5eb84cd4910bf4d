"""The Docker Swarm side: our own dockerd in a netns host, a one-node swarm (and one
node of the three-host swarm, bench/vs_swarm/swarm_hosts.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.vs_swarm.common import (
    COMMAND,
    DOCKER,
    DOCKERD,
    parse_rfc3339,
    sh,
    task_timeline,
    until,
)
from shoal.lab.hosts import Host
from shoal.lab.sweep import children, mounts_under, processes_mentioning


class Swarm:
    """Our own dockerd in a netns host, one-node swarm; steps through the docker CLI."""

    name = "Swarm"

    def __init__(
        self,
        host: Host,
        root: Path,
        containerd: Path | None = None,
        hostname: str = "",
        flags: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.root = root
        # None: the one-node mode's dockerd (the containerd it starts itself, no bridge,
        # no iptables). A socket: a containerd of the host's own, Docker's defaults otherwise.
        self.containerd = containerd
        # A host's own name (a UTS namespace): the swarm's nodes tell hosts apart by it.
        self.hostname = hostname
        self.flags = flags  # more dockerd flags (--swarm-bridge none: --bridge=none)
        self.registry = ""
        self.socket = root / "docker.sock"
        self.exec_root = root / "x"  # short: containerd's sockets live under it
        self.proc: subprocess.Popen[bytes] | None = None
        self.image = ""
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(root / "cli"),  # not ~/.docker
        }

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return sh([DOCKER, *args], env=self.env, check=check, timeout=timeout)

    def start(self, registry: str) -> None:
        """dockerd, then a one-node swarm on loopback."""
        self.launch(registry)
        self.docker(
            "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377"
        )

    def argv(self) -> list[str]:
        config = self.root / "daemon.json"
        # Not /etc/docker/daemon.json; the daemon's key where we can remove it.
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        argv = [
            DOCKERD,
            "--config-file",
            str(config),
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.exec_root),
            "--host",
            f"unix://{self.socket}",
            "--pidfile",
            str(self.root / "docker.pid"),
            "--insecure-registry",
            self.registry,
        ]
        if self.containerd is None:
            return [
                *argv,
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--bridge=none",
            ]
        argv += ["--containerd", str(self.containerd), *self.flags]
        if self.hostname:
            hostname = 'hostname "$0" && exec "$@"'
            argv = ["unshare", "--uts", "sh", "-c", hostname, self.hostname, *argv]
        return argv

    def launch(self, registry: str) -> None:
        """Starts dockerd (again, after a kill: same directories) and waits until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.proc = self.host.spawn(self.argv(), self.root / "dockerd.log")

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited:\n" + self.log_tail())
            return bool(
                self.docker("version", "--format", "{{.Server.Version}}", check=False).strip()
            )

        until(up, "dockerd answers", 60)  # start-up only

    def log_tail(self) -> str:
        log = self.root / "dockerd.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def load(self, image: str) -> str:
        """Pulls the image; returns its manifest digest."""
        self.image = image
        self.docker("pull", "-q", image, timeout=300)
        digests = self.docker("image", "inspect", "--format", "{{json .RepoDigests}}", image)
        return str(json.loads(digests)[0].split("@", 1)[1])

    def version(self) -> str:
        return self.docker("version", "--format", "{{.Server.Version}}").strip()

    def replicas(self, service: str) -> str:
        out = self.docker(
            "service",
            "ls",
            "--filter",
            f"name={service}",
            "--format",
            "{{.Name}} {{.Replicas}}",
            check=False,
        )
        for line in out.splitlines():
            name, _, replicas = line.partition(" ")
            if name == service:
                return replicas.split(" ")[0]
        return ""

    def create(self, service: str, n: int) -> float:
        t = time.perf_counter()
        self.docker(
            "service",
            "create",
            "-d",
            "--name",
            service,
            "--replicas",
            str(n),
            self.image,
            *COMMAND,
        )
        return until(lambda: self.replicas(service) == f"{n}/{n}", f"{service} {n}/{n}") - t

    def scale(self, service: str, n: int) -> float:
        t = time.perf_counter()
        self.docker("service", "scale", "-d", f"{service}={n}")
        return until(lambda: self.replicas(service) == f"{n}/{n}", f"{service} {n}/{n}") - t

    def _label(self, service: str) -> str:
        return f"label=com.docker.swarm.service.name={service}"

    def replace(self, service: str, n: int) -> float:
        rows = self.docker(
            "ps",
            "--filter",
            self._label(service),
            "--format",
            '{{.ID}} {{.Label "com.docker.swarm.task.id"}}',
        ).split()
        container, victim = rows[0], rows[1]
        pid = int(self.docker("inspect", "--format", "{{.State.Pid}}", container))

        def replaced() -> bool:
            out = self.docker(
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--no-trunc",
                "--format",
                "{{.ID}} {{.CurrentState}}",
                check=False,
            )
            rows = [line.split(" ", 1) for line in out.splitlines() if line]
            running = {r[0] for r in rows if len(r) == 2 and r[1].startswith("Running")}
            return len(rows) == n and len(running) == n and victim not in running

        t = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        return until(replaced, f"{service}: task {victim} replaced") - t

    def remove(self, service: str) -> float:
        t = time.perf_counter()
        self.docker("service", "rm", service)

        def gone() -> bool:
            out = self.docker("ps", "-aq", "--filter", self._label(service), check=False)
            return not out.strip()

        return until(gone, f"{service}: containers removed") - t

    def restart_delay_s(self, service: str) -> float:
        policy = json.loads(
            self.docker(
                "service",
                "inspect",
                service,
                "--format",
                "{{json .Spec.TaskTemplate.RestartPolicy}}",
            )
        )
        return float(policy["Delay"]) / 1e9

    def timeline(self, service: str, since: float | str = "created") -> dict[str, float]:
        """Seconds from `since` (a time, or the service's "created" or "updated" stamp)
        until the last task created since then was created and the first and last of
        them ran (the tasks' own timestamps)."""
        svc = json.loads(self.docker("service", "inspect", service))[0]
        stamp = svc["CreatedAt" if since == "created" else "UpdatedAt"]
        start = since if isinstance(since, float) else parse_rfc3339(stamp)
        ids = self.docker(
            "service", "ps", service, "--filter", "desired-state=running", "-q", "--no-trunc"
        ).split()
        tasks = json.loads(self.docker("inspect", "--type", "task", *ids))
        return task_timeline(
            start,
            [
                (
                    parse_rfc3339(t["CreatedAt"]),
                    parse_rfc3339(t["Status"]["Timestamp"])
                    if t["Status"]["State"] == "running"
                    else None,
                )
                for t in tasks
            ],
        )

    def stop(self) -> None:
        """Leaves the swarm, stops dockerd (which stops its containerd), then kills and
        unmounts whatever is left under our directories."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for svc in self.docker("service", "ls", "-q", check=False, timeout=30).split():
                    self.docker("service", "rm", svc, check=False, timeout=30)
                self.docker("swarm", "leave", "--force", check=False, timeout=60)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        leftovers = processes_mentioning(str(self.root))
        for pid in [*children(leftovers), *leftovers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for target in mounts_under(self.root):
            subprocess.run(["umount", "-l", target], capture_output=True)
