"""Property tests (hypothesis) of the manager's pure logic: placement constraints,
the scheduler's filters, the allocator, join tokens and node certificates."""

from __future__ import annotations

import datetime
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.manager import allocator, constraints, validation
from shoal.manager.allocator import IPAM
from shoal.manager.ids import new_id
from shoal.manager.scheduler import Scheduler, _NodeLoad
from shoal.manager.store import Cache
from shoal.pki import ca
from shoal.proto import objects_pb2 as pb

# ---------------------------------------------------------------- constraints

LABEL = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True)
# A value as users write it: visible characters, inner spaces allowed.
VALUE = st.from_regex(r"[!-~](?:[ -~]{0,18}[!-~])?", fullmatch=True)
KEYS = st.one_of(
    LABEL.map(lambda k: f"node.labels.{k}"),
    st.sampled_from(["node.id", "node.hostname", "node.platform.os", "node.platform.arch"]),
)


@given(key=KEYS, equal=st.booleans(), value=VALUE, pad=st.sampled_from(["", " ", "  "]))
def test_constraint_round_trip(key: str, equal: bool, value: str, pad: str) -> None:
    c = constraints.Constraint(key, equal, value)
    assert constraints.parse(str(c)) == c
    op = "==" if equal else "!="
    assert constraints.parse(f"{pad}{key}{pad}{op}{pad}{value}{pad}") == c


def node_strategy() -> st.SearchStrategy[pb.Node]:
    @st.composite
    def build(draw: st.DrawFn) -> pb.Node:
        node = pb.Node(id=new_id(), role=draw(st.sampled_from([pb.ROLE_WORKER, pb.ROLE_MANAGER])))
        node.description.hostname = draw(st.sampled_from(["n1", "n2", "n3"]))
        node.description.os = "linux"
        node.description.arch = draw(st.sampled_from(["x86_64", "aarch64"]))
        node.spec.labels.update(draw(st.dictionaries(st.sampled_from(["zone", "ssd"]), VALUE)))
        node.spec.availability = draw(st.sampled_from(pb.NodeAvailability.values()))
        node.status.state = draw(st.sampled_from(pb.NodeState.values()))
        node.description.resources.nano_cpus = draw(st.sampled_from([0, 2 * 10**9]))
        node.description.resources.memory_bytes = draw(st.sampled_from([0, 1 << 30]))
        return node

    return build()


SIMPLE_CONSTRAINTS = st.builds(
    constraints.Constraint,
    st.sampled_from(
        ["node.labels.zone", "node.labels.ssd", "node.hostname", "node.role", "node.platform.arch"]
    ),
    st.booleans(),
    st.sampled_from(["a", "b", "n1", "worker", "manager", "x86_64"]),
).filter(lambda c: c.key != "node.role" or c.value in ("manager", "worker"))


@given(node=node_strategy(), c=SIMPLE_CONSTRAINTS)
def test_not_equal_is_the_negation_of_equal(node: pb.Node, c: constraints.Constraint) -> None:
    """Like Swarm's: `!=` matches exactly the nodes `==` does not (a missing label too)."""
    flipped = constraints.Constraint(c.key, not c.equal, c.value)
    assert c.matches(node) != flipped.matches(node)
    if c.key.startswith("node.labels.") and c.equal:
        label = c.key.removeprefix("node.labels.")
        assert c.matches(node) == (node.spec.labels.get(label) == c.value)


# ---------------------------------------------------------------- scheduler filters


@given(
    nodes=st.lists(node_strategy(), max_size=6),
    wanted=st.lists(SIMPLE_CONSTRAINTS, max_size=2),
    per_node=st.integers(0, 2),
    reserve=st.sampled_from([0, 10**9, 3 * 10**9]),
    load=st.integers(0, 3),
)
def test_scheduler_filter_keeps_exactly_the_fitting_nodes(
    nodes: list[pb.Node],
    wanted: list[constraints.Constraint],
    per_node: int,
    reserve: int,
    load: int,
) -> None:
    spec = pb.TaskSpec()
    spec.placement.constraints.extend(str(c) for c in wanted)
    spec.placement.max_replicas_per_node = per_node
    spec.reservations.nano_cpus = reserve
    loads = [_NodeLoad(n, total=load, cpus=load * 10**9) for n in nodes]
    for ld in loads:
        ld.per_service["svc"] = load
    fits, reason = Scheduler.__new__(Scheduler)._filter(spec, loads, "svc")
    for ld in loads:
        n = ld.node
        cpus = n.description.resources.nano_cpus
        room = (not per_node or load < per_node) and not (
            reserve and cpus and ld.cpus + reserve > cpus
        )
        expected = (
            n.status.state == pb.NODE_READY
            and n.spec.availability == pb.AVAILABILITY_ACTIVE
            and all(c.matches(n) for c in wanted)
            and room
        )
        assert (ld in fits) == expected
    rejected = sum(int(part.split()[0]) for part in reason.split(", ") if part[:1].isdigit())
    assert rejected == len(nodes) - len(fits) or not nodes


# ---------------------------------------------------------------- allocator


def network(name: str, subnet: str, vni: int) -> pb.Network:
    net = pb.Network(id=new_id(), spec=pb.NetworkSpec(annotations=pb.Annotations(name=name)))
    net.subnet, net.vni = subnet, vni
    net.gateway = str(next(ipaddress.IPv4Network(subnet).hosts()))
    return net


SUBNETS = st.builds(
    lambda a, b, p: str(ipaddress.IPv4Network(f"10.{a}.{b}.0/{p}", strict=False)),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(16, 29),
)


