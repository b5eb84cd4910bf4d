"""`swarmctl secret ...` and `swarmctl config ...`: never print the data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import output, parse
from shoal.swarmctl.cli import client, format_option, quiet_option, remove_each
from shoal.swarmctl.client import CLIError

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
        "created_at": output.iso(obj.meta.created_at_ms),
        "updated_at": output.iso(obj.meta.updated_at_ms),
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


def _add_reads(group: click.Group, kind: str) -> None:
    rpc = _rpc(kind)

    @group.command("ls")
    @quiet_option
    @format_option
    def ls(quiet: bool, fmt: str) -> None:
        """List them."""
        resp = client().call(f"List{rpc}s", api.ListSecretsRequest())
        items = list(resp.secrets if kind == "secret" else resp.configs)
        if quiet:
            for o in items:
                click.echo(o.id)
            return
        views = [object_view(o) for o in items]
        if fmt == "json":
            output.print_json(views)
            return
        rows = [
            [
                o.id[:12],
                v["name"],
                v["secret_version"],
                output.ago(o.meta.created_at_ms),
                output.ago(o.meta.updated_at_ms),
            ]
            for v, o in zip(views, items, strict=True)
        ]
        output.print_table(["ID", "NAME", "VERSION", "CREATED", "UPDATED"], rows)

    @group.command("inspect")
    @click.argument("ref", metavar="NAME|ID")
    @format_option
    def inspect(ref: str, fmt: str) -> None:
        """Show one (its metadata and the services using it)."""
        resp = client().call(f"Get{rpc}", api.SecretRefRequest(ref=ref))
        view = object_view(_pick(kind, resp), list(resp.services))
        if fmt == "json":
            output.print_json(view)
            return
        for key, value in view.items():
            click.echo(f"{key}: {value}")


secret = make_group("secret")
config = make_group("config")


@click.command("rotate-kek")
@format_option
def rotate_kek(fmt: str) -> None:
    """A new key-encryption key: every secret's data key and the CA key are re-wrapped.

    The managers hold the key (never etcd); the others fetch the new one from this
    manager over mTLS when they first need it.
    """
    resp: api.RotateKeyResponse = client().call("RotateKey", api.RotateKeyRequest())
    if fmt == "json":
        output.print_json({"kek_id": resp.kek_id, "rewrapped": int(resp.rewrapped)})
    else:
        click.echo(f"key-encryption key {resp.kek_id}: {resp.rewrapped} data key(s) re-wrapped")
