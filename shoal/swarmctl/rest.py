"""The read side's client: JSON over the manager's HTTP socket (AF_UNIX), beside
the control socket (shoal/restsock.py).

`ls`, `inspect` and `ps` read here and need neither gRPC nor protobuf, which are
most of a gRPC client's start-up time; what they get is already the JSON view
`--format json` prints. One request per connection, spoken directly on the socket:
http.client would cost as much start-up as the rest of the command (it loads the
email parser and ssl), and the server's answers are plain (always a
Content-Length, no chunks, `Connection: close` honoured).
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from typing import Any

from shoal.restsock import rest_socket
from shoal.swarmctl.errors import CLIError

CALL_TIMEOUT_S = 10.0


class RestClient:
    def __init__(self, control_socket: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        # Errors name the control socket: the one path the user gave (or the default).
        self.socket = control_socket
        self.path = rest_socket(control_socket)
        self.timeout_s = timeout_s

    def get(self, *segments: str, **query: str) -> Any:
        """The JSON body of GET /SEGMENT/... (quoted here) with the query's non-empty values."""
        url = "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
        given = {k: v for k, v in query.items() if v}
        if given:
            url += "?" + urllib.parse.urlencode(given)
        try:
            status, body = self._exchange(
                f"GET {url} HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n".encode()
            )
        except TimeoutError:
            raise CLIError(f"the manager at {self.socket} did not answer in time") from None
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
            raise CLIError(f"cannot reach the manager at {self.socket}: {reason}") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise CLIError(f"the manager at {self.socket} sent no JSON (HTTP {status})") from None
        if status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            raise CLIError(message or f"the manager answered HTTP {status}")
        return data

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        """Sends one request; the status and body of the answer, read to the end."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            sock.connect(self.path)
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split(b" ")
        if not sep or len(status_line) < 2 or not status_line[1].isdigit():
            raise OSError("the answer is not HTTP")
        return int(status_line[1]), body
