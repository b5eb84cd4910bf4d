"""Service writes on the manager's HTTP/JSON socket (restapi.py routes here):

    POST   /services                {"spec": SPEC}                      -> 201, the service
    POST   /services/REF/update     {"spec": SPEC, "version": N,
                                     "force": bool, "rollback": bool}   -> 200, the service
    POST   /services/REF/scale      {"replicas": N, "version": N}       -> 200, the service
    DELETE /services/REF                                                -> 200, {"id": ID}
    GET    /services/REF/spec       -> {"id", "name", "version", "spec"}: what update edits
    GET    /services/REF/watch[?timeout=SECONDS]
                                    -> the service converging, one JSON object per line

SPEC is a ServiceSpec in the protobuf JSON mapping with the .proto's field names
(`{"annotations": {"name": "web"}, "task": {"container": {"image": "busybox"}},
"replicated": {"replicas": 3}}`), the form swarmctl builds (swarmctl/spec.py).
`version` (optional, 0: none) makes the write conditional on the service not having
changed since it was read: a stale one is 409 with `"code": "aborted"`. The answer of
a write is the service's view (views.service_view) with its `warnings`.

Each write calls the gRPC servicer's own method in-process (CreateService,
UpdateService, RemoveService): the same validation, the same single etcd
transaction, the same refusals, their status codes mapped onto HTTP statuses
(restcommon.STATUS). There is no leader to forward to: like the control socket,
every manager writes to etcd itself, compare-and-swap deciding between them.
A watch line is views.progress_view of WatchService's messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from typing import Any

from google.protobuf import json_format

from shoal import views
from shoal.manager.controlapi import ControlAPI
from shoal.manager.restcommon import Created, HTTPError, InProcess, Streamed, no_query
from shoal.manager.store import Kind
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

Query = dict[str, str]


def _object(body: bytes, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The request body: a JSON object with only `allowed` keys, each of its type."""
    try:
        data = json.loads(body or b"{}")
    except ValueError as err:
        raise HTTPError(400, f"the request body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    for key, value in data.items():
        kind = allowed.get(key)
        if kind is None:
            raise HTTPError(400, f"unknown field {key!r} (allowed: {', '.join(allowed)})")
        # bool is an int to Python; not to this API.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise HTTPError(400, f"field {key!r} has the wrong type")
    return data


def _spec(data: Any) -> pb.ServiceSpec:
    try:
        return json_format.ParseDict(data, pb.ServiceSpec())
    except json_format.ParseError as err:
        raise HTTPError(400, f"invalid spec: {' '.join(str(err).split())}") from None


def _version(data: dict[str, Any]) -> int:
    version = data.get("version", 0)
    if not 0 <= version <= MAX_VERSION:
        raise HTTPError(400, f"version must be from 0 to {MAX_VERSION}")
    return int(version)


# Versions are uint64 in the API.
MAX_VERSION = 2**64 - 1


class ServiceWrites:
    def __init__(self, control: ControlAPI) -> None:
        self.control = control

    def _view(self, info: api.ServiceInfo) -> dict[str, Any]:
        nets = self.control.cache.list_objects(Kind.NETWORK)
        view = views.service_view(info, {n.id: n.spec.annotations.name for n in nets})
        view["warnings"] = list(info.warnings)
        return view

    async def create(self, ref: str, query: Query, body: bytes) -> Created:
        no_query(query)
        data = _object(body, {"spec": dict})
        if "spec" not in data:
            raise HTTPError(400, "a spec is required")
        req = api.CreateServiceRequest(spec=_spec(data["spec"]))
        resp = await self.control.CreateService(req, InProcess())
        return Created(self._view(resp.service))

    async def update(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        data = _object(body, {"spec": dict, "version": int, "force": bool, "rollback": bool})
        rollback = bool(data.get("rollback"))
        if rollback == ("spec" in data):
            raise HTTPError(400, "give either a spec or rollback: true")
        req = api.UpdateServiceRequest(
            ref=ref,
            version=_version(data),
            spec=None if rollback else _spec(data["spec"]),
            rollback=rollback,
            force=bool(data.get("force")),
        )
        resp = await self.control.UpdateService(req, InProcess())
        return self._view(resp.service)

    async def scale(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        """The stored spec with other replicas, written as UpdateService writes it."""
        no_query(query)
        data = _object(body, {"replicas": int, "version": int})
        if "replicas" not in data:
            raise HTTPError(400, "replicas is required")
        if data["replicas"] < 0:
            raise HTTPError(400, f"replicas must be 0 or more, got {data['replicas']}")
        got = await self.control.GetService(api.GetServiceRequest(ref=ref), InProcess())
        current = got.service.service
        if current.spec.WhichOneof("mode") != "replicated":
            raise HTTPError(400, f"{ref}: scale can only be used with replicated services")
        spec = pb.ServiceSpec()
        spec.CopyFrom(current.spec)
        spec.replicated.replicas = min(data["replicas"], 2**64 - 1)
        req = api.UpdateServiceRequest(
            ref=current.id, version=_version(data) or current.meta.version, spec=spec
        )
        resp = await self.control.UpdateService(req, InProcess())
        return self._view(resp.service)

    async def remove(self, ref: str, query: Query, body: bytes) -> dict[str, str]:
        no_query(query)
        resp = await self.control.RemoveService(api.RemoveServiceRequest(ref=ref), InProcess())
        return {"id": resp.id}

    async def spec(self, ref: str, query: Query, body: bytes) -> dict[str, Any]:
        no_query(query)
        resp = await self.control.GetService(api.GetServiceRequest(ref=ref), InProcess())
        svc = resp.service.service
        return {
            "id": svc.id,
            "name": svc.spec.annotations.name,
            "version": int(svc.meta.version),
            "spec": json_format.MessageToDict(svc.spec, preserving_proto_field_name=True),
        }

    async def watch(self, ref: str, query: Query, body: bytes) -> Streamed:
        no_query(query, allowed=("timeout",))
        timeout_s: float | None = None
        if "timeout" in query:
            try:
                timeout_s = float(query["timeout"])
            except ValueError:
                timeout_s = math.nan
            if not (math.isfinite(timeout_s) and timeout_s > 0):
                raise HTTPError(400, "timeout must be a number of seconds above 0")
        stream = self.control.WatchService(api.WatchServiceRequest(ref=ref), InProcess())
        # The first message before any header: a refused REF is a plain error answer.
        first = await anext(stream, None)
        if first is None:
            raise HTTPError(404, f"service {ref!r} not found")

        async def rest() -> AsyncGenerator[dict[str, Any], None]:
            try:
                async for progress in stream:
                    yield views.progress_view(progress)
            finally:
                await stream.aclose()  # type: ignore[attr-defined]  # an async generator

        return Streamed(views.progress_view(first), rest(), timeout_s)
