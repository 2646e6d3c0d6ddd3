"""The ``mig`` console script: a Ctrl-C before the command runs ends it at once, quietly.

``mig status`` and ``mig ps`` are answered without click (``_fast.py``); every other command imports click first.
A KeyboardInterrupt raised in the middle of an extension module's import can leave a half-started library behind
and a traceback on the terminal. Nothing needs tidying before the command runs, so until then SIGINT just ends
the process with the usual status.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not ``signal``: it imports enum, a window of its own
import os
import sys


def main() -> None:
    """Entry point of the ``mig`` console script."""
    _signal.signal(_signal.SIGINT, lambda *_: os._exit(130))
    from client._fast import run as fast

    code = fast(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from client._main import main as run

    run()
