"""swarmctl's output side without a manager: JSON views, tables, the one ls/inspect
path, and when a service counts as converged."""

from __future__ import annotations

import json

import click
import pytest

from shoal import defaults, views
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import cli, listing, output, wait
from shoal.swarmctl.commands import reads

from .swarmctl_samples import (
    CLUSTER_KEYS,
    NETWORK_KEYS,
    NODE_KEYS,
    SERVICE_KEYS,
    TASK_KEYS,
    make_service,
)

# ---------------------------------------------------------------- JSON views


def test_service_view() -> None:
    view = views.service_view(make_service(), {"net1": "front"})
    assert view.keys() >= SERVICE_KEYS
    assert view["mode"] == "replicated" and view["replicas"] == 3 and view["running"] == 2
    assert view["networks"] == ["front", "net-unknown"]
    assert view["ports"] == [
        {"published": 8080, "target": 80, "protocol": "tcp", "mode": "ingress"},
        {"published": 53, "target": 53, "protocol": "udp", "mode": "ingress"},
    ]
    assert view["version"] == 42
    assert view["labels"] == {"tier": "front"} and view["env"] == ["A=1"]
    assert view["constraints"] == ["node.labels.zone==a"]
    assert view["created_at"] == "2023-11-14T22:13:20Z"
    assert view["restart_policy"]["condition"] == "any"
    assert view["update_config"]["failure_action"] == "pause"
    assert view["update_config"]["order"] == "stop-first"
    assert view["update_status"] is None
    json.dumps(view)  # JSON-ready as it is


def test_global_service_view_has_null_replicas() -> None:
    view = views.service_view(make_service("global"), {})
    assert view["mode"] == "global" and view["replicas"] is None


def test_task_view() -> None:
    t = pb.Task(id="t" * 25, service_id="s" * 25, service_name="web", slot=2, node_id="n1")
    t.spec.container.image = "busybox"
    t.desired_state = pb.RUNNING
    t.status.state = pb.REJECTED
    t.status.err = "no suitable node"
    t.status.container.container_id = "c1"
    t.status.container.exit_code = 3
    t.networks.add(network_id="net1", addresses=["10.0.1.5/24"])
    t.networks.add(network_id="net2", addresses=["10.0.2.7/24"])
    view = views.task_view(t, {"n1": "worker1"})
    assert view.keys() >= TASK_KEYS
    assert view["node"] == "n1" and view["node_hostname"] == "worker1"
    assert view["desired_state"] == "running" and view["state"] == "rejected"
    assert view["error"] == "no suitable node"
    assert view["addresses"] == ["10.0.1.5/24", "10.0.2.7/24"]
    assert view["container_id"] == "c1" and view["exit_code"] == 3

    pending = views.task_view(pb.Task(id="t2", slot=1), {})
    assert pending["node"] is None and pending["node_hostname"] is None
    assert pending["state"] == "new" and pending["container_id"] == ""
    assert pending["exit_code"] is None


def test_node_view() -> None:
    n = pb.Node(id="n1", role=pb.ROLE_MANAGER)
    n.description.hostname = "h1"
    n.status.state = pb.NODE_READY
    n.status.addr = "10.0.0.1"
    n.spec.availability = pb.AVAILABILITY_DRAIN
    n.spec.labels["zone"] = "a"
    view = views.node_view(n)
    assert view.keys() >= NODE_KEYS and "manager_status" not in view
    assert (view["role"], view["status"], view["availability"]) == ("manager", "ready", "drain")
    assert view["addr"] == "10.0.0.1" and view["labels"] == {"zone": "a"}
    n.manager_status.leader = True
    assert views.node_view(n)["manager_status"]["leader"] is True
    down = views.node_view(pb.Node(id="n2", status=pb.NodeStatus(state=pb.NODE_DOWN)))
    assert (down["role"], down["status"], down["availability"]) == ("worker", "down", "active")


