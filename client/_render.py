"""How the command line shows apps and the daemon: JSON documents, plain tables, a move's progress."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:  # mig status and mig ps print without importing protobuf
    from migrated.transport.v1 import control_pb2 as pb

__all__ = [
    "MoveBar",
    "app_json",
    "app_table",
    "columns",
    "history_table",
    "iso",
    "peer_json",
    "peer_table",
    "size",
    "state_name",
    "status_json",
    "status_text",
    "version_json",
]


def state_name(state: pb.AppState.ValueType | str) -> str:
    """``APP_STATE_RUNNING`` (by number, or by name in a plain reply) -> ``running``."""
    return _enum_name(state, "AppState").removeprefix("APP_STATE_").lower()


def _enum_name(value: int | str, enum: str) -> str:
    if isinstance(value, str):
        return value
    from migrated.transport.v1 import control_pb2

    return str(getattr(control_pb2, enum).Name(value))


def fields(reply: dict[str, Any]) -> Any:
    """A plain reply (``Daemon.plain``) read like its message: ``reply.apps[0].name``."""
    return SimpleNamespace(**{
        key: [fields(item) if isinstance(item, dict) else item for item in value] if isinstance(value, list)
        else fields(value) if isinstance(value, dict) else value
        for key, value in reply.items()
    })  # fmt: skip


def iso(timestamp: float) -> str | None:
    """A Unix time as ISO 8601 (UTC), None for 0."""
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat() if timestamp else None


def app_json(app: pb.AppInfo | Any) -> dict[str, Any]:
    """One app (an ``AppInfo``, or its plain form read through ``fields``) as ``mig ps --json`` shows it."""
    return {
        "name": app.name,
        "state": state_name(app.state),
        "kind": _enum_name(app.kind, "AppKind").removeprefix("APP_KIND_").lower(),
        "host": app.host,
        "epoch": app.epoch,
        "home": app.home,
        "files_home": app.files_home or app.home,
        "version": app.version or None,
        "pid": app.pid or None,
        "file": app.file or None,
        "app_class": app.app_class or None,
        "cwd": app.cwd,
        "args": list(app.args),
        "started_at": iso(app.started_at),
        "ended_at": iso(app.ended_at),
        "exit_code": app.exit_code if app.ended_at else None,
        "reason": app.reason or None,
        "console_lines": app.console_seq,
        "autosave": app.autosave or None,
        "keep": app.keep or None,
        "restart": app.restart or "on-crash",
        "restarts": app.restarts,
    }


def _age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def app_table(apps: Sequence[pb.AppInfo | Any], epochs: bool = False) -> None:
    """Print apps as a table (``epochs``: with each app's epoch, as ``mig ps --all`` shows them)."""
    if not apps:
        print("no apps; start one with: mig run FILE.py")
        return
    rows = [
        (app.name, state_name(app.state), app.host, app.home, *((str(app.epoch),) if epochs else ()),
         str(app.pid) if app.pid else "-", str(app.version) if app.version else "-", _age(app.started_at), app.reason)
        for app in apps
    ]  # fmt: skip
    epoch = ("EPOCH",) if epochs else ()
    columns(("NAME", "STATE", "HOST", "HOME", *epoch, "PID", "VERSION", "AGE", "DETAIL"), rows)


def columns(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Print a table: each column as wide as its widest cell, two spaces between columns, no wrapping (a
    script can cut the columns at runs of spaces; a long detail stays on its line)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def status_json(reply: pb.StatusReply | Any) -> dict[str, Any]:
    """The daemon as ``mig status --json`` shows it."""
    return {
        "host": reply.host,
        "version": reply.version,
        "pid": reply.pid,
        "state_dir": reply.state_dir,
        "started_at": iso(reply.started_at),
        "apps_running": reply.apps_running,
        "apps_total": reply.apps_total,
        "rss_bytes": reply.rss_bytes,
        "device_id": reply.device_id,
        "listen": reply.listen or None,
        "mdns": reply.mdns,
    }


def status_text(reply: pb.StatusReply | Any) -> None:
    """Print the daemon's status."""
    print(f"host        {reply.host}")
    print(f"version     {reply.version}")
    print(f"pid         {reply.pid}")
    print(f"state dir   {reply.state_dir}")
    print(f"up          {_age(reply.started_at)}")
    print(f"apps        {reply.apps_running} running, {reply.apps_total} in all")
    print(f"memory      {reply.rss_bytes / 2**20:.1f} MiB")
    print(f"device id   {reply.device_id}")
    print(f"peer port   {reply.listen or 'none'}{'' if reply.mdns else ' (mDNS off)'}")


def peer_json(peer: pb.PeerInfo) -> dict[str, Any]:
    """One peer as ``mig peers --json`` shows it."""
    return {
        "name": peer.name,
        "address": peer.address,
        "device_id": peer.device_id,
        "paired": peer.paired,
        "reachable": peer.reachable,
        "version": peer.version or None,
        "apps_running": peer.apps_running if peer.apps_running >= 0 else None,
        "load": round(peer.load, 2) if peer.load >= 0 else None,
        "sources": list(peer.sources),
        "last_seen": iso(peer.last_seen),
        "paired_at": iso(peer.paired_at),
    }


def peer_table(peers: list[pb.PeerInfo], empty: str) -> None:
    """Print peers as a table."""
    if not peers:
        print(empty)
        return
    rows = [
        (peer.name, peer.address or "-", "yes" if peer.paired else "no", "yes" if peer.reachable else "no",
         peer.version or "-", str(peer.apps_running) if peer.apps_running >= 0 else "-",
         f"{peer.load:.2f}" if peer.load >= 0 else "-", peer.device_id[:12] or "-")
        for peer in peers
    ]  # fmt: skip
    columns(("NAME", "ADDRESS", "PAIRED", "REACHABLE", "VERSION", "APPS", "LOAD", "DEVICE"), rows)


def size(count: int) -> str:
    """A byte count for people: 512 B, 3.2 KiB, 256.0 MiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def version_json(entry: pb.VersionEntry) -> dict[str, Any]:
    """One version as ``mig history --json`` shows it."""
    return {
        "version": entry.version,
        "parent": entry.parent or None,
        "created": iso(entry.created),
        "kind": entry.kind,
        "message": entry.message,
        "bytes_added": entry.bytes_added,
        "total_bytes": entry.total_bytes,
    }


def history_table(entries: list[pb.VersionEntry]) -> None:
    """Print versions as a table."""
    import datetime as dt

    if not entries:
        print("no versions yet; mig checkpoint NAME saves one")
        return
    rows = [
        (str(entry.version), str(entry.parent) if entry.parent else "-",
         dt.datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M:%S"), entry.kind,
         size(entry.bytes_added), size(entry.total_bytes), entry.message)
        for entry in entries
    ]  # fmt: skip
    columns(("VERSION", "PARENT", "TIME", "KIND", "ADDED", "SIZE", "MESSAGE"), rows)


class MoveBar:
    """``mig move``'s progress: a bar per copy phase on a terminal, a line per phase otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.downtime = 0.0
        self._phase = ""
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> MoveBar:
        if self.live:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("{task.description:<11}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, update: pb.MoveProgress) -> None:
        """Show one progress report."""
        if update.downtime:
            self.downtime = update.downtime
        if update.phase != self._phase:
            self._phase = update.phase
            if self._progress is not None:
                self._task = self._progress.add_task(update.phase, total=update.bytes_total or None)
            elif update.phase != "done":
                print(f"{update.phase}...", flush=True)
        if self._progress is None and update.bytes_total and update.bytes_sent == update.bytes_total:
            print(
                f"{update.phase}: {size(update.bytes_sent)} in {update.chunks_sent} chunks sent, "
                f"{update.chunks_skipped} skipped (the destination had them)",
                flush=True,
            )
        if self._progress is not None and self._task is not None:
            skipped = (
                f"{update.phase} ({update.chunks_skipped} chunks there)" if update.chunks_skipped else update.phase
            )
            self._progress.update(
                self._task, completed=update.bytes_sent, total=update.bytes_total or None, description=skipped
            )
