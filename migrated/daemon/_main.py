"""``migrated``: the daemon, in the foreground."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import click

from migrated._paths import resolve_state_dir
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
@click.option("--ready-fd", type=int, default=-1, hidden=True, help="Write 'ready' to this fd once serving.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def main(
    state_dir: str | None,
    host: str | None,
    console_lines: int,
    console_bytes: int,
    ready_fd: int,
    verbose: bool,
) -> None:
    """Run the migrated daemon in the foreground."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = DaemonConfig(
        state_dir=resolve_state_dir(state_dir),
        host=host or socket.gethostname(),
        console_lines=console_lines,
        console_bytes=console_bytes,
    )
    try:
        asyncio.run(serve(config, ready=lambda: _signal_ready(ready_fd)))
    except MigError as exc:
        click.echo(f"migrated: {exc.message}", err=True)
        sys.exit(exc.exit_code)


def _signal_ready(fd: int) -> None:
    if fd >= 0:
        os.write(fd, b"ready\n")
        os.close(fd)
