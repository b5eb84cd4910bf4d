"""The scale benchmark's plot: tasks/s, latency and manager CPU per task by node count."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, latency, cpu) = plt.subplots(1, 3, figsize=(15, 4))
    # One line per task count, or one for a run at a fixed number of tasks per node.
    per_node = {r["tasks"] // r["nodes"] for r in results}
    if len({r["tasks"] for r in results}) == len(results) and len(per_node) == 1:
        groups = {f"{per_node.pop()} tasks/node": results}
    else:
        groups = {
            f"{t} tasks": [r for r in results if r["tasks"] == t]
            for t in sorted({r["tasks"] for r in results})
        }
    for label, group in groups.items():
        rows = sorted(group, key=lambda r: r["nodes"])
        xs = [r["nodes"] for r in rows]
        rate.plot(xs, [r["tasks_per_s"] for r in rows], marker="o", label=label)
        latency.plot(xs, [r["p50_latency_s"] for r in rows], marker="o", label=f"p50, {label}")
        latency.plot(
            xs, [r["p99_latency_s"] for r in rows], marker="x", ls="--", label=f"p99, {label}"
        )
        cpu.plot(
            xs, [r["manager_cpu_s"] / r["tasks"] * 1000 for r in rows], marker="o", label=label
        )
        if all("manager_cpu_ms_per_task_less_rest" in r for r in rows):
            cpu.plot(
                xs,
                [r["manager_cpu_ms_per_task_less_rest"] for r in rows],
                marker="x",
                ls="--",
                label=f"{label}, less the fleet at rest",
            )
    rate.set(xlabel="hollow nodes", ylabel="tasks/s (create -> running)", xscale="log")
    latency.set(xlabel="hollow nodes", ylabel="create -> running latency (s)", xscale="log")
    cpu.set(xlabel="hollow nodes", ylabel="manager CPU ms per task", xscale="log", ylim=(0, None))
    for ax in (rate, latency, cpu):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Shoal hollow-node scale (2 cores shared by manager, etcd and agents)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot: {out}")
