"""The manager's HTTP/JSON socket: the control API as plain JSON, used the way
dockerd's API is used with `curl --unix-socket`:

    curl --unix-socket /var/lib/shoal/control.http.sock http://shoal/services

It sits beside the control socket (shoal/restsock.py names it) and is guarded the
same way: a unix socket, root only (0600). Reads (GET):

    /services               /services/REF
    /tasks[?service=REF][&node=REF]       /tasks/REF
    /nodes     /nodes/REF     /networks     /networks/REF     /cluster

and the service writes of restservices.py (POST /services, POST
/services/REF/update|scale, DELETE /services/REF, GET /services/REF/spec|watch).

REF is an ID, a unique ID prefix or a name (a hostname for nodes), as swarmctl takes
them. A read's body is the JSON view of shoal/views.py, exactly what `swarmctl ...
--format json` prints (swarmctl's read commands and service writes use this
socket); a failure is `{"error": SENTENCE, "code": NAME}` with 400 (bad request or
ambiguous REF), 404 (no such object or path), 405 (method not allowed), 409
(conflict: `code` says which), 411/413 (a body without a length, or too long) or
503 (not ready). Answers come from the control API's own RPC methods, called
in-process, so lookups, validation, ordering and the managers' live status are the
gRPC API's to the letter. Other writes stay on the control socket (gRPC).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any

from shoal import views
from shoal.aiotasks import cancel_and_wait
from shoal.manager.controlapi import ControlAPI
from shoal.manager.restcommon import Created, HTTPError, InProcess, Streamed, no_query
from shoal.manager.restservices import ServiceWrites
from shoal.manager.store import Kind
from shoal.proto import control_pb2 as api

log = logging.getLogger(__name__)

# A request's head (request line and headers) may not be longer.
MAX_HEAD = 16 * 1024
# Nor its body (a service spec; a large one is a few KB).
MAX_BODY = 1 << 20
# A kept-alive connection that sends nothing for this long is closed.
IDLE_S = 60.0

_REASON = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

Query = dict[str, str]
# A path's handler: (REF or "", query, body) -> the JSON answer (or Created, Streamed).
Handler = Callable[[str, Query, bytes], Coroutine[Any, Any, Any]]
# Methods whose handler is cancelled when the client hangs up (see _unless_hung_up).
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# (collection, with a REF, what follows the REF) -> {method: handler}
Route = tuple[str, bool, str]


class RestAPI:
    """Serves the paths on a unix socket until `stop`."""

    def __init__(self, control: ControlAPI, path: Path) -> None:
        self.control = control
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        writes = ServiceWrites(control)
        self._routes: dict[Route, dict[str, Handler]] = {
            ("services", False, ""): {"GET": self._services, "POST": writes.create},
            ("services", True, ""): {"GET": self._service, "DELETE": writes.remove},
            ("services", True, "spec"): {"GET": writes.spec},
            ("services", True, "watch"): {"GET": writes.watch},
            ("services", True, "update"): {"POST": writes.update},
            ("services", True, "scale"): {"POST": writes.scale},
            ("tasks", False, ""): {"GET": self._tasks},
            ("tasks", True, ""): {"GET": self._task},
            ("nodes", False, ""): {"GET": self._nodes},
            ("nodes", True, ""): {"GET": self._node},
            ("networks", False, ""): {"GET": self._networks},
            ("networks", True, ""): {"GET": self._network},
            ("cluster", False, ""): {"GET": self._cluster},
        }

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # Root only before anyone can connect: connections wait for listen().
            os.chmod(self.path, 0o600)
            self._server = await asyncio.start_unix_server(
                self._connection, sock=sock, limit=MAX_HEAD
            )
        except BaseException:
            sock.close()
            raise
        log.info("HTTP/JSON API on %s", self.path)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self.path.unlink(missing_ok=True)
        self._server = None

    # ------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            keep_alive = True
            while keep_alive:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    head = b""  # answered with 400 below, then closed
                status, body, keep_alive, allow = await self._answer(head, reader)
                if isinstance(body, Streamed):
                    await _stream(body, reader, writer)
                    return
                writer.write(_response(status, body, keep_alive, allow))
                await writer.drain()
        except (ConnectionError, HungUp):
            pass
        finally:
            writer.close()

    async def _answer(
        self, head: bytes, reader: asyncio.StreamReader
    ) -> tuple[int, Any, bool, str]:
        """(status, JSON body or Streamed, keep the connection, Allow) for one request."""
        try:
            method, target, version, headers = _parse_head(head)
            body = await _read_body(headers, reader)
        except HTTPError as err:
            return err.status, err.body(), False, ""
        keep_alive = _keep_alive(version, headers)
        try:
            url = urllib.parse.urlsplit(target)
        except ValueError:
            return 400, HTTPError(400, "malformed request target").body(), False, ""
        try:
            handlers = self._handlers(url.path)
            handler = handlers.get(method)
            if handler is None:
                allow = ", ".join(handlers)
                return 405, HTTPError(405, f"{method} is not allowed here").body(), False, allow
            call = handler(*_ref(url.path), _query(url.query), body)
            if method in WRITES:
                answer, clean = await _unless_hung_up(call, reader)
                keep_alive = keep_alive and clean
            else:
                answer = await call
            if isinstance(answer, Created):
                return 201, answer.body, keep_alive, ""
            return 200, answer, keep_alive, ""
        except HTTPError as err:
            return err.status, err.body(), keep_alive, ""
        except HungUp:
            raise
        except Exception as err:  # a bug
            log.exception("HTTP %s %s failed", method, url.path)
            return 500, HTTPError(500, f"internal error: {type(err).__name__}").body(), False, ""

    def _handlers(self, path: str) -> dict[str, Handler]:
        # "/nodes/" is an empty REF (refused as the gRPC API refuses it), not the list.
        parts = [urllib.parse.unquote(p) for p in path[1:].split("/")]
        if len(parts) <= 3:
            route = (parts[0], len(parts) > 1, parts[2] if len(parts) == 3 else "")
            handlers = self._routes.get(route)
            if handlers is not None:
                return handlers
        raise HTTPError(404, f"no such path: {path}")

    # ------------------------------------------------------------ reads

    async def _services(self, _: str, query: Query, body: bytes) -> list[dict[str, Any]]:
        no_query(query)
        resp = await self.control.ListServices(api.ListServicesRequest(), InProcess())
        names = self._network_names()
        return [views.service_view(s, names) for s in resp.services]

    async def _service(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        resp = await self.control.GetService(api.GetServiceRequest(ref=ref), InProcess())
        return views.service_view(resp.service, self._network_names())

    async def _tasks(self, _: str, query: Query, body: bytes) -> list[dict[str, Any]]:
        no_query(query, allowed=("service", "node"))
        req = api.ListTasksRequest(
            service_ref=query.get("service", ""), node_ref=query.get("node", "")
        )
        resp = await self.control.ListTasks(req, InProcess())
        names = self._hostnames()
        return [views.task_view(t, names) for t in resp.tasks]

    async def _task(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        resp = await self.control.GetTask(api.GetTaskRequest(ref=ref), InProcess())
        return views.task_view(resp.task, self._hostnames())

    async def _nodes(self, _: str, query: Query, body: bytes) -> list[dict[str, Any]]:
        no_query(query)
        resp = await self.control.ListNodes(api.ListNodesRequest(), InProcess())
        return [views.node_view(n) for n in resp.nodes]

    async def _node(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        resp = await self.control.GetNode(api.GetNodeRequest(ref=ref), InProcess())
        return views.node_view(resp.node)

    async def _networks(self, _: str, query: Query, body: bytes) -> list[dict[str, Any]]:
        no_query(query)
        resp = await self.control.ListNetworks(api.ListNetworksRequest(), InProcess())
        return [views.network_view(n) for n in resp.networks]

    async def _network(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        resp = await self.control.GetNetwork(api.GetNetworkRequest(ref=ref), InProcess())
        return views.network_view(resp.network)

    async def _cluster(self, _: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        resp = await self.control.GetCluster(api.GetClusterRequest(), InProcess())
        return views.cluster_view(resp.cluster)

    # The names views show, from the cache the RPC just caught up with etcd.
    def _network_names(self) -> dict[str, str]:
        nets = self.control.cache.list_objects(Kind.NETWORK)
        return {n.id: n.spec.annotations.name for n in nets}

    def _hostnames(self) -> dict[str, str]:
        nodes = self.control.cache.list_objects(Kind.NODE)
        return {n.id: n.description.hostname for n in nodes}


# ---------------------------------------------------------------- HTTP details


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, lower-cased headers) of a request head."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HTTPError(400, "malformed request") from None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise HTTPError(400, "malformed request")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPError(400, "malformed header")
            headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def _query(text: str) -> Query:
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise HTTPError(400, "malformed query") from None
    query: Query = {}
    for key, value in pairs:
        if key in query:
            raise HTTPError(400, f"query parameter {key!r} is given twice")
        query[key] = value
    return query


def _ref(path: str) -> tuple[str]:
    """The REF of a path (unquoted; "" for a collection)."""
    parts = path[1:].split("/")
    return (urllib.parse.unquote(parts[1]) if len(parts) > 1 else "",)


async def _read_body(headers: dict[str, str], reader: asyncio.StreamReader) -> bytes:
    """The request's body: Content-Length bytes (chunked bodies are refused)."""
    if "transfer-encoding" in headers:
        raise HTTPError(411, "send the body with a Content-Length, not chunked")
    text = headers.get("content-length", "0")
    if not (text.isascii() and text.isdigit()):
        raise HTTPError(400, "malformed Content-Length")
    length = int(text)
    if length > MAX_BODY:
        raise HTTPError(413, f"the body is over {MAX_BODY} bytes")
    try:
        return await asyncio.wait_for(reader.readexactly(length), IDLE_S) if length else b""
    except (asyncio.IncompleteReadError, TimeoutError):
        raise HTTPError(400, "the body is shorter than its Content-Length") from None


