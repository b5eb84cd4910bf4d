"""A thousand hosts booting at once (a power cycle) all join and run their tasks: the
hollow-node benchmark's run that did not finish from a fresh clone (joins timed out,
the agents exited, a cache wait broke sessions). Minutes long: `pytest -m scale`."""

from __future__ import annotations

import pytest

from bench.scale.run import run_once

pytestmark = [pytest.mark.integration, pytest.mark.scale]


@pytest.mark.timeout(1800)
def test_a_thousand_nodes_join_at_once_and_run_their_tasks() -> None:
    got = run_once(nodes=1000, tasks=10_000, services=10, procs=4, keep=None, join_limit_s=600)
    assert got["nodes"] == 1000 and got["tasks"] == 10_000
    # A join retried after a lost answer gets its first node: none left behind.
    assert got["ghost_nodes"] == 0
    print(f"\n1,000 nodes / 10,000 tasks: {got}")
