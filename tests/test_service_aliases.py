"""A stack's short names (and compose aliases) answer like the service's own name,
on the networks they were given for, from the service table the agents get."""

from __future__ import annotations

from typing import Any

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker.servicenet import _alias_names


class _Local:
    def __init__(self, ifnames: dict[str, str]) -> None:
        self.ifnames = ifnames


class _Index:
    def __init__(self, backends: dict[tuple[str, str], list[str]]) -> None:
        self.backends = backends


def names_for(record: dpb.ServiceRecord, on: dict[str, str]) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    shuffle: set[str] = set()
    index: Any = _Index({("s1", "netA"): ["10.0.1.5", "10.0.1.6"], ("s1", "netB"): ["10.0.2.5"]})
    _alias_names(record, _Local(on), index, names, shuffle)  # type: ignore[arg-type]
    return names


def test_short_names_answer_on_their_own_networks() -> None:
    record = dpb.ServiceRecord(
        id="s1",
        name="shop_web",
        virtual_ips=[pb.VirtualIP(network_id="netA", addr="10.255.0.9")],
        aliases=[
            dpb.NetworkAliases(network_id="netA", names=["web", "Front"]),
            dpb.NetworkAliases(network_id="netB", names=["web-b"]),
        ],
    )
    on_a = names_for(record, {"netA": "eth0"})
    assert on_a["web"] == ["10.255.0.9"] and on_a["front"] == ["10.255.0.9"]
    assert on_a["tasks.web"] == ["10.0.1.5", "10.0.1.6"]
    assert "web-b" not in on_a  # not given on a network this task is on
    on_b = names_for(record, {"netB": "eth0"})
    assert on_b == {"tasks.web-b": ["10.0.2.5"], "web-b": ["10.0.2.5"]}  # no VIP there
    dnsrr = dpb.ServiceRecord(
        id="s1", name="x", mode=pb.ENDPOINT_DNSRR,
        aliases=[dpb.NetworkAliases(network_id="netA", names=["web"])],
    )  # fmt: skip
    assert names_for(dnsrr, {"netA": "eth0"})["web"] == ["10.0.1.5", "10.0.1.6"]
