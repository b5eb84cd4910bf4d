"""The manager's web view in a real headless browser (Debian's chromium, driven by
playwright): services, nodes and task states, live updates without a reload."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.cluster import Cluster
from shoal.lab.hosts import Hosts
from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.manager.etcd_embedded import free_port

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium (scripts/install --dev)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        # Root in a container: chromium's sandbox needs user namespaces it may not get.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def start_cluster(
    tmp_path: Path, managers: list[ManagerProcess], workers: list[WorkerProcess]
) -> tuple[ManagerProcess, int]:
    """A manager with the web view on loopback, two simulated agents, web x3."""
    port = free_port()
    m = ManagerProcess(tmp_path / "m1", "--http-addr", f":{port}").start()
    managers.append(m)
    token = m.ctl("cluster", "join-token", "worker", "-q").out.strip()
    for name in ("w1", "w2"):
        workers.append(
            WorkerProcess(
                tmp_path / name, m.addr, token, "--runtime", "simulated", "--hostname", name
            ).start()
        )
    r = m.ctl("service", "create", "--name", "web", "--image", "busybox", "--replicas", "3",
              "sleep", "1000")  # fmt: skip
    assert r.code == 0, r.err
    return m, port


def check_update_bars_and_detail(page: Any, m: ManagerProcess) -> None:
    # A rolling update shows its progress, batch by batch, then its end.
    r = m.ctl("service", "update", "-d", "--image", "busybox:2", "--update-parallelism", "1",
              "--update-delay", "2s", "web")  # fmt: skip
    assert r.code == 0, r.err
    page.wait_for_function(
        "document.querySelector('tr[data-service=web]').textContent.includes('batch 2 of 2')",
        timeout=30_000,
    )
    page.wait_for_function(
        "document.querySelector('tr[data-service=web]').textContent.includes('completed')",
        timeout=30_000,
    )
    # CPU and memory bars from the agents' heartbeats, on both workers' columns.
    page.wait_for_function(
        "document.querySelectorAll('.col .bar.cpu').length >= 2", timeout=30_000
    )
    assert page.locator(".col .bar.mem").count() >= 2
    # A card opens the task: its state and node.
    page.locator(".card").first.click()
    page.wait_for_selector("#detail:not([hidden]) dd")
    detail = page.locator("#detail").inner_text()
    assert "running" in detail and ("w1" in detail or "w2" in detail)


def test_web_view_shows_services_nodes_tasks_and_follows_a_scale(
    tmp_path: Path,
    browser: object,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    m, port = start_cluster(tmp_path, managers, workers)

    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#conn.up")
    row = page.locator('tr[data-service="web"]')
    row.wait_for()
    page.wait_for_function(
        "document.querySelector('tr[data-service=web] .replicas').textContent === '3 / 3'"
    )
    assert "busybox" in row.inner_text()
    # Nodes as columns: the manager and both workers.
    for host in ("w1", "w2"):
        assert page.locator(".col h3", has_text=host).count() == 1
    assert page.locator(".col .meta", has_text="manager").count() == 1
    running = page.locator('.card[data-state="running"]')
    assert running.count() == 3
    assert sorted(running.all_inner_texts()) == ["web.1", "web.2", "web.3"]

    # A scale shows up live: no reload, the cards come from the event stream.
    page.evaluate("window.__same_page = true")
    assert m.ctl("service", "scale", "web=5").code == 0
    page.wait_for_function(
        "document.querySelectorAll('.card[data-state=running]').length === 5", timeout=20_000
    )
    page.wait_for_function(
        "document.querySelector('tr[data-service=web] .replicas').textContent === '5 / 5'"
    )
    assert page.evaluate("window.__same_page") is True
    assert sorted(running.all_inner_texts()) == [f"web.{i}" for i in range(1, 6)]

    # Scaling down: the shut-down tasks go; "running only" keeps just the running ones.
    assert m.ctl("service", "scale", "web=2").code == 0
    page.check("#running-only")
    page.wait_for_function(
        "document.querySelectorAll('.card').length === 2", timeout=20_000
    )

    check_update_bars_and_detail(page, m)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webview.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []

    # The page's open event stream does not hold the manager up when it stops.
    started = time.monotonic()
    assert m.stop() == 0
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("root")
def test_non_loopback_http_requires_a_cluster_certificate(tmp_path: Path) -> None:
    """On a host's address the web view and /metrics are HTTPS with client certificates
    from the cluster CA: a worker's node certificate gets in, no certificate does not."""
    with Hosts(2) as hosts:
        cluster = Cluster(hosts, tmp_path)
        h0, h1 = hosts[0], hosts[1]
        cluster.start_manager("--http-addr", f"{h0.addr}:9443")
        cluster.start_worker(h1, "--runtime", "simulated")
        certs = tmp_path / h1.name / "certificates"
        # The server's certificate names the manager role; resolve that name to h0.
        base = ["curl", "-sS", "--max-time", "10", "--resolve", f"shoal-manager:9443:{h0.addr}",
                "--cacert", str(certs / "ca.crt")]  # fmt: skip
        url = "https://shoal-manager:9443"
        client = ["--cert", str(certs / "node.crt"), "--key", str(certs / "node.key")]
        ok = h1.run(*base, *client, f"{url}/healthz", check=False)
        assert ok.returncode == 0 and ok.stdout.startswith("ok"), ok
        page = h1.run(*base, *client, f"{url}/", check=False)
        assert page.returncode == 0 and "<title>Shoal</title>" in page.stdout
        metrics = h1.run(*base, *client, f"{url}/metrics", check=False)
        assert "shoal_nodes{" in metrics.stdout
        refused = h1.run(*base, f"{url}/healthz", check=False)
        assert refused.returncode != 0 and "ok" not in refused.stdout
        plain = h1.run("curl", "-sS", "--max-time", "10", f"http://{h0.addr}:9443/", check=False)
        assert plain.returncode != 0 or "<title>Shoal</title>" not in plain.stdout
