"""The apps of this host: their records (``AppRegistry``), their runs (``AppTable``), their checkpoints
(``Checkpointer``) and the version commands (``AppVersions``)."""

from migrated.daemon.apps._checkpointer import Checkpointer
from migrated.daemon.apps._files import spec_from_code
from migrated.daemon.apps._registry import AppRegistry
from migrated.daemon.apps._table import AppTable, RunnerIO
from migrated.daemon.apps._versions import AppVersions

__all__ = ["AppRegistry", "AppTable", "AppVersions", "Checkpointer", "RunnerIO", "spec_from_code"]
