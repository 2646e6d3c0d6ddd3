"""Discovery: mDNS advertise and browse, the paired table and the peer table.

``Mdns`` is imported on first use, so that a daemon started with ``--no-mdns`` never pays for zeroconf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migrated.discovery._advert import SERVICE_TYPE, Advert, BadAdvert

if TYPE_CHECKING:
    from migrated.discovery._mdns import Mdns

__all__ = ["SERVICE_TYPE", "Advert", "BadAdvert", "Mdns"]


def __getattr__(name: str) -> Any:
    if name == "Mdns":
        from migrated.discovery._mdns import Mdns

        return Mdns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
