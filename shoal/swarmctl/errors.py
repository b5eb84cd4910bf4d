"""The one error type of swarmctl: a failed request, printed as one line, exit 1.

Kept apart from client.py so that commands can raise it (and the root group
catch it) without loading gRPC: `--help` and usage errors never need it.
"""

from __future__ import annotations


class CLIError(Exception):
    """A failed request: printed as `Error: <message>`, exit code 1. `code` is the
    manager's status code by name, lower-case (`aborted`), as both of its sockets say
    it (gRPC status, or the HTTP socket's `code` key); None when no request failed."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(one_line(message))
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
