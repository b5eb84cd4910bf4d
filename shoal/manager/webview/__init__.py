"""The manager's read-only web view at `/`: static HTML+JS from this package (no
build step), fed by server-sent events from the cache's watch.

The page gets one snapshot, then batches of changed objects (coalesced for a
moment so a scale of thousands of tasks is a few messages, not thousands).
Task details and logs are fetched when a card is clicked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from shoal.aiotasks import cancel_and_wait
from shoal.manager.store import Cache, Kind
from shoal.manager.webview.views import node_view, service_view, task_view
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Changes are gathered this long before a batch goes out.
BATCH_S = 0.2
# Node CPU/memory bars: sent this often (they come from heartbeats, not the store).
USAGE_EVERY_S = 5.0
LOG_TAIL = 200
LOG_BYTES = 256 * 1024


class WebView:
    def __init__(
        self,
        cache: Cache,
        usage: Callable[[], dict[str, dpb.NodeUsage]] | None = None,
        logs: Any = None,
    ) -> None:
        self.cache = cache
        self.usage = usage or dict
        # The dispatcher's logs(node_id, task_ids, follow, tail), if this manager has one.
        self.logs = logs
        # Open event streams: they never end on their own, so stop() ends them.
        self._streams: set[asyncio.Task[Any]] = set()

    async def stop(self) -> None:
        await cancel_and_wait(list(self._streams))

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/tasks/{id}", self._task)
        app.router.add_get("/api/tasks/{id}/logs", self._task_logs)

    async def _index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    # ------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        c = self.cache
        return {
            "revision": c.revision,
            "leader": c.leader_id(),
            "nodes": [node_view(n, c) for n in c.list_objects(Kind.NODE)],
            "services": [service_view(s, c) for s in c.list_objects(Kind.SERVICE)],
            "tasks": [task_view(t) for t in c.list_objects(Kind.TASK)],
            "usage": self._usage(),
        }

    def _usage(self) -> dict[str, list[float]]:
        return {
            node_id: [u.cpu_fraction, u.memory_used_bytes, u.memory_total_bytes]
            for node_id, u in self.usage().items()
        }

    async def _state(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    def _batch(self, changed: dict[tuple[Kind, str], None]) -> dict[str, Any]:
        """The current objects behind a set of changes (removed ones by id)."""
        c = self.cache
        out: dict[str, Any] = {"revision": c.revision, "leader": c.leader_id()}
        upserts: dict[str, list[Any]] = {"nodes": [], "services": [], "tasks": []}
        removed: dict[str, list[str]] = {"nodes": [], "services": [], "tasks": []}
        services: set[str] = set()
        for kind, object_id in changed:
            obj = c.get(kind, object_id)
            if kind == Kind.TASK:
                key = "tasks"
                if obj is not None:
                    upserts[key].append(task_view(obj))
                    services.add(obj.service_id)
            elif kind == Kind.SERVICE:
                key = "services"
                services.add(object_id)
            elif kind == Kind.NODE:
                key = "nodes"
                if obj is not None:
                    upserts[key].append(node_view(obj, c))
            else:
                continue
            if obj is None:
                removed[key].append(object_id)
        # A service's counts change with its tasks: recount the services touched.
        for service_id in services:
            svc = c.get(Kind.SERVICE, service_id)
            if svc is not None:
                upserts["services"].append(service_view(svc, c))
        out["upserts"] = upserts
        out["removed"] = removed
        return out

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        me = asyncio.current_task()
        assert me is not None  # a request handler runs in a task
        self._streams.add(me)
        try:
            await self._stream(resp)
        finally:
            self._streams.discard(me)
        return resp

    async def _stream(self, resp: web.StreamResponse) -> None:
        with self.cache.subscribe() as sub:
            await _send(resp, "snapshot", self.snapshot())
            loop = asyncio.get_running_loop()
            next_usage = loop.time() + USAGE_EVERY_S
            while True:
                try:
                    resync, changes = await asyncio.wait_for(
                        sub.next(), max(0.0, next_usage - loop.time())
                    )
                except TimeoutError:
                    await _send(resp, "usage", self._usage())
                    next_usage = loop.time() + USAGE_EVERY_S
                    continue
                await asyncio.sleep(BATCH_S)  # let the rest of a burst arrive
                more_resync, more = sub.drain()
                if resync or more_resync:
                    await _send(resp, "snapshot", self.snapshot())
                    continue
                changed = {(ch.kind, ch.id): None for ch in (*changes, *more)}
                await _send(resp, "batch", self._batch(changed))

    # ------------------------------------------------------------ one task

    def _find_task(self, request: web.Request) -> pb.Task:
        task: pb.Task | None = self.cache.get(Kind.TASK, request.match_info["id"])
        if task is None:
            raise web.HTTPNotFound(text="no such task\n")
        return task

    async def _task(self, request: web.Request) -> web.Response:
        task = self._find_task(request)
        view = task_view(task)
        view.update(
            message=task.status.message,
            error=task.status.err,
            image=task.spec.container.image,
            exit_code=task.status.container.exit_code,
            addresses=[a for n in task.networks for a in n.addresses],
            updated_ms=task.status.timestamp_ms,
        )
        return web.json_response(view)

    async def _task_logs(self, request: web.Request) -> web.Response:
        task = self._find_task(request)
        if self.logs is None or not task.node_id:
            raise web.HTTPNotFound(text="no logs for this task here\n")
        data = bytearray()
        try:
            async with asyncio.timeout(5):
                async for chunk in self.logs(task.node_id, [task.id], False, LOG_TAIL):
                    data += chunk.data
                    if len(data) > LOG_BYTES:
                        break
        except LookupError as err:
            raise web.HTTPNotFound(text=f"{err}\n") from None
        except TimeoutError:
            pass  # what arrived so far
        return web.Response(text=data.decode(errors="replace"))


async def _send(resp: web.StreamResponse, event: str, data: Any) -> None:
    payload = json.dumps(data, separators=(",", ":"))
    await resp.write(f"event: {event}\ndata: {payload}\n\n".encode())
