"""Every group's read commands: `ls`, `inspect`, `service ps`, `cluster inspect`.

They read the manager's HTTP socket and load neither gRPC nor protobuf. The root
group (cli.py) runs them from the light groups in `GROUPS`, so `swarmctl service
ls` does not import the module of `service create` (protobuf specs, gRPC); each
full group module adds the same command objects, so its help lists them.
"""

from __future__ import annotations

import click

from shoal.swarmctl import output
from shoal.swarmctl.listing import (
    Kind,
    format_option,
    inspect_command,
    ls_command,
    print_list,
    print_one,
    quiet_option,
)
from shoal.swarmctl.session import rest

SERVICES = Kind("services", output.SERVICE_HEADERS, output.service_rows)
TASKS = Kind("tasks", output.TASK_HEADERS, output.task_rows)
TASKS_WITH_PORTS = Kind("tasks", [*output.TASK_HEADERS, "PORTS"], output.task_rows_with_ports)
NODES = Kind("nodes", output.NODE_HEADERS, output.node_rows)
NETWORKS = Kind("networks", output.NETWORK_HEADERS, output.network_rows)

service_ls = ls_command(SERVICES, "List services.")
service_inspect = inspect_command(SERVICES, "NAME|ID", "Show a service (as JSON in both formats).")
node_ls = ls_command(NODES, "List nodes.")
node_inspect = inspect_command(NODES, "NODE", "Show a node (as JSON in both formats).")
network_ls = ls_command(NETWORKS, "List networks.")
network_inspect = inspect_command(NETWORKS, "NAME|ID", "Show a network (as JSON in both formats).")
task_inspect = inspect_command(TASKS, "TASK", "Show a task (as JSON in both formats).")


@click.command("ps")
@click.argument("ref", metavar="NAME|ID")
@quiet_option
@format_option
def service_ps(ref: str, quiet: bool, fmt: str) -> None:
    """List a service's tasks, the newest of each slot first, with its published ports."""
    tasks = rest().get("tasks", service=ref)
    # The table gains a PORTS column; JSON stays the task views (= GET /tasks).
    ports = rest().get("services", ref)["ports"] if tasks and not quiet and fmt != "json" else []
    if not ports:
        print_list(TASKS, tasks, quiet, fmt)
        return
    for view in tasks:  # the service's ports, on the tasks meant to run
        view["ports"] = ports if view["desired_state"] == "running" else []
    print_list(TASKS_WITH_PORTS, tasks, quiet, fmt)


@click.command("ls")
@click.option("--service", "service_ref", default="", metavar="NAME|ID", help="Of this service.")
@click.option("--node", "node_ref", default="", metavar="NODE", help="On this node.")
@quiet_option
@format_option
def task_ls(service_ref: str, node_ref: str, quiet: bool, fmt: str) -> None:
    """List tasks."""
    print_list(TASKS, rest().get("tasks", service=service_ref, node=node_ref), quiet, fmt)


@click.command("inspect")
@format_option
def cluster_inspect(fmt: str) -> None:
    """Show the cluster's settings (as JSON in both formats)."""
    print_one(rest().get("cluster"), fmt)


def _group(name: str, *commands: click.Command) -> click.Group:
    group = click.Group(name)
    for command in commands:
        group.add_command(command)
    return group


# Each group's read commands, by group name.
GROUPS = {
    "service": _group("service", service_ls, service_inspect, service_ps),
    "task": _group("task", task_ls, task_inspect),
    "node": _group("node", node_ls, node_inspect),
    "network": _group("network", network_ls, network_inspect),
    "cluster": _group("cluster", cluster_inspect),
}


def add_to(group: click.Group) -> None:
    """Gives a full group its read commands."""
    for command in GROUPS[str(group.name)].commands.values():
        group.add_command(command)


def hostnames() -> dict[str, str]:
    """Node ID -> hostname, for output that names nodes."""
    return {n["id"]: n["hostname"] for n in rest().get("nodes")}
