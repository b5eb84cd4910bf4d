"""swarmctl's client of the manager's HTTP/JSON socket (AF_UNIX), beside the control
socket (shoal/restsock.py): every read, and the service writes.

`ls`, `inspect`, `ps` and `service create|update|scale|rm` go here and need neither
gRPC nor protobuf, which are most of a gRPC client's start-up time; reads get the
JSON view `--format json` prints, writes send specs in their JSON form (spec.py).
One request per connection, spoken directly on the socket: http.client would cost
as much start-up as the rest of the command (it loads the email parser and ssl), and
the server's answers are plain (a Content-Length, or chunks for a stream,
`Connection: close` honoured).
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

from shoal.restsock import rest_socket
from shoal.swarmctl.errors import CLIError

CALL_TIMEOUT_S = 10.0


class _Answer:
    """An answer read off a socket as far as asked: the head, then the body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status_line = head[0].split(" ")
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise OSError("the answer is not HTTP")
        self.status = int(status_line[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
        }

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise OSError("the answer ended early")
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        out, _, self.buf = self.buf.partition(sep)
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def body(self) -> bytes:
        length = self.headers.get("content-length", "")
        if not length.isdigit():
            raise OSError("the answer has no Content-Length")
        return self._exactly(int(length))

    def chunks(self) -> Iterator[bytes]:
        """A chunked body's chunks, until the last (empty) one."""
        while size := int(self._until(b"\r\n").split(b";")[0], 16):
            yield self._exactly(size)
            self._until(b"\r\n")


class RestClient:
    def __init__(self, control_socket: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        # Errors name the control socket: the one path the user gave (or the default).
        self.socket = control_socket
        self.path = rest_socket(control_socket)
        self.timeout_s = timeout_s

    def get(self, *segments: str, **query: str) -> Any:
        """The JSON body of GET /SEGMENT/... (quoted here) with the query's non-empty values."""
        return self.call("GET", segments, query=query)

    def post(self, *segments: str, body: Any) -> Any:
        return self.call("POST", segments, body)

    def delete(self, *segments: str) -> Any:
        return self.call("DELETE", segments)

    def call(
        self, method: str, segments: tuple[str, ...], body: Any = None, query: Any = None
    ) -> Any:
        """One request; its JSON answer, or CLIError with the manager's sentence."""
        with self._transport():
            with self._connect(method, segments, body, query or {}) as sock:
                answer = _Answer(sock)
                return self._json(answer, answer.body())

    def stream(self, *segments: str, timeout_s: float) -> Iterator[Any]:
        """The JSON objects of a streamed GET, one a line, until the stream ends or
        `timeout_s` passes (quietly, as a gRPC stream's deadline ends it)."""
        query = {"timeout": f"{timeout_s:.3f}"}
        with self._transport(), self._connect("GET", segments, None, query) as sock:
            sock.settimeout(timeout_s + self.timeout_s)
            answer = _Answer(sock)
            if answer.status != 200:
                self._json(answer, answer.body())
            try:
                for chunk in answer.chunks():
                    yield json.loads(chunk)
            except TimeoutError:
                return

    def _connect(
        self, method: str, segments: tuple[str, ...], body: Any, query: dict[str, str]
    ) -> socket.socket:
        url = "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
        given = {k: v for k, v in query.items() if v}
        if given:
            url += "?" + urllib.parse.urlencode(given)
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {url} HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(self.path)
            sock.sendall(head.encode() + b"\r\n" + data)
        except BaseException:
            sock.close()
            raise
        return sock

    def _transport(self) -> _TransportErrors:
        return _TransportErrors(self.socket)

    def _json(self, answer: _Answer, body: bytes) -> Any:
        try:
            data = json.loads(body)
        except ValueError:
            raise CLIError(
                f"the manager at {self.socket} sent no JSON (HTTP {answer.status})"
            ) from None
        if answer.status >= 300:
            error = data if isinstance(data, dict) else {}
            raise CLIError(
                error.get("error") or f"the manager answered HTTP {answer.status}",
                error.get("code"),
            )
        return data


class _TransportErrors:
    """Turns a failed exchange into the CLIError swarmctl prints for it."""

    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, _: Any) -> None:
        if isinstance(err, TimeoutError):
            raise CLIError(f"the manager at {self.socket} did not answer in time") from None
        if isinstance(err, OSError):
            reason = err.strerror or str(err) or type(err).__name__
            raise CLIError(f"cannot reach the manager at {self.socket}: {reason}") from None
