"""`swarmctl cluster ...`."""

from __future__ import annotations

import click

from shoal import views
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import listing, output
from shoal.swarmctl import objspecs as specs
from shoal.swarmctl.commands import reads
from shoal.swarmctl.session import client

_JOIN_COMMAND = {
    "worker": "swarmd worker --state-dir /var/lib/shoal",
    # A second manager shares the first one's etcd (not an embedded one: that is
    # on the first manager's loopback).
    "manager": "swarmd manager --state-dir /var/lib/shoal --etcd-endpoints <etcd-url>",
}


@click.group("cluster")
def group() -> None:
    """The cluster itself."""


reads.add_to(group)


@group.command("update")
@click.option("--heartbeat-period", help="How often agents report, e.g. 2s.")
@click.option(
    "--heartbeat-misses",
    type=click.IntRange(1),
    help="Missed heartbeats before a node is marked down.",
)
@click.option(
    "--task-history-limit", type=click.IntRange(0), help="Dead task records kept per slot."
)
@click.option("--cert-expiry", help="Validity of node certificates, e.g. 2160h.")
@click.option(
    "--rebalance/--no-rebalance",
    default=None,
    help="Rebalance every replicated service when nodes join or come back.",
)
@click.option("--vip-range", metavar="CIDR", help="Where new services' virtual IPs come from.")
def update(
    heartbeat_period: str | None,
    heartbeat_misses: int | None,
    task_history_limit: int | None,
    cert_expiry: str | None,
    rebalance: bool | None,
    vip_range: str | None,
) -> None:
    """Change the cluster's settings (only the flags given change)."""
    current = client().get_cluster()
    spec = specs.cluster_spec(
        current.spec,
        heartbeat_period,
        heartbeat_misses,
        task_history_limit,
        cert_expiry,
        rebalance,
        vip_range,
    )
    click.echo(client().update_cluster(current.meta.version, spec).id)


@group.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="Replace the token; the old one stops working.")
@listing.quiet_option
@listing.format_option
def join_token(role: str, rotate: bool, quiet: bool, fmt: str) -> None:
    """Print (or rotate) the token a new worker or manager joins with."""
    if rotate:
        new_role = pb.ROLE_MANAGER if role == "manager" else pb.ROLE_WORKER
        c = client().rotate_join_token(new_role)
    else:
        c = client().get_cluster()
    tokens = views.join_tokens_view(c)
    if quiet:
        click.echo(tokens[role])
    elif fmt == "json":
        output.print_json(tokens)
    else:
        if rotate:
            click.echo(f"Rotated the {role} join token; the old one no longer works.\n")
        click.echo(
            f"To add a {role} to this cluster, run:\n\n"
            f"    {_JOIN_COMMAND[role]} --join-token {tokens[role]} "
            "--join-addr <manager-addr>:4242\n"
        )


@group.command("rotate-kek")
@listing.format_option
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
