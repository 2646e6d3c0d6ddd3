"""A managed interactive Python session: each statement is an event, the namespace is the state."""

from __future__ import annotations

import builtins
import codeop
import sys
import traceback
from typing import Any

from migrated.runtime._app import App

__all__ = ["Repl"]

PS1 = ">>> "
PS2 = "... "


class Repl(App):
    """An interactive interpreter whose namespace is the app's state."""

    transient = ("_compiler",)

    def start(self) -> None:
        """Greet and show the first prompt."""
        self.namespace: dict[str, Any] = {"__name__": "__repl__", "__builtins__": builtins}
        self.pending: list[str] = []
        self._compiler = codeop.CommandCompiler()
        version = sys.version.split()[0]
        print(f"migrated repl, Python {version}. Statements run one at a time; the namespace is kept.")
        self._prompt()

    def on_restore(self) -> None:
        """Rebuild the compiler, which is not saved, and prompt again."""
        self._compiler = codeop.CommandCompiler()
        self._prompt()

    def on_input(self, line: str) -> None:
        """Add a line; run the statement once it is complete."""
        self.pending.append(line)
        source = "\n".join(self.pending)
        try:
            code = self._compiler(source, "<repl>", "single")
        except (SyntaxError, OverflowError, ValueError):
            self.pending = []
            traceback.print_exc(limit=0)
            self._prompt()
            return
        if code is None:
            self._prompt()
            return
        self.pending = []
        try:
            exec(code, self.namespace)
        except SystemExit:
            raise
        except BaseException as exc:
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != "<repl>":
                tb = tb.tb_next
            traceback.print_exception(type(exc), exc, tb)
        self._prompt()

    def _prompt(self) -> None:
        sys.stdout.write(PS2 if self.pending else PS1)
        sys.stdout.flush()
