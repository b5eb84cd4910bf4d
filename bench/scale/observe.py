"""What the scale benchmark measures of issue 13's observability: the cost of a
/metrics scrape and of the web view's snapshot at the benchmark's size, and the
lag of the event stream (`swarmctl events`) while thousands of tasks start."""

from __future__ import annotations

import re
import statistics
import threading
import time
import urllib.request
from typing import Any

import grpc

from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc

SCRAPES = 5


class EventLag:
    """An Events stream read in a thread: per event, arrival minus the manager's time."""

    def __init__(self, ctl: api_grpc.ControlStub) -> None:
        self.lags: list[float] = []
        self.count = 0
        self.last_arrival = 0.0
        self._call = ctl.Events(api.EventsRequest())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for batch in self._call:
                now = time.time()
                self.count += len(batch.events)
                self.last_arrival = now
                self.lags.extend(now - ev.time_ms / 1000 for ev in batch.events)
        except grpc.RpcError:
            pass  # cancelled at the end

    def settle(self, quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
        """Waits until no event arrived for `quiet_s`: the stream has caught up."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and time.time() - self.last_arrival < quiet_s:
            time.sleep(0.2)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=5)


def _timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    body = urllib.request.urlopen(url, timeout=60).read()
    return time.perf_counter() - start, len(body)


def session_messages(port: int) -> dict[str, float]:
    """The manager's counts of gRPC messages over the agents' sessions, by direction
    ("sent", "received") and "received statuses" (empty from a manager without them)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^shoal_dispatcher_messages_(sent|received)_total\{kind="(\w+)"\} (\S+)$', text, re.M
    ):
        direction, kind, n = m.group(1), m.group(2), float(m.group(3))
        out[direction] = out.get(direction, 0.0) + n
        out[f"{direction} {kind}"] = n
    return out


def messages_per_task(
    before: dict[str, float], after: dict[str, float], tasks: int
) -> dict[str, Any]:
    """gRPC messages per task between two readings of session_messages (None: not counted)."""

    def per_task(key: str) -> float | None:
        if key not in after:
            return None
        return round((after[key] - before.get(key, 0.0)) / tasks, 3)

    return {
        "msgs_out_per_task": per_task("sent"),
        "msgs_in_per_task": per_task("received"),
        "status_msgs_per_task": per_task("received statuses"),
    }


def observe_figures(port: int, events: EventLag, page: PageWatch, tasks: int) -> dict[str, Any]:
    converged = time.time()
    browser = page.figures(tasks, converged)
    scrape = [_timed_get(f"http://127.0.0.1:{port}/metrics") for _ in range(SCRAPES)]
    state = [_timed_get(f"http://127.0.0.1:{port}/api/state") for _ in range(SCRAPES)]
    events.settle()
    caught_up = max(0.0, events.last_arrival - converged)
    events.close()
    lags = sorted(events.lags) or [0.0]
    return {
        "metrics_scrape_ms": round(statistics.median(t for t, _ in scrape) * 1000, 1),
        "metrics_kb": round(scrape[0][1] / 1024),
        "webview_state_ms": round(statistics.median(t for t, _ in state) * 1000, 1),
        "webview_state_kb": round(state[0][1] / 1024),
        "events": events.count,
        "events_per_task": round(events.count / tasks, 2),
        "event_lag_p50_ms": round(lags[len(lags) // 2] * 1000, 1),
        "event_lag_p99_ms": round(lags[max(0, int(len(lags) * 0.99) - 1)] * 1000, 1),
        "event_lag_max_ms": round(lags[-1] * 1000, 1),
        "events_after_converged_s": round(caught_up, 2),
        **browser,
    }


CHROMIUM = "/usr/bin/chromium"

# Frame-blocking JavaScript ("long tasks", > 50 ms), recorded from before the burst.
_LONG_TASKS = """() => {
  window.__long = [];
  new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration)))
    .observe({entryTypes: ['longtask']});
}"""

_SCROLL = """async () => {
  const box = document.getElementById('nodes');
  const times = [];
  for (let i = 1; i <= 10; i++) {
    const t0 = performance.now();
    box.scrollLeft = box.scrollWidth * i / 11;
    box.dispatchEvent(new Event('scroll'));
    await new Promise((r) => requestAnimationFrame(() => r()));
    await new Promise((r) => requestAnimationFrame(() => r()));
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[5];
}"""


class PageWatch:
    """The web view open in headless chromium while the benchmark's tasks start: does
    it keep up with the stream, and does it stay responsive? (Nothing without chromium.)"""

    def __init__(self, port: int, enabled: bool) -> None:
        self.page: Any = None
        self._pw: Any = None
        self._browser: Any = None
        import os

        if not enabled or not os.path.exists(CHROMIUM):
            return
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            return
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        self.page = self._browser.new_page(viewport={"width": 1600, "height": 1000})
        self.page.goto(f"http://127.0.0.1:{port}/")
        self.page.wait_for_selector("#conn.up")
        self.page.evaluate(_LONG_TASKS)

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._pw.stop()
            self._browser = self._pw = self.page = None

    def figures(self, tasks: int, converged: float) -> dict[str, Any]:
        if self.page is None:
            return {}
        try:
            self.page.wait_for_function(
                f"document.getElementById('summary').textContent.includes('{tasks} running')",
                timeout=120_000,
            )
            behind = max(0.0, time.time() - converged)
            long_tasks = self.page.evaluate("window.__long")
            scroll_ms = self.page.evaluate(_SCROLL)
        finally:
            self.close()
        return {
            "webview_behind_s": round(behind, 2),
            "webview_long_tasks": len(long_tasks),
            "webview_longest_task_ms": round(max(long_tasks, default=0.0)),
            "webview_scroll_frame_ms": round(scroll_ms, 1),
        }
