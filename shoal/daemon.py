"""`swarmd`: the daemons. `swarmd manager ...` runs a manager."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from shoal.manager.etcd_embedded import EtcdError
from shoal.manager.manager import JoinRefused, Manager, ManagerConfig
from shoal.manager.store import EtcdTLS, StoreError, parse_endpoints
from shoal.overlay.egress import DEFAULT_POOL as DEFAULT_EGRESS_POOL
from shoal.overlay.egress import EgressError
from shoal.statedir import StateDirLocked
from shoal.worker.agent import Agent, WorkerConfig
from shoal.worker.identity import JoinError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _run_until_signalled(daemon: Manager | Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.run(stop)


@click.group()
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def cli(log_level: str) -> None:
    """Shoal daemons."""
    _setup_logging(log_level)


@cli.command()
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the node keeps its identity, certificates and embedded etcd data.",
)
@click.option(
    "--listen-addr",
    default="0.0.0.0:4242",
    show_default=True,
    help="Address for agents and remote managers (mTLS).",
)
@click.option("--advertise-addr", default="", help="Address other nodes reach this manager at.")
@click.option(
    "--control-socket",
    type=click.Path(path_type=Path),
    help="Unix socket of the control API [default: STATE_DIR/control.sock].",
)
@click.option(
    "--etcd-endpoints", default="", help="Comma-separated etcd URLs; none starts an embedded etcd."
)
@click.option("--etcd-cacert", type=click.Path(exists=True, path_type=Path))
@click.option("--etcd-cert", type=click.Path(exists=True, path_type=Path))
@click.option("--etcd-key", type=click.Path(exists=True, path_type=Path))
@click.option("--join-addr", default="", help="A manager to join (with --join-token).")
@click.option("--join-token", default="", help="A manager join token.")
@click.option("--hostname", default="", help="Node name in `node ls` [default: this host's name].")
@click.option(
    "--leader-lease-ttl",
    default=5,
    show_default=True,
    type=click.IntRange(2, 60),
    help="Seconds before a dead leader is replaced.",
)
def manager(
    state_dir: Path,
    listen_addr: str,
    advertise_addr: str,
    control_socket: Path | None,
    etcd_endpoints: str,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    join_addr: str,
    join_token: str,
    hostname: str,
    leader_lease_ttl: int,
) -> None:
    """Run a manager."""
    try:
        endpoints = parse_endpoints(etcd_endpoints) if etcd_endpoints else []
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--etcd-endpoints") from None
    if bool(join_addr) != bool(join_token):
        raise click.UsageError("--join-addr and --join-token go together")
    if join_addr and not endpoints:
        raise click.UsageError(
            "a joining manager needs --etcd-endpoints: the cluster's etcd, which all managers "
            "share (an embedded etcd serves only the manager that started it)"
        )
    tls = EtcdTLS(etcd_cacert, etcd_cert, etcd_key) if etcd_cacert else None
    config = ManagerConfig(
        state_dir=state_dir,
        listen_addr=listen_addr,
        advertise_addr=advertise_addr,
        control_socket=control_socket,
        etcd_endpoints=endpoints,
        etcd_tls=tls,
        join_addr=join_addr,
        join_token=join_token,
        hostname=hostname,
        leader_ttl_s=leader_lease_ttl,
    )
    try:
        asyncio.run(_run_until_signalled(Manager(config)))
    except (EtcdError, JoinError, JoinRefused, StateDirLocked, StoreError, OSError) as err:
        click.echo(f"swarmd: {err}", err=True)
        sys.exit(1)


@cli.command()
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the node keeps its identity, certificates, task records and logs.",
)
@click.option("--join-addr", required=True, help="A manager's HOST:PORT.")
@click.option(
    "--join-token", default="", help="A worker join token (not needed once the node has joined)."
)
@click.option("--hostname", default="", help="Node name [default: this host's name].")
@click.option("--advertise-addr", default="", help="Address other nodes reach this one at.")
@click.option("--containerd-socket", default="/run/containerd/containerd.sock", show_default=True)
@click.option(
    "--insecure-registry",
    multiple=True,
    metavar="HOST:PORT",
    help="A registry to pull from over plain HTTP (loopback ones always are).",
)
@click.option(
    "--runtime",
    default="containerd",
    show_default=True,
    type=click.Choice(["containerd", "simulated"]),
    help="simulated runs nothing: only for scale tests.",
)
@click.option(
    "--egress-pool",
    default=DEFAULT_EGRESS_POOL,
    show_default=True,
    metavar="CIDR",
    help="Addresses of tasks' legs to this host's gateway bridge (must not overlap its routes).",
)
@click.option(
    "--dns-upstream",
    multiple=True,
    metavar="ADDR",
    help="Where tasks' other DNS queries go [default: this host's /etc/resolv.conf].",
)
def worker(
    state_dir: Path,
    join_addr: str,
    join_token: str,
    hostname: str,
    advertise_addr: str,
    containerd_socket: str,
    insecure_registry: tuple[str, ...],
    runtime: str,
    egress_pool: str,
    dns_upstream: tuple[str, ...],
) -> None:
    """Run a worker agent."""
    config = WorkerConfig(
        state_dir=state_dir,
        join_addr=join_addr,
        join_token=join_token,
        hostname=hostname,
        advertise_addr=advertise_addr,
        containerd_socket=containerd_socket,
        insecure_registries=set(insecure_registry),
        runtime=runtime,
        egress_pool=egress_pool,
        dns_upstreams=list(dns_upstream) or None,
    )
    try:
        asyncio.run(_run_until_signalled(Agent(config)))
    except (JoinError, StateDirLocked, OSError, EgressError, ValueError) as err:
        click.echo(f"swarmd: {err}", err=True)
        sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
