"""Create -> first container running, through the whole system.

A manager (embedded etcd) and one worker on the benchmark's containerd. Each round
creates a service over the control API and takes the time from the create RPC's
return to the first task's RUNNING time in its record (the agent's clock, this
machine): schedule, dispatch, the agent's steps, containerd's create and start.
Two shapes: a one-replica service, and the first of 20 replicas (the 19 others
compete for the same two cores meanwhile); the 20 are then scaled to 40. Also on
the client's clock, RPCs included: create 20 -> all running, scale 20 -> 40.
The image is on the node already (a warm-up service pulled it), as for every
service after a node's first.

`--baseline DIR` runs a second manager and worker, from another checkout of Shoal
(say, main before a change), on the same containerd; the rounds alternate between
the two, so both see the same machine load. `--oci-runtimes runc,crun` does the same
with one bed per OCI runtime (the worker's --oci-runtime), from this checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.codepath import daemons_from
from shoal.lab.containerd import Containerd
from shoal.lab.procs import ManagerProcess, WorkerProcess, swarmctl, wait_for
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1; elsewhere the CPU column is left out
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
LIMIT_S = 60.0
SETTLE_S = 0.5


def _spec(name: str, image: str, replicas: int) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.replicated.replicas = replicas
    spec.task.container.image = image
    spec.task.container.command.extend(COMMAND)
    return spec


class ContainerdCpu:
    """CPU seconds of containerd, its shims and their runc runs (not the containers:
    runc moves those into cgroups of their own), from a cpuacct cgroup of the bench's."""

    def __init__(self, ctd: Containerd) -> None:
        self.group: Path | None = None
        if ctd.proc is not None and (CPUACCT / "cgroup.procs").exists():
            self.group = CPUACCT / f"shoal-bench-{os.getpid()}"
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(str(ctd.proc.pid))  # shims inherit it

    def seconds(self) -> float:
        return int((self.group / "cpuacct.usage").read_text()) / 1e9 if self.group else 0.0

    def close(self) -> None:
        if self.group is None:
            return
        for pid in (self.group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CPUACCT / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.group.rmdir()


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class FirstContainer:
    """A manager and a worker, from this checkout or from the one at `code`."""

    def __init__(
        self, root: Path, ctd: Containerd, image: str, code: Path | None, oci: str = ""
    ) -> None:
        self.root, self.ctd, self.image, self.code = root, ctd, image, code
        self.oci = ["--oci-runtime", oci] if oci else []  # "": the worker's default
        self.manager = ManagerProcess(root / "m1")
        self.worker: WorkerProcess | None = None
        self.channel: grpc.Channel | None = None

    def __enter__(self) -> FirstContainer:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        with daemons_from(self.code):  # the daemons' code, not the bench's
            self.manager.start()
            socket = self.manager.socket
            token = swarmctl(socket, "cluster", "join-token", "worker", "-q").out.strip()
            self.worker = WorkerProcess(
                self.root / "w1",
                self.manager.addr,
                token,
                "--hostname",
                "w1",
                "--containerd-socket",
                str(self.ctd.socket),
                *self.oci,
            ).start()
        self.channel = grpc.insecure_channel(f"unix://{self.manager.socket}")
        self.stub = api_grpc.ControlStub(self.channel)
        self.run("warmup", 1)  # the node pulls the image once

    def __exit__(self, *exc: object) -> None:  # also after a failed start
        if self.channel is not None:
            self.channel.close()
        if self.worker is not None:
            self.worker.stop()
        self.manager.stop()

    def run(
        self, name: str, replicas: int, scale_to: int = 0, cpu: ContainerdCpu | None = None
    ) -> dict[str, float]:
        """Seconds from the create RPC's return to the first and to the last task's
        RUNNING ("first", "last"); from before the create RPC to the watch's report
        of all running ("all"); with scale_to, then from before the update RPC to all
        scale_to running ("scaled"). Then removes the service and waits until its
        containers are gone. With cpu: the CPU seconds of containerd ("ctd_cpu") and
        of the agent ("agent_cpu") from the create to all running (scaled ones too)."""
        assert self.worker is not None and self.worker.proc is not None
        agent = self.worker.proc.pid
        cpu0 = (cpu.seconds() if cpu else 0.0), process_cpu_s(agent)
        began = time.perf_counter()
        created = self.stub.CreateService(
            api.CreateServiceRequest(spec=_spec(name, self.image, replicas)), timeout=LIMIT_S
        ).service.service
        returned_ms = time.time() * 1000
        self._watch(created.id, replicas)
        out = {"all": time.perf_counter() - began}
        tasks = self.stub.ListTasks(api.ListTasksRequest(service_ref=created.id)).tasks
        ran = [t.status.timestamp_ms for t in tasks if t.status.state == pb.RUNNING]
        out["first"], out["last"] = (min(ran) - returned_ms) / 1000, (max(ran) - returned_ms) / 1000
        if scale_to:
            svc = self.stub.GetService(api.GetServiceRequest(ref=created.id)).service.service
            spec = pb.ServiceSpec()
            spec.CopyFrom(svc.spec)
            spec.replicated.replicas = scale_to
            began = time.perf_counter()
            self.stub.UpdateService(
                api.UpdateServiceRequest(ref=created.id, version=svc.meta.version, spec=spec)
            )
            self._watch(created.id, scale_to)
            out["scaled"] = time.perf_counter() - began
        out["ctd_cpu"] = (cpu.seconds() if cpu else 0.0) - cpu0[0]
        out["init_cpu"] = self._containers_cpu() if cpu else 0.0
        out["agent_cpu"] = process_cpu_s(agent) - cpu0[1]
        self.stub.RemoveService(api.RemoveServiceRequest(ref=created.id))
        # The next round starts on an idle node: no container still being removed.
        wait_for(lambda: not self._containers(), LIMIT_S, f"{name}: containers removed")
        # ... and no shim still exiting (no container is left on this containerd).
        wait_for(lambda: not self.ctd.shims(), LIMIT_S, f"{name}: shims gone")
        time.sleep(SETTLE_S)  # containerd's garbage collection of what was removed
        return out

    def _watch(self, service_id: str, running: int) -> None:
        watch = self.stub.WatchService(api.WatchServiceRequest(ref=service_id), timeout=LIMIT_S)
        try:
            for progress in watch:
                if progress.service.running == running:
                    break
        finally:
            watch.cancel()

    def _containers_cpu(self) -> float:
        """CPU seconds in the service's container cgroups so far: the OCI runtime's own
        init in there (runc's `init` re-exec, crun's child before its exec), the
        containers themselves being idle. crun joins the container's cgroup later than
        runc does, so only with this are the two runtimes counted alike."""
        assert self.worker is not None
        groups = CPUACCT / "shoal" / f"shoal-{self.worker.node_id}"
        total = 0
        for usage in groups.glob("*/cpuacct.usage"):
            with contextlib.suppress(OSError, ValueError):  # one being removed
                total += int(usage.read_text())
        return total / 1e9

    def _containers(self) -> list[str]:
        assert self.worker is not None
        ns = f"shoal-{self.worker.node_id}"
        ctr = ["ctr", "-a", str(self.ctd.socket), "-n", ns, "containers", "ls", "-q"]
        return subprocess.run(ctr, check=True, capture_output=True, text=True).stdout.split()


def first_container(
    ctd: Containerd,
    image: str,
    rounds: int,
    baseline: Path | None = None,
    oci_runtimes: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per bed ("this checkout", and "baseline" if given; or one per OCI runtime):
    medians over `rounds` of create -> first running, for 1 and for 20 replicas (and
    the last of the 20), of create 20 -> all running and of scale 20 -> 40 (the
    client's clock, RPCs included)."""
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-first-"))
    codes: dict[str, tuple[Path | None, str]] = {"this checkout": (None, "")}
    if oci_runtimes:
        codes = {oci: (None, oci) for oci in oci_runtimes}
    if baseline is not None:
        codes["baseline"] = (baseline, "")
    one: dict[str, list[float]] = {name: [] for name in codes}
    twenty: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
    cpu = ContainerdCpu(ctd)
    try:
        with contextlib.ExitStack() as stack:
            beds = {
                name: stack.enter_context(FirstContainer(root / str(i), ctd, image, *bed))
                for i, (name, bed) in enumerate(codes.items())
            }
            for i in range(rounds):
                # Each bed goes first every other round: neither always follows the
                # other's removal of 40 containers.
                for name, bed in list(beds.items())[:: 1 if i % 2 == 0 else -1]:
                    one[name].append(bed.run(f"one{i}", 1)["first"])
                    twenty[name].append(bed.run(f"twenty{i}", 20, scale_to=40, cpu=cpu))
    finally:
        cpu.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        name: {
            "first_of_1_s": statistics.median(one[name]),
            "first_of_20_s": statistics.median(t["first"] for t in twenty[name]),
            "last_of_20_s": statistics.median(t["last"] for t in twenty[name]),
            "create_20_s": statistics.median(t["all"] for t in twenty[name]),
            "scale_20_40_s": statistics.median(t["scaled"] for t in twenty[name]),
            # CPU seconds for create 20 + scale to 40, per container (of 40)
            "ctd_cpu_per_container_s": statistics.median(t["ctd_cpu"] for t in twenty[name]) / 40,
            "agent_cpu_per_container_s": statistics.median(t["agent_cpu"] for t in twenty[name])
            / 40,
            "init_cpu_per_container_s": statistics.median(t["init_cpu"] for t in twenty[name])
            / 40,
            "rounds_1": one[name],
            "rounds_20": [t["first"] for t in twenty[name]],
        }
        for name in codes
    }
