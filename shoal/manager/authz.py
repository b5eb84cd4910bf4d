"""Who may call what on the manager's TCP port (mTLS).

Client certificates are optional at the TLS layer (a joining node has none)
but verified against the cluster CA whenever presented; this interceptor then
allows each RPC by the role in the certificate, and only while the node the
certificate names is still in the cluster: a removed node's certificate (valid
for up to 90 days) is refused at once.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from shoal.pki import ca
from shoal.proto import objects_pb2 as pb

# Service prefix -> roles allowed; None = open to callers without a certificate.
RULES: dict[str, frozenset[int] | None] = {
    "/shoal.NodeCA/IssueNodeCertificate": None,
    "/shoal.NodeCA/": frozenset({pb.ROLE_WORKER, pb.ROLE_MANAGER}),
    "/shoal.Dispatcher/": frozenset({pb.ROLE_WORKER, pb.ROLE_MANAGER}),
    "/shoal.Control/": frozenset({pb.ROLE_MANAGER}),
}


def peer_identity(context: Any) -> ca.Identity | None:
    """The verified identity of the caller, from its client certificate."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert")
    if not pems:
        return None
    return ca.identity_of(pems[0])


def _rule(method: str) -> tuple[bool, frozenset[int] | None]:
    for prefix, roles in RULES.items():
        if method == prefix or (prefix.endswith("/") and method.startswith(prefix)):
            return True, roles
    return False, frozenset()


NodeExists = Callable[[str], Awaitable[bool]]


async def _check(
    context: Any, roles: frozenset[int] | None, cluster_id: str, node_exists: NodeExists | None
) -> None:
    if roles is None:
        return
    ident = peer_identity(context)
    if ident is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        return
    if ident.cluster_id != cluster_id:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate of another cluster")
    if ident.role not in roles:
        role = ca.ROLE_OU[ident.role]
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, f"a {role} certificate may not call this"
        )
    if node_exists is not None and not await node_exists(ident.node_id):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"node {ident.node_id} has been removed from the cluster",
        )


class RoleAuthorizer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, cluster_id: str, node_exists: NodeExists | None = None) -> None:
        self.cluster_id = cluster_id
        self.node_exists = node_exists

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        known, roles = _rule(details.method)
        if not known:
            roles = frozenset()  # unknown services: nobody
        return _guard(handler, roles, self.cluster_id, self.node_exists)


def _guard(
    handler: Any, roles: frozenset[int] | None, cluster_id: str, node_exists: NodeExists | None
) -> Any:
    if handler.unary_unary:
        inner = handler.unary_unary

        @functools.wraps(inner)
        async def unary_unary(request: Any, context: Any) -> Any:
            await _check(context, roles, cluster_id, node_exists)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await _check(context, roles, cluster_id, node_exists)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            await _check(context, roles, cluster_id, node_exists)
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_su = handler.stream_unary

    async def stream_unary(requests: Any, context: Any) -> Any:
        await _check(context, roles, cluster_id, node_exists)
        return await inner_su(requests, context)

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, handler.request_deserializer, handler.response_serializer
    )
