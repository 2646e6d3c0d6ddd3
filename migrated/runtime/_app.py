"""The App contract: an object whose state lives in its attributes, driven by events from the runtime."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from typing import ClassVar, NoReturn

    from migrated.runtime._net import Conn

__all__ = ["App"]


class App:
    """Base class of a managed app.

    The runtime calls the handlers one at a time; between two calls the app is quiescent, and that is where
    checkpoints and freezes happen. Subclasses override the handlers they need:

    - ``start()``: first run only; a restore never calls it again.
    - ``step()``: called again and again; returns the delay in seconds before the next call, or ``None`` to
      stop stepping (the app stays alive for its other events).
    - ``on_input(line)``: a line typed in ``mig attach`` or sent with ``mig send``.
    - ``on_accept(conn)``, ``on_data(conn, data)``, ``on_close(conn)``: network events of the connections
      opened with ``migrated.net`` (their sockets stay on the home host, so they survive moves).
    - ``on_restore()``: after any thaw; reopen what cannot be saved.
    - ``on_stop()``: the app is being stopped (``mig kill``, ``self.exit``, daemon shutdown).

    ``self.args`` holds the arguments given after ``--`` to ``mig run``. Attributes named in ``transient``
    are not saved.
    """

    transient: ClassVar[tuple[str, ...]] = ()
    args: list[str]

    def start(self) -> None:
        """Set up the initial state; called once, on the first run."""

    def step(self) -> float | None:
        """Do one step of work; return the delay before the next step, or ``None`` for no more steps."""
        return None

    def on_input(self, line: str) -> None:
        """Handle one line of input."""

    def on_accept(self, conn: Conn) -> None:
        """Handle a new connection to one of the app's listeners."""

    def on_data(self, conn: Conn, data: bytes) -> None:
        """Handle bytes received on a connection."""

    def on_close(self, conn: Conn) -> None:
        """Handle the end of a connection by its peer or its loss (not one the app closed itself)."""

    def on_restore(self) -> None:
        """Reopen what could not be saved, after a restore or a move."""

    def on_stop(self) -> None:
        """Release resources before the app stops."""

    def exit(self, code: int = 0) -> NoReturn:
        """End the app with an exit code (``on_stop`` runs first)."""
        raise SystemExit(code)
