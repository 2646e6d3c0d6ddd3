"""migrated: checkpoint running Python apps and move them between machines.

``import migrated`` is what every app does, so it stays light: no grpc, no daemon.
"""

from migrated import errors
from migrated.errors import MigError
from migrated.runtime import App

__all__ = ["App", "MigError", "__version__", "errors"]

__version__ = "0.1.0"
