"""The README's demo: a 3-host Shoal cluster on this machine, a service across hosts.

A lab (shoal.lab.lab): hosts are network namespaces on a private bridge; the manager
(embedded etcd) and a local registry run on manager1, worker agents, each with its own
containerd, on worker1 and worker2, all started with the systemd units' command lines.
The demo creates an overlay network and a busybox httpd service over both workers,
shows `swarmctl node ls` and `service ps`, and fetches a page from a task on one worker
to a task on the other over their overlay IPs.

    shoal-lab demo          # run it, then tear everything down
    shoal-lab demo --keep   # leave the cluster up until Ctrl-C
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

from shoal.lab.lab import Lab

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
START = time.monotonic()


def say(text: str) -> None:
    text = f"{text}  [{time.monotonic() - START:.1f}s]"
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


class Demo:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def ctl(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "shoal.swarmctl", "--socket", str(self.lab.socket), *args],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"swarmctl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def up(self) -> str:
        say("Three hosts: network namespaces on a private underlay bridge")
        say("Manager on manager1 (embedded etcd), workers on worker1 and worker2")
        self.lab.up(workers=2)
        for h in self.lab.record["hosts"]:
            print(f"   {h['name']}: {h['netns']} at {h['addr']}")
        image = str(self.lab.record["image"])
        print(f"   registry on {self.lab.registry_addr()}; pushed {image} (from busybox-static)")
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

    def down(self) -> None:
        say("Tearing down")
        left = self.lab.down()
        if left:
            raise RuntimeError("left behind: " + "; ".join(left))
        print("   done: no namespaces, processes or mounts left")


def run(keep: bool) -> None:
    if os.geteuid() != 0:
        sys.exit("the demo needs root (network namespaces, containerd)")
    demo = Demo(Lab(f"demo-{uuid.uuid4().hex[:6]}"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        image = demo.up()
        demo.run_service(image)
        demo.cross_host()
        if keep:
            say("The cluster stays up; Ctrl-C tears it down. Meanwhile, try:")
            print(
                f"   export SWARM_SOCKET={demo.lab.socket}\n"
                "   swarmctl service scale web=6\n"
                "   swarmctl service ps web\n"
                "   swarmctl service logs web"
            )
            signal.pause()
    except KeyboardInterrupt:
        pass
    except Exception:
        print(demo.lab.log_tails())
        raise
    finally:
        demo.down()
