"""The chaos test's load: control-API writes whose outcome is recorded (to check that no
acknowledged write is lost) and a steady, bounded stream of HTTP GETs from a client
task to the web services' tasks over the overlay (lab addresses only).

Every write sets a service's whole tracked state (replicas, and GEN in its env), so
after a write that returned success exactly one state is acceptable; a write that
failed may or may not have been applied, so its state joins the acceptable ones.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from shoal.lab.probe import FetchError, fetch
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from tests.chaos_bed import Bed

NETWORK = "chaosnet"
WEB = ("web0", "web1", "web2")
CLIENT = "client"
HTTPD = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /var/www & wait"]
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
MAX_EXTRA = 2  # services the writer creates (and removes) on top of the fixed ones


@dataclass(frozen=True)
class State:
    replicas: int
    gen: int


def spec(bed: Bed, name: str, st: State, network: bool, command: list[str]) -> pb.ServiceSpec:
    s = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    s.replicated.replicas = st.replicas
    c = s.task.container
    c.image = bed.image
    c.command.extend(command)
    c.env.append(f"GEN={st.gen}")
    c.stop_grace_period_ms = 1000
    if network:
        s.task.networks.add(target=NETWORK)
    return s


def observed(bed: Bed, name: str) -> State | None:
    """The service's stored state (None: no such service)."""
    try:
        svc = bed.api().GetService(api.GetServiceRequest(ref=name), timeout=10).service.service
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    env = dict(e.split("=", 1) for e in svc.spec.task.container.env)
    return State(svc.spec.replicated.replicas, int(env.get("GEN", -1)))


class Writer:
    def __init__(self, bed: Bed, seed: int) -> None:
        self.bed = bed
        self.rng = random.Random(seed)
        self.model: dict[str, State | None] = {}
        # Acceptable final states per service: the last acknowledged one, then any tried
        # since whose outcome is unknown.
        self.expect: dict[str, list[State | None]] = {}
        self.extra: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.made = 0

    def setup(self) -> None:
        """The overlay network and the fixed services, each write acknowledged."""
        net = pb.NetworkSpec(annotations=pb.Annotations(name=NETWORK), driver="overlay")
        self.bed.api().CreateNetwork(api.CreateNetworkRequest(spec=net), timeout=30)
        for name in WEB:
            assert self.write(name, State(2, 0), create=True)
        assert self.write(CLIENT, State(1, 0), create=True)

    def write(self, name: str, st: State | None, create: bool = False) -> bool:
        """One acknowledged-or-not write; True if it returned success."""
        stub = self.bed.api()
        fixed = name in WEB or name == CLIENT
        self.model[name] = st
        try:
            if st is None:
                stub.RemoveService(api.RemoveServiceRequest(ref=name), timeout=15)
            else:
                s = spec(self.bed, name, st, fixed, HTTPD if name in WEB else SLEEPER)
                if create:
                    stub.CreateService(api.CreateServiceRequest(spec=s), timeout=15)
                else:
                    got = stub.GetService(api.GetServiceRequest(ref=name), timeout=10)
                    version = got.service.service.meta.version
                    req = api.UpdateServiceRequest(ref=name, version=version, spec=s)
                    stub.UpdateService(req, timeout=15)
        except grpc.RpcError as err:
            self.outcomes[f"failed ({err.code().name})"] += 1
            self.expect.setdefault(name, []).append(st)
            return False
        self.outcomes["acknowledged"] += 1
        self.expect[name] = [st]
        return True

    def _run(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.5, 3.0)):
            self.step()

    def step(self) -> None:
        rng = self.rng
        op = rng.choice(("scale", "update", "extra"))
        if op == "extra":
            if len(self.extra) >= MAX_EXTRA:
                self.write(self.extra.pop(0), None)
            else:
                self.made += 1
                name = f"extra{self.made}"
                self.extra.append(name)
                self.write(name, State(1, 0), create=True)
            return
        name = rng.choice(WEB)
        cur = self.model[name]
        assert cur is not None
        if op == "scale":
            replicas = rng.choice([n for n in (1, 2, 3) if n != cur.replicas])
            self.write(name, State(replicas, cur.gen))
        else:
            self.write(name, State(cur.replicas, cur.gen + 1))

    def lost(self) -> list[str]:
        """Services whose stored state is none of the acceptable ones."""
        out = []
        for name, ok in self.expect.items():
            got = observed(self.bed, name)
            if got not in ok:
                out.append(f"{name}: stored {got}, acknowledged/possible {ok}")
        return out


class Requests:
    """GETs from the client task to the web tasks, one at a time, every `every_s`."""

    def __init__(self, bed: Bed, every_s: float = 0.25) -> None:
        self.bed = bed
        self.every = every_s
        self.results: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="requests", daemon=True)
        self.client: pb.Task | None = None
        self.targets: list[pb.Task] = []

    def _refresh(self) -> None:
        try:
            stub = self.bed.api()
            names = {
                i.service.id: i.service.spec.annotations.name
                for i in stub.ListServices(api.ListServicesRequest(), timeout=5).services
            }
            tasks = stub.ListTasks(api.ListTasksRequest(), timeout=5).tasks
        except grpc.RpcError:
            return
        up = [t for t in tasks if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING]
        clients = [t for t in up if names.get(t.service_id) == CLIENT]
        self.client = clients[0] if clients else None
        self.targets = [t for t in up if names.get(t.service_id) in WEB]

    def _run(self) -> None:
        turn, refreshed = 0, 0.0
        while not self.stop.wait(self.every):
            if time.monotonic() - refreshed > 2:
                self._refresh()
                refreshed = time.monotonic()
            if self.client is None or not self.targets:
                self.results["no target"] += 1
                continue
            target = self.targets[turn % len(self.targets)]
            turn += 1
            try:
                page = fetch(self.client, target, timeout_s=2)
                self.results["ok" if page else "empty"] += 1
            except FetchError:
                self.results["failed"] += 1

    def ratio(self) -> float:
        total = sum(self.results.values())
        return self.results["ok"] / total if total else 0.0
