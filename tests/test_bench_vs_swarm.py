"""The Shoal vs Docker Swarm benchmark's own arithmetic (the benchmark itself runs with
`./scripts/bench vs_swarm`): timelines from task records, image refs, the summary."""

from __future__ import annotations

import pytest

from bench.vs_swarm.common import parse_rfc3339, task_timeline
from bench.vs_swarm.hosts3 import STEPS, summarise_hosts
from bench.vs_swarm.shoal_side import stored_as


def test_timeline_counts_only_tasks_created_since() -> None:
    tasks = [(100.0, 100.5), (110.0, 110.8), (110.3, 111.4), (110.4, None)]
    got = task_timeline(110.0, tasks)
    assert got == pytest.approx({"tasks_created": 0.4, "first_running": 0.8, "last_running": 1.4})


def test_timeline_without_new_running_tasks_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        task_timeline(200.0, [(100.0, 100.5), (201.0, None)])


def test_docker_stamps_keep_their_nanoseconds() -> None:
    assert parse_rfc3339("2026-12-01T03:00:00.123456789Z") == pytest.approx(
        1796094000.123456789, abs=1e-6
    )


def test_pinned_ref_is_the_same_image() -> None:
    image = "172.29.1.10:5000/busybox:latest"
    assert stored_as(image, image)
    assert stored_as("172.29.1.10:5000/busybox@sha256:" + "a" * 64, image)
    assert not stored_as("172.29.1.10:5000/other@sha256:" + "a" * 64, image)


def _round(scale: float) -> dict[str, object]:
    line = {"tasks_created": 0.0, "first_running": 0.3, "last_running": 0.9}
    return {
        "times": {step: scale * (i + 1) for i, step in enumerate(STEPS)},
        "timeline": {"create": line, "scale": line, "host_lost": line},
        "restore_s": 2.0,
        "restart_delay_s": 5.0,
    }


def test_summary_ratios_are_medians_side_by_side() -> None:
    result = {
        "config": {"replicas": 60, "scale_to": 120, "rounds": 2},
        "versions": {"docker": "d", "containerd": "c", "shoal": "s"},
        "machine": {"loadavg_at_end": [1.0, 1.0, 1.0]},
        "rounds": {"Shoal": [_round(1.0), _round(3.0)], "Swarm": [_round(4.0), _round(4.0)]},
    }
    table = summarise_hosts(result)
    assert result["ratios"] == pytest.approx({step: 0.5 for step in STEPS})
    assert "| create 60 replicas -> 60/60 running | 2.00 s | 4.00 s | 0.50x | <= 0.5x met |" in (
        table
    )
