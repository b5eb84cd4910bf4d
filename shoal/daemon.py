"""`swarmd`: the daemons. `swarmd manager ...` runs a manager."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

import click

from shoal.aiotasks import dump_tasks_on_sigusr1
from shoal.httpd import BadHttpAddr, parse_http_addr
from shoal.manager.etcd_embedded import EtcdError
from shoal.manager.manager import JoinRefused, Manager, ManagerConfig
from shoal.manager.store import EtcdAuth, EtcdTLS, StoreError, client_config
from shoal.overlay.egress import DEFAULT_POOL as DEFAULT_EGRESS_POOL
from shoal.overlay.egress import EgressError
from shoal.pki.join import JoinError
from shoal.statedir import StateDirLocked
from shoal.swarmctl.parse import memory_bytes
from shoal.worker.agent import Agent, WorkerConfig


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # gRPC's own debug lines ("Loaded running loop", one per call: every containerd
    # and etcd call) drown Shoal's and cost the agent ~1.3 ms of CPU per container; gRPC's
    # internals have their own switches (GRPC_VERBOSITY, GRPC_TRACE).
    logging.getLogger("grpc").setLevel(max(logging.root.level, logging.INFO))


def _join_token(token: str, token_file: Path | None) -> str:
    """The join token from --join-token or --join-token-file (the file keeps it out of argv,
    where every local user could read it in `ps`)."""
    if token_file is None:
        return token
    if token:
        raise click.UsageError("--join-token and --join-token-file are exclusive")
    try:
        token = token_file.read_text().strip()
    except OSError as err:
        raise click.BadParameter(str(err), param_hint="--join-token-file") from None
    if not token:
        raise click.BadParameter(f"{token_file} is empty", param_hint="--join-token-file")
    return token


TOKEN_FILE = click.option(
    "--join-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the join token from this file instead of argv.",
)


async def _run_until_signalled(daemon: Manager | Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_tasks_on_sigusr1()
    await daemon.run(stop)


# Collections every GC_GEN0 allocations instead of Python's 700: a manager holds
# every object of the cluster and makes many short-lived ones per message, and with
# the default the collector took ~8% of its CPU at 1,000 nodes (bench/README.md).
GC_GEN0 = 50_000


def _tune_gc() -> None:
    """Fewer, larger young collections; what was loaded at start-up (modules, the
    generated protobuf descriptors) is left out of them for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, 20, 20)


def _check_http_addr(text: str) -> None:
    if text:
        try:
            parse_http_addr(text)
        except BadHttpAddr as err:
            raise click.BadParameter(str(err), param_hint="--http-addr") from None


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