def _response(status: int, body: Any, keep_alive: bool, allow: str = "") -> bytes:
    data = (json.dumps(body, indent=2) + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASON.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
    )
    if allow:
        head += f"Allow: {allow}\r\n"
    return head.encode() + b"\r\n" + data


def _chunk(obj: Any) -> bytes:
    line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    return f"{len(line):x}\r\n".encode() + line + b"\r\n"


class HungUp(Exception):
    """The client went away while its write was being carried out."""


async def _unless_hung_up(
    call: Coroutine[Any, Any, Any], reader: asyncio.StreamReader
) -> tuple[Any, bool]:
    """The handler's answer, and whether the connection may be kept. A client that hangs
    up (swarmctl's timeout) cancels its write, as a gRPC deadline cancels the call, so
    that an error the user was shown is not followed by the write taking effect. A
    client does not pipeline after a write (RFC 9112 9.3.2): a byte sent meanwhile ends
    the connection after this answer."""
    work = asyncio.create_task(call)
    hangup = asyncio.create_task(reader.read(1))
    try:
        await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done() and (hangup.exception() is not None or hangup.result() == b""):
            raise HungUp
        return await work, not hangup.done()
    finally:
        await cancel_and_wait([work, hangup])
        if not hangup.cancelled():
            hangup.exception()  # retrieved: a reset connection is no error of ours


async def _stream(
    answer: Streamed, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Writes a streamed answer as newline-delimited JSON in chunks, then closes: at the
    stream's end, its timeout, or when the client hangs up (no subscriber is left behind
    by a client that went away while nothing changed)."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + _chunk(answer.first)
    )
    loop = asyncio.get_running_loop()
    end = None if answer.timeout_s is None else loop.time() + answer.timeout_s
    hangup = asyncio.create_task(reader.read(1))
    try:
        await writer.drain()
        while True:
            step = asyncio.create_task(_next(answer.rest))
            left = None if end is None else max(end - loop.time(), 0)
            done, _ = await asyncio.wait(
                {step, hangup}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if step not in done:
                await cancel_and_wait([step])
                if hangup in done:
                    return  # nobody to tell the end to
                break
            try:
                item = step.result()
            except StopAsyncIteration:
                break
            writer.write(_chunk(item))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        await cancel_and_wait([hangup])
        await answer.rest.aclose()


async def _next(items: AsyncGenerator[Any, None]) -> Any:
    return await anext(items)
