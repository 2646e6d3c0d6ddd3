"""The ``mig`` console script: a Ctrl-C before the command runs ends it at once, quietly.

The command line imports grpc, click and rich first (~200 ms); a KeyboardInterrupt raised in the middle of an
extension module's import can leave a half-started library behind and a traceback on the terminal. Nothing
needs tidying before the command runs, so until then SIGINT just ends the process with the usual status.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not ``signal``: it imports enum, a window of its own
import os


def main() -> None:
    """Entry point of the ``mig`` console script."""
    _signal.signal(_signal.SIGINT, lambda *_: os._exit(130))
    from client._main import main as run

    run()
