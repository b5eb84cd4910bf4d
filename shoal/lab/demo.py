"""The README's demo: a 3-host Shoal cluster on this machine, a service across hosts.

Hosts are network namespaces on a private bridge (shoal/lab/hosts.py);
the manager (embedded etcd) and a local registry run on h0, worker agents on
h1 and h2, all started by the same provisioning scripts the Vagrant VMs use.
The demo creates an overlay network and a busybox httpd service over both
workers, shows `swarmctl node ls` and `service ps`, and fetches a page from a
task on one worker to a task on the other over their overlay IPs.

    ./scripts/demo          # run it, then tear everything down
    ./scripts/demo --keep   # leave the cluster up until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Hosts
from shoal.lab.registry import Registry

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SHOAL_VENV", REPO / ".venv"))
SWARMCTL = str(VENV / "bin" / "swarmctl")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


START = time.monotonic()


def say(text: str) -> None:
    text = f"{text}  [{time.monotonic() - START:.1f}s]"
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.shared = root / "shared"
        self.hosts: Hosts | None = None
        self.containerd: Containerd | None = None
        self.registry: Registry | None = None
        self.pidfiles: list[Path] = []

    @property
    def socket(self) -> Path:
        return self.root / "manager" / "control.sock"

    def ctl(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            [SWARMCTL, "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"swarmctl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def provision(self, host_index: int, script: str, *args: str) -> None:
        assert self.hosts is not None
        host = self.hosts[host_index]
        out = host.run(
            str(REPO / "scripts" / "provision" / script), *args, timeout=120, check=False
        )
        print(out.stdout.strip())
        if out.returncode != 0:
            raise RuntimeError(f"{script} on {host.name} failed: {out.stderr.strip()}")
        self.pidfiles.append(Path(f"{args[0]}.pid"))

    def up(self) -> str:
        say("Three hosts: network namespaces on a private underlay bridge")
        self.hosts = Hosts(3)
        for h in self.hosts.hosts:
            print(f"   {h.name}: {h.netns} at {h.addr}")
        self.containerd = Containerd().start()
        h0 = self.hosts[0]
        self.registry = Registry(host=h0.addr, port=5000, wrap=h0.cmd()).start()
        image = h0.run(
            sys.executable,
            "-m",
            "shoal.lab.images",
            self.registry.addr,
            "busybox",
            cwd=str(REPO),
        ).stdout.split()[0]
        print(f"   registry on {self.registry.addr}; pushed {image} (built from busybox-static)")

        say("Manager on h0 (embedded etcd), workers on h1 and h2")
        self.provision(0, "manager.sh", str(self.root / "manager"), h0.addr, str(self.shared))
        for i in (1, 2):
            h = self.hosts[i]
            self.provision(
                i,
                "worker.sh",
                str(self.root / h.name),
                h.addr,
                str(self.shared),
                f"worker{i}",
                "--containerd-socket",
                str(self.containerd.socket),
                "--insecure-registry",
                self.registry.addr,
            )
            self.hosts.node_ids.append((self.root / h.name / "node_id").read_text().strip())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            nodes = json.loads(self.ctl("node", "ls", "--format", "json"))
            if sum(1 for n in nodes if n["status"] == "ready" and n["role"] == "worker") == 2:
                break
            time.sleep(0.2)
        print(self.ctl("node", "ls"))
        return image

    def run_service(self, image: str) -> None:
        say("An overlay network and a replicated httpd service spread over both workers")
        print("$ swarmctl network create --driver overlay front")
        print(self.ctl("network", "create", "--driver", "overlay", "front").strip())
        cmd = [
            "service",
            "create",
            "--name",
            "web",
            "--image",
            image,
            "--replicas",
            "4",
            "--network",
            "front",
            "--stop-grace-period",
            "2s",
            "sh",
            "-c",
            "hostname > /var/www/index.html; exec httpd -f -p 80 -h /var/www",
        ]
        print("$ swarmctl " + " ".join(cmd[:-1]) + f" '{cmd[-1]}'")
        started = time.monotonic()
        print(self.ctl(*cmd).strip())
        print(f"   converged in {time.monotonic() - started:.1f}s")
        print("$ swarmctl service ps web")
        print(self.ctl("service", "ps", "web"))

    def cross_host(self) -> None:
        say("Cross-host traffic over the overlay: a task on worker1 fetches from one on worker2")
        tasks = [
            t
            for t in json.loads(self.ctl("service", "ps", "web", "--format", "json"))
            if t["state"] == "running"
        ]
        a = next(t for t in tasks if t["node_hostname"] == "worker1")
        b = next(t for t in tasks if t["node_hostname"] == "worker2")
        target = b["addresses"][0].split("/")[0]
        netns = f"/var/run/netns/shoal-{a['node'][:10]}-{a['id'][:16]}"
        # The host's busybox, run in task A's network namespace: the same network path
        # as from inside the container.
        for _ in range(20):
            out = subprocess.run(
                [
                    "nsenter",
                    f"--net={netns}",
                    BUSYBOX,
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    f"http://{target}/",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0:
                break
            time.sleep(0.2)
        src = a["addresses"][0].split("/")[0]
        print(
            f"   web.{a['slot']} on worker1 ({src}) -> http://{target}/ on worker2: "
            f"{out.stdout.strip() or out.stderr.strip()}"
        )
        if out.returncode != 0:
            raise RuntimeError("cross-host fetch failed")
        print(f"   (served by container {b['id'][:12]}: its hostname)")

    def show_logs(self) -> None:
        for log in sorted(self.root.glob("*.log")):
            print(f"--- {log.name} (last lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))

    def down(self) -> None:
        say("Tearing down")
        if self.socket.exists():
            self.ctl("service", "rm", "web", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.ctl("task", "ls", "-q", check=False):
                time.sleep(0.3)
        for pidfile in reversed(self.pidfiles):
            if pidfile.exists():
                pid = int(pidfile.read_text())
                try:
                    os.kill(pid, signal.SIGTERM)
                    for _ in range(150):
                        if not _alive(pid):
                            break
                        time.sleep(0.1)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.registry is not None:
            self.registry.stop()
        if self.containerd is not None:
            self.containerd.stop()
        if self.hosts is not None:
            self.hosts.close()
        shutil.rmtree(self.root, ignore_errors=True)
        print("   done: no namespaces, processes or mounts left")


def _alive(pid: int) -> bool:
    """Running, not a zombie (an exited daemon is reaped by whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the cluster up until Ctrl-C")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo needs root (network namespaces, containerd)")
    demo = Demo(Path(tempfile.mkdtemp(prefix="shoal-demo-")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        image = demo.up()
        demo.run_service(image)
        demo.cross_host()
        if args.keep:
            say("The cluster stays up; Ctrl-C tears it down. Meanwhile, try:")
            print(
                f"   export SWARM_SOCKET={demo.socket}\n"
                f"   {SWARMCTL} service scale web=6\n"
                f"   {SWARMCTL} service ps web\n"
                f"   {SWARMCTL} service logs web"
            )
            signal.pause()
    except KeyboardInterrupt:
        pass
    except Exception:
        demo.show_logs()
        raise
    finally:
        demo.down()


if __name__ == "__main__":
    main()
