"""Service networking with real containers in the netns multi-host cluster
(tests/servicenet_bed.py). Probes run inside tasks' namespaces from the test process
(sockets created in the namespace), and once through a container's own
/etc/resolv.conf."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from shoal.lab.procs import swarmctl
from shoal.lab.svcprobe import dns, dns_tcp, host_get, http_get, ip_of, task_netns
from shoal.overlay import netns

from .servicenet_bed import (
    HOLD_S,
    SLEEPER,
    WEB,
    WORKERS,
    Bed,
    answering,
    bed,
    by_host,
    diagnose,
    tb,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

__all__ = ["bed", "tb"]  # the fixtures, used by name

# ---------------------------------------------------------------- names, VIPs, balancing


def test_names_vip_balancing_scale_and_nxdomain(tb: Bed) -> None:
    tb.ctl("network", "create", "front")
    tb.create("web", "--replicas", "3", "--network", "front")
    tb.create("client", "--network", "front", command=SLEEPER)
    view = tb.ctl("service", "inspect", "web", "--format", "json")
    assert view["endpoint"]["mode"] == "vip"
    (vip_entry,) = view["endpoint"]["virtual_ips"]
    assert vip_entry["network"] == "front" and vip_entry["addr"].startswith("10.255.")
    vip = vip_entry["addr"]
    web = tb.running("web")
    (client,) = tb.running("client")
    ns = task_netns(client)

    assert dns(ns, "web")[:2] == ("NOERROR", [vip])
    assert dns_tcp(ns, "web") == [vip]
    assert sorted(dns(ns, "tasks.web")[1]) == sorted(ip_of(t) for t in web)
    rcode, ips, took = dns(ns, "no-such-service")
    assert rcode == "NXDOMAIN" and not ips
    print(f"\nNXDOMAIN in {took * 1000:.1f} ms")
    assert took < 0.2

    seen = Counter(http_get(ns, vip, 8080) for _ in range(60))
    assert set(seen) == {t.id[:12] for t in web}, seen
    # Through the container's own /etc/resolv.conf: name -> VIP -> a replica.
    assert tb.exec_in(client, ["sh", "-c", "wget -q -O - http://web:8080/ | grep -q ."]) == 0

    # Scale to 1: DNS and the load balancer follow.
    start = time.monotonic()
    tb.ctl("service", "scale", "--detach", "web=1")
    took = wait_for(lambda: len(dns(ns, "tasks.web")[1]) == 1, 20, "tasks.web down to 1")
    (left,) = dns(ns, "tasks.web")[1]
    answers = {http_get(ns, vip, 8080) for _ in range(20)}
    print(f"scale 3 -> 1: DNS follows in {took:.2f}s ({time.monotonic() - start:.2f}s total)")
    assert answers == {next(t.id[:12] for t in web if ip_of(t) == left)}


def test_other_network_cannot_resolve_or_reach(tb: Bed) -> None:
    tb.ctl("network", "create", "front")
    tb.ctl("network", "create", "back")
    tb.create("web", "--replicas", "2", "--network", "front")
    tb.create("stranger", "--network", "back", command=SLEEPER)
    vip = tb.ctl("service", "inspect", "web", "--format", "json")["endpoint"]["virtual_ips"][0]
    (stranger,) = tb.running("stranger")
    ns = task_netns(stranger)
    assert dns(ns, "web")[0] == "NXDOMAIN"
    assert dns(ns, "tasks.web")[0] == "NXDOMAIN"
    assert http_get(ns, vip["addr"], 8080, timeout=1) == ""
    for t in tb.running("web"):
        assert http_get(ns, ip_of(t), 8080, timeout=1) == ""


def test_egress_and_internal_networks(tb: Bed) -> None:
    tb.ctl("network", "create", "front")
    tb.ctl("network", "create", "--internal", "sealed")
    tb.create("out", "--network", "front", command=SLEEPER)
    tb.create("in", "--network", "sealed", command=SLEEPER)
    internet = tb.outside.addr
    (out,) = tb.running("out")
    (inner,) = tb.running("in")
    assert http_get(task_netns(out), internet, 80) == "internet"
    assert http_get(task_netns(inner), internet, 80, timeout=1) == ""


# ---------------------------------------------------------------- published ports


def test_published_port_on_every_worker_keeps_client_address(tb: Bed) -> None:
    tb.ctl("network", "create", "front")
    tb.create(
        "web", "--replicas", "2", "--network", "front", "--publish", "8080:8080",
        "--constraint", "node.hostname!=h3",
    )  # fmt: skip
    web = tb.running("web")
    assert by_host(web, tb) == {"h1": 1, "h2": 1}
    ids = {t.id[:12] for t in web}
    assert tb.ctl("service", "ps", "web").count("*:8080->8080/tcp") == 2
    for host in ("h1", "h2"):
        answering(tb, host, 8080, ids)
    for host in WORKERS:  # h3 has no task: it forwards
        got = {host_get(tb.outside.netns, tb.addr(host), 8080) for _ in range(6)}
        assert got <= ids and "" not in got, (host, got)

    # Through h1 (a local task): the task's log shows the client's own address.
    local = next(t for t in web if tb.host_of(t) == "h1")
    assert host_get(tb.outside.netns, tb.addr("h1"), 8080) == local.id[:12]
    log = tb.c.root / "h1" / "logs" / f"{local.id}.log"
    try:
        # busybox httpd -v logs "[::ffff:ADDR]:PORT: response:200".
        wait_for(lambda: f":{tb.outside.addr}]:" in log.read_text(errors="replace"), 10, "client")
    except AssertionError:
        raise AssertionError(f"no {tb.outside.addr} in the log:\n{log.read_text()}") from None

    # A target alone gets a port from 30000-32767; a clash names the port.
    tb.create("auto", "--network", "front", "--publish", "target=8080")
    (port,) = tb.ctl("service", "inspect", "auto", "--format", "json")["ports"]
    assert 30000 <= port["published"] <= 32767 and port["mode"] == "ingress"
    r = swarmctl(
        tb.c.socket, "service", "create", "--name", "clash", "--image", tb.image,
        "--publish", "8080:80", "--detach", *SLEEPER,
    )  # fmt: skip
    assert r.code == 1 and "8080/tcp" in r.err and "web" in r.err, r.err


def test_published_port_of_a_service_on_no_network(tb: Bed) -> None:
    # The plain `service create --publish 8090:8080 IMAGE`: no overlay network at all.
    tb.create("plain", "--publish", "8090:8080", "--constraint", "node.hostname==h2")
    (plain,) = tb.running("plain")
    answering(tb, "h2", 8090, {plain.id[:12]})
    for host in WORKERS:
        assert host_get(tb.outside.netns, tb.addr(host), 8090) == plain.id[:12], host
    # Internal networks only: no way in, so publishing is refused, naming the port.
    tb.ctl("network", "create", "--internal", "sealed")
    r = swarmctl(
        tb.c.socket, "service", "create", "--name", "sealed-web", "--image", tb.image,
        "--network", "sealed", "--publish", "8091:8080", "--detach", *WEB,
    )  # fmt: skip
    assert r.code == 1 and "8091/tcp" in r.err and "internal" in r.err, r.err


def test_published_udp_port_on_every_worker(tb: Bed) -> None:
    tb.ctl("network", "create", "front")
    tb.create(
        "echo", "--network", "front", "--constraint", "node.hostname==h2",
        "--publish", "published=5353,target=5353,protocol=udp", command=SLEEPER,
    )  # fmt: skip
    (task,) = tb.running("echo")
    # The UDP server: a socket in the task's namespace, served from here.
    server = netns.socket_in(task_netns(task), socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 5353))
    server.settimeout(0.2)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(2048)
            except TimeoutError:
                continue
            server.sendto(b"echo:" + data, peer)

    thread = threading.Thread(target=echo)
    thread.start()
    try:
        for host in WORKERS:  # h1 and h3 have no task: they forward
            client = netns.socket_in(
                f"/var/run/netns/{tb.outside.netns}", socket.AF_INET, socket.SOCK_DGRAM
            )
            client.settimeout(1)

            def answered(c: socket.socket = client, h: str = host) -> bool:
                c.sendto(h.encode(), (tb.addr(h), 5353))
                try:
                    return c.recvfrom(2048)[0] == b"echo:" + h.encode()
                except TimeoutError:
                    return False

            try:
                wait_for(answered, 10, f"UDP through {host}")
            finally:
                client.close()
    finally:
        stop.set()
        thread.join()
        server.close()


def test_rolling_update_under_load_loses_no_request(tb: Bed) -> None:
    tb.ctl("network", "create", "front")
    tb.create(
        "web", "--replicas", "3", "--network", "front", "--publish", "8080:8080",
        "--update-parallelism", "1", "--update-delay", "1s",
    )  # fmt: skip
    tb.create("client", "--network", "front", command=SLEEPER)
    vip = tb.ctl("service", "inspect", "web", "--format", "json")["endpoint"]["virtual_ips"][0]
    (client,) = tb.running("client")
    before = {t.id for t in tb.running("web")}
    stop = threading.Event()
    counts: dict[str, Counter[bool]] = {"vip": Counter(), "published": Counter()}

    lock = threading.Lock()

    def load(kind: str, get: Callable[[], str]) -> None:
        while not stop.is_set():
            ok = bool(get())
            with lock:
                counts[kind][ok] += 1

    def via_vip() -> str:
        return http_get(task_netns(client), vip["addr"], 8080, 5, HOLD_S)

    def via_port() -> str:
        return host_get(tb.outside.netns, tb.addr("h1"), 8080, 5, HOLD_S)

    # Three clients each way: a request is in flight at (almost) every moment.
    workers = [
        threading.Thread(target=load, args=(kind, get))
        for kind, get in (("vip", via_vip), ("published", via_port))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    try:
        time.sleep(1)
        tb.ctl("service", "update", "--env", "ROUND=2", "web")
        time.sleep(1)
    finally:
        stop.set()
        for w in workers:
            w.join()
    print(f"\nrolling update under load: {counts}")
    after = {t.id for t in tb.running("web")}
    assert len(after) == 3 and not after & before, "the update did not replace every task"
    for kind, c in counts.items():
        assert c[True] > 30, (kind, c)
        assert c[False] == 0, (kind, c)


# ---------------------------------------------------------------- host mode, restarts


def test_host_mode_port_only_where_a_task_runs_and_a_taken_port_is_reported(tb: Bed) -> None:
    h1, h3 = tb.c.hosts[1], tb.c.hosts[3]
    tb.ctl("network", "create", "front")
    tb.create(
        "web", "--network", "front", "--publish", "published=8081,target=8080,mode=host",
        "--constraint", "node.hostname==h1",
    )  # fmt: skip
    (web,) = tb.running("web")
    answering(tb, "h1", 8081, {web.id[:12]})
    assert host_get(tb.outside.netns, h1.addr, 8081) == web.id[:12]
    assert host_get(tb.outside.netns, h3.addr, 8081, timeout=1) == ""
    # A process on h1 holds port 8082: a service publishing it there is told so.
    holder = subprocess.Popen(
        h1.cmd("busybox", "nc", "-l", "-p", "8082"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        tb.create(
            "taken", "--network", "front", "--publish", "published=8082,target=8080,mode=host",
            "--constraint", "node.hostname==h1",
        )  # fmt: skip

        def reported() -> bool:
            (t,) = tb.running("taken")
            return "port 8082/tcp is already in use on this host" in t.status.err

        wait_for(reported, 15, "the taken port reported on the task")
        assert "8082/tcp" in tb.ctl("service", "ps", "taken")
    finally:
        holder.kill()
        holder.wait()


def test_agent_restart_keeps_ports_and_balancing_then_resumes(tb: Bed) -> None:
    h1 = tb.c.hosts[1]
    tb.ctl("network", "create", "front")
    tb.create(
        "web", "--replicas", "2", "--network", "front", "--publish", "8080:8080",
        "--constraint", "node.hostname!=h1",
    )  # fmt: skip
    tb.create("client", "--network", "front", "--constraint", "node.hostname==h1",
              command=SLEEPER)  # fmt: skip
    vip = tb.ctl("service", "inspect", "web", "--format", "json")["endpoint"]["virtual_ips"][0]
    (client,) = tb.running("client")
    ns = task_netns(client)
    ids = {t.id[:12] for t in tb.running("web")}
    try:
        wait_for(lambda: http_get(ns, vip["addr"], 8080) in ids, 10, "the VIP answers")
    except AssertionError:
        raise AssertionError(diagnose(tb, ns)) from None
    # A clean stop (an upgrade): the node stays ready for the heartbeat window, its
    # tasks stay where they are. (A killed agent's node goes down and its tasks are
    # replaced: that is self-healing, tested elsewhere.)
    tb.agents["h1"].terminate()
    tb.agents["h1"].wait()
    # While h1's agent is down its kernel rules go on: published port and VIP answer.
    assert host_get(tb.outside.netns, h1.addr, 8080) in ids
    assert http_get(ns, vip["addr"], 8080) in ids
    tb.start_agent(h1)
    # Back: its resolver serves again, and it follows changes.
    try:
        wait_for(lambda: dns(ns, "web")[1] == [vip["addr"]], 20, "DNS back")
    except AssertionError:
        ss = subprocess.run(
            ["nsenter", f"--net={ns}", "ss", "-uanp"], capture_output=True, text=True
        )
        raise AssertionError(f"{dns(ns, 'web')}\n{ss.stdout}") from None
    tb.ctl("service", "scale", "web=1")
    (left,) = tb.running("web")
    wait_for(lambda: dns(ns, "tasks.web")[1] == [ip_of(left)], 20, "tasks.web follows")
    assert {http_get(ns, vip["addr"], 8080) for _ in range(10)} == {left.id[:12]}