@given(existing=st.lists(SUBNETS, max_size=5), requested=st.one_of(st.none(), SUBNETS))
def test_networks_never_overlap_and_get_unique_vnis(
    existing: list[str], requested: str | None
) -> None:
    nets: list[pb.Network] = []
    for i, s in enumerate(existing):
        if not any(
            ipaddress.IPv4Network(s).overlaps(ipaddress.IPv4Network(n.subnet)) for n in nets
        ):
            nets.append(network(f"n{i}", s, allocator.VNI_MIN + 2 * i))
    new = pb.Network(id=new_id())
    want = ipaddress.IPv4Network(requested) if requested else None
    try:
        allocator.allocate_network(new, nets, want)
    except validation.InvalidSpec as err:
        assert want is not None and "overlaps" in str(err)
        assert any(want.overlaps(ipaddress.IPv4Network(n.subnet)) for n in nets)
        return
    subnet = ipaddress.IPv4Network(new.subnet)
    assert want is None or subnet == want
    assert not any(subnet.overlaps(ipaddress.IPv4Network(n.subnet)) for n in nets)
    assert new.vni not in {n.vni for n in nets} and allocator.VNI_MIN <= new.vni
    assert ipaddress.IPv4Address(new.gateway) in subnet


def cache_with(objects: list[pb.Network | pb.Task]) -> Cache:
    """A real Cache loaded with objects, as after its first read of etcd."""
    cache = Cache.__new__(Cache)
    Cache.__init__(cache, store=None)  # type: ignore[arg-type]
    cache._load([*objects], revision=1)  # type: ignore[list-item]
    return cache


def task_on(net: pb.Network) -> pb.Task:
    task = pb.Task(id=new_id(), service_id="svc", desired_state=pb.RUNNING)
    task.spec.networks.add(target=net.id)
    return task


@settings(max_examples=50)
@given(prefix=st.integers(24, 29), used=st.integers(0, 4), wanted=st.integers(1, 70))
def test_task_ips_unique_inside_the_subnet_never_network_broadcast_or_gateway(
    prefix: int, used: int, wanted: int
) -> None:
    net = network("front", f"10.9.0.0/{prefix}", allocator.VNI_MIN)
    subnet = ipaddress.IPv4Network(net.subnet)
    # Tasks already holding addresses (read from the store).
    old = [task_on(net) for _ in range(used)]
    hosts = [str(h) for h in subnet.hosts() if str(h) != net.gateway]
    for t, ip in zip(old, hosts, strict=False):
        t.networks.add(network_id=net.id, addresses=[f"{ip}/{prefix}"])
    ipam = IPAM(cache_with([net, *old]))
    taken: dict[str, set[str]] = {}
    got: list[str] = []
    for _ in range(wanted):
        t = task_on(net)
        err = ipam.allocate(t, taken)
        if err:
            assert "no IP address left" in err and not t.networks
            continue
        (addr,) = t.networks[0].addresses
        assert addr.endswith(f"/{prefix}")
        got.append(addr.partition("/")[0])
    held = {a.partition("/")[0] for t in old for n in t.networks for a in n.addresses}
    assert len(set(got)) == len(got) and not set(got) & held
    for ip in map(ipaddress.IPv4Address, got):
        assert ip in subnet and ip not in (subnet.network_address, subnet.broadcast_address)
        assert str(ip) != net.gateway
    free = len(hosts) - len(held)
    assert len(got) == min(wanted, free)


# ---------------------------------------------------------------- tokens and certificates

ROOT = ca.new_root_ca("cluster-1")


@given(digest=st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
def test_join_token_round_trip(digest: str) -> None:
    token = ca.new_join_token(digest)
    assert ca.parse_join_token(token).digest == digest
    cluster = pb.Cluster(join_tokens=pb.JoinTokens(worker=token, manager=ca.new_join_token(digest)))
    assert ca.token_role(cluster, token) == pb.ROLE_WORKER
    assert ca.token_role(cluster, cluster.join_tokens.manager) == pb.ROLE_MANAGER
    assert ca.token_role(cluster, token[:-1] + ("a" if token[-1] != "a" else "b")) is None


@given(st.text(max_size=120))
def test_join_token_parse_refuses_or_round_trips(text: str) -> None:
    try:
        parsed = ca.parse_join_token(text)
    except ValueError as err:
        assert "invalid join token" in str(err)
        return
    assert text == f"{ca.TOKEN_PREFIX}-{parsed.digest}-{parsed.secret}"


@settings(max_examples=20, deadline=None)
@given(
    role=st.sampled_from([pb.ROLE_WORKER, pb.ROLE_MANAGER]),
    validity_ms=st.integers(validation.MIN_CERT_EXPIRY_MS, validation.MAX_CERT_EXPIRY_MS),
)
def test_certificates_carry_their_identity_for_any_allowed_expiry(
    role: pb.NodeRole.ValueType, validity_ms: int
) -> None:
    """parse(issue(x)) == x, for every expiry the cluster spec accepts (the bound keeps
    `now + expiry` issuable)."""
    node_id = new_id()
    validity = datetime.timedelta(milliseconds=validity_ms)
    cert = ca.issue_cert(ROOT, ca.new_csr(ca.new_key()), node_id, role, "cluster-1", validity)
    assert ca.identity_of(cert) == ca.Identity(node_id, role, "cluster-1")
    start, end = ca.cert_lifetime(cert)
    assert abs((end - start) - validity - datetime.timedelta(minutes=5)).total_seconds() < 2
    assert ca.ca_digest(ROOT.ca_cert_pem) == ROOT.ca_digest
