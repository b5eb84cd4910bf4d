"""The manager's web view in a real headless browser (Debian's chromium, driven by
playwright): services, nodes and task states, live updates without a reload."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import ManagerProcess, WorkerProcess, free_port

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


def test_web_view_shows_services_nodes_tasks_and_follows_a_scale(
    tmp_path: Path,
    browser: object,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
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

    # A card opens the task: its state and node.
    page.locator(".card").first.click()
    page.wait_for_selector("#detail:not([hidden]) dd")
    detail = page.locator("#detail").inner_text()
    assert "running" in detail and ("w1" in detail or "w2" in detail)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webview.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []
