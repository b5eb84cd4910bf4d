"""What a mass join left behind: node records that never came up, and join retries."""

from __future__ import annotations

from pathlib import Path

from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb


def ghost_nodes(ctl: api_grpc.ControlStub) -> int:
    """Worker records not ready once every agent is: nodes made by a join attempt whose
    answer was lost, which no agent will ever run."""
    listed = ctl.ListNodes(api.ListNodesRequest(), timeout=60).nodes
    return sum(1 for n in listed if n.role == pb.ROLE_WORKER and n.status.state != pb.NODE_READY)


def join_retries(root: Path) -> int:
    """Join attempts the hollow agents tried again (agent.join_with_retry logs each)."""
    return sum(
        log.read_text(errors="replace").count("; trying again in ")
        for log in root.glob("hollow-*.log")
    )


def join_figures(ctl: api_grpc.ControlStub, root: Path, join_s: float) -> dict[str, float]:
    return {
        "join_s": round(join_s, 1),
        "join_retries": join_retries(root),
        "ghost_nodes": ghost_nodes(ctl),
    }
