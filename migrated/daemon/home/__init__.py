"""Home I/O: the home side of each app (its ordered events, its sockets, its files, its console while it runs
elsewhere), the links that carry the I/O of an app running on another host, fencing by epoch, and the files a
host keeps serving for an app whose home moved on."""

from migrated.daemon.home._app_home import MAX_UNSENT, AppHome
from migrated.daemon.home._fence import fence
from migrated.daemon.home._grants import FileGrants
from migrated.daemon.home._io import HomeIO
from migrated.daemon.home._link import Link, LinkPeers
from migrated.daemon.home._queue import EventQueue
from migrated.daemon.home._serve import Caller, serve_link

__all__ = [
    "MAX_UNSENT",
    "AppHome",
    "Caller",
    "EventQueue",
    "FileGrants",
    "HomeIO",
    "Link",
    "LinkPeers",
    "fence",
    "serve_link",
]
