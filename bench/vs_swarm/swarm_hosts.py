"""The Docker Swarm side on three netns hosts: per host a containerd of its own and a
dockerd on it, joined into one swarm over the underlay. The first is the manager
(and, as Docker's default, runs tasks too); the other two join as workers."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from bench.vs_swarm.common import until
from bench.vs_swarm.swarm import Swarm
from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Host


class SwarmHosts:
    name = "Swarm"

    def __init__(
        self, hosts: list[Host], root: Path, prefix: str, flags: tuple[str, ...] = ()
    ) -> None:
        self.hosts = hosts
        self.root = root
        # Short run directories (unix sockets), named after the run.
        self.ctds = [
            Containerd(
                run=Path(f"/run/{prefix}-{h.name}"), root=root / f"ctd-{h.name}", wrap=h.cmd()
            )
            for h in hosts
        ]
        self.daemons = [
            Swarm(h, root / h.name, containerd=c.socket, hostname=h.name, flags=flags)
            for h, c in zip(hosts, self.ctds, strict=True)
        ]
        self.manager = self.daemons[0]
        self.node_ids: dict[str, str] = {}
        self.network_mode = ""

    def start(self, registry: str) -> None:
        for ctd, daemon in zip(self.ctds, self.daemons, strict=True):
            ctd.start()
            daemon.launch(registry)
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.host.addr)
        token = m.docker("swarm", "join-token", "-q", "worker").strip()
        for d in self.daemons[1:]:
            d.docker(
                "swarm", "join", "--token", token, "--advertise-addr", d.host.addr,
                f"{m.host.addr}:2377",
            )  # fmt: skip
        for d in self.daemons:
            self.node_ids[d.host.name] = d.docker("info", "--format", "{{.Swarm.NodeID}}").strip()
        until(lambda: self.nodes_ready() == len(self.daemons), "3 swarm nodes ready", 60)

    def nodes_ready(self) -> int:
        out = self.manager.docker("node", "ls", "--format", "{{.Status}}", check=False)
        return out.split().count("Ready")

    def load(self, image: str) -> str:
        """Pulls the image on every host; returns its manifest digest (the same on all)."""
        digests = {d.load(image) for d in self.daemons}
        if len(digests) != 1:
            raise RuntimeError(f"the hosts pulled different digests: {digests}")
        self.manager.create("warmup", 2 * len(self.daemons))
        m = self.manager
        one = m.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=warmup")
        # What a task on no network gets with Docker's defaults (reported with the results).
        self.network_mode = m.docker(
            "inspect", "--format", "{{.HostConfig.NetworkMode}} {{json .NetworkSettings.Networks}}",
            one.split()[0],
        ).strip()  # fmt: skip
        self.remove("warmup")
        return digests.pop()

    def version(self) -> str:
        return self.manager.version()

    def create(self, service: str, n: int) -> float:
        return self.manager.create(service, n)

    def scale(self, service: str, n: int) -> float:
        return self.manager.scale(service, n)

    def restart_delay_s(self, service: str) -> float:
        return self.manager.restart_delay_s(service)

    def timeline(self, service: str, since: float | str = "created") -> dict[str, float]:
        return self.manager.timeline(service, since)

    def containers(self, d: Swarm, service: str, stopped: bool = True) -> int:
        label = f"label=com.docker.swarm.service.name={service}"
        every = ["-a"] if stopped else []
        return len(d.docker("ps", *every, "-q", "--filter", label, check=False).split())

    def remove(self, service: str) -> float:
        """service rm -> no container of the service left on any host."""
        t = time.perf_counter()
        self.manager.docker("service", "rm", service)

        def gone() -> bool:
            return all(self.containers(d, service) == 0 for d in self.daemons)

        return until(gone, f"{service}: containers removed") - t

    def placement(self, service: str) -> list[tuple[str, str]]:
        """(node, current state) of the service's tasks that should run."""
        out = self.manager.docker(
            "service", "ps", service, "--filter", "desired-state=running",
            "--format", "{{.Node}} {{.CurrentState}}", check=False,
        )  # fmt: skip
        return [(r.split(" ", 1)[0], r.split(" ", 1)[1]) for r in out.splitlines() if " " in r]

    def host_lost(self, service: str, n: int, victim: int) -> tuple[float, float]:
        """The victim host's underlay link down and its dockerd SIGKILLed (its containerd
        and containers live on, cut off); polls `docker service ps` until n tasks run, none
        of them there. Returns (seconds, the fault's wall-clock time)."""
        d = self.daemons[victim]
        name = d.host.name
        assert d.proc is not None
        assert any(node == name for node, _ in self.placement(service)), f"no task on {name}"

        def moved() -> bool:
            rows = self.placement(service)
            return len(rows) == n and all(
                node != name and state.startswith("Running") for node, state in rows
            )

        t = time.perf_counter()
        wall = time.time()
        d.host.run("ip", "link", "set", "eth0", "down")
        d.proc.kill()
        d.proc.wait()
        return until(moved, f"{service}: {n} running off {name}") - t, wall

    def restore(self, service: str, victim: int) -> float:
        """The lost host back: link up, dockerd started again; seconds until its node is
        ready and no container of its old tasks runs."""
        d = self.daemons[victim]
        t = time.perf_counter()
        d.host.run("ip", "link", "set", "eth0", "up")
        d.launch(d.registry)
        node = self.node_ids[d.host.name]

        def back() -> bool:
            state = self.manager.docker(
                "node", "inspect", node, "--format", "{{.Status.State}}", check=False
            )
            return state.strip() == "ready" and self.containers(d, service, False) == 0

        return until(back, f"{d.host.name} back, its old containers stopped") - t

    def stop(self) -> None:
        """Workers leave, then the manager; each dockerd stops, then its containerd."""
        for d in [*self.daemons[1:], self.manager]:
            with contextlib.suppress(Exception):
                d.stop()
        for ctd in self.ctds:
            with contextlib.suppress(Exception):
                ctd.stop()
