"""The NodeCA service: certificates for joining nodes, and renewals."""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from shoal.manager.admission import JoinAdmission, source_of
from shoal.manager.authz import peer_identity
from shoal.manager.ids import id_from_digest
from shoal.manager.store import Cache, Kind, Removed, Store
from shoal.manager.validation import InvalidSpec, check_hostname
from shoal.pki import ca
from shoal.proto import ca_pb2, ca_pb2_grpc
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

_ROLE = {pb.ROLE_WORKER: "worker", pb.ROLE_MANAGER: "manager"}
REFUSALS = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


def cert_validity(cluster: pb.Cluster) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=cluster.spec.ca.node_cert_expiry_ms)


def node_id_for(cluster_id: str, public_key_der: bytes) -> str:
    """A joining node's id, from its key: every attempt of one join (the agent keeps its
    key until joined) names the same node, so a retry cannot leave a second one."""
    digest = hashlib.sha256(b"shoal node\0" + cluster_id.encode() + b"\0" + public_key_der)
    return id_from_digest(digest.digest())


def new_node(node_id: str, role: pb.NodeRole.ValueType, hostname: str) -> pb.Node:
    """A node's first record. Managers run no agent (no tasks): their node is drained."""
    node = pb.Node(id=node_id, role=role)
    node.spec.desired_role = role
    if role == pb.ROLE_MANAGER:
        node.spec.availability = pb.AVAILABILITY_DRAIN
    node.description.hostname = hostname
    node.status.state = pb.NODE_UNKNOWN
    return node


class NodeCA(ca_pb2_grpc.NodeCAServicer):
    def __init__(
        self,
        store: Store,
        cache: Cache,
        open_root: Callable[[pb.Cluster], Awaitable[pb.RootCA]] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        # The CA key is sealed in the store; this opens it (in memory only).
        self.open_root = open_root
        self.admission = JoinAdmission()

    async def _cluster(self, context: Any) -> pb.Cluster:
        await self.cache.sync()
        cluster = self.cache.cluster()
        if cluster is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cluster is not initialised")
            raise AssertionError("unreachable: abort raises")
        if self.open_root is not None:
            opened = pb.Cluster()
            opened.CopyFrom(cluster)
            opened.root_ca.CopyFrom(await self.open_root(cluster))
            return opened
        return cluster

    async def IssueNodeCertificate(
        self, request: ca_pb2.IssueNodeCertificateRequest, context: Any
    ) -> ca_pb2.IssueNodeCertificateResponse:
        source = source_of(context.peer())
        async with self.admission.admit(source):
            try:
                return await self._issue(request, context)
            except Exception:
                # Refused tokens and bad CSRs (context.abort raises) count against the
                # source; a busy etcd does not.
                if context.code() in REFUSALS:
                    self.admission.failed(source)
                raise

    async def _issue(
        self, request: ca_pb2.IssueNodeCertificateRequest, context: Any
    ) -> ca_pb2.IssueNodeCertificateResponse:
        cluster = await self._cluster(context)
        try:
            parsed = ca.parse_join_token(request.token)
        except ValueError as err:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
            raise
        if parsed.digest != cluster.root_ca.ca_digest:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the join token is for another cluster (its CA digest does not match)",
            )
        role = ca.token_role(cluster, request.token)
        if role is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "invalid join token: it is not (or no longer) a current token of this cluster",
            )
        assert role is not None
        try:
            # It shows in `node ls` and constraints: no terminal escapes, no spaces.
            check_hostname(request.hostname)
            # Checked before anything is written: the signature proves the key is held.
            node_id = node_id_for(cluster.id, ca.csr_key_der(request.csr_pem))
        except (InvalidSpec, ca.CSRError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise
        # A join retried with the same key (its first answer was lost) finds the node
        # its first attempt created instead of making a second one.
        try:
            node, created = await self.store.create_once(new_node(node_id, role, request.hostname))
        except Removed:
            # Not PERMISSION_DENIED: that counts as token guessing against the source.
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {node_id} was removed from the cluster: its key may not join again "
                "(join with a new key)",
            )
            raise
        assert isinstance(node, pb.Node)
        if not created and (node.role != role or node.description.hostname != request.hostname):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this key already joined as node {node_id} ({_ROLE[node.role]} "
                f"{node.description.hostname!r}); it cannot join again as "
                f"{_ROLE[role]} {request.hostname!r}",
            )
        cert = ca.issue_cert(
            cluster.root_ca, request.csr_pem, node_id, role, cluster.id, cert_validity(cluster)
        )
        if created:
            log.info("node %s (%s) joined as %s", node_id, request.hostname, ca.ROLE_OU[role])
        else:
            log.info("node %s (%s) joined again with the same key", node_id, request.hostname)
        return ca_pb2.IssueNodeCertificateResponse(
            node_id=node_id, role=role, cert_pem=cert, ca_cert_pem=cluster.root_ca.ca_cert_pem
        )

    async def RenewNodeCertificate(
        self, request: ca_pb2.RenewNodeCertificateRequest, context: Any
    ) -> ca_pb2.RenewNodeCertificateResponse:
        cluster = await self._cluster(context)
        ident = peer_identity(context)
        assert ident is not None  # the authorizer lets only certified callers through
        node = self.cache.get(Kind.NODE, ident.node_id)
        if node is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this node was removed from the cluster"
            )
        try:
            cert = ca.issue_cert(
                cluster.root_ca,
                request.csr_pem,
                ident.node_id,
                node.role,
                cluster.id,
                cert_validity(cluster),
            )
        except ca.CSRError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise
        return ca_pb2.RenewNodeCertificateResponse(
            cert_pem=cert, ca_cert_pem=cluster.root_ca.ca_cert_pem
        )
