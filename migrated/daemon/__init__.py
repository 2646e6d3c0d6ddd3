"""The daemon: app table and lifecycle, console logs, and the control server."""

from migrated.daemon._server import DaemonConfig, serve

__all__ = ["DaemonConfig", "serve"]
