"""The README documents every ``mig`` command, and its code runs as written."""

from __future__ import annotations

import re
import socket
import textwrap

import pytest

from client._main import cli
from tests.conftest import AppDir, Daemon
from tests.helpers import REPO, wait_until

README = REPO / "README.md"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_command_is_documented(command: str) -> None:
    assert f"mig {command}" in README.read_text()


def python_blocks() -> list[str]:
    """The README's Python code blocks, dedented (a block inside a list item is indented)."""
    text = README.read_text()
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


def block_defining(name: str) -> str:
    found = [block for block in python_blocks() if f"class {name}(" in block]
    assert len(found) == 1, f"the README has {len(found)} blocks defining {name}"
    return found[0]


def test_the_counter_in_the_readme_runs_as_written(shared_daemon: Daemon, app_dir: AppDir) -> None:
    path = app_dir.write("readme_counter.py", block_defining("Counter"))
    shared_daemon.mig("run", str(path), "--name", "readme-counter")
    shared_daemon.wait_logs("readme-counter", "1\n2\n")
    shared_daemon.mig("send", "readme-counter", "41")
    shared_daemon.wait_logs("readme-counter", "42\n")


def test_the_echo_server_in_the_readme_runs_as_written(shared_daemon: Daemon, app_dir: AppDir) -> None:
    with socket.socket() as probe:  # the port as written may be taken on this machine: one that is free
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = block_defining("Echo")
    assert "import migrated\n" in source and "import migrated.net" not in source
    path = app_dir.write("readme_echo.py", source.replace("listen(7000)", f"listen({port})"))
    shared_daemon.mig("run", str(path), "--name", "readme-echo")
    client = wait_until(lambda: _connect(port), 15, what="the README's echo server to listen")
    with client:
        client.settimeout(15)
        assert client.recv(6) == b"hello\n"
        client.sendall(b"ping\n")
        assert client.recv(5) == b"ping\n"


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