def test_network_view_prefers_the_allocated_subnet() -> None:
    n = pb.Network(id="x", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    n.spec.annotations.name = "front"
    n.spec.driver = "overlay"
    view = views.network_view(n)
    assert view.keys() >= NETWORK_KEYS
    assert (view["subnet"], view["vni"], view["gateway"]) == ("10.0.1.0/24", 4097, "10.0.1.1")
    n.subnet = ""
    n.spec.subnet = "10.9.0.0/16"
    assert views.network_view(n)["subnet"] == "10.9.0.0/16"


def test_cluster_views() -> None:
    c = pb.Cluster(id="c1", spec=defaults.cluster_spec())
    c.meta.created_at_ms = 1_700_000_000_000
    c.join_tokens.worker = "SWMTKN-1-w"
    c.join_tokens.manager = "SWMTKN-1-m"
    view = views.cluster_view(c)
    assert view.keys() >= CLUSTER_KEYS
    assert view["name"] == "default" and view["created_at"] == "2023-11-14T22:13:20Z"
    assert view["task_history_limit"] == defaults.TASK_HISTORY_LIMIT
    assert "SWMTKN-1-w" not in json.dumps(view)
    assert views.join_tokens_view(c) == {"worker": "SWMTKN-1-w", "manager": "SWMTKN-1-m"}


# ---------------------------------------------------------------- tables


def test_table_is_aligned_and_plain_without_a_terminal() -> None:
    text = output.render_table(["ID", "STATUS"], [["a", "ready"], ["bbbb", None]], color=False)
    assert text == "ID     STATUS\na      ready\nbbbb\n"
    assert "\x1b[" in output.render_table(["ID", "STATUS"], [["a", "ready"]], color=True)


def test_task_rows_newest_first_per_slot() -> None:
    old = pb.Task(id="old" + "x" * 22, service_name="web", slot=1, node_id="n1")
    old.meta.created_at_ms = 1_000
    old.status.state = pb.FAILED
    old.status.timestamp_ms = 10_000
    old.status.err = "task: non-zero exit (3)"
    new = pb.Task(id="new" + "x" * 22, service_name="web", slot=1, node_id="n1")
    new.meta.created_at_ms = 2_000
    new.desired_state = new.status.state = pb.RUNNING
    new.status.timestamp_ms = 55_000
    glob = pb.Task(id="glb" + "x" * 22, service_name="agent", slot=0, node_id="n2")
    tasks = [views.task_view(t, {"n1": "h1"}) for t in (old, new, glob)]
    rows = output.task_rows(tasks, now_ms=60_000)
    assert [r[1] for r in rows] == ["agent.n2", "web.1", " \\_ web.1"]
    assert rows[1][0] == "new" + "x" * 9 and rows[1][3] == "h1"
    assert rows[1][5] == "running 5 seconds ago"
    assert rows[2][5] == "failed 50 seconds ago" and rows[2][6] == "task: non-zero exit (3)"
    assert rows[0][3] == "n2"  # no hostname known: the node ID


def test_task_rows_keep_the_managers_order_within_a_second() -> None:
    # Views carry times in seconds; the manager lists a slot's tasks newest first.
    a, b = (pb.Task(id=i * 25, service_name="web", slot=1, node_id="n1") for i in "ab")
    a.meta.created_at_ms, b.meta.created_at_ms = 1_900, 1_100
    rows = output.task_rows([views.task_view(t, {}) for t in (a, b)], now_ms=5_000)
    assert [r[0][0] for r in rows] == ["a", "b"] and rows[1][1].startswith(" \\_")


def test_service_rows() -> None:
    rows = output.service_rows([views.service_view(make_service(), {})])
    assert rows == [
        ["s" * 12, "web", "replicated", "2/3", "busybox:latest", "*:8080->80/tcp,*:53->53/udp"]
    ]


def test_ago() -> None:
    assert output.ago(0) == ""
    assert output.ago(1_000, now_ms=1_500) == "just now"
    assert output.ago(0 + 1, now_ms=3_600_001) == "1 hour ago"
    assert output.ago(1, now_ms=2 * 86_400_000 + 1) == "2 days ago"


# ---------------------------------------------------------------- convergence


def test_converged() -> None:
    def seen(info: api.ServiceInfo) -> dict[str, object]:
        """What the wait sees of it: a line of the manager's watch."""
        return views.progress_view(api.WatchServiceResponse(service=info))

    info = make_service()
    assert not wait.converged(seen(info))  # 2/3
    info.running = info.running_updated = 3
    assert wait.converged(seen(info))
    info.running_updated = 2  # one task still runs the old spec
    assert not wait.converged(seen(info))
    g = make_service("global")
    g.desired = g.running = g.running_updated = 0
    assert not wait.converged(seen(g))  # nothing placed yet
    g.desired = g.running = g.running_updated = 2
    assert wait.converged(seen(g))


# ---------------------------------------------------------------- the ls / inspect path

NETWORK = pb.Network(id="n" * 25, vni=4097, subnet="10.0.1.0/24")
NETWORK.spec.annotations.name = "front"
NETWORK.spec.driver = "overlay"
NETWORKS = reads.NETWORKS
VIEW = views.network_view(NETWORK)


def test_list_quiet_prints_ids_only_whatever_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("table", "json"):
        listing.print_list(NETWORKS, [VIEW, VIEW], quiet=True, fmt=fmt)
        assert capsys.readouterr().out == f"{NETWORK.id}\n{NETWORK.id}\n"


def test_list_json_is_an_array_of_views(capsys: pytest.CaptureFixture[str]) -> None:
    listing.print_list(NETWORKS, [VIEW], quiet=False, fmt="json")
    assert json.loads(capsys.readouterr().out) == [views.network_view(NETWORK)]
    listing.print_list(NETWORKS, [], quiet=False, fmt="json")
    assert json.loads(capsys.readouterr().out) == []


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    listing.print_list(NETWORKS, [VIEW], quiet=False, fmt="table")
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "NAME", "DRIVER", "SUBNET", "VNI"]
    assert row.split() == ["n" * 12, "front", "overlay", "10.0.1.0/24", "4097"]


def test_inspect_prints_one_json_object_in_both_formats(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = views.network_view(NETWORK)
    for fmt in ("table", "json"):
        listing.print_one(view, fmt)
        assert json.loads(capsys.readouterr().out) == view


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def test_every_ls_and_inspect_takes_the_same_flags() -> None:
    ctx = click.Context(cli.cli)
    groups = {name: cli.cli.get_command(ctx, name) for name in cli.cli.list_commands(ctx)}
    assert set(groups) >= {"cluster", "network", "node", "service", "task"}
    lists, inspects = 0, 0
    for name, group in groups.items():
        if name == "events":
            continue  # a single command (`swarmctl events`), no ls/inspect
        assert isinstance(group, click.Group), name
        for sub, command in group.commands.items():
            if sub in ("ls", "ps"):
                lists += 1
                assert {"-q", "--quiet", "--format"} <= _options(command), (name, sub)
            if sub == "inspect":
                inspects += 1
                assert "--format" in _options(command), (name, sub)
    # At least service ls|ps, node, task, network ls; their inspects and cluster inspect.
    assert lists >= 5 and inspects >= 5
