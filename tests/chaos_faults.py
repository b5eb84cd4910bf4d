"""The chaos test's fault injector: one fault at a time, of a random kind, on a random
target, held for a random while and then healed, until told to stop.

Kinds: SIGKILL of an agent, of a manager, of one etcd member, of a worker's containerd
(its shims and containers live on), and a link flap (a host's uplink down, then up).
After each fault is healed, `after_heal` runs (the test's settled-state checks), but
for the last one, which the test's final convergence measures.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from tests.chaos_bed import Bed

KINDS = ("agent", "manager", "etcd", "containerd", "link")


class Faults:
    def __init__(self, bed: Bed, seed: int, after_heal: Callable[[str], None]) -> None:
        self.bed = bed
        self.rng = random.Random(seed)
        self.after_heal = after_heal
        self.stop = threading.Event()
        self.injected: Counter[str] = Counter()
        self.log: list[str] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        """Stops after the fault in progress is healed (and checked)."""
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.is_set():
            kind = self.rng.choice(KINDS)
            hold = self.rng.uniform(0.5, 4.0)
            try:
                what = self.inject(kind, hold)
            except Exception as err:  # a fault that could not be staged or healed
                self.errors.append(f"{kind}: {err!r}")
                return
            self.injected[kind] += 1
            self.log.append(f"{time.strftime('%H:%M:%S')} {what} for {hold:.1f}s")
            print(f"fault: {self.log[-1]}", flush=True)
            if self.stop.is_set():
                return  # the last fault: the test measures convergence from here
            self.after_heal(what)
            self.stop.wait(self.rng.uniform(0.2, 2.0))

    def inject(self, kind: str, hold: float) -> str:
        """Stages the fault, holds it, heals it; returns what it did."""
        bed, rng = self.bed, self.rng
        if kind in ("agent", "manager"):
            d = rng.choice([w.daemon for w in bed.workers] if kind == "agent" else bed.managers)
            d.kill()
            time.sleep(hold)
            d.start()
            return f"kill -9 {kind} {d.name}"
        if kind == "etcd":
            member = rng.choice(bed.etcd)
            assert member.proc is not None
            member.proc.kill()
            member.proc.wait()
            time.sleep(hold)
            member.start(wait=False)
            return f"kill -9 etcd {member.name}"
        if kind == "containerd":
            w = rng.choice(bed.workers)
            w.containerd.crash_and_restart(down_s=hold)
            return f"kill -9 containerd on {w.daemon.name}"
        host = rng.choice(bed.hosts.hosts)
        host.run("ip", "link", "set", "eth0", "down")
        try:
            time.sleep(hold)
        finally:
            host.run("ip", "link", "set", "eth0", "up")
        return f"link flap {host.name}"
