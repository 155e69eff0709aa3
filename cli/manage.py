"""The commands that manage genvae's environment: ``install``, ``uninstall``, ``cache list|clear``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from rich.table import Table

from genvae.cli.commands import console
from genvae.core.errors import GenvaeError


def _pip(args: list[str]) -> None:
    code = subprocess.call([sys.executable, "-m", "pip", *args])
    if code:
        raise GenvaeError(f"pip {' '.join(args)} failed with exit status {code}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("packages", nargs=-1, required=True)
def install(packages) -> None:
    """Install plugins (or any package) into genvae's own environment with pip."""
    _pip(["install", *packages])


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("packages", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(packages, yes) -> None:
    """Uninstall packages from genvae's environment with pip."""
    _pip(["uninstall", *(["-y"] if yes else []), *packages])


@click.group("cache")
def cache_group() -> None:
    """The on-disk cache of decoded training images (GENVAE_CACHE; 'off' keeps images in memory)."""


def _cache_root() -> Path | None:
    """The image cache's folder, or None (after saying so) when GENVAE_CACHE=off."""
    from genvae.core import cache

    root = cache.cache_root()
    if root is None:
        console.print("the image cache is off (GENVAE_CACHE=off)")
    return root


@cache_group.command("list")
def cache_list() -> None:
    """What the cache holds: source, images, size on disk."""
    from genvae.core import cache

    root = _cache_root()
    if root is None:
        return
    found = cache.entries(root)
    table = Table("source", "images", "size", "folder", title=f"image cache {root}")
    for entry in found:
        n, c, h, w = entry["shape"]
        table.add_row(
            str(entry["source"]),
            f"{n:,} x {c}x{h}x{w}",
            f"{entry['bytes'] / 2**20:,.1f} MiB",
            Path(entry["folder"]).name,
        )
    console.print(table if found else f"the image cache {root} is empty")


@cache_group.command("clear")
def cache_clear() -> None:
    """Remove every cached data set (they are decoded again when next used)."""
    from genvae.core import cache

    root = _cache_root()
    if root is not None:
        console.print(f"removed {cache.clear(root)} cached data set(s) from {root}")


#: the commands this module adds to the genvae group
COMMANDS = [install, uninstall, cache_group]
