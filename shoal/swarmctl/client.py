"""The control API client: a sync gRPC channel to the manager's unix socket."""

from __future__ import annotations

import os
from typing import Any

import grpc

from shoal.proto import control_pb2_grpc as api_grpc

DEFAULT_SOCKET = "/var/lib/shoal/control.sock"
CALL_TIMEOUT_S = 10.0


class RequestFailed(Exception):
    """The request failed: one line for stderr, exit code 1."""


def socket_path(flag: str | None) -> str:
    return flag or os.environ.get("SWARM_SOCKET") or DEFAULT_SOCKET


class Client:
    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.stub = api_grpc.ControlStub(self.channel)

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as err:
            raise self.error(err) from None

    def stream(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return getattr(self.stub, method)(request, timeout=timeout)

    def error(self, err: grpc.RpcError) -> RequestFailed:
        code = err.code()
        details = (err.details() or code.name).splitlines()[0]
        if code == grpc.StatusCode.UNAVAILABLE and (
            "connect" in details.lower() or "socket" in details.lower()
        ):
            return RequestFailed(f"cannot reach the manager at {self.socket}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RequestFailed(f"the manager at {self.socket} did not answer in time")
        return RequestFailed(details)

    def close(self) -> None:
        self.channel.close()
