"""``migrated``: the daemon, in the foreground."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import click

from migrated._paths import resolve_state_dir
from migrated.daemon._config import CONFIG_FILE, evacuate_target, load_config_file, peer_settings
from migrated.daemon._server import DaemonConfig, serve
from migrated.errors import MigError

__all__ = ["main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dir",
    "state_dir",
    metavar="DIR",
    help="State directory (default: $MIG_DIR or ~/.local/state/migrated).",
)
@click.option("--name", "host", metavar="HOST", help="This host's name (default: the machine's host name).")
@click.option("--console-lines", default=1_000_000, show_default=True, help="Console lines kept per app.")
@click.option(
    "--console-bytes", default=64 * 1024 * 1024, show_default=True, help="Console bytes kept per app (on disk)."
)
@click.option(
    "--listen",
    metavar="ADDR:PORT",
    envvar="MIGRATED_LISTEN",
    help="The peer port's address (default 0.0.0.0:7464; port 0 picks a free one). Env: MIGRATED_LISTEN.",
)
@click.option("--peer", "peers", metavar="ADDR:PORT", multiple=True, help="A peer to use without mDNS (repeatable).")
@click.option(
    "--mdns/--no-mdns",
    default=None,
    envvar="MIGRATED_MDNS",
    help="Announce this daemon and look for others over mDNS (default: on). Env: MIGRATED_MDNS=0|1.",
)
@click.option(
    "--mdns-interface",
    "mdns_interfaces",
    metavar="ADDR",
    multiple=True,
    help="Run mDNS only on the interface with this IPv4 address (repeatable; default: all).",
)
@click.option(
    "--home-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds an app's file or socket call waits for an unreachable home before it fails.",
)
@click.option(
    "--safe-point-wait",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a checkpoint, close or move waits for an app to finish its handler before it gives up.",
)
@click.option(
    "--spare-runners",
    type=click.IntRange(min=0, max=8),
    default=1,
    show_default=True,
    help="Runner processes kept started ahead, so an app starts, opens or arrives without an interpreter start.",
)
@click.option(
    "--evacuate-to",
    metavar="HOST",
    default=None,
    help="When stopped (SIGTERM, mig shutdown), first move the apps running here to this paired host.",
)
@click.option(
    "--evacuate-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a stop spends moving apps to --evacuate-to; what has not moved by then is closed here.",
)
@click.option("--handshake-timeout", type=float, default=10.0, hidden=True, help="Seconds a TLS handshake may take.")
@click.option("--ready-fd", type=int, default=-1, hidden=True, help="Write 'ready' to this fd once serving.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def main(
    state_dir: str | None,
    host: str | None,
    console_lines: int,
    console_bytes: int,
    listen: str | None,
    peers: tuple[str, ...],
    mdns: bool | None,
    mdns_interfaces: tuple[str, ...],
    home_timeout: float,
    safe_point_wait: float,
    spare_runners: int,
    evacuate_to: str | None,
    evacuate_timeout: float,
    handshake_timeout: float,
    ready_fd: int,
    verbose: bool,
) -> None:
    """Run the migrated daemon in the foreground.

    Settings also come from DIR/migrated.toml (name, listen, peers, mdns, mdns_interfaces, evacuate_to); flags
    win.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        directory = resolve_state_dir(state_dir)
        file = load_config_file(directory / CONFIG_FILE)
        name = host or file.get("name") or socket.gethostname()
        config = DaemonConfig(
            state_dir=directory,
            host=str(name),
            console_lines=console_lines,
            console_bytes=console_bytes,
            peers=peer_settings(file, listen=listen, peers=peers, mdns=mdns, interfaces=mdns_interfaces),
            handshake_timeout=handshake_timeout,
            home_timeout=home_timeout,
            safe_point_wait=safe_point_wait,
            spare_runners=spare_runners,
            evacuate_to=evacuate_target(file, evacuate_to),
            evacuate_timeout=evacuate_timeout,
        )
        asyncio.run(serve(config, ready=lambda: _signal_ready(ready_fd)))
    except MigError as exc:
        click.echo(f"migrated: {exc.message}", err=True)
        sys.exit(exc.exit_code)


def _signal_ready(fd: int) -> None:
    if fd >= 0:
        os.write(fd, b"ready\n")
        os.close(fd)
