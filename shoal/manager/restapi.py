"""The manager's HTTP/JSON socket: the control API's reads as plain JSON, used the
way dockerd's API is used with `curl --unix-socket`:

    curl --unix-socket /var/lib/shoal/control.http.sock http://shoal/services

It sits beside the control socket (shoal/restsock.py names it) and is guarded the
same way: a unix socket, root only (0600). GET only:

    /services               /services/REF
    /tasks[?service=REF][&node=REF]       /tasks/REF
    /nodes     /nodes/REF     /networks     /networks/REF     /cluster

REF is an ID, a unique ID prefix or a name (a hostname for nodes), as swarmctl takes
them. A body is the JSON view of shoal/views.py, exactly what `swarmctl ...
--format json` prints (swarmctl's read commands use this socket); a failure is
`{"error": SENTENCE}` with 400 (bad request or ambiguous REF), 404 (no such object
or path), 405 (not GET) or 503 (not ready). Answers come from the control API's
own RPC methods, called in-process, so lookups, ordering and the managers' live
status are the gRPC API's to the letter. Writes stay on the control socket (gRPC).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from shoal import views
from shoal.manager.controlapi import ControlAPI
from shoal.manager.store import Kind
from shoal.proto import control_pb2 as api

log = logging.getLogger(__name__)

# A request's head (request line and headers) may not be longer; requests have no body.
MAX_HEAD = 16 * 1024
# A kept-alive connection that sends nothing for this long is closed.
IDLE_S = 60.0

_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_REASON = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _InProcess:
    """What the control API's RPC methods use of a gRPC context, for calls made here:
    an abort that raises (the RPC's status becomes the HTTP status) and trailing
    metadata that goes nowhere."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise HTTPError(_STATUS.get(code, 500), details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        del metadata


Query = dict[str, str]
Handler = Callable[[Sequence[str], Query], Awaitable[Any]]


class RestAPI:
    """Serves the read paths on a unix socket until `stop`."""

    def __init__(self, control: ControlAPI, path: Path) -> None:
        self.control = control
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._routes: dict[str, tuple[Handler, Handler | None]] = {
            "services": (self._services, self._service),
            "tasks": (self._tasks, self._task),
            "nodes": (self._nodes, self._node),
            "networks": (self._networks, self._network),
            "cluster": (self._cluster, None),
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
        log.info("HTTP/JSON reads on %s", self.path)

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
                status, body, keep_alive = await self._answer(head)
                writer.write(_response(status, body, keep_alive))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[int, Any, bool]:
        """(status, JSON body, keep the connection) for one request's head."""
        try:
            method, target, version, headers = _parse_head(head)
        except HTTPError as err:
            return err.status, {"error": str(err)}, False
        keep_alive = _keep_alive(version, headers)
        if "content-length" in headers or "transfer-encoding" in headers:
            keep_alive = False  # a body this API does not read: do not parse it as a request
        if method != "GET":
            return 405, {"error": f"{method} is not allowed: this socket only reads"}, False
        try:
            return 200, await self._route(target), keep_alive
        except HTTPError as err:
            return err.status, {"error": str(err)}, keep_alive
        except Exception as err:  # a bug: logged once by the RPC wrapper
            return 500, {"error": f"internal error: {type(err).__name__}"}, keep_alive

    async def _route(self, target: str) -> Any:
        url = urllib.parse.urlsplit(target)
        # "/nodes/" is an empty REF (refused as the gRPC API refuses it), not the list.
        parts = [urllib.parse.unquote(p) for p in url.path[1:].split("/")]
        query = _query(url.query)
        handlers = self._routes.get(parts[0])
        if handlers is not None and len(parts) <= 2:
            collection, one = handlers
            if len(parts) == 1:
                return await collection(parts[1:], query)
            if one is not None:
                _no_query(query)
                return await one(parts[1:], query)
        raise HTTPError(404, f"no such path: {url.path}")

    # ------------------------------------------------------------ reads

    async def _services(self, _: Sequence[str], query: Query) -> list[dict[str, Any]]:
        _no_query(query)
        resp = await self.control.ListServices(api.ListServicesRequest(), _InProcess())
        names = self._network_names()
        return [views.service_view(s, names) for s in resp.services]

    async def _service(self, ref: Sequence[str], _: Query) -> dict[str, Any]:
        resp = await self.control.GetService(api.GetServiceRequest(ref=ref[0]), _InProcess())
        return views.service_view(resp.service, self._network_names())

    async def _tasks(self, _: Sequence[str], query: Query) -> list[dict[str, Any]]:
        _no_query(query, allowed=("service", "node"))
        req = api.ListTasksRequest(
            service_ref=query.get("service", ""), node_ref=query.get("node", "")
        )
        resp = await self.control.ListTasks(req, _InProcess())
        names = self._hostnames()
        return [views.task_view(t, names) for t in resp.tasks]

    async def _task(self, ref: Sequence[str], _: Query) -> dict[str, Any]:
        resp = await self.control.GetTask(api.GetTaskRequest(ref=ref[0]), _InProcess())
        return views.task_view(resp.task, self._hostnames())

    async def _nodes(self, _: Sequence[str], query: Query) -> list[dict[str, Any]]:
        _no_query(query)
        resp = await self.control.ListNodes(api.ListNodesRequest(), _InProcess())
        return [views.node_view(n) for n in resp.nodes]

    async def _node(self, ref: Sequence[str], _: Query) -> dict[str, Any]:
        resp = await self.control.GetNode(api.GetNodeRequest(ref=ref[0]), _InProcess())
        return views.node_view(resp.node)

    async def _networks(self, _: Sequence[str], query: Query) -> list[dict[str, Any]]:
        _no_query(query)
        resp = await self.control.ListNetworks(api.ListNetworksRequest(), _InProcess())
        return [views.network_view(n) for n in resp.networks]

    async def _network(self, ref: Sequence[str], _: Query) -> dict[str, Any]:
        resp = await self.control.GetNetwork(api.GetNetworkRequest(ref=ref[0]), _InProcess())
        return views.network_view(resp.network)

    async def _cluster(self, _: Sequence[str], query: Query) -> dict[str, Any]:
        _no_query(query)
        resp = await self.control.GetCluster(api.GetClusterRequest(), _InProcess())
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


def _no_query(query: Query, allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise HTTPError(400, f"unknown query parameter {unknown[0]!r}")


def _response(status: int, body: Any, keep_alive: bool) -> bytes:
    data = (json.dumps(body, indent=2) + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASON.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
    )
    if status == 405:
        head += "Allow: GET\r\n"
    return head.encode() + b"\r\n" + data
