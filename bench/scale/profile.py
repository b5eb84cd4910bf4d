"""py-spy on the scale benchmark's processes, and what its profiles say."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def start_profilers(
    pids: dict[str, int], out: Path, native: bool = False
) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process (collapsed stacks), until stop_profilers."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                # --native (C frames: gRPC's Cython, protobuf) needs py-spy to pause the
                # process at each sample; without it the sampling does not disturb the run.
                *(["--native"] if native else ["--nonblocking"]),
                "-o",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for p in profilers:
        p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for p in profilers:
        p.wait(timeout=60)


def top_frames(collapsed: Path, n: int = 12) -> list[tuple[str, float]]:
    """Functions by inclusive share of samples (a frame counts once per stack)."""
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        samples = int(num)
        total += samples
        for frame in set(stack.split(";")):
            counts[frame] = counts.get(frame, 0) + samples
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [(frame, count / total) for frame, count in ranked[:n]] if total else []
