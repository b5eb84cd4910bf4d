"""What every command shares: the manager connection of this run, and the ways a
command goes through several requests (conflict retries, one failure per item).

Light on purpose: the gRPC client is imported when the first request is made, so
`--help` and usage errors do not pay for loading gRPC, and the commands that use
the manager's HTTP socket (rest.py: every read, and the service writes) never load it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import click

from shoal.swarmctl.errors import CLIError

if TYPE_CHECKING:
    from shoal.swarmctl.client import Client
    from shoal.swarmctl.rest import RestClient

T = TypeVar("T")

DEFAULT_SOCKET = "/var/lib/shoal/control.sock"
SOCKET_ENV = "SWARM_SOCKET"
CONFLICT_RETRIES = 3


def resolve_socket(flag: str | None) -> str:
    """`--socket`, else $SWARM_SOCKET, else the default path."""
    return flag or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class Session:
    """The root context's object: the socket, and clients made on first use."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._client: Client | None = None
        self._rest: RestClient | None = None

    @property
    def rest(self) -> RestClient:
        if self._rest is None:
            from shoal.swarmctl.rest import RestClient

            self._rest = RestClient(self.socket)
        return self._rest

    @property
    def client(self) -> Client:
        if self._client is None:
            from shoal.swarmctl.client import Client  # gRPC: only once a request is made

            self._client = Client(self.socket)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _session() -> Session:
    session = click.get_current_context().find_object(Session)
    assert session is not None, "commands run under the root group"
    return session


def client() -> Client:
    """The current run's gRPC client (commands run under the root group, which makes the
    session): writes, streams and the join tokens."""
    return _session().client


def rest() -> RestClient:
    """The current run's client of the manager's HTTP socket: every read, and the
    service writes."""
    return _session().rest


def retry_conflicts(attempt: Callable[[], T]) -> T:
    """Read-modify-write: a concurrent change (ABORTED) means read again and reapply."""
    for n in range(CONFLICT_RETRIES):
        try:
            return attempt()
        except CLIError as err:
            if err.code != "aborted" or n == CONFLICT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def report(err: CLIError) -> None:
    """An error of one item of several; the command goes on and exits 1 at the end."""
    click.echo(f"Error: {err}", err=True)


def remove_each(ctx: click.Context, refs: Iterable[str], remove: Callable[[str], str]) -> None:
    """Prints each removed ID; goes on past failures and exits 1 if there were any."""
    failed = False
    for ref in refs:
        try:
            click.echo(remove(ref))
        except CLIError as err:
            report(err)
            failed = True
    if failed:
        ctx.exit(1)
