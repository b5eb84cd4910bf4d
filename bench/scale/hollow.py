"""Hollow nodes: many real worker agents (simulated runtime) in one process.

Each agent has its own state dir, certificate, mTLS session and heartbeat; only
the containers are simulated. Usage (run by bench/scale/run.py):

    python -m bench.scale.hollow --count 250 --first 0 --state-root DIR \
        --join-addr HOST:PORT --join-token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
from pathlib import Path

from shoal.aiotasks import dump_tasks_on_sigusr1
from shoal.worker.agent import Agent, WorkerConfig


def raise_fd_limit() -> None:
    """Each agent holds a channel to its manager and a few state files open."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_tasks_on_sigusr1()
    agents = [
        Agent(
            WorkerConfig(
                state_dir=Path(args.state_root) / f"hollow-{i:05d}",
                join_addr=args.join_addr,
                join_token=args.join_token,
                hostname=f"hollow-{i:05d}",
                runtime="simulated",
                # Like kubemark's hollow kubelets: the fake runtime lives in memory,
                # so the figures are Shoal's costs, not the simulator's.
                simulated_state_on_disk=False,
                rotate_logs=False,
            )
        )
        for i in range(args.first, args.first + args.count)
    ]
    runs = []
    for a in agents:
        runs.append(asyncio.create_task(a.run(stop)))
        await asyncio.sleep(0.002)  # stagger joins a little, like a real fleet booting
    await asyncio.gather(*runs)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--state-root", required=True)
    p.add_argument("--join-addr", required=True)
    p.add_argument("--join-token", required=True)
    logging.basicConfig(level=logging.WARNING)
    raise_fd_limit()
    asyncio.run(main(p.parse_args()))
