"""The public API is what ``migrated/__init__.py`` exports, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys
import types

import migrated


def test_exported_members() -> None:
    assert set(migrated.__all__) == {"App", "MigError", "__version__", "errors", "net"}
    public = {
        name
        for name, value in vars(migrated).items()
        if not name.startswith("_") and not (isinstance(value, types.ModuleType) and name not in ("errors", "net"))
    }
    assert public | {"__version__", "net"} == set(migrated.__all__)
    for name in migrated.__all__:
        assert hasattr(migrated, name)


def test_migrated_net_comes_with_import_migrated_and_costs_nothing_until_used() -> None:
    loaded = imports_of("import migrated")
    assert "migrated.net" not in loaded and "migrated.runtime._net" not in loaded
    assert "migrated.net" in imports_of("import migrated; migrated.net.listen")


def imports_of(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_import_migrated_does_not_import_grpc() -> None:
    loaded = imports_of("import migrated")
    assert "grpc" not in loaded
    assert "dill" not in loaded


def test_the_runner_does_not_import_grpc() -> None:
    assert "grpc" not in imports_of("import migrated.runtime._runner, migrated.runtime._repl")


def test_the_command_line_does_not_import_the_daemon() -> None:
    loaded = imports_of("import client._main")
    assert not {name for name in loaded if name.startswith("migrated.daemon")}


def test_no_command_imports_grpc_and_status_and_ps_import_neither_click_nor_protobuf() -> None:
    """What keeps mig fast (bench/cli.py measures it): the control socket speaks frames, not gRPC, and the two
    commands run most answer from plain JSON without click."""
    assert not {name for name in imports_of("import client._main") if name.split(".")[0] == "grpc"}
    fast = imports_of("import client._fast")
    assert not {name for name in fast if name.split(".")[0] in ("grpc", "click", "rich", "google")}
