"""What the manager's HTTP/JSON socket (restapi.py) and its service writes
(restservices.py) share: the error that becomes an HTTP status with a JSON body,
and the stand-in for a gRPC context when they call the control API's RPC methods
in-process."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

# The control API's status codes as HTTP statuses. The JSON error body also carries
# the code's name (`"code": "aborted"`): 409 alone does not tell a stale version
# (retry) from a name taken or a precondition not met.
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
_CODES = {
    400: "invalid_argument",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    500: "internal",
    503: "unavailable",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")

    def body(self) -> dict[str, str]:
        return {"error": str(self), "code": self.code}


class InProcess:
    """What the control API's RPC methods use of a gRPC context, for calls made here:
    an abort that raises (the RPC's status becomes the HTTP status) and trailing
    metadata that goes nowhere."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise HTTPError(STATUS.get(code, 500), details, code.name.lower())

    def set_trailing_metadata(self, metadata: Any) -> None:
        del metadata


@dataclass
class Created:
    """A 201 answer: the JSON body of what a POST made."""

    body: Any


@dataclass
class Streamed:
    """A streamed answer: `first`, then each of `rest`, one JSON object per line
    (newline-delimited JSON in HTTP chunks), until `rest` ends, `timeout_s` (None:
    no limit) passes, or the client goes away."""

    first: Any
    rest: AsyncGenerator[Any, None]
    timeout_s: float | None


def no_query(query: dict[str, str], allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise HTTPError(400, f"unknown query parameter {unknown[0]!r}")
