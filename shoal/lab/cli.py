"""`shoal-lab`: a multi-host Shoal cluster on one Linux machine (network namespaces).

\b
    shoal-lab up [--workers N] [--managers M] [--name NAME]
    shoal-lab ls
    shoal-lab exec [--name NAME] HOST -- CMD...
    shoal-lab image build [DIR] --output OUT | image push [DIR] [--repo R] [--tag T]
    shoal-lab down [NAME]
    shoal-lab demo [--keep]

Needs root (namespaces, containerd). Nothing is added to the root network namespace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from shoal.lab import images
from shoal.lab.hosts import NETNS_DIR
from shoal.lab.lab import Lab, LabError, labs

DEFAULT_NAME = "default"
NAME = click.option("--name", default=DEFAULT_NAME, show_default=True, help="Which lab.")


def _root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("shoal-lab needs root (network namespaces, containerd)")


@click.group(help=__doc__)
def cli() -> None:
    pass


@cli.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 50))
@click.option("--managers", default=1, show_default=True, type=click.IntRange(1, 7))
@NAME
def up(workers: int, managers: int, name: str) -> None:
    """Start a lab and leave it running."""
    _root()
    lab = Lab(name)
    lab.up(workers, managers)
    click.echo(f"lab {name}: {managers} manager(s), {workers} worker(s)")
    for h in lab.record["hosts"]:
        click.echo(f"  {h['name']:<10} {h['addr']:<15} netns {h['netns']}")
    click.echo(f"  registry   {lab.registry_addr()} (insecure; image {lab.record['image']})")
    click.echo(f"\nexport SWARM_SOCKET={lab.socket}\n")
    click.echo(f"then: swarmctl node ls; shoal-lab exec --name {name} worker1 -- ip addr")
    click.echo(f"done: shoal-lab down {name}")


@cli.command("ls")
def ls() -> None:
    """List labs (and any a crashed run left behind)."""
    for name in labs():
        lab = Lab(name)
        try:
            hosts = ", ".join(h["name"] for h in lab.load().record.get("hosts", []))
            click.echo(f"{name}\t{hosts}\tSWARM_SOCKET={lab.socket}")
        except LabError:
            click.echo(f"{name}\t(leftovers: shoal-lab down {name})")


@cli.command()
@click.argument("name", default=DEFAULT_NAME)
def down(name: str) -> None:
    """Remove everything a lab made: processes, namespaces, mounts, state."""
    _root()
    lab = Lab(name)
    if not lab.exists():
        raise LabError(f"no lab named {name}: nothing to remove (see `shoal-lab ls`)")
    left = lab.down()
    if left:
        raise click.ClickException("could not remove: " + "; ".join(left))
    click.echo(f"lab {name} removed")


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@NAME
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD on HOST (in its network namespace), with SWARM_SOCKET set."""
    _root()
    lab = Lab(name).load()
    netns = NETNS_DIR / lab.host_netns(host)
    os.environ["SWARM_SOCKET"] = str(lab.socket)
    os.execvp("nsenter", ["nsenter", f"--net={netns}", *cmd])


@cli.group()
def image() -> None:
    """OCI images without Docker: busybox (the tests' image) or a directory."""


@image.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="OCI layout")
@click.option("--cmd", multiple=True, help="The image's default command (repeat per word).")
def build(directory: Path | None, output: Path, cmd: tuple[str, ...]) -> None:
    """Write DIRECTORY (default: the busybox image) as an OCI image layout."""
    if directory is not None and not directory.is_dir():
        raise click.ClickException(f"{directory}: not a directory")
    layer = images.dir_layer(directory) if directory else None
    blobs = images.build_image(layer, list(cmd) or None)
    images.write_layout(blobs, output)
    click.echo(f"{output} {blobs['manifest_digest'].decode()}")


@image.command()
@NAME
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--repo", default="busybox", show_default=True)
@click.option("--tag", default="latest", show_default=True)
@click.option("--cmd", multiple=True, help="The image's default command (repeat per word).")
def push(name: str, directory: Path | None, repo: str, tag: str, cmd: tuple[str, ...]) -> None:
    """Push DIRECTORY (default: the busybox image) to the lab's registry."""
    _root()
    if directory is not None and not directory.is_dir():
        raise click.ClickException(f"{directory}: not a directory")
    click.echo(Lab(name).load().push(directory, repo, tag, list(cmd) or None))


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the cluster up until Ctrl-C.")
def demo(keep: bool) -> None:
    """The README's demo: 3 hosts, an overlay network, a service across hosts."""
    _root()
    from shoal.lab.demo import run

    run(keep)


def main() -> None:
    try:
        cli()
    except LabError as err:
        click.echo(f"shoal-lab: {err}", err=True)
        sys.exit(1)
