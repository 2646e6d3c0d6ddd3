"""migrated: checkpoint running Python apps and move them between machines.

``import migrated`` is what every app does, so it stays light: no grpc, no daemon.
"""

from migrated import errors
from migrated.errors import MigError
from migrated.runtime import App

__all__ = ["App", "MigError", "__version__", "errors", "net"]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``migrated.net`` after a plain ``import migrated``, imported only by the apps that use it."""
    if name == "net":
        import migrated.net

        return migrated.net
    raise AttributeError(f"module 'migrated' has no attribute {name!r}")
