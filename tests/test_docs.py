"""Every ``mig`` command is documented in README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from client._main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_command_is_documented(command: str) -> None:
    assert f"mig {command}" in README.read_text()