def _size(text: str, flag: str) -> int:
    try:
        value = memory_bytes(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=flag) from None
    if value <= 0:
        raise click.BadParameter("must be more than 0", param_hint=flag)
    return value


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
    help="Unix socket of the control API [default: STATE_DIR/control.sock]; the reads "
    "are also served as HTTP/JSON beside it (control.http.sock).",
)
@click.option(
    "--etcd-endpoints", default="", help="Comma-separated etcd URLs; none starts an embedded etcd."
)
@click.option(
    "--etcd-cacert",
    type=click.Path(exists=True, path_type=Path),
    help="CA of an external etcd [default: the system's roots, for https:// endpoints].",
)
@click.option("--etcd-cert", type=click.Path(exists=True, path_type=Path), help="Client cert.")
@click.option("--etcd-key", type=click.Path(exists=True, path_type=Path), help="Its key.")
@click.option("--etcd-user", default="", help="etcd user (etcd's auth enabled).")
@click.option(
    "--etcd-password-file",
    type=click.Path(exists=True, path_type=Path),
    help="File with the etcd user's password [default: $SHOAL_ETCD_PASSWORD].",
)
@click.option("--join-addr", default="", help="A manager to join (with --join-token).")
@click.option(
    "--join-token",
    default="",
    envvar="SWARM_JOIN_TOKEN",
    help="A manager join token [env SWARM_JOIN_TOKEN: kept out of `ps`].",
)
@TOKEN_FILE
@click.option("--hostname", default="", help="Node name in `node ls` [default: this host's name].")
@click.option(
    "--insecure-registry",
    multiple=True,
    metavar="HOST:PORT",
    help="A registry reached over plain HTTP to pin image tags (give the workers' list).",
)
@click.option(
    "--leader-lease-ttl",
    default=5,
    show_default=True,
    type=click.IntRange(2, 60),
    help="Seconds before a dead leader is replaced.",
)
@click.option(
    "--http-addr",
    default="",
    metavar="HOST:PORT",
    help="Serve /metrics and /healthz (managers: also the web view at /); a bare :PORT "
    "is loopback; any other address requires a client certificate of the cluster (mTLS).",
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
    etcd_user: str,
    etcd_password_file: Path | None,
    join_addr: str,
    join_token: str,
    join_token_file: Path | None,
    hostname: str,
    insecure_registry: tuple[str, ...],
    leader_lease_ttl: int,
    http_addr: str,
) -> None:
    """Run a manager."""
    _check_http_addr(http_addr)
    join_token = _join_token(join_token, join_token_file)
    endpoints: list[str] = []
    tls: EtcdTLS | None = None
    auth: EtcdAuth | None = None
    if etcd_endpoints:
        try:
            endpoints, tls, auth = client_config(
                etcd_endpoints, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file
            )
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--etcd-endpoints") from None
    elif etcd_cacert or etcd_cert or etcd_key or etcd_user:
        raise click.UsageError(
            "--etcd-cacert/--etcd-cert/--etcd-key/--etcd-user need --etcd-endpoints"
        )
    if bool(join_addr) != bool(join_token):
        raise click.UsageError("--join-addr and --join-token (or --join-token-file) go together")
    if join_addr and not endpoints:
        raise click.UsageError(
            "a joining manager needs --etcd-endpoints: the cluster's etcd, which all managers "
            "share (an embedded etcd serves only the manager that started it)"
        )
    config = ManagerConfig(
        state_dir=state_dir,
        listen_addr=listen_addr,
        advertise_addr=advertise_addr,
        control_socket=control_socket,
        etcd_endpoints=endpoints,
        etcd_tls=tls,
        etcd_auth=auth,
        join_addr=join_addr,
        join_token=join_token,
        hostname=hostname,
        leader_ttl_s=leader_lease_ttl,
        http_addr=http_addr,
        insecure_registries=set(insecure_registry),
    )
    _tune_gc()
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
    "--join-token",
    default="",
    envvar="SWARM_JOIN_TOKEN",
    help="A worker join token, not needed once the node has joined "
    "[env SWARM_JOIN_TOKEN: kept out of `ps`].",
)
@TOKEN_FILE
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
    "--oci-runtime",
    default="runc",
    show_default=True,
    envvar="SHOAL_OCI_RUNTIME",
    type=click.Choice(["auto", "crun", "runc"]),
    help="What containerd's runc shim runs: auto is crun when it can run here, else runc.",
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
@click.option(
    "--allow-bind-mount",
    multiple=True,
    metavar="PREFIX",
    help="Accept bind mounts only from under PREFIX (repeatable) [default: what the API allows].",
)
@click.option(
    "--log-max-size",
    default="20M",
    show_default=True,
    metavar="SIZE",
    help="A task's log file is rotated past this size.",
)
@click.option(
    "--log-max-files",
    default=5,
    show_default=True,
    type=click.IntRange(1),
    help="Log files kept per task, the current one included.",
)
@click.option(
    "--http-addr",
    default="",
    metavar="HOST:PORT",
    help="Serve /metrics and /healthz; a bare :PORT "
    "is loopback; any other address requires a client certificate of the cluster (mTLS).",
)
def worker(
    state_dir: Path,
    join_addr: str,
    join_token: str,
    join_token_file: Path | None,
    hostname: str,
    advertise_addr: str,
    containerd_socket: str,
    insecure_registry: tuple[str, ...],
    runtime: str,
    oci_runtime: str,
    egress_pool: str,
    dns_upstream: tuple[str, ...],
    http_addr: str,
    allow_bind_mount: tuple[str, ...],
    log_max_size: str,
    log_max_files: int,
) -> None:
    """Run a worker agent."""
    _check_http_addr(http_addr)
    if runtime == "simulated":
        _refuse_given(("containerd_socket", "oci_runtime"), "with --runtime simulated")
    join_token = _join_token(join_token, join_token_file)
    config = WorkerConfig(
        state_dir=state_dir,
        join_addr=join_addr,
        join_token=join_token,
        hostname=hostname,
        advertise_addr=advertise_addr,
        containerd_socket=containerd_socket,
        insecure_registries=set(insecure_registry),
        runtime=runtime,
        oci_runtime=oci_runtime,
        egress_pool=egress_pool,
        dns_upstreams=list(dns_upstream) or None,
        http_addr=http_addr,
        allow_bind_mounts=tuple(allow_bind_mount),
        log_max_bytes=_size(log_max_size, "--log-max-size"),
        log_max_files=log_max_files,
    )
    try:
        asyncio.run(_run_until_signalled(Agent(config)))
    except (JoinError, StateDirLocked, OSError, EgressError, ValueError) as err:
        click.echo(f"swarmd: {err}", err=True)
        sys.exit(1)


def _refuse_given(params: tuple[str, ...], why: str) -> None:
    """Options given on the command line that would do nothing: refused, not ignored."""
    ctx = click.get_current_context()
    for name in params:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            flag = "--" + name.replace("_", "-")
            click.echo(f"swarmd: {flag} has no effect {why}: leave it out", err=True)
            sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
