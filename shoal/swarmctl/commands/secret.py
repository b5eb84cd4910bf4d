"""`swarmctl secret ...` (and, through make_group, `config`): never print the data."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from shoal import views
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import listing, output, parse
from shoal.swarmctl.errors import CLIError
from shoal.swarmctl.session import client, remove_each

# The manager refuses more too; the CLI says so before reading a huge stdin.
MAX_DATA_BYTES = 500 * 1024


def read_data(source: str) -> bytes:
    if source == "-":
        data = sys.stdin.buffer.read(MAX_DATA_BYTES + 1)
    else:
        try:
            with Path(source).open("rb") as f:
                data = f.read(MAX_DATA_BYTES + 1)
        except OSError as err:
            raise CLIError(f"cannot read {source}: {err.strerror}") from None
    if len(data) > MAX_DATA_BYTES:
        raise CLIError(f"{source}: more than 500 KiB (the limit for secrets and configs)")
    return data


def object_view(obj: pb.Secret | pb.Config, services: list[str] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": obj.id,
        "name": obj.spec.annotations.name,
        "secret_version": int(obj.secret_version),
        "created_at": views.iso(obj.meta.created_at_ms),
        "updated_at": views.iso(obj.meta.updated_at_ms),
        "labels": dict(obj.spec.annotations.labels),
        "version": int(obj.meta.version),
    }
    if services is not None:
        view["services"] = services
    return view


def _rpc(kind: str) -> str:
    return "Secret" if kind == "secret" else "Config"


def _pick(kind: str, resp: api.SecretResponse) -> pb.Secret | pb.Config:
    return resp.secret if kind == "secret" else resp.config


def make_group(kind: str) -> click.Group:
    """The same five commands for secrets and configs."""

    @click.group(kind, help=f"Manage {kind}s (the data is never shown).")
    def group() -> None:
        pass

    _add_writes(group, kind)
    _add_reads(group, kind)
    return group


def _add_writes(group: click.Group, kind: str) -> None:
    rpc = _rpc(kind)

    @group.command("create")
    @click.argument("name")
    @click.argument("source", metavar="FILE|-")
    @click.option("--label", "-l", multiple=True, metavar="K=V", help="Label.")
    def create(name: str, source: str, label: tuple[str, ...]) -> None:
        """Create NAME from FILE (or - for stdin)."""
        labels = dict(parse.key_value(item, "label") for item in label)
        req = api.CreateSecretRequest(
            annotations=pb.Annotations(name=name, labels=labels), data=read_data(source)
        )
        click.echo(_pick(kind, client().call(f"Create{rpc}", req)).id)

    @group.command("update")
    @click.argument("ref", metavar="NAME|ID")
    @click.argument("source", metavar="FILE|-")
    def update(ref: str, source: str) -> None:
        """A new version of NAME; services using it unpinned roll to it."""
        req = api.UpdateSecretRequest(ref=ref, data=read_data(source))
        resp = client().call(f"Update{rpc}", req)
        obj = _pick(kind, resp)
        if resp.rolled:
            rolled = ", ".join(resp.rolled)
            click.echo(f"services rolling to version {obj.secret_version}: {rolled}", err=True)
        click.echo(obj.id)

    @group.command("rm")
    @click.argument("refs", nargs=-1, required=True, metavar="NAME|ID...")
    @click.pass_context
    def rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
        """Remove them (refused while a service uses one)."""
        remove_each(
            ctx,
            refs,
            lambda ref: (
                _pick(kind, client().call(f"Remove{rpc}", api.SecretRefRequest(ref=ref))).id
            ),
        )


def _rows(views: Sequence[listing.View]) -> listing.Rows:
    return [
        [
            v["id"][:12],
            v["name"],
            v["secret_version"],
            output.ago(v["created_ms"]),
            output.ago(v["updated_ms"]),
        ]
        for v in views
    ]


def _add_reads(group: click.Group, kind: str) -> None:
    rpc = _rpc(kind)
    listed = listing.Kind(f"{kind}s", ["ID", "NAME", "VERSION", "CREATED", "UPDATED"], _rows)

    @group.command("ls")
    @listing.quiet_option
    @listing.format_option
    def ls(quiet: bool, fmt: str) -> None:
        """List them (never the data)."""
        resp = client().call(f"List{rpc}s", api.ListSecretsRequest())
        items = resp.secrets if kind == "secret" else resp.configs
        shown = [object_view(o) for o in items]
        if fmt != "json":
            for v, o in zip(shown, items, strict=True):
                v.update(created_ms=o.meta.created_at_ms, updated_ms=o.meta.updated_at_ms)
        listing.print_list(listed, shown, quiet, fmt)

    @group.command("inspect")
    @click.argument("ref", metavar="NAME|ID")
    @listing.format_option
    def inspect(ref: str, fmt: str) -> None:
        """Show one: its metadata and the services using it (never the data)."""
        resp = client().call(f"Get{rpc}", api.SecretRefRequest(ref=ref))
        listing.print_one(object_view(_pick(kind, resp), list(resp.services)), fmt)


group = make_group("secret")
