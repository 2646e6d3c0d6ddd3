"""``mig status`` and ``mig ps [--all]`` without click or protobuf: the commands people and scripts run most answer in
tens of milliseconds (their replies come as plain JSON, see ``transport/_control_wire.py``).

``client._entry`` tries these first; any other command line (options it does not know, ``--help``) goes to the
click command line, whose ``status`` and ``ps`` print through the same functions.
"""

from __future__ import annotations

import json
import sys

from client import _render
from client._connect import Daemon, connect
from migrated._paths import resolve_state_dir
from migrated.errors import MigError

__all__ = ["ps", "run", "status"]


def run(argv: list[str]) -> int | None:
    """Run ``[--dir DIR] status|ps [--all] [--json]`` and return its exit code; ``None`` for any other command
    line."""
    state_dir: str | None = None
    if len(argv) >= 2 and argv[0] == "--dir":
        state_dir, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--dir="):
        state_dir, argv = argv[0].removeprefix("--dir="), argv[1:]
    options = set(argv[1:])
    known = {"--json", "--all"} if argv and argv[0] == "ps" else {"--json"}
    if not argv or argv[0] not in ("status", "ps") or len(options) != len(argv) - 1 or not options <= known:
        return None
    try:
        daemon = connect(resolve_state_dir(state_dir))
        if argv[0] == "status":
            status(daemon, "--json" in options)
        else:
            ps(daemon, "--json" in options, "--all" in options)
    except MigError as exc:
        print(f"mig: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0


def status(daemon: Daemon, as_json: bool) -> None:
    """Print the daemon's status."""
    reply = _render.fields(daemon.plain("Status"))
    if as_json:
        print(json.dumps(_render.status_json(reply), indent=2))
    else:
        _render.status_text(reply)


LIST_ALL = b"\x08\x01"  # ListRequest(all=True) in protobuf: field 1, varint 1 (protobuf is not imported here)


def ps(daemon: Daemon, as_json: bool, everywhere: bool = False) -> None:
    """Print the apps (``everywhere``: of every reachable paired host too; the silent ones named on stderr)."""
    reply = _render.fields(daemon.plain("List", request=LIST_ALL if everywhere else b""))
    for sentence in getattr(reply, "unreachable", ()):
        print(f"mig: {sentence}", file=sys.stderr)
    if as_json:
        print(json.dumps([_render.app_json(app) for app in reply.apps], indent=2))
    else:
        _render.app_table(list(reply.apps), epochs=everywhere)
